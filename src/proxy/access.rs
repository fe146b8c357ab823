//! One access-log line and one set of metric updates per proxied connection.
//!
//! Each path builds a [`Description`] once, from its decision (outbound's route, inbound's
//! checked target), and starts the record with it; afterwards the record only learns whether
//! the upstream was reached and how the connection ended.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use super::copy::Transferred;
use super::traffic::{EdgeHandle, Ends, Outcome, TrafficGraph};
use super::ProxyError;
use crate::identity::Identity;
use crate::metrics::{ConnectionLabels, ConnectionOutcome, DenialLabels, Metrics, OutcomeLabels};
use crate::state::{Service, Store, Workload};

/// What the log line and the metric labels say about a connection, besides its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Description {
    /// `outbound` or `inbound`.
    pub direction: &'static str,
    pub src: SocketAddr,
    /// The address the client asked for: the captured original destination (a service VIP,
    /// say) or the HBONE CONNECT target. `None` when it could not be read.
    pub original_dst: Option<SocketAddr>,
    /// Where the tunnel sends the bytes (the chosen endpoint); `None` when it failed before
    /// choosing one.
    pub dst: Option<SocketAddr>,
    pub src_identity: Option<Identity>,
    pub dst_identity: Option<Identity>,
    /// `HBONE` or `TCP`: how the connection travels between tunnels.
    pub protocol: &'static str,
    pub labels: ConnectionLabels,
    /// Outbound through a waypoint: the waypoint instance's HBONE address (`dst` is then the
    /// CONNECT target, the original destination).
    pub waypoint: Option<SocketAddr>,
    /// A CONNECT target named by service (`hostname:port`), logged as `dst.hbone_addr`:
    /// double HBONE's, on the client's side and at the gateway.
    pub hbone_target: Option<Arc<str>>,
    /// Outbound through a network gateway (double HBONE): the gateway's HBONE address.
    pub network_gateway: Option<SocketAddr>,
    /// At a network gateway: the stream was forwarded without being read (the inner TLS
    /// goes on to the destination's tunnel), logged as `forwarded=opaque`.
    pub opaque: bool,
}

impl Description {
    /// A connection known only by its addresses, before any route or target was decided.
    pub fn unrouted(
        direction: &'static str,
        src: SocketAddr,
        original_dst: Option<SocketAddr>,
    ) -> Description {
        Description {
            direction,
            src,
            original_dst,
            dst: None,
            src_identity: None,
            dst_identity: None,
            protocol: "TCP",
            labels: base_labels(direction),
            waypoint: None,
            hbone_target: None,
            network_gateway: None,
            opaque: false,
        }
    }
}

/// The labels every connection of `direction` starts from.
pub fn base_labels(direction: &'static str) -> ConnectionLabels {
    ConnectionLabels {
        reporter: if direction == "outbound" {
            "source"
        } else {
            "destination"
        },
        request_protocol: "tcp",
        response_flags: "-",
        connection_security_policy: "unknown",
        ..Default::default()
    }
}

/// The service an inbound connection to `workload` on `port` reached, as ztunnel guesses it
/// (the client does not say): the first of the workload's services (by key) with a target port
/// equal to `port`, directly or through the workload's own mapping of a service port.
pub(crate) fn inbound_service(
    store: &Store,
    workload: &Workload,
    port: u16,
) -> Option<Arc<Service>> {
    let mut keys: Vec<_> = workload.services.keys().collect();
    keys.sort();
    keys.into_iter().find_map(|key| {
        let service = store.service(key)?;
        let own = &workload.services[key];
        service
            .ports
            .iter()
            .any(|(service_port, target)| *target == port || own.get(service_port) == Some(&port))
            .then_some(service)
    })
}

/// A connection in progress: its description, when it started, whether the upstream was
/// reached. Logs exactly once, at `finish` or, for a connection cut at a drain deadline, on drop.
pub struct ConnectionRecord {
    description: Recorded,
    started: Instant,
    opened: bool,
    /// Set by `finish`; a record dropped without it belongs to a connection that was cut
    /// (its task dropped at a drain deadline), which still gets its log line.
    finished: bool,
    metrics: Arc<Metrics>,
    /// The connection's edge in the live view's graph (`None` when the graph is full).
    traffic: Option<EdgeHandle>,
}

