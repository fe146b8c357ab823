//! The fail-closed block: what keeps an enrolled pod's traffic in when its iptables rules are
//! gone and cannot be written again (a broken `iptables-restore`, a full xtables lock, a
//! kernel module missing after an upgrade). It does not use iptables at all, only two policy
//! routing rules in the pod's netns, so it works whenever netlink does:
//!
//! - `pref 1 fwmark 0x111/0xfff lookup 100`: the tunnel's inbound replies (the connmark the
//!   in-pod rules restore) still reach its sockets through table 100;
//! - `pref 2 not fwmark 0x539/0xfff prohibit`: every other packet the pod sends that the
//!   `local` table (pref 0: loopback and the pod's own addresses) did not claim is refused
//!   (`EACCES` for the sender), unless it comes from the tunnel's own sockets (mark 0x539).
//!
//! So the app cannot reach anything outside the pod, and cannot complete inbound connections
//! either (its SYN-ACKs are refused), while the tunnel keeps its HBONE listener and its
//! connections. Installed by the reconcile pass when the rules are found broken, removed by it
//! once they are back; [`inpod_rules::remove`](super::inpod_rules::remove) drops it too when
//! a pod leaves the mesh.
//!
//! Both families are blocked whenever the netns has IPv6, whatever `AMBIENT_IPV6` says: the
//! block only exists while something is wrong, and then nothing should leave the pod.

use nodetunnel_base::netns::{NetnsError, NetnsHandle};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use rtnetlink::Handle;

use super::family::IpFamily;
use super::inpod_rules::{v6_support, V6Support};
use super::routing::{self, netlink, RoutingError, TABLE, TPROXY_MARK, TPROXY_MASK};

/// The tunnel's socket mark (Istio `InpodMark`), the one the block lets through.
pub(crate) const TUNNEL_MARK: u32 = 0x539;
const TUNNEL_MASK: u32 = 0xfff;
/// Right after the `local` table (pref 0), before anything a CNI or an admin may add.
pub const PASS_PRIORITY: u32 = 1;
pub const BLOCK_PRIORITY: u32 = 2;

/// What failed installing, lifting or looking at the block.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("the fail-closed ip rules ({family:?}) in netns {netns}: {source}")]
    Routing {
        netns: String,
        family: IpFamily,
        source: RoutingError,
    },
}

/// Adds both rules of every family the netns has, where missing. Idempotent.
pub fn install(netns: &NetnsHandle) -> Result<(), BlockError> {
    for_families(netns, |family| {
        routing::with_handle(|handle| async move {
            let found = ours(&handle, family).await?;
            if !found.iter().any(is_pass) {
                let mut add = handle
                    .rule()
                    .add()
                    .fw_mark(TPROXY_MARK)
                    .priority(PASS_PRIORITY)
                    .table_id(TABLE)
                    .action(RuleAction::ToTable);
                add.message_mut()
                    .attributes
                    .push(RuleAttribute::FwMask(TPROXY_MASK));
                execute(add, family)
                    .await
                    .map_err(netlink("adding the fail-closed pass rule"))?;
            }
            if !found.iter().any(is_block) {
                let mut add = handle
                    .rule()
                    .add()
                    .fw_mark(TUNNEL_MARK)
                    .priority(BLOCK_PRIORITY)
                    .action(RuleAction::Prohibit);
                let message = add.message_mut();
                message.attributes.push(RuleAttribute::FwMask(TUNNEL_MASK));
                message.header.flags |= RuleFlags::Invert;
                // No table: the action is the verdict (`ip rule` leaves it unspecified too).
                message.header.table = 0;
                execute(add, family)
                    .await
                    .map_err(netlink("adding the fail-closed prohibit rule"))?;
            }
            Ok(())
        })
    })
    .map(|_| ())
}

/// Removes the rules of both families; `true` if there were any. Idempotent.
pub fn lift(netns: &NetnsHandle) -> Result<bool, BlockError> {
    let removed = for_families(netns, |family| {
        routing::with_handle(|handle| async move {
            let found = ours(&handle, family).await?;
            let any = !found.is_empty();
            for rule in found {
                handle
                    .rule()
                    .del(rule)
                    .execute()
                    .await
                    .map_err(netlink("deleting a fail-closed rule"))?;
            }
            Ok(any)
        })
    })?;
    Ok(removed.into_iter().any(|r| r))
}

/// Whether the prohibit rule is in place (for IPv4; IPv6 is installed with it).
pub fn installed(netns: &NetnsHandle) -> Result<bool, BlockError> {
    let path = netns.path().display().to_string();
    netns
        .run(|| {
            routing::with_handle(|handle| async move {
                Ok(ours(&handle, IpFamily::V4).await?.iter().any(is_block))
            })
        })?
        .map_err(|source| BlockError::Routing {
            netns: path,
            family: IpFamily::V4,
            source,
        })
}

/// Runs `f` for IPv4 and, when the netns has IPv6, IPv6, inside `netns`.
fn for_families<T: Send>(
    netns: &NetnsHandle,
    f: impl Fn(IpFamily) -> Result<T, RoutingError> + Send + Sync,
) -> Result<Vec<T>, BlockError> {
    let path = netns.path().display().to_string();
    netns.run(|| {
        let mut families = vec![IpFamily::V4];
        if v6_support() != V6Support::None {
            families.push(IpFamily::V6);
        }
        families
            .into_iter()
            .map(|family| {
                f(family).map_err(|source| BlockError::Routing {
                    netns: path.clone(),
                    family,
                    source,
                })
            })
            .collect()
    })?
}

async fn execute(add: rtnetlink::RuleAddRequest, family: IpFamily) -> Result<(), rtnetlink::Error> {
    match family {
        IpFamily::V4 => add.v4().execute().await,
        IpFamily::V6 => add.v6().execute().await,
    }
}

async fn ours(handle: &Handle, family: IpFamily) -> Result<Vec<RuleMessage>, RoutingError> {
    routing::rules_where(handle, family, |r| is_pass(r) || is_block(r)).await
}

fn priority(rule: &RuleMessage) -> Option<u32> {
    rule.attributes.iter().find_map(|a| match a {
        RuleAttribute::Priority(p) => Some(*p),
        _ => None,
    })
}

fn mark(rule: &RuleMessage) -> Option<u32> {
    rule.attributes.iter().find_map(|a| match a {
        RuleAttribute::FwMark(m) => Some(*m),
        _ => None,
    })
}

fn is_pass(rule: &RuleMessage) -> bool {
    priority(rule) == Some(PASS_PRIORITY)
        && rule.header.action == RuleAction::ToTable
        && mark(rule) == Some(TPROXY_MARK)
}

fn is_block(rule: &RuleMessage) -> bool {
    priority(rule) == Some(BLOCK_PRIORITY)
        && rule.header.action == RuleAction::Prohibit
        && mark(rule) == Some(TUNNEL_MARK)
}
