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
//! IPv4 only for now; the ip6tables twin is a follow-up.

use std::path::PathBuf;

use nodetunnel_base::netns::{NetnsError, NetnsHandle};

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
    desired(opts).fresh_input()
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
    let want = desired(opts);
    netns.run(|| {
        // The return route first (as Istio does): once the redirect is live, the tunnel's
        // marked replies must already find their way back.
        routing::ensure().map_err(|source| routing_error(netns, source))?;
        let saved = read_state(tools, netns)?;
        if let Some(input) = want.plan(&saved) {
            restore(tools, netns, &input)?;
        }
        Ok(())
    })?
}

/// Removes everything [`apply`] creates: the jumps, our chains in every table, the ip rule and
/// the route. Idempotent, and fine when nothing is there.
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
        // Stop redirecting before removing the return route.
        let saved = read_state(tools, netns)?;
        if let Some(input) = nothing.plan(&saved) {
            restore(tools, netns, &input)?;
        }
        routing::remove().map_err(|source| routing_error(netns, source))
    })?
}

/// Whether `netns` holds exactly the rules of one of the option combinations, plus the ip
/// rule and route. (False for a partial or foreign set: the agent then re-applies.)
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
        None => [false, true]
            .into_iter()
            .flat_map(|dns_capture| {
                [false, true].map(|bypass_inbound| RuleOptions {
                    dns_capture,
                    bypass_inbound,
                })
            })
            .collect(),
    };
    netns.run(|| {
        let saved = read_state(tools, netns)?;
        if !candidates.iter().any(|o| desired(o).is_exact(&saved)) {
            return Ok(false);
        }
        let (rule, route) = routing::present().map_err(|source| routing_error(netns, source))?;
        Ok(rule && route)
    })?
}

fn read_state(tools: &Tools, netns: &NetnsHandle) -> Result<Saved, RulesError> {
    let text = tools::run(
        &tools.iptables_save,
        &[],
        None,
        &tools::in_netns(netns.path()),
    )?;
    ipt::parse_save(&text).map_err(|source| RulesError::Save {
        netns: netns.path().to_path_buf(),
        source,
    })
}

fn restore(tools: &Tools, netns: &NetnsHandle, input: &str) -> Result<(), RulesError> {
    tracing::debug!(netns = %netns.path().display(), %input, "iptables-restore --noflush");
    tools::run(
        &tools.iptables_restore,
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
// InpodTProxyMark 0x111/0xfff, restore mask 0xffffffff, ports 15001/15006/15008/15053, probe
// SNAT source 169.254.7.127.
const MARK: &str = "0x539/0xfff";
const TPROXY_MARK: &str = "0x111/0xfff";
const PROBE_SOURCE: &str = "169.254.7.127/32";

fn desired(opts: &RuleOptions) -> Desired {
    use CHAIN_OUTPUT as OUT;
    use CHAIN_PREROUTING as PRE;
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
        nat.push((PRE, format!("-s {PROBE_SOURCE} -p tcp -m tcp -j ACCEPT")));
    }
    nat.push((OUT, format!("-d {PROBE_SOURCE} -p tcp -m tcp -j ACCEPT")));
    if !opts.bypass_inbound {
        nat.push((
            PRE,
            format!(
                "! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark {MARK} \
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
                "! -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -m mark ! --mark {MARK} \
                 -j REDIRECT --to-ports 15053"
            ),
        ));
    }
    nat.push((
        OUT,
        format!("-p tcp -m mark --mark {TPROXY_MARK} -j ACCEPT"),
    ));
    nat.push((OUT, "! -d 127.0.0.1/32 -o lo -j ACCEPT".to_string()));
    nat.push((
        OUT,
        format!("! -d 127.0.0.1/32 -p tcp -m mark ! --mark {MARK} -j REDIRECT --to-ports 15001"),
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