/// A [`Description`] as a live connection keeps it: the addresses inline, and who talks to
/// whom (identities and metric labels, the bulk of it: two dozen strings) shared with every
/// other live connection between the same parties. The tunnel's memory per idle connection
/// is mostly what its record holds, and connections come in crowds between few parties.
struct Recorded {
    direction: &'static str,
    src: SocketAddr,
    original_dst: Option<SocketAddr>,
    dst: Option<SocketAddr>,
    protocol: &'static str,
    waypoint: Option<SocketAddr>,
    hbone_target: Option<Arc<str>>,
    network_gateway: Option<SocketAddr>,
    opaque: bool,
    parties: Arc<Parties>,
}

#[derive(Hash, PartialEq, Eq)]
struct Parties {
    src_identity: Option<Identity>,
    dst_identity: Option<Identity>,
    labels: ConnectionLabels,
}

impl Recorded {
    fn new(d: Description) -> Recorded {
        let parties = Parties {
            src_identity: d.src_identity,
            dst_identity: d.dst_identity,
            labels: d.labels,
        };
        Recorded {
            direction: d.direction,
            src: d.src,
            original_dst: d.original_dst,
            dst: d.dst,
            protocol: d.protocol,
            waypoint: d.waypoint,
            hbone_target: d.hbone_target,
            network_gateway: d.network_gateway,
            opaque: d.opaque,
            parties: intern(parties),
        }
    }

    /// Who talks to whom, for the live view's graph.
    fn ends(&self) -> Ends<'_> {
        Ends {
            direction: self.direction,
            protocol: self.protocol,
            src: self.src,
            dst: self.dst,
            original_dst: self.original_dst,
            src_identity: self.parties.src_identity.as_ref(),
            dst_identity: self.parties.dst_identity.as_ref(),
            labels: &self.parties.labels,
        }
    }
}

/// The one shared copy of `parties` among live records. Copies no record holds any more are
/// dropped whenever the set has doubled since the last sweep, so it stays about as large as
/// the number of distinct parties live at once.
fn intern(parties: Parties) -> Arc<Parties> {
    struct Interned {
        set: HashSet<Arc<Parties>>,
        sweep_at: usize,
    }
    const FIRST_SWEEP: usize = 64;
    static INTERNED: LazyLock<Mutex<Interned>> = LazyLock::new(|| {
        Mutex::new(Interned {
            set: HashSet::new(),
            sweep_at: FIRST_SWEEP,
        })
    });
    let mut interned = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(shared) = interned.set.get(&parties) {
        return shared.clone();
    }
    if interned.set.len() >= interned.sweep_at {
        interned.set.retain(|p| Arc::strong_count(p) > 1);
        interned.sweep_at = (interned.set.len() * 2).max(FIRST_SWEEP);
    }
    let shared = Arc::new(parties);
    interned.set.insert(shared.clone());
    shared
}

/// The access log's `(bytes_sent, bytes_recv)`, as ztunnel writes them: from the point of view
/// of the workload this tunnel serves on that side. Outbound, the client sent the request
/// (the copy's a → b); inbound, the server sent the response (b → a).
fn logged_bytes(direction: &str, t: &Transferred) -> (u64, u64) {
    if direction == "outbound" {
        (t.a_to_b, t.b_to_a)
    } else {
        (t.b_to_a, t.a_to_b)
    }
}

/// `flag` / `response_flags` of a connection cut at a drain deadline.
pub const DRAIN_CUT_FLAG: &str = "drain_cut";

