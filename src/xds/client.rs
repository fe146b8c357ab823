//! The ADS stream loop: connect, subscribe to both types, ACK or NACK every response, and on
//! any failure keep the state, say why, wait (with backoff) and resume from what was accepted.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodetunnel_proto::envoy::config::core::v3::Node;
use nodetunnel_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use nodetunnel_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use nodetunnel_proto::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::backoff::{self, Backoff};
use super::node::node;
use super::response::{self, Rejection};
use super::status::{Shared, XdsHandle};
use super::ResourceType;
use super::{XdsConfig, XdsError};
use crate::grpc::explain;
use crate::state::{Defaults, StateHandle};

/// Largest response we accept. A mesh of 100k workloads arrives as one initial push of
/// tens of MiB; tonic's 4 MiB default would fail it with RESOURCE_EXHAUSTED forever.
const MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

/// Subscribing to `*` is the explicit wildcard of the delta protocol: every resource of the
/// type the control plane has for this node, including ones created later.
const WILDCARD: &str = "*";

/// `google.rpc.Code.INVALID_ARGUMENT`, the code a NACK carries.
const INVALID_ARGUMENT: i32 = 3;

/// Requests queued towards the server (ACKs, NACKs); a small buffer suffices since each
/// response produces exactly one.
const REQUEST_BUFFER: usize = 16;

pub struct XdsClient {
    config: XdsConfig,
    channel: Channel,
    state: StateHandle,
    defaults: Defaults,
    node: Node,
    shared: Arc<Shared>,
    /// "the control plane at `<address>`", the subject of every error sentence.
    what: String,
}

/// How one stream ended.
struct StreamEnd {
    /// The stream delivered at least one response (the control plane works; reset backoff).
    delivered: bool,
    /// Why it ended.
    reason: String,
    /// An ordinary end (the server closed the stream cleanly, e.g. its max connection age),
    /// not worth a warning or a `last_error`.
    clean: bool,
}

impl XdsClient {
    /// Builds the channel now, so a bad address or root file fails at start-up; connecting
    /// happens in [`run`](Self::run).
    pub fn new(
        config: XdsConfig,
        state: StateHandle,
        defaults: Defaults,
    ) -> Result<(XdsClient, XdsHandle), XdsError> {
        let channel = config.target.channel()?;
        let shared = Shared::new(config.target.address.clone(), config.node.node_id());
        let client = XdsClient {
            what: format!("the control plane at {}", config.target.address),
            node: node(&config.node),
            config,
            channel,
            state,
            defaults,
            shared: shared.clone(),
        };
        Ok((client, XdsHandle { shared }))
    }

