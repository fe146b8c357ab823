//! The in-pod policy routing that returns marked traffic to the tunnel's sockets:
//! `ip rule add fwmark 0x111/0xfff pref 32764 lookup 100` and
//! `ip route replace local 0.0.0.0/0 dev lo table 100` (Istio `cni/pkg/iptables/iptables_linux.go`:
//! rule priority 32764, table `RouteTableInbound` = 100, route type local, scope host, dev lo).
//! With IPv6 on, the same rule for `ip -6` and `local ::/0 dev lo table 100` (Istio adds the v6
//! route only while `lo` has IPv6: `/proc/sys/net/ipv6/conf/lo/disable_ipv6` = 0).
//!
//! Done over rtnetlink on a small current-thread runtime. Every function must be called on a
//! thread that is inside the pod's netns (the netlink socket is opened in the caller's netns).
//! All of them list first and act on what they find, so they are idempotent and never depend on
//! an errno meaning "already there".

use std::net::{Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::route::{
    RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use super::family::IpFamily;

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

pub(crate) fn netlink(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> RoutingError {
    move |source| RoutingError::Netlink { what, source }
}

/// Runs `f` with a netlink handle opened in the calling thread's netns.
pub(crate) fn with_handle<T, F>(f: impl FnOnce(Handle) -> F) -> Result<T, RoutingError>
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

/// Adds the rule and (when `route`) the route of `family` when missing, and drops duplicate
/// rules.
pub(crate) fn ensure(family: IpFamily, route: bool) -> Result<(), RoutingError> {
    let lo = nix::net::if_::if_nametoindex("lo").map_err(RoutingError::Loopback)?;
    with_handle(|handle| async move {
        // A rule without the lookup action (`ip rule` prints it as `lookup 100 none`) matches
        // but routes nothing: replies would leave the pod instead of reaching the tunnel.
        let (good, bad): (Vec<_>, Vec<_>) = our_rules(&handle, family)
            .await?
            .into_iter()
            .partition(|r| r.header.action == RuleAction::ToTable);
        if good.is_empty() {
            // Everything but the family on the untyped request; `v4()`/`v6()` only set it.
            let mut add = handle
                .rule()
                .add()
                .fw_mark(TPROXY_MARK)
                .priority(RULE_PRIORITY)
                .table_id(TABLE)
                .action(RuleAction::ToTable);
            add.message_mut()
                .attributes
                .push(RuleAttribute::FwMask(TPROXY_MASK));
            let added = match family {
                IpFamily::V4 => add.v4().execute().await,
                IpFamily::V6 => add.v6().execute().await,
            };
            added.map_err(netlink("adding the fwmark ip rule"))?;
        }
        for extra in good.into_iter().skip(1).chain(bad) {
            handle
                .rule()
                .del(extra)
                .execute()
                .await
                .map_err(netlink("deleting a duplicate or inert fwmark ip rule"))?;
        }
        if !route {
            return Ok(());
        }
        handle
            .route()
            .add(local_default_route(family, lo))
            .replace()
            .execute()
            .await
            .map_err(netlink("replacing the local default route in table 100"))
    })
}

/// Deletes every copy of the rule and the table-100 local default route of `family`; OK when
/// absent.
pub(crate) fn remove(family: IpFamily) -> Result<(), RoutingError> {
    with_handle(|handle| async move {
        for rule in our_rules(&handle, family).await? {
            handle
                .rule()
                .del(rule)
                .execute()
                .await
                .map_err(netlink("deleting the fwmark ip rule"))?;
        }
        for route in our_routes(&handle, family).await? {
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

/// (rule present, route present) for `family`.
pub(crate) fn present(family: IpFamily) -> Result<(bool, bool), RoutingError> {
    with_handle(|handle| async move {
        let rules = our_rules(&handle, family).await?;
        let routes = our_routes(&handle, family).await?;
        let working = rules.iter().any(|r| r.header.action == RuleAction::ToTable);
        Ok((working, !routes.is_empty()))
    })
}

fn local_default_route(family: IpFamily, lo: u32) -> RouteMessage {
    // What `ip route replace` sets by default: protocol boot.
    match family {
        IpFamily::V4 => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .output_interface(lo)
            .table_id(TABLE)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .protocol(RouteProtocol::Boot)
            .build(),
        IpFamily::V6 => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
            .output_interface(lo)
            .table_id(TABLE)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .protocol(RouteProtocol::Boot)
            .build(),
    }
}

async fn our_rules(handle: &Handle, family: IpFamily) -> Result<Vec<RuleMessage>, RoutingError> {
    rules_where(handle, family, is_our_rule).await
}

/// The `family` policy rules of the netns `handle` works in that `keep` selects: what the agent
/// put there is found by its priority, action and marks, never deleted by a guess.
pub(crate) async fn rules_where(
    handle: &Handle,
    family: IpFamily,
    keep: impl Fn(&RuleMessage) -> bool,
) -> Result<Vec<RuleMessage>, RoutingError> {
    let version = match family {
        IpFamily::V4 => IpVersion::V4,
        IpFamily::V6 => IpVersion::V6,
    };
    let all: Vec<RuleMessage> = handle
        .rule()
        .get(version)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing ip rules"))?;
    Ok(all.into_iter().filter(|r| keep(r)).collect())
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

async fn our_routes(handle: &Handle, family: IpFamily) -> Result<Vec<RouteMessage>, RoutingError> {
    // Without strict checking the kernel ignores the filter and dumps every table (of the
    // family the message names).
    let filter = match family {
        IpFamily::V4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
        IpFamily::V6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
    };
    let all: Vec<RouteMessage> = handle
        .route()
        .get(filter)
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
