//! The in-pod redirection rules (CONTRACTS.md, "In-pod redirection rules"), IPv4, without the
//! DNS-capture lines: what the CNI agent installs inside every mesh pod's namespace before it
//! hands the namespace to the tunnel.
//!
//! - `nat`: outbound TCP → :15001, inbound TCP (except :15008) → :15006, the tunnel's own
//!   sockets (mark 0x539) pass.
//! - `mangle` + policy routing: a connection the tunnel opened with mark 0x539 gets connmark
//!   0x111; its replies get mark 0x111 back and are routed by table 100 (`local 0.0.0.0/0 dev
//!   lo`) to the tunnel's IP_TRANSPARENT socket instead of out of `eth0` to the real client.

use crate::cmd;
use crate::error::Result;
use crate::netns::Netns;

/// `iptables-restore --noflush` input, exactly the contract's IPv4 rule set minus DNS capture.
/// The `:ISTIO_* - [0:0]` declarations create the chains, or flush them when they exist, so a
/// second application rewrites the same rules; the jumps from the built-in chains are only
/// added when missing (see [`apply_inpod_rules`]).
pub const INPOD_RULES_V4: &str = "\
*mangle
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
COMMIT
*nat
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A OUTPUT -j ISTIO_OUTPUT
-A PREROUTING -j ISTIO_PRERT
-A ISTIO_PRERT -s 169.254.7.127 -p tcp -m tcp -j ACCEPT
-A ISTIO_OUTPUT -d 169.254.7.127 -p tcp -m tcp -j ACCEPT
-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
COMMIT
";

/// The mark the tunnel puts on every socket it opens inside a pod (`SO_MARK`).
pub const TUNNEL_SOCKET_MARK: u32 = 0x539;
/// The connmark/fwmark that sends replies to the tunnel's transparent sockets.
pub const INPOD_FWMARK: u32 = 0x111;
/// Routing table holding `local 0.0.0.0/0 dev lo`.
pub const INPOD_ROUTE_TABLE: &str = "100";
/// Priority of `ip rule add fwmark 0x111/0xfff lookup 100`.
pub const INPOD_RULE_PREF: &str = "32764";
/// Source address of kubelet probes after the node's SNAT; never redirected.
pub const PROBE_SOURCE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 7, 127);

const CHAINS: [&str; 2] = ["ISTIO_PRERT", "ISTIO_OUTPUT"];

/// A rule appended to a built-in chain (`-A PREROUTING -j ISTIO_PRERT`), as (table, arguments
/// after `-A`).
fn builtin_jumps() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut table = "";
    let mut jumps = Vec::new();
    for line in INPOD_RULES_V4.lines() {
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

fn has_rule(ns: &Netns, table: &str, args: &[&str]) -> bool {
    let mut full = vec!["-t", table, "-C"];
    full.extend_from_slice(args);
    ns.exec("iptables", &full).is_ok()
}

/// Installs [`INPOD_RULES_V4`] plus the fwmark rule and the table-100 local route in `ns`.
/// Idempotent: applying twice leaves exactly one copy of everything.
pub fn apply_inpod_rules(ns: &Netns) -> Result<()> {
    let missing: Vec<(&str, Vec<&str>)> = builtin_jumps()
        .into_iter()
        .filter(|(table, args)| !has_rule(ns, table, args))
        .collect();
    let input: String = INPOD_RULES_V4
        .lines()
        .scan("", |table, line| {
            if let Some(t) = line.strip_prefix('*') {
                *table = t;
            }
            let keep = match line.strip_prefix("-A ") {
                Some(rule) if !rule.starts_with("ISTIO_") => {
                    let args: Vec<&str> = rule.split_whitespace().collect();
                    missing.iter().any(|(t, a)| t == table && *a == args)
                }
                _ => true,
            };
            Some(keep.then(|| format!("{line}\n")))
        })
        .flatten()
        .collect();
    cmd::run_with_stdin(
        "ip",
        &["netns", "exec", ns.name(), "iptables-restore", "--noflush"],
        &input,
    )?;
    let fwmark = format!("{INPOD_FWMARK:#x}/0xfff");
    if !ns
        .ip(&["rule", "show", "pref", INPOD_RULE_PREF])?
        .contains("lookup")
    {
        ns.ip(&[
            "rule",
            "add",
            "fwmark",
            &fwmark,
            "pref",
            INPOD_RULE_PREF,
            "lookup",
            INPOD_ROUTE_TABLE,
        ])?;
    }
    ns.ip(&[
        "route",
        "replace",
        "local",
        "0.0.0.0/0",
        "dev",
        "lo",
        "table",
        INPOD_ROUTE_TABLE,
    ])?;
    Ok(())
}

/// Removes everything [`apply_inpod_rules`] installed (missing pieces are not an error).
pub fn remove_inpod_rules(ns: &Netns) -> Result<()> {
    for (table, args) in builtin_jumps() {
        while has_rule(ns, table, &args) {
            let mut full = vec!["-t", table, "-D"];
            full.extend_from_slice(&args);
            ns.exec("iptables", &full)?;
        }
    }
    for table in ["mangle", "nat"] {
        for chain in CHAINS {
            if ns.exec("iptables", &["-t", table, "-F", chain]).is_ok() {
                ns.exec("iptables", &["-t", table, "-X", chain])?;
            }
        }
    }
    while ns
        .ip(&["rule", "show", "pref", INPOD_RULE_PREF])?
        .contains("lookup")
    {
        ns.ip(&["rule", "del", "pref", INPOD_RULE_PREF])?;
    }
    ns.ip(&["route", "flush", "table", INPOD_ROUTE_TABLE])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_from_builtin_chains_are_found_per_table() {
        let jumps = builtin_jumps();
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
        assert!(!INPOD_RULES_V4.contains("15053"));
        assert!(!INPOD_RULES_V4.contains("*raw"));
        assert_eq!(
            INPOD_RULES_V4
                .lines()
                .filter(|l| l.starts_with("-A "))
                .count(),
            12
        );
    }
}
