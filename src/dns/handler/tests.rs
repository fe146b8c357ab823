//! The handler on the store alone (no sockets): what is answered from the mesh, what goes
//! upstream, and what malformed input gets.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use super::Handler;
use crate::dns::origin::Arrival;
use crate::dns::Upstream;
use crate::metrics::Metrics;
use crate::socket::SocketFactory;
use crate::state::fixtures::{service, workload};
use crate::state::{NamespacedHostname, StateHandle, Store, StoreDelta};

const CLIENT: &str = "10.0.0.5:40000";

/// A datagram to the proxy (its flow is in no conntrack table: forwards use the fallback).
fn udp() -> Arrival {
    Arrival::Udp {
        local: "127.0.0.1:15053".parse().unwrap(),
    }
}

/// A TCP connection that was not redirected.
fn tcp() -> Arrival {
    Arrival::Tcp {
        local: "127.0.0.1:15053".parse().unwrap(),
        original: Err("not redirected".into()),
    }
}

fn handler() -> Handler {
    let mut store = Store::default();
    let mut web = service("web.shop.svc.cluster.local", "10.96.0.10");
    web.namespace = "shop".into();
    web.vips.push("fd00::10".parse().unwrap());
    let v4_only = service("v4.default.svc.cluster.local", "10.96.0.11");
    // Headless: no VIP; its endpoint's address answers.
    let mut headless = service("db.default.svc.cluster.local", "10.96.0.12");
    headless.vips.clear();
    let mut endpoint = workload("db-0", "10.0.1.7");
    endpoint.services.insert(
        NamespacedHostname {
            namespace: "default".into(),
            hostname: "db.default.svc.cluster.local".into(),
        },
        Default::default(),
    );
    // Known by hostname only, no address: the upstream decides.
    let mut external = service("api.example.com", "10.96.0.13");
    external.vips.clear();
    store.apply(StoreDelta {
        workloads: vec![endpoint],
        services: vec![web, v4_only, headless, external],
        ..Default::default()
    });
    Handler {
        state: StateHandle::new(store),
        namespace: Some("shop".into()),
        network: String::new(),
        cluster_domain: "cluster.local".into(),
        // Nothing listens here: a forward fails fast (connection refused) → SERVFAIL.
        upstream: Arc::new(Upstream::new(
            Ok(vec!["127.0.0.1:9".parse().unwrap()]),
            Duration::from_secs(2),
            8,
        )),
        sockets: SocketFactory::current(None),
        metrics: Arc::new(Metrics::new()),
    }
}

fn query(name: &str, rtype: RecordType) -> Vec<u8> {
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    q.to_vec().unwrap()
}

async fn ask(h: &Handler, packet: &[u8]) -> Option<Message> {
    let client: SocketAddr = CLIENT.parse().unwrap();
    h.handle(packet, client, &udp())
        .await
        .map(|bytes| Message::from_vec(&bytes).expect("the reply decodes"))
}

