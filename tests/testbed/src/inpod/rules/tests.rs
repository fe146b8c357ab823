use super::*;

/// The rules appended to built-in chains (`-A PREROUTING -j ISTIO_PRERT`), as (table,
/// arguments after `-A`).
fn builtin_jumps(rules: &str) -> Vec<(&str, Vec<&str>)> {
    let mut table = "";
    let mut jumps = Vec::new();
    for line in rules.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t;
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let args: Vec<&str> = rule.split_whitespace().collect();
            if !args[0].starts_with("ISTIO_") {
                jumps.push((table, args));
            }
        }
    }
    jumps
}

#[test]
fn jumps_from_builtin_chains_are_found_per_table() {
    let rules = inpod_rules_v4();
    let jumps = builtin_jumps(&rules);
    assert_eq!(
        jumps,
        vec![
            ("mangle", vec!["PREROUTING", "-j", "ISTIO_PRERT"]),
            ("mangle", vec!["OUTPUT", "-j", "ISTIO_OUTPUT"]),
            ("nat", vec!["OUTPUT", "-j", "ISTIO_OUTPUT"]),
            ("nat", vec!["PREROUTING", "-j", "ISTIO_PRERT"]),
        ]
    );
}

#[test]
fn rules_leave_out_dns_capture() {
    let rules = inpod_rules_v4();
    assert!(!rules.contains("15053"));
    assert!(!rules.contains("*raw"));
    assert_eq!(rules.lines().filter(|l| l.starts_with("-A ")).count(), 12);
}
