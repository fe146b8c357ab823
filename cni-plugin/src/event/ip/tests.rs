//! Go's exact bytes both ways, the lenient forms, and the errors.

use std::net::{IpAddr, Ipv4Addr};

use serde_json::json;

use super::*;
use crate::event::PluginEvent;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn v4_entry() -> EventIp {
    EventIp {
        interface: Some(2),
        address: IpNet::cidr(ip("10.244.1.5"), 24).unwrap(),
        gateway: Some(ip("10.244.1.1")),
    }
}

fn v6_entry() -> EventIp {
    EventIp {
        interface: None,
        address: IpNet::cidr(ip("fd00:10:244::5"), 64).unwrap(),
        gateway: None,
    }
}

// What Go's json.Marshal writes for Istio's IPConfig: net.IP as text (nil: ""), net.IPMask
// as base64 of its 4 or 16 bytes, a nil *int as null.
const GO_V4: &str =
    r#"{"Interface":2,"Address":{"IP":"10.244.1.5","Mask":"////AA=="},"Gateway":"10.244.1.1"}"#;
const GO_V6: &str = r#"{"Interface":null,"Address":{"IP":"fd00:10:244::5","Mask":"//////////8AAAAAAAAAAA=="},"Gateway":""}"#;

#[test]
fn go_bytes_round_trip() {
    for (entry, go) in [(v4_entry(), GO_V4), (v6_entry(), GO_V6)] {
        assert_eq!(serde_json::to_string(&entry).unwrap(), go);
        assert_eq!(serde_json::from_str::<EventIp>(go).unwrap(), entry);
    }
}

#[test]
fn whole_event_is_gos_bytes() {
    let event = PluginEvent {
        netns: "/var/run/netns/cni-1".into(),
        pod_name: "web".into(),
        pod_namespace: "app".into(),
        ips: vec![v4_entry(), v6_entry()],
    };
    let go = format!(
        r#"{{"Netns":"/var/run/netns/cni-1","PodName":"web","PodNamespace":"app","IPs":[{GO_V4},{GO_V6}]}}"#
    );
    assert_eq!(serde_json::to_string(&event).unwrap(), go);
    assert_eq!(serde_json::from_str::<PluginEvent>(&go).unwrap(), event);
    assert_eq!(
        event.addresses().unwrap(),
        vec![ip("10.244.1.5"), ip("fd00:10:244::5")]
    );
}

#[test]
fn no_ips_is_gos_nil_slice() {
    let event = PluginEvent {
        netns: "/n".into(),
        pod_name: "p".into(),
        pod_namespace: "ns".into(),
        ips: Vec::new(),
    };
    let text = serde_json::to_string(&event).unwrap();
    assert_eq!(
        text,
        r#"{"Netns":"/n","PodName":"p","PodNamespace":"ns","IPs":null}"#
    );
    for body in [
        text.as_str(),
        r#"{"Netns":"/n","PodName":"p","PodNamespace":"ns","IPs":[]}"#,
        r#"{"Netns":"/n","PodName":"p","PodNamespace":"ns"}"#,
    ] {
        assert_eq!(serde_json::from_str::<PluginEvent>(body).unwrap(), event);
    }
}

