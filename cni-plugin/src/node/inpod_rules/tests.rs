use super::*;

#[test]
fn default_render_is_the_contract_without_dns() {
    let text = render(&RuleOptions::default());
    assert_eq!(
        text,
        "*mangle
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
-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
COMMIT
"
    );
}

#[test]
fn dns_capture_adds_the_15053_rules_and_the_raw_table() {
    let text = render(&RuleOptions {
        dns_capture: true,
        bypass_inbound: false,
        ipv6: false,
    });
    assert!(text.contains(
        "-A ISTIO_OUTPUT ! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-ports 15053\n"
    ));
    assert!(text.contains(
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053\n"
    ));
    let raw = &text[text.find("*raw\n").expect("raw table")..];
    assert_eq!(
        raw,
        "*raw
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p udp -m mark --mark 0x539/0xfff -m udp --dport 53 -j CT --zone 1
-A ISTIO_PRERT -p udp -m mark ! --mark 0x539/0xfff -m udp --sport 53 -j CT --zone 1
COMMIT
"
    );
    // The DNS redirects sit before the catch-all 15001 redirect.
    assert!(text.find("--to-ports 15053").unwrap() < text.find("--to-ports 15001").unwrap());
}

#[test]
fn bypass_inbound_drops_only_the_inbound_path() {
    let text = render(&RuleOptions {
        dns_capture: false,
        bypass_inbound: true,
        ipv6: false,
    });
    assert!(!text.contains("-A ISTIO_PRERT "), "{text}");
    // The chains and jumps stay, like Istio's "ingress" golden file.
    assert!(text.contains("-A PREROUTING -j ISTIO_PRERT\n"));
    assert!(text.contains("--to-ports 15001"));
    assert!(text.contains("-d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT"));
}
