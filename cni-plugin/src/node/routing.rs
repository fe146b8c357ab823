//! The in-pod policy routing that returns marked traffic to the tunnel's sockets:
//! `ip rule add fwmark 0x111/0xfff pref 32764 lookup 100` and
//! `ip route replace local 0.0.0.0/0 dev lo table 100` (Istio `cni/pkg/iptables/iptables_linux.go`:
//! rule priority 32764, table `RouteTableInbound` = 100, route type local, scope host, dev lo).
//!
//! Done over rtnetlink on a small current-thread runtime. Every function must be called on a
//! thread that is inside the pod's netns (the netlink socket is opened in the caller's netns).
//! All of them list first and act on what they find, so they are idempotent and never depend on
//! an errno meaning "already there".

use std::net::Ipv4Addr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::route::{
    RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

/// Marks set (via CONNMARK restore) on the tunnel's in-pod traffic; Istio `InpodTProxyMark`.
pub(crate) const TPROXY_MARK: u32 = 0x111;
pub(crate) const TPROXY_MASK: u32 = 0xfff;
/// Istio `RouteTableInbound`.
pub(crate) const TABLE: u32 = 100;
pub(crate) const RULE_PRIORITY: u32 = 32764;

/// What failed while programming the rule or route.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("starting the netlink runtime: {0}")]
    Runtime(std::io::Error),
    #[error("opening a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("looking up the loopback interface: {0}")]
    Loopback(nix::Error),
    #[error("{what}: {source}")]
    Netlink {
        what: &'static str,
        source: rtnetlink::Error,
    },
}

fn netlink(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> RoutingError {
    move |source| RoutingError::Netlink { what, source }
}

/// Runs `f` with a netlink handle opened in the calling thread's netns.
fn with_handle<T, F>(f: impl FnOnce(Handle) -> F) -> Result<T, RoutingError>
where
    F: std::future::Future<Output = Result<T, RoutingError>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(RoutingError::Runtime)?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(RoutingError::Socket)?;
        let conn = tokio::spawn(conn);
        let result = f(handle).await;
        conn.abort();
        result
    })
}

/// Adds the rule and the route when missing (and drops duplicate rules).
pub(crate) fn ensure() -> Result<(), RoutingError> {
    let lo = nix::net::if_::if_nametoindex("lo").map_err(RoutingError::Loopback)?;
    with_handle(|handle| async move {
        // A rule without the lookup action (`ip rule` prints it as `lookup 100 none`) matches
        // but routes nothing: replies would leave the pod instead of reaching the tunnel.
        let (good, bad): (Vec<_>, Vec<_>) = our_rules(&handle)
            .await?
            .into_iter()
            .partition(|r| r.header.action == RuleAction::ToTable);
        if good.is_empty() {
            let mut add = handle
                .rule()
                .add()
                .v4()
                .fw_mark(TPROXY_MARK)
                .priority(RULE_PRIORITY)
                .table_id(TABLE)
                .action(RuleAction::ToTable);
            add.message_mut()
                .attributes
                .push(RuleAttribute::FwMask(TPROXY_MASK));
            add.execute()
                .await
                .map_err(netlink("adding the fwmark ip rule"))?;
        }
        for extra in good.into_iter().skip(1).chain(bad) {
            handle
                .rule()
                .del(extra)
                .execute()
                .await
                .map_err(netlink("deleting a duplicate or inert fwmark ip rule"))?;
        }
        handle
            .route()
            .add(local_default_route(lo))
            .replace()
            .execute()
            .await
            .map_err(netlink("replacing the local default route in table 100"))
    })
}

/// Deletes every copy of the rule and the table-100 local default route; OK when absent.
pub(crate) fn remove() -> Result<(), RoutingError> {
    with_handle(|handle| async move {
        for rule in our_rules(&handle).await? {
            handle
                .rule()
                .del(rule)
                .execute()
                .await
                .map_err(netlink("deleting the fwmark ip rule"))?;
        }
        for route in our_routes(&handle).await? {
            handle
                .route()
                .del(route)
                .execute()
                .await
                .map_err(netlink("deleting the local default route in table 100"))?;
        }
        Ok(())
    })
}

/// (rule present, route present).
pub(crate) fn present() -> Result<(bool, bool), RoutingError> {
    with_handle(|handle| async move {
        let rules = our_rules(&handle).await?;
        let routes = our_routes(&handle).await?;
        let working = rules.iter().any(|r| r.header.action == RuleAction::ToTable);
        Ok((working, !routes.is_empty()))
    })
}

fn local_default_route(lo: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
        .output_interface(lo)
        .table_id(TABLE)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        // What `ip route replace` sets by default.
        .protocol(RouteProtocol::Boot)
        .build()
}

async fn our_rules(handle: &Handle) -> Result<Vec<RuleMessage>, RoutingError> {
    let all: Vec<RuleMessage> = handle
        .rule()
        .get(IpVersion::V4)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing ip rules"))?;
    Ok(all.into_iter().filter(is_our_rule).collect())
}

fn is_our_rule(rule: &RuleMessage) -> bool {
    let mut table = u32::from(rule.header.table);
    let (mut mark, mut mask, mut priority) = (None, None, None);
    for attr in &rule.attributes {
        match attr {
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::FwMark(m) => mark = Some(*m),
            RuleAttribute::FwMask(m) => mask = Some(*m),
            RuleAttribute::Priority(p) => priority = Some(*p),
            _ => {}
        }
    }
    table == TABLE
        && mark == Some(TPROXY_MARK)
        && mask == Some(TPROXY_MASK)
        && priority == Some(RULE_PRIORITY)
}

async fn our_routes(handle: &Handle) -> Result<Vec<RouteMessage>, RoutingError> {
    // Without strict checking the kernel ignores the filter and dumps every table.
    let all: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing routes"))?;
    Ok(all.into_iter().filter(is_our_route).collect())
}

fn is_our_route(route: &RouteMessage) -> bool {
    let mut table = u32::from(route.header.table);
    for attr in &route.attributes {
        if let RouteAttribute::Table(t) = attr {
            table = *t;
        }
    }
    table == TABLE
        && route.header.kind == RouteType::Local
        && route.header.destination_prefix_length == 0
}
