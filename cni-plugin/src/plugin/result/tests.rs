use super::*;
use serde_json::json;

fn bridge_v1() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "br0", "mac": "aa:bb:cc:dd:ee:01"},
            {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
            {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/netns/x"}
        ],
        "ips": [
            {"interface": 2, "address": "10.1.0.5/24", "gateway": "10.1.0.1"},
            {"interface": 2, "address": "fd00::5/64"}
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {"nameservers": ["10.1.0.1"]}
    })
}

fn bridge_v04() -> Value {
    json!({
        "cniVersion": "0.4.0",
        "interfaces": [
            {"name": "br0", "mac": "aa:bb:cc:dd:ee:01"},
            {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
            {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/netns/x"}
        ],
        "ips": [
            {"version": "4", "interface": 2, "address": "10.1.0.5/24", "gateway": "10.1.0.1"},
            {"version": "6", "interface": 2, "address": "fd00::5/64"}
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {"nameservers": ["10.1.0.1"]}
    })
}

#[test]
fn same_version_is_unchanged() {
    assert_eq!(convert(&bridge_v1(), "1.0.0").unwrap(), bridge_v1());
    assert_eq!(convert(&bridge_v04(), "0.4.0").unwrap(), bridge_v04());
}

#[test]
fn v1_down_to_v04_adds_ip_versions() {
    assert_eq!(convert(&bridge_v1(), "0.4.0").unwrap(), bridge_v04());
    let mut v031 = bridge_v04();
    v031["cniVersion"] = json!("0.3.1");
    assert_eq!(convert(&bridge_v1(), "0.3.1").unwrap(), v031);
}

#[test]
fn v04_up_to_v1_drops_ip_versions() {
    assert_eq!(convert(&bridge_v04(), "1.0.0").unwrap(), bridge_v1());
    let mut v11 = bridge_v1();
    v11["cniVersion"] = json!("1.1.0");
    assert_eq!(convert(&bridge_v04(), "1.1.0").unwrap(), v11);
}

#[test]
fn v11_fields_survive_to_v10_but_not_to_v04() {
    let mut v11 = bridge_v1();
    v11["cniVersion"] = json!("1.1.0");
    v11["interfaces"][2]["mtu"] = json!(1400);
    v11["routes"][0]["table"] = json!(100);
    let v10 = convert(&v11, "1.0.0").unwrap();
    assert_eq!(v10["interfaces"][2]["mtu"], json!(1400));
    assert_eq!(convert(&v11, "0.4.0").unwrap(), bridge_v04());
}

#[test]
fn missing_cni_version_means_the_configs() {
    let mut prev = bridge_v04();
    prev.as_object_mut().unwrap().shift_remove("cniVersion");
    assert_eq!(convert(&prev, "0.4.0").unwrap(), bridge_v04());
}

#[test]
fn cni_version_comes_first_and_unknown_fields_stay() {
    let prev = json!({"ips": [], "custom": {"a": 1}, "cniVersion": "1.0.0"});
    let out = convert(&prev, "1.0.0").unwrap();
    assert_eq!(
        serde_json::to_string(&out).unwrap(),
        r#"{"cniVersion":"1.0.0","ips":[],"custom":{"a":1}}"#
    );
}

#[test]
fn bad_results_are_rejected() {
    assert_eq!(convert(&json!([]), "1.0.0"), Err(ResultError::NotAnObject));
    assert_eq!(
        convert(&json!({"cniVersion": "0.2.0", "ip4": {}}), "1.0.0"),
        Err(ResultError::UnsupportedVersion("0.2.0".into()))
    );
    assert!(matches!(
        convert(&json!({"cniVersion": 4}), "1.0.0"),
        Err(ResultError::UnsupportedVersion(_))
    ));
    assert_eq!(
        convert(&json!({"ips": {}}), "1.0.0"),
        Err(ResultError::NotAList { field: "ips" })
    );
    for address in [
        "10.0.0.1",
        "10.0.0.1/33",
        "nonsense/8",
        "fd00::1/129",
        "10.0.0.1/+8",
    ] {
        assert_eq!(
            convert(&json!({"ips": [{"address": address}]}), "0.4.0"),
            Err(ResultError::BadAddress {
                index: 0,
                address: address.into()
            }),
            "{address}"
        );
    }
}

#[test]
fn event_ips_keep_interface_prefix_and_gateway() {
    let ips = event_ips(&bridge_v1()).unwrap();
    assert_eq!(
        ips,
        vec![
            EventIp {
                interface: Some(2),
                address: IpNet::cidr("10.1.0.5".parse().unwrap(), 24).unwrap(),
                gateway: Some("10.1.0.1".parse().unwrap()),
            },
            EventIp {
                interface: Some(2),
                address: IpNet::cidr("fd00::5".parse().unwrap(), 64).unwrap(),
                gateway: None,
            },
        ]
    );
    assert_eq!(event_ips(&bridge_v04()).unwrap(), ips);
    assert!(event_ips(&empty("1.0.0")).unwrap().is_empty());
    let bare = json!({"ips": [{"address": "10.1.0.5/32"}]});
    assert_eq!(event_ips(&bare).unwrap()[0].interface, None);
}

#[test]
fn event_ips_refuse_bad_gateways_and_interfaces() {
    assert_eq!(
        event_ips(&json!({"ips": [{"address": "10.1.0.5/24", "gateway": "gw"}]})),
        Err(ResultError::BadGateway {
            index: 0,
            gateway: "\"gw\"".into()
        })
    );
    for interface in [json!(-1), json!("eth0"), json!(1.5)] {
        assert_eq!(
            event_ips(&json!({"ips": [{"address": "10.1.0.5/24", "interface": interface}]})),
            Err(ResultError::BadInterface {
                index: 0,
                interface: interface.to_string()
            })
        );
    }
}

#[test]
fn empty_result() {
    assert_eq!(
        serde_json::to_string(&empty("0.4.0")).unwrap(),
        r#"{"cniVersion":"0.4.0"}"#
    );
}