#[test]
fn go_zero_values_and_nil_mask_decode() {
    // Istio's own plugin test entry: an address without a mask; nothing else set.
    let entry: EventIp = serde_json::from_str(
        r#"{"Interface":0,"Address":{"IP":"10.0.0.1","Mask":null},"Gateway":"8.9.9.9"}"#,
    )
    .unwrap();
    assert_eq!(
        entry,
        EventIp {
            interface: Some(0),
            address: IpNet::address_only(ip("10.0.0.1")),
            gateway: Some(ip("8.9.9.9")),
        }
    );
    let empty: EventIp = serde_json::from_str("{}").unwrap();
    assert_eq!(
        empty,
        EventIp {
            interface: None,
            address: IpNet::default(),
            gateway: None
        }
    );
    // Go's IPNet for an IPv4-mapped CIDR: the IP prints as IPv4, the mask keeps 16 bytes.
    let mapped: EventIp =
        serde_json::from_str(r#"{"Address":{"IP":"10.0.0.7","Mask":"////////////////////AA=="}}"#)
            .unwrap();
    assert_eq!(mapped.address.prefix_len(), Ok(Some(24)));
    let mapped_v6 = EventIp {
        interface: None,
        address: IpNet {
            ip: Some(ip("::ffff:10.0.0.7")),
            mask: vec![],
        },
        gateway: None,
    };
    assert_eq!(
        serde_json::to_value(&mapped_v6).unwrap()["Address"]["IP"],
        "10.0.0.7"
    );
}

#[test]
fn bare_strings_are_accepted() {
    let event: PluginEvent = serde_json::from_value(json!({
        "Netns": "/n", "PodName": "p", "PodNamespace": "ns",
        "IPs": ["10.0.0.5", "10.0.0.6/24", "fd00::5/128"]
    }))
    .unwrap();
    assert_eq!(event.ips[0].address, IpNet::address_only(ip("10.0.0.5")));
    assert_eq!(event.ips[1].address.mask, vec![255, 255, 255, 0]);
    assert_eq!(event.ips[2].address.prefix_len(), Ok(Some(128)));
    assert_eq!(
        event.addresses().unwrap(),
        vec![ip("10.0.0.5"), ip("10.0.0.6"), ip("fd00::5")]
    );
    // Re-sent, they take Istio's shape.
    assert_eq!(
        serde_json::to_value(&event.ips[1]).unwrap(),
        json!({"Interface": null, "Address": {"IP": "10.0.0.6", "Mask": "////AA=="}, "Gateway": ""})
    );
}

#[test]
fn older_istio_netns_under_cmd_add_event() {
    let event: PluginEvent = serde_json::from_value(json!({
        "CmdAddEvent": {"ContainerID": "c1", "Netns": "/var/run/netns/old", "IfName": "eth0",
                        "Args": "K8S_POD_NAME=p", "Path": "/opt/cni/bin", "StdinData": "e30="},
        "PodName": "p", "PodNamespace": "ns", "IPs": [GO_V4.parse::<serde_json::Value>().unwrap()]
    }))
    .unwrap();
    assert_eq!(event.netns, "/var/run/netns/old");
    assert_eq!(event.ips, vec![v4_entry()]);
}

#[test]
fn garbage_fails_the_decode_naming_the_entry() {
    let cases = [
        (
            json!("nonsense"),
            "IPs[1]: \"nonsense\" is neither an IP address",
        ),
        (
            json!("10.0.0.5/33"),
            "IPs[1]: prefix length 33 is longer than the 32 bits",
        ),
        (json!("10.0.0.5/+8"), "IPs[1]: \"10.0.0.5/+8\" is neither"),
        (json!(42), "IPs[1]: expected an object"),
        (
            json!({"Interface": "eth0"}),
            "IPs[1]: Interface \"eth0\" is not an integer",
        ),
        (
            json!({"Address": "10.0.0.5/24"}),
            "IPs[1]: Address \"10.0.0.5/24\" is not an object",
        ),
        (
            json!({"Address": {"IP": "10.0.0.256"}}),
            "IPs[1]: Address.IP \"10.0.0.256\" is not an IP address",
        ),
        (
            json!({"Address": {"IP": "10.0.0.5", "Mask": "*"}}),
            "IPs[1]: Address.Mask \"*\" is not base64",
        ),
        (
            json!({"Address": {"IP": "10.0.0.5", "Mask": [255]}}),
            "IPs[1]: Address.Mask [255] is not a base64 string",
        ),
        (
            json!({"Gateway": "gw"}),
            "IPs[1]: Gateway \"gw\" is not an IP address",
        ),
    ];
    for (entry, want) in cases {
        let body = json!({"Netns": "/n", "PodName": "p", "PodNamespace": "ns",
                          "IPs": [GO_V4.parse::<serde_json::Value>().unwrap(), entry]});
        let err = serde_json::from_value::<PluginEvent>(body).unwrap_err();
        assert!(err.to_string().contains(want), "{err} (want {want})");
    }
}

#[test]
fn unusable_entries_are_refused_by_addresses() {
    let with = |address: IpNet| PluginEvent {
        netns: "/n".into(),
        pod_name: "p".into(),
        pod_namespace: "ns".into(),
        ips: vec![
            v4_entry(),
            EventIp {
                interface: Some(2),
                address,
                gateway: None,
            },
        ],
    };
    let v4 = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)));
    let cases = [
        (IpNet::default(), "IPs[1]: Address.IP is empty"),
        (
            // A 16-byte mask for IPv4 must start with 96 ones (Go reads its last 4 bytes).
            IpNet {
                ip: v4,
                mask: vec![0; 16],
            },
            "IPs[1]: Address.Mask \"AAAAAAAAAAAAAAAAAAAAAA==\" (16 bytes) does not fit 10.0.0.5",
        ),
        (
            IpNet {
                ip: Some(ip("fd00::5")),
                mask: vec![255; 4],
            },
            "IPs[1]: Address.Mask \"/////w==\" (4 bytes) does not fit fd00::5",
        ),
        (
            IpNet {
                ip: v4,
                mask: vec![255, 0, 255, 0],
            },
            "IPs[1]: Address.Mask \"/wD/AA==\" is not a prefix mask",
        ),
        (
            IpNet {
                ip: v4,
                mask: vec![255, 255, 255, 0, 0],
            },
            "(5 bytes) does not fit 10.0.0.5",
        ),
    ];
    for (address, want) in cases {
        let err = with(address).addresses().unwrap_err();
        assert_eq!(err.index, 1);
        assert!(err.to_string().contains(want), "{err} (want {want})");
    }
}

