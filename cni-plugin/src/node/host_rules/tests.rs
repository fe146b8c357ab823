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
fn render_v6_uses_the_v6_set_and_source() {
    assert_eq!(
        render_v6(),
        "*nat\n:ISTIO_POSTRT - [0:0]\n-A POSTROUTING -j ISTIO_POSTRT\n\
         -A ISTIO_POSTRT -p tcp -m owner --socket-exists -m set --match-set \
         istio-inpod-probes-v6 dst -j SNAT --to-source \
         fd16:9254:7127:1337:ffff:ffff:ffff:ffff\nCOMMIT\n"
    );
}

#[test]
fn parses_ipset_save_entries() {
    let text = "create istio-inpod-probes-v4 hash:ip family inet hashsize 1024 maxelem 65536 comment bucketsize 12 initval 0xf3ef2770\n\
                add istio-inpod-probes-v4 10.0.0.1 comment \"2c48913c-b29f-11e7-9350-020968147796\"\n\
                add istio-inpod-probes-v4 10.0.0.2\n";
    assert_eq!(
        parse_entries(PROBE_IPSET, text).unwrap(),
        vec![
            (
                "10.0.0.1".parse().unwrap(),
                "2c48913c-b29f-11e7-9350-020968147796".to_string()
            ),
            ("10.0.0.2".parse().unwrap(), String::new()),
        ]
    );
    assert!(matches!(
        parse_entries(PROBE_IPSET, "add istio-inpod-probes-v4 nonsense\n"),
        Err(HostRulesError::BadEntry { .. })
    ));
    assert!(matches!(
        parse_entries(
            PROBE_IPSET,
            "add istio-inpod-probes-v4 10.0.0.1 comment \"open\n"
        ),
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
fn ipv6_is_refused_with_ipv6_off_and_mapped_ipv4_is_ipv4() {
    let snat = |ipv6| HostProbeSnat {
        tools: Tools::default(),
        host: None,
        ipv6,
    };
    assert!(matches!(
        snat(false).family_of("fd00::1".parse().unwrap()),
        Err(HostRulesError::Ipv6Off { .. })
    ));
    assert_eq!(
        snat(true).family_of("fd00::1".parse().unwrap()).unwrap(),
        (IpFamily::V6, "fd00::1".parse().unwrap())
    );
    assert_eq!(
        snat(false)
            .family_of("::ffff:10.0.0.1".parse().unwrap())
            .unwrap(),
        (IpFamily::V4, "10.0.0.1".parse().unwrap())
    );
}