    /// Runs forever: connect, sync, and after any failure reconnect with jittered exponential
    /// backoff. Errors are logged and recorded on the handle, never returned: the tunnel keeps
    /// serving the last good state while the control plane is away.
    pub async fn run(self) {
        let mut backoff = Backoff::new(backoff::INITIAL, backoff::MAX);
        loop {
            let end = self.run_stream().await;
            if end.delivered {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            {
                let mut s = self.shared.lock();
                s.connected = false;
                if !end.clean {
                    s.last_error = Some(end.reason.clone());
                }
            }
            if end.clean {
                tracing::info!(
                    address = %self.config.target.address, reason = %end.reason,
                    retry_in = ?delay, "xDS stream ended; reconnecting"
                );
            } else {
                tracing::warn!(
                    address = %self.config.target.address, retry_in = ?delay,
                    "xDS stream failed: {}", end.reason
                );
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// One stream from connect to its end.
    async fn run_stream(&self) -> StreamEnd {
        let failed = |delivered: bool, reason: String| StreamEnd {
            delivered,
            reason,
            clean: false,
        };
        self.shared.lock().attempts += 1;

        let (tx, rx) = mpsc::channel(REQUEST_BUFFER);
        for kind in ResourceType::ALL {
            // The buffer holds far more than the initial requests; this cannot fail.
            let _ = tx.try_send(self.initial_request(kind));
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Err(e) = self.config.target.authorize(&mut request) {
            return failed(false, format!("cannot authenticate to {}: {e}", self.what));
        }
        let mut client = AggregatedDiscoveryServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE);
        let connected_at = Instant::now();
        let mut inbound = match client.delta_aggregated_resources(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return failed(false, explain(&status, &self.what)),
        };
        {
            let mut s = self.shared.lock();
            s.connected = true;
            s.connects += 1;
        }
        tracing::info!(
            address = %self.config.target.address, node_id = %self.node.id,
            "connected to the control plane"
        );

        let mut delivered = false;
        // Types not yet applied on this stream; when empty, this stream is in sync.
        let mut pending: HashSet<ResourceType> = ResourceType::ALL.into_iter().collect();
        // Types that got a response on this stream. The first one is the whole state; only it
        // may count as "in sync": after a NACKed first response, later pushes carry only
        // changes, and applying one must not make a never-synced tunnel ready with a partial
        // mesh.
        let mut answered: HashSet<ResourceType> = HashSet::new();
        loop {
            let response = match inbound.message().await {
                Ok(Some(response)) => response,
                // A clean close (istiod does this at its max connection age) is routine once
                // the stream worked; one that never delivered anything is a failure.
                Ok(None) => {
                    return StreamEnd {
                        delivered,
                        reason: format!("{} closed the stream", self.what),
                        clean: delivered,
                    }
                }
                Err(status) => return failed(delivered, explain(&status, &self.what)),
            };
            delivered = true;
            let initial = ResourceType::from_type_url(&response.type_url)
                .is_some_and(|kind| answered.insert(kind));
            let (reply, applied) = self.handle(response, initial);
            if let Some(kind) = applied.filter(|_| initial) {
                if pending.remove(&kind) && pending.is_empty() {
                    self.log_synced(connected_at.elapsed());
                }
            }
            if tx.send(reply).await.is_err() {
                return failed(
                    delivered,
                    format!("the request stream to {} closed", self.what),
                );
            }
        }
    }

    /// The first request of a type on a new stream: who we are, the wildcard subscription and
    /// what we already hold, so the server sends only differences (and removals for what was
    /// deleted while we were away).
    fn initial_request(&self, kind: ResourceType) -> DeltaDiscoveryRequest {
        let versions = self.shared.lock().of(kind).versions.clone();
        DeltaDiscoveryRequest {
            node: Some(self.node.clone()),
            type_url: kind.type_url().to_string(),
            resource_names_subscribe: vec![WILDCARD.to_string()],
            initial_resource_versions: versions.into_iter().collect(),
            ..Default::default()
        }
    }

    /// Applies one response and builds its ACK or NACK; also reports which type was applied.
    /// `initial`: the first response of its type on this stream (the whole state), the only
    /// kind that can complete the first sync.
    fn handle(
        &self,
        response: DeltaDiscoveryResponse,
        initial: bool,
    ) -> (DeltaDiscoveryRequest, Option<ResourceType>) {
        let type_url = response.type_url.clone();
        let nonce = response.nonce.clone();
        let Some(kind) = ResourceType::from_type_url(&type_url) else {
            let rejection = Rejection::UnknownType {
                type_url: type_url.clone(),
            };
            self.shared.lock().unknown_type_nacks += 1;
            tracing::warn!(address = %self.config.target.address, %nonce, "NACK: {rejection}");
            return (nack(type_url, nonce, &rejection), None);
        };
        self.shared.lock().of_mut(kind).last_nonce = nonce.clone();
        let received = response.resources.len();
        let removals = response.removed_resources.len() + response.removed_resource_names.len();

        let applied = response::apply(kind, response, &self.state, &self.defaults);
        let (mut added, mut updated, mut removed) = (0usize, 0usize, 0usize);
        {
            let mut s = self.shared.lock();
            s.last_apply = Some(applied.duration);
            let t = s.of_mut(kind);
            for (name, version) in applied.updated {
                match t.versions.insert(name, version) {
                    Some(_) => updated += 1,
                    None => added += 1,
                }
            }
            for name in &applied.removed {
                if t.versions.remove(name).is_some() {
                    removed += 1;
                }
            }
            t.ignored += applied.ignored.len() as u64;
            match &applied.rejection {
                None => {
                    t.acks += 1;
                    t.last_ack_at = Some(std::time::SystemTime::now());
                }
                Some(rejection) => {
                    t.nacks += 1;
                    t.last_nack = Some(rejection.to_string());
                    t.last_nack_at = Some(std::time::SystemTime::now());
                }
            }
            // The good part of a first push is the state to serve, NACKed or not: a push
            // with one bad resource must not keep the tunnel from ever becoming ready.
            t.applied_once |= initial;
        }
        self.shared.update_synced();
        let ignored = applied.ignored.len();
        match applied.rejection {
            None => {
                tracing::debug!(
                    kind = kind.label(), %nonce, added, updated, removed, ignored,
                    apply = ?applied.duration, "applied xDS push"
                );
                (ack(type_url, nonce), Some(kind))
            }
            Some(rejection) => {
                tracing::warn!(
                    address = %self.config.target.address, kind = kind.label(), %nonce,
                    received, removals, added, updated, removed, ignored,
                    "NACK (the rest of the push was applied): {rejection}"
                );
                (nack(type_url, nonce, &rejection), Some(kind))
            }
        }
    }

    fn log_synced(&self, took: Duration) {
        let s = self.shared.lock();
        tracing::info!(
            address = %self.config.target.address,
            addresses = s.addresses.versions.len(),
            authorizations = s.authorizations.versions.len(),
            took = ?took,
            "in sync with the control plane"
        );
    }
}

fn ack(type_url: String, nonce: String) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url,
        response_nonce: nonce,
        ..Default::default()
    }
}

fn nack(type_url: String, nonce: String, rejection: &Rejection) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url,
        response_nonce: nonce,
        error_detail: Some(RpcStatus {
            code: INVALID_ARGUMENT,
            message: rejection.to_string(),
            details: vec![],
        }),
        ..Default::default()
    }
}
