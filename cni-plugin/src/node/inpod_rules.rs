//! The redirection inside a pod's netns that sends its traffic through the tunnel
//! (docs/contracts.md, "In-pod redirection rules"; Istio `cni/pkg/iptables/iptables.go`
//! `AppendInpodRules` and its golden files):
//!
//! - outbound TCP not from the tunnel (no mark `0x539/0xfff`) is REDIRECTed to 15001;
//! - inbound TCP except to 15008 is REDIRECTed to 15006, unless inbound capture is bypassed;
//! - kubelet probes, SNATed to 169.254.7.127 on the host, pass untouched;
//! - the tunnel's own sockets are marked 0x539; their connections get connmark 0x111, which
//!   is restored on replies and routed back to local sockets via `fwmark 0x111/0xfff → table
//!   100 → local 0.0.0.0/0 dev lo`;
//! - with DNS capture, UDP and TCP port 53 go to 15053 and the tunnel's upstream DNS queries
//!   get their own conntrack zone (raw table).
//!
//! With [`RuleOptions::ipv6`] (the agent's `AMBIENT_IPV6`, Istio's `ambient.ipv6` switch, on by
//! default) the same set is written with `ip6tables-restore` too, with `::1/128` for loopback
//! and `fd16:9254:7127:1337:ffff:ffff:ffff:ffff` as the probe source, plus the `ip -6` fwmark
//! rule and `local ::/0 dev lo table 100` (skipped, as Istio does, while `lo` has IPv6
//! disabled). A netns whose kernel has no IPv6 at all (`/proc/sys/net/ipv6` absent) can carry no
//! IPv6 traffic, so there the IPv6 half is skipped.

use std::path::PathBuf;

use nodetunnel_base::netns::{NetnsError, NetnsHandle};

use super::fail_closed::{self, BlockError};
use super::family::IpFamily;
use super::ipt::{self, Desired, SaveParseError, Saved, TableSpec};
use super::routing::{self, RoutingError};
use super::tools::{self, ToolError, Tools};

/// Our chains, in whichever table they appear.
pub(crate) const CHAIN_PREROUTING: &str = "ISTIO_PRERT";
pub(crate) const CHAIN_OUTPUT: &str = "ISTIO_OUTPUT";
const OWNED: &[&str] = &[CHAIN_PREROUTING, CHAIN_OUTPUT];

/// Per-pod choices (Istio's per-pod overrides: annotation `ambient.istio.io/dns-capture`, and
/// `ambient.istio.io/bypass-inbound-capture` = Istio's "ingress mode").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleOptions {
    /// Redirect DNS (UDP and TCP port 53) to the tunnel's DNS proxy on 15053.
    pub dns_capture: bool,
    /// Leave inbound traffic alone: no 15006 redirect, no probe and connmark rules on the
    /// inbound path. Outbound is still captured.
    pub bypass_inbound: bool,
    /// Also write the IPv6 set (ip6tables, `ip -6` rule and route). Off, the IPv6 state of the
    /// netns is not touched by [`apply`] (and not looked at by [`is_applied_as`]).
    pub ipv6: bool,
}

/// What went wrong applying, removing or checking the rules.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("reading the iptables state in netns {netns}: {source}")]
    Save {
        netns: PathBuf,
        source: SaveParseError,
    },
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error("ip rule/route in netns {netns}: {source}")]
    Routing {
        netns: PathBuf,
        source: RoutingError,
    },
}

/// Renders the `iptables-restore --noflush` input that sets up the rules in a netns that has
/// none of them yet (`*mangle`, `*nat`, and `*raw` with DNS capture). Rules are spelled the way
/// `iptables-save` prints them so that the applied state can be compared as text.
pub fn render(opts: &RuleOptions) -> String {
    desired(opts, IpFamily::V4).fresh_input()
}

/// [`render`] for `ip6tables-restore`: the IPv6 set written when [`RuleOptions::ipv6`] is on.
pub fn render_v6(opts: &RuleOptions) -> String {
    desired(opts, IpFamily::V6).fresh_input()
}

/// What the IPv6 half can do in the calling thread's netns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum V6Support {
    /// The kernel has no IPv6 here: nothing to capture.
    None,
    /// IPv6, but `lo` has it disabled: rules and ip rule, no `::/0` route (as Istio).
    NoLoopback,
    Full,
}

pub(crate) fn v6_support() -> V6Support {
    if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
        return V6Support::None;
    }
    match std::fs::read_to_string("/proc/sys/net/ipv6/conf/lo/disable_ipv6") {
        Ok(v) if v.trim() == "1" => V6Support::NoLoopback,
        // Unreadable: try the route, and let netlink say what is wrong.
        _ => V6Support::Full,
    }
}

/// Applies the rules inside `netns`, plus the ip rule and table-100 route. Idempotent:
/// applying again leaves exactly one copy of everything; applying with other options turns the
/// old set into the new one (e.g. drops the raw table when DNS capture goes off).
pub fn apply(netns: &NetnsHandle, opts: &RuleOptions) -> Result<(), RulesError> {
    apply_with(&Tools::default(), netns, opts)
}