#[test]
fn masks_and_prefixes() {
    for (prefix, mask) in [
        (0u8, vec![0u8, 0, 0, 0]),
        (20, vec![255, 255, 240, 0]),
        (32, vec![255; 4]),
    ] {
        let net = IpNet::cidr(ip("10.0.0.5"), prefix).unwrap();
        assert_eq!(net.mask, mask);
        assert_eq!(net.prefix_len(), Ok(Some(prefix)));
        assert_eq!(net.to_string(), format!("10.0.0.5/{prefix}"));
    }
    let v6 = IpNet::cidr(ip("fd00::5"), 65).unwrap();
    assert_eq!(v6.mask[..9], [255, 255, 255, 255, 255, 255, 255, 255, 128]);
    assert_eq!(v6.prefix_len(), Ok(Some(65)));
    assert!(IpNet::cidr(ip("fd00::5"), 129).is_err());
    let long_v4 = IpNet {
        ip: Some(ip("10.0.0.5")),
        mask: vec![255; 16],
    };
    assert_eq!(long_v4.prefix_len(), Ok(Some(32)));
    assert_eq!(IpNet::address_only(ip("10.0.0.5")).to_string(), "10.0.0.5");
    assert_eq!(IpNet::default().to_string(), "(no IP)");
}

#[test]
fn mapped_addresses_come_out_unmapped() {
    let event = PluginEvent {
        netns: "/n".into(),
        pod_name: "p".into(),
        pod_namespace: "ns".into(),
        ips: vec![EventIp {
            interface: None,
            address: IpNet::cidr(ip("::ffff:10.0.0.7"), 120).unwrap(),
            gateway: None,
        }],
    };
    assert_eq!(event.addresses().unwrap(), vec![ip("10.0.0.7")]);
}
