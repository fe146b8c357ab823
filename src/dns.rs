//! The DNS proxy on 15053 (UDP and TCP): answers A and AAAA for mesh service hostnames from
//! the current mesh state, and forwards everything else unchanged to the nameserver the client
//! addressed (the tunnel's own resolver when that is unknown).
//!
//! Data flow, one file per step: `server` (the two listeners of one scope, bounded) →
//! `handler` (decode, decide local or forward, encode) → `names` (the names a pod's search
//! domains make of a query) + `answer` (name → addresses from the store) | `origin` (which
//! nameserver the client addressed; UDP asks `conntrack`) + `forward` (the raw query to it over
//! the client's transport) → `truncate` (fit a UDP reply to the
//! client's size). The wire format is hickory-proto's; nothing here hand-parses DNS
//! (`conntrack` frames its one netlink message itself).

mod answer;
mod conntrack;
mod forward;
mod handler;
mod names;
mod origin;
mod server;
mod truncate;

pub(crate) use forward::Upstream;
pub(crate) use handler::{fit_reply, Handler, Transport};
pub(crate) use origin::Arrival;
pub use server::DnsBindError;
pub(crate) use server::DnsServer;
pub(crate) use truncate::client_limit;