/// [`apply`] with explicit binaries.
pub fn apply_with(
    tools: &Tools,
    netns: &NetnsHandle,
    opts: &RuleOptions,
) -> Result<(), RulesError> {
    netns.run(|| {
        let mut families = vec![(IpFamily::V4, true)];
        if opts.ipv6 {
            match v6_support() {
                V6Support::None => {
                    tracing::debug!(netns = %netns.path().display(), "no IPv6 in this netns")
                }
                V6Support::NoLoopback => families.push((IpFamily::V6, false)),
                V6Support::Full => families.push((IpFamily::V6, true)),
            }
        }
        for (family, route) in families {
            // The return route first (as Istio does): once the redirect is live, the
            // tunnel's marked replies must already find their way back.
            routing::ensure(family, route).map_err(|source| routing_error(netns, source))?;
            let saved = read_state(tools, netns, family)?;
            if let Some(input) = desired(opts, family).plan(&saved) {
                restore(tools, netns, family, &input)?;
            }
        }
        Ok(())
    })?
}

/// Removes everything [`apply`] creates: the jumps, our chains in every table, the ip rule and
/// the route, and the [`fail_closed`] block if one is in place. Idempotent, and fine when nothing is there.
pub fn remove(netns: &NetnsHandle) -> Result<(), RulesError> {
    remove_with(&Tools::default(), netns)
}

/// [`remove`] with explicit binaries.
pub fn remove_with(tools: &Tools, netns: &NetnsHandle) -> Result<(), RulesError> {
    let nothing = Desired {
        owned: OWNED,
        tables: Vec::new(),
    };
    netns.run(|| {
        // Both families whatever the options were: the IPv6 set may be left from a run with
        // IPv6 on. Without IPv6 in the kernel there can be none.
        let mut families = vec![IpFamily::V4];
        if v6_support() != V6Support::None {
            families.push(IpFamily::V6);
        }
        for family in families {
            // Stop redirecting before removing the return route.
            let saved = match read_state(tools, netns, family) {
                Ok(saved) => saved,
                // No ip6tables binary: nothing of ours was written with it.
                Err(RulesError::Tool(ToolError {
                    problem: tools::ToolProblem::Spawn(_),
                    ..
                })) if family == IpFamily::V6 => Saved::default(),
                Err(e) => return Err(e),
            };
            if let Some(input) = nothing.plan(&saved) {
                restore(tools, netns, family, &input)?;
            }
            routing::remove(family).map_err(|source| routing_error(netns, source))?;
        }
        Ok::<(), RulesError>(())
    })??;
    // Out of the mesh, nothing stays blocked (the block exists only while rules were broken).
    fail_closed::lift(netns)?;
    Ok(())
}

/// Whether `netns` holds exactly the rules of one of the option combinations, plus the ip
/// rule and route (of each family the combination writes). (False for a partial or foreign
/// set: the agent then re-applies.)
pub fn is_applied(netns: &NetnsHandle) -> Result<bool, RulesError> {
    is_applied_with(&Tools::default(), netns, None)
}

/// Whether `netns` holds exactly the rules for `opts`, plus the ip rule and route.
pub fn is_applied_as(netns: &NetnsHandle, opts: &RuleOptions) -> Result<bool, RulesError> {
    is_applied_with(&Tools::default(), netns, Some(opts))
}

/// [`is_applied`] (`opts` = `None`) or [`is_applied_as`] with explicit binaries.
pub fn is_applied_with(
    tools: &Tools,
    netns: &NetnsHandle,
    opts: Option<&RuleOptions>,
) -> Result<bool, RulesError> {
    let candidates: Vec<RuleOptions> = match opts {
        Some(o) => vec![*o],
        None => {
            let mut all = Vec::new();
            for dns_capture in [false, true] {
                for bypass_inbound in [false, true] {
                    for ipv6 in [false, true] {
                        all.push(RuleOptions {
                            dns_capture,
                            bypass_inbound,
                            ipv6,
                        });
                    }
                }
            }
            all
        }
    };
    netns.run(|| {
        let v6 = v6_support();
        let saved = read_state(tools, netns, IpFamily::V4)?;
        let mut saved6 = None;
        for opts in &candidates {
            if !desired(opts, IpFamily::V4).is_exact(&saved) {
                continue;
            }
            if opts.ipv6 && v6 != V6Support::None {
                if saved6.is_none() {
                    saved6 = Some(read_state(tools, netns, IpFamily::V6)?);
                }
                if !saved6
                    .as_ref()
                    .is_some_and(|s| desired(opts, IpFamily::V6).is_exact(s))
                {
                    continue;
                }
            }
            let routed = |family: IpFamily, need_route: bool| -> Result<bool, RulesError> {
                let (rule, route) =
                    routing::present(family).map_err(|source| routing_error(netns, source))?;
                Ok(rule && (route || !need_route))
            };
            let mut ok = routed(IpFamily::V4, true)?;
            if ok && opts.ipv6 && v6 != V6Support::None {
                ok = routed(IpFamily::V6, v6 == V6Support::Full)?;
            }
            if ok {
                return Ok(true);
            }
        }
        Ok(false)
    })?
}

