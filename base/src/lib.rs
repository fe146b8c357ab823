//! The bottom of the workspace: the small pieces the tunnel (`nodetunnel`), the ZDS crate and
//! the CNI agent each needed and had written once per crate. One type per concept, so a
//! reader meets each of them once:
//!
//! - [`netns`]: [`NetnsHandle`](netns::NetnsHandle), an open handle on a network namespace
//!   (checked to be one), its [`NetnsId`](netns::NetnsId), and running code inside it on a
//!   thread that is not shared with anything else.
//! - [`backoff`]: [`Backoff`](backoff::Backoff), doubling delays with a cap and optional
//!   jitter; each user keeps its own numbers.
//! - [`files`]: [`replace`](files::replace), writing a file without ever following a
//!   symlink (exclusive temporary file, then rename).
//! - [`signal`]: [`shutdown`](signal::shutdown), SIGTERM/SIGINT registered eagerly.
//! - [`accept`]: [`serve`](accept::serve), an accept loop that survives failed accepts.
//! - [`admission`]: [`ConnectionLimits`](admission::ConnectionLimits), caps on a TLS
//!   listener's connections overall and per source address.
//! - [`local_socket`]: owner-only Unix socket files and the peer-credentials check of the
//!   node agent's sockets.
//! - [`logging`]: [`init`](logging::init), the one log set-up of every binary.
//! - [`readiness`]: [`Readiness`](readiness::Readiness), "ready when every condition holds",
//!   with what is missing when not.
//!
//! No `unsafe`: namespace type checks go through nsfs and `/proc`, not ioctls.

#![forbid(unsafe_code)]

pub mod accept;
pub mod admission;
pub mod backoff;
pub mod files;
pub mod local_socket;
pub mod logging;
pub mod netns;
pub mod readiness;
pub mod rfc3339;
pub mod signal;