/// The fields of an access-log line that do not depend on the outcome, named as ztunnel names
/// them (`src.addr`, `dst.hbone_addr`, ...) so tools written for ztunnel's log read ours.
/// What is unknown is left out of the line, as ztunnel leaves it out.
struct Line<'a> {
    src: SocketAddr,
    src_workload: Option<&'a str>,
    src_namespace: Option<&'a str>,
    src_identity: Option<String>,
    src_cluster: Option<&'a str>,
    dst: Option<SocketAddr>,
    /// The HBONE CONNECT target; only for connections HBONE carries.
    hbone_addr: Option<String>,
    dst_service: Option<&'a str>,
    dst_workload: Option<&'a str>,
    dst_namespace: Option<&'a str>,
    dst_identity: Option<String>,
    dst_cluster: Option<&'a str>,
    original_dst: Option<SocketAddr>,
    waypoint: Option<SocketAddr>,
    network_gateway: Option<SocketAddr>,
    forwarded: Option<&'static str>,
    /// ztunnel writes the duration as `<n>ms`.
    duration: String,
}

fn known(value: &str) -> Option<&str> {
    (!value.is_empty()).then_some(value)
}

impl<'a> Line<'a> {
    fn new(d: &'a Recorded, started: Instant) -> Line<'a> {
        let l = &d.parties.labels;
        Line {
            src: d.src,
            src_workload: known(&l.source_workload),
            src_namespace: known(&l.source_workload_namespace),
            src_identity: d.parties.src_identity.as_ref().map(ToString::to_string),
            src_cluster: known(&l.source_cluster),
            dst: d.dst,
            hbone_addr: match &d.hbone_target {
                Some(target) => Some(target.to_string()),
                None => d
                    .dst
                    .filter(|_| d.protocol == "HBONE")
                    .map(|a| a.to_string()),
            },
            dst_service: known(&l.destination_service),
            dst_workload: known(&l.destination_workload),
            dst_namespace: known(&l.destination_workload_namespace),
            dst_identity: d.parties.dst_identity.as_ref().map(ToString::to_string),
            dst_cluster: known(&l.destination_cluster),
            original_dst: d.original_dst,
            waypoint: d.waypoint,
            network_gateway: d.network_gateway,
            forwarded: d.opaque.then_some("opaque"),
            duration: format!("{}ms", started.elapsed().as_millis()),
        }
    }
}

/// One access-log event: ztunnel's fields first, then ours (`protocol`, `original_dst`, and the
/// outcome's `flag`/`reason`), then the caller's.
macro_rules! access_event {
    ($level:expr, $d:expr, $line:expr, $($rest:tt)*) => {
        tracing::event!(
            target: "access",
            $level,
            src.addr = %$line.src,
            src.workload = $line.src_workload,
            src.namespace = $line.src_namespace,
            src.identity = $line.src_identity.as_deref(),
            src.cluster = $line.src_cluster,
            dst.addr = $line.dst.map(tracing::field::display),
            dst.hbone_addr = $line.hbone_addr.map(tracing::field::display),
            dst.service = $line.dst_service,
            dst.workload = $line.dst_workload,
            dst.namespace = $line.dst_namespace,
            dst.identity = $line.dst_identity.as_deref(),
            dst.cluster = $line.dst_cluster,
            direction = $d.direction,
            protocol = $d.protocol,
            original_dst = $line.original_dst.map(tracing::field::display),
            dst.waypoint = $line.waypoint.map(tracing::field::display),
            dst.network_gateway = $line.network_gateway.map(tracing::field::display),
            forwarded = $line.forwarded,
            duration = $line.duration.as_str(),
            $($rest)*
        )
    };
}

impl ConnectionRecord {
    /// Starts the record of a connection and counts it as opened: as in ztunnel, `opened`
    /// counts every connection the tunnel took on and `closed` every one that ended (failed
    /// or not), so `opened - closed` is what is live; `failed` tells the failures apart.
    pub fn start(metrics: Arc<Metrics>, description: Description) -> ConnectionRecord {
        metrics.active_connections.inc();
        metrics
            .connections_opened
            .get_or_create(&description.labels)
            .inc();
        let description = Recorded::new(description);
        let traffic = TrafficGraph::shared().open(&description.ends());
        ConnectionRecord {
            description,
            started: Instant::now(),
            opened: false,
            finished: false,
            metrics,
            traffic,
        }
    }

    /// The upstream is connected: from now on bytes may flow.
    pub fn opened(&mut self) {
        self.opened = true;
    }