fn read_state(tools: &Tools, netns: &NetnsHandle, family: IpFamily) -> Result<Saved, RulesError> {
    let text = tools::run(
        family.save(tools),
        &[],
        None,
        &tools::in_netns(netns.path()),
    )?;
    ipt::parse_save(&text).map_err(|source| RulesError::Save {
        netns: netns.path().to_path_buf(),
        source,
    })
}

fn restore(
    tools: &Tools,
    netns: &NetnsHandle,
    family: IpFamily,
    input: &str,
) -> Result<(), RulesError> {
    tracing::debug!(netns = %netns.path().display(), ?family, %input, "iptables-restore --noflush");
    tools::run(
        family.restore(tools),
        &["--noflush", "--wait"],
        Some(input),
        &tools::in_netns(netns.path()),
    )?;
    Ok(())
}

fn routing_error(netns: &NetnsHandle, source: RoutingError) -> RulesError {
    RulesError::Routing {
        netns: netns.path().to_path_buf(),
        source,
    }
}

// Istio constants (cni/pkg/iptables/iptables.go): InpodMark 1337 = 0x539, InpodMask 0xfff,
// InpodTProxyMark 0x111/0xfff, restore mask 0xffffffff, ports 15001/15006/15008/15053; the
// probe SNAT sources and loopback ranges per family are in `family`.
const MARK: &str = "0x539/0xfff";
const TPROXY_MARK: &str = "0x111/0xfff";

/// The rule set of one family; identical for both but for loopback and the probe source.
fn desired(opts: &RuleOptions, family: IpFamily) -> Desired {
    use CHAIN_OUTPUT as OUT;
    use CHAIN_PREROUTING as PRE;
    let lo = family.loopback();
    let probe = family.probe_source();
    let both = vec![PRE, OUT];
    let mut mangle = Vec::new();
    let mut nat = Vec::new();
    if !opts.bypass_inbound {
        mangle.push((
            PRE,
            format!("-m mark --mark {MARK} -j CONNMARK --set-xmark {TPROXY_MARK}"),
        ));
    }
    mangle.push((
        OUT,
        format!(
            "-m connmark --mark {TPROXY_MARK} -j CONNMARK --restore-mark --nfmask 0xffffffff \
             --ctmask 0xffffffff"
        ),
    ));
    if !opts.bypass_inbound {
        nat.push((PRE, format!("-s {probe} -p tcp -m tcp -j ACCEPT")));
    }
    nat.push((OUT, format!("-d {probe} -p tcp -m tcp -j ACCEPT")));
    if !opts.bypass_inbound {
        nat.push((
            PRE,
            format!(
                "! -d {lo} -p tcp -m tcp ! --dport 15008 -m mark ! --mark {MARK} \
                 -j REDIRECT --to-ports 15006"
            ),
        ));
    }
    if opts.dns_capture {
        nat.push((
            OUT,
            format!(
                "! -o lo -p udp -m mark ! --mark {MARK} -m udp --dport 53 -j REDIRECT \
                 --to-ports 15053"
            ),
        ));
        nat.push((
            OUT,
            format!(
                "! -d {lo} -p tcp -m tcp --dport 53 -m mark ! --mark {MARK} \
                 -j REDIRECT --to-ports 15053"
            ),
        ));
    }
    nat.push((
        OUT,
        format!("-p tcp -m mark --mark {TPROXY_MARK} -j ACCEPT"),
    ));
    nat.push((OUT, format!("! -d {lo} -o lo -j ACCEPT")));
    nat.push((
        OUT,
        format!("! -d {lo} -p tcp -m mark ! --mark {MARK} -j REDIRECT --to-ports 15001"),
    ));
    let mut tables = vec![
        TableSpec {
            table: "mangle",
            chains: both.clone(),
            jumps: vec![("PREROUTING", PRE), ("OUTPUT", OUT)],
            rules: mangle,
        },
        TableSpec {
            table: "nat",
            chains: both.clone(),
            jumps: vec![("OUTPUT", OUT), ("PREROUTING", PRE)],
            rules: nat,
        },
    ];
    if opts.dns_capture {
        tables.push(TableSpec {
            table: "raw",
            chains: both,
            jumps: vec![("PREROUTING", PRE), ("OUTPUT", OUT)],
            rules: vec![
                (
                    OUT,
                    format!("-p udp -m mark --mark {MARK} -m udp --dport 53 -j CT --zone 1"),
                ),
                (
                    PRE,
                    format!("-p udp -m mark ! --mark {MARK} -m udp --sport 53 -j CT --zone 1"),
                ),
            ],
        });
    }
    Desired {
        owned: OWNED,
        tables,
    }
}

#[cfg(test)]
mod tests;
