use super::*;

#[test]
fn render_is_the_contract_rule_with_one_jump() {
    assert_eq!(
        render(),
        "*nat\n:ISTIO_POSTRT - [0:0]\n-A POSTROUTING -j ISTIO_POSTRT\n\
         -A ISTIO_POSTRT -p tcp -m owner --socket-exists -m set --match-set \
         istio-inpod-probes-v4 dst -j SNAT --to-source 169.254.7.127\nCOMMIT\n"
    );
}

#[test]
fn parses_ipset_save_entries() {
    let text = "create istio-inpod-probes-v4 hash:ip family inet hashsize 1024 maxelem 65536 comment bucketsize 12 initval 0xf3ef2770\n\
                add istio-inpod-probes-v4 10.0.0.1 comment \"2c48913c-b29f-11e7-9350-020968147796\"\n\
                add istio-inpod-probes-v4 10.0.0.2\n";
    assert_eq!(
        parse_entries(text).unwrap(),
        vec![
            (
                "10.0.0.1".parse().unwrap(),
                "2c48913c-b29f-11e7-9350-020968147796".to_string()
            ),
            ("10.0.0.2".parse().unwrap(), String::new()),
        ]
    );
    assert!(matches!(
        parse_entries("add istio-inpod-probes-v4 nonsense\n"),
        Err(HostRulesError::BadEntry { .. })
    ));
    assert!(matches!(
        parse_entries("add istio-inpod-probes-v4 10.0.0.1 comment \"open\n"),
        Err(HostRulesError::BadEntry { .. })
    ));
}

#[test]
fn uids_that_cannot_be_comments_are_refused() {
    assert!(check_uid("2c48913c-b29f-11e7-9350-020968147796").is_ok());
    for uid in ["", "a\"b", "a\nb", &"x".repeat(256)] {
        assert!(
            matches!(check_uid(uid), Err(HostRulesError::BadUid { .. })),
            "{uid:?}"
        );
    }
}

#[test]
fn ipv6_is_refused_but_mapped_ipv4_is_fine() {
    assert!(matches!(
        ipv4("fd00::1".parse().unwrap()),
        Err(HostRulesError::NotIpv4 { .. })
    ));
    assert_eq!(
        ipv4("::ffff:10.0.0.1".parse().unwrap()).unwrap(),
        Ipv4Addr::new(10, 0, 0, 1)
    );
}