    /// Writes the access-log line and closes the connection in the metrics.
    pub fn finish(mut self, transferred: Transferred, error: Option<&ProxyError>) {
        self.finished = true;
        if let Some(edge) = self.traffic.take() {
            edge.finish(Outcome {
                bytes_sent: transferred.a_to_b,
                bytes_received: transferred.b_to_a,
                failure: error.map(ProxyError::flag),
                denial: error.and_then(ProxyError::denial),
            });
        }
        let d = &self.description;
        let line = Line::new(d, self.started);
        let (bytes_sent, bytes_recv) = logged_bytes(d.direction, &transferred);
        match error {
            None => access_event!(
                tracing::Level::INFO,
                d,
                line,
                bytes_sent,
                bytes_recv,
                "connection complete"
            ),
            Some(e) => access_event!(
                tracing::Level::WARN,
                d,
                line,
                bytes_sent,
                bytes_recv,
                flag = e.flag(),
                // A string, so the line quotes it: the reason has spaces and is read back whole.
                reason = e.denial().map(|r| r.to_string()),
                error = %e,
                "connection failed"
            ),
        }
        if let Some(reason) = error.and_then(ProxyError::refusal) {
            let labels = &self.description.parties.labels;
            self.metrics
                .policy_denials
                .get_or_create(&DenialLabels {
                    policy: reason.policy().to_string(),
                    reason: reason.kind(),
                    destination_workload: labels.destination_workload.clone(),
                    destination_workload_namespace: labels.destination_workload_namespace.clone(),
                    protocol: d.protocol,
                })
                .inc();
        }
        let m = &self.metrics;
        let labels = &self.description.parties.labels;
        // Bytes carry the labels the connection opened with (`response_flags="-"`), as
        // ztunnel's byte counters are bound when the connection opens. Istio's meaning, on
        // both reporters: `received` is the request (client → server, the copy's a → b),
        // `sent` the response.
        if self.opened {
            m.received_bytes
                .get_or_create(labels)
                .inc_by(transferred.a_to_b);
            m.sent_bytes
                .get_or_create(labels)
                .inc_by(transferred.b_to_a);
        }
        let (outcome, flag) = match error {
            None => (ConnectionOutcome::Completed, "-"),
            Some(e) if e.denial().is_some() => (ConnectionOutcome::Denied, e.flag()),
            Some(e) => (ConnectionOutcome::Failed, e.flag()),
        };
        m.connection_outcomes
            .get_or_create(&OutcomeLabels::new(d.direction, d.protocol, outcome, flag))
            .inc();
        match error {
            Some(e) => {
                let mut failed = labels.clone();
                failed.response_flags = e.response_flags();
                // As in ztunnel, every connection that ends in an error counts as failed,
                // whether it never reached the upstream (refused, denied, unreachable) or
                // broke later.
                m.connections_failed.get_or_create(&failed).inc();
                m.connections_closed.get_or_create(&failed).inc();
            }
            None => {
                m.connections_closed.get_or_create(labels).inc();
            }
        }
    }
}

impl Drop for ConnectionRecord {
    fn drop(&mut self) {
        self.metrics.active_connections.dec();
        if self.finished {
            return;
        }
        // Cut mid-copy: the byte counts lived in the dropped copy loop and are unknown.
        let d = &self.description;
        access_event!(
            tracing::Level::WARN,
            d,
            Line::new(d, self.started),
            flag = DRAIN_CUT_FLAG,
            "connection cut at the drain deadline"
        );
        self.metrics
            .connection_outcomes
            .get_or_create(&OutcomeLabels::new(
                d.direction,
                d.protocol,
                ConnectionOutcome::Failed,
                DRAIN_CUT_FLAG,
            ))
            .inc();
        let mut labels = self.description.parties.labels.clone();
        // ztunnel's catch-all: the connection ended in an error.
        labels.response_flags = "CONNECT";
        self.metrics.connections_failed.get_or_create(&labels).inc();
        self.metrics.connections_closed.get_or_create(&labels).inc();
    }
}

#[cfg(test)]
mod tests;