fn addresses(reply: &Message) -> Vec<IpAddr> {
    reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn fqdn_and_short_names_answer_the_vip_of_the_asked_family() {
    let h = handler();
    for name in [
        "web.shop.svc.cluster.local.",
        "web.",
        "web.shop.",
        "web.shop.svc.",
        "WEB.Shop.",
    ] {
        let packet = query(name, RecordType::A);
        let reply = ask(&h, &packet).await.unwrap();
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{name}"
        );
        assert_eq!(
            reply.metadata.id,
            Message::from_vec(&packet).unwrap().metadata.id
        );
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert!(reply.metadata.recursion_desired && reply.metadata.recursion_available);
        assert_eq!(
            addresses(&reply),
            vec!["10.96.0.10".parse::<IpAddr>().unwrap()],
            "{name}"
        );
        // The answer is for the name asked, as a stub resolver requires.
        assert_eq!(reply.answers[0].name.to_ascii(), name);
    }
    let reply = ask(&h, &query("web.", RecordType::AAAA)).await.unwrap();
    assert_eq!(
        addresses(&reply),
        vec!["fd00::10".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        h.metrics.dns_upstream_requests.get(),
        0,
        "nothing went upstream"
    );
}

#[tokio::test]
async fn a_mesh_name_without_the_asked_family_is_nodata_not_nxdomain() {
    let h = handler();
    let reply = ask(
        &h,
        &query("v4.default.svc.cluster.local.", RecordType::AAAA),
    )
    .await
    .unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
    assert_eq!(h.metrics.dns_upstream_requests.get(), 0);
}

#[tokio::test]
async fn a_headless_service_answers_its_endpoints() {
    let h = handler();
    let reply = ask(&h, &query("db.default.", RecordType::A)).await.unwrap();
    assert_eq!(
        addresses(&reply),
        vec!["10.0.1.7".parse::<IpAddr>().unwrap()]
    );
}

#[tokio::test]
async fn other_names_and_other_types_of_mesh_names_go_upstream() {
    let h = handler();
    let cases = [
        ("outside.example.org.", RecordType::A),
        // Known to the mesh by hostname only: the real DNS has its addresses.
        ("api.example.com.", RecordType::A),
        ("web.shop.svc.cluster.local.", RecordType::SRV),
        ("web.shop.svc.cluster.local.", RecordType::TXT),
        // Another namespace's `web` is not shop's.
        ("web.other.", RecordType::A),
    ];
    for (i, (name, rtype)) in cases.into_iter().enumerate() {
        let reply = ask(&h, &query(name, rtype)).await.unwrap();
        // The stand-in upstream refuses: SERVFAIL proves the query was forwarded.
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::ServFail,
            "{name} {rtype}"
        );
        assert_eq!(reply.queries.len(), 1);
        assert_eq!(h.metrics.dns_upstream_requests.get(), i as u64 + 1);
    }
    assert_eq!(h.metrics.dns_upstream_failures.get(), 5);
}

#[tokio::test]
async fn a_large_local_answer_is_truncated_to_the_client_size_over_udp_only() {
    let mut store = Store::default();
    let mut big = service("big.default.svc.cluster.local", "10.96.1.0");
    big.vips = (0..100u8)
        .map(|i| format!("10.96.1.{i}").parse().unwrap())
        .collect();
    store.apply(StoreDelta {
        services: vec![big],
        ..Default::default()
    });
    let h = Handler {
        state: StateHandle::new(store),
        ..handler()
    };
    let packet = query("big.default.svc.cluster.local.", RecordType::A);
    let client: SocketAddr = CLIENT.parse().unwrap();
    let udp = h.handle(&packet, client, &udp()).await.unwrap();
    assert!(udp.len() <= 512);
    let udp = Message::from_vec(&udp).unwrap();
    assert!(udp.metadata.truncation);
    let tcp = h.handle(&packet, client, &tcp()).await.unwrap();
    let tcp = Message::from_vec(&tcp).unwrap();
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 100);
    // With EDNS 4096 it fits whole over UDP too, and the reply carries OPT.
    let mut q = Message::from_vec(&packet).unwrap();
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    q.set_edns(edns);
    let reply = ask(&h, &q.to_vec().unwrap()).await.unwrap();
    assert!(
        !reply.metadata.truncation,
        "{} answers, {} bytes",
        reply.answers.len(),
        reply.to_vec().unwrap().len()
    );
    assert_eq!(reply.answers.len(), 100);
    assert!(reply.edns.is_some());
}

#[tokio::test]
async fn malformed_input_gets_formerr_or_nothing() {
    let h = handler();
    // Shorter than a header: dropped.
    assert!(ask(&h, &[1, 2, 3]).await.is_none());
    assert!(ask(&h, &[]).await.is_none());
    // A header claiming a question that is not there: FORMERR with the id.
    let header_only = [0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    let reply = ask(&h, &header_only).await.unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(reply.metadata.id, 0xabcd);
    // A label longer than 63 bytes (length byte 0x50 is a reserved label type).
    let mut bad_label = header_only.to_vec();
    bad_label.extend_from_slice(&[0x50, b'a', b'b', 0, 0, 1, 0, 1]);
    let reply = ask(&h, &bad_label).await.unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // A response is never answered (no reflection loops).
    let mut response = Message::from_vec(&query("web.", RecordType::A)).unwrap();
    response.metadata.message_type = MessageType::Response;
    assert!(ask(&h, &response.to_vec().unwrap()).await.is_none());
    // Random bytes: whatever comes back decodes, and nothing panics.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for len in 0..400usize {
        let bytes: Vec<u8> = (0..len % 80)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = ask(&h, &bytes).await;
    }
}
