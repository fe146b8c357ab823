//! The delta ADS server (`DeltaAggregatedResources`): one task per tunnel stream that sends the
//! initial state of each subscribed type, then only what changes with each new mesh generation.
//!
//! Protocol choices (Envoy's xDS protocol documentation, "Incremental xDS"):
//! - A type's first request subscribes: an empty `resource_names_subscribe` or `"*"` is a
//!   wildcard (everything of that type); explicit names subscribe to those only.
//! - `initial_resource_versions` (first request of a type only) says what the client kept from a
//!   previous stream: equal versions are not resent, names that no longer exist are sent in
//!   `removed_resources`.
//! - Every type's first request gets at least one response, even an empty one: clients use it to
//!   know they are synced.
//! - A request with `response_nonce` answers one response: with `error_detail` it is a NACK
//!   (logged, counted, and that version is not resent — only a newer one will be), otherwise an
//!   ACK. Pushes do not wait for ACKs; delta xDS has no need to.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nodetunnel_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use nodetunnel_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{Authenticator, Caller};
use super::connections::{ConnectionHandle, ConnectionStatus, Connections, Nack, TypeStatus};
use super::mesh::{self, Held, ResourceType};
use super::push;
use super::watch::MeshSnapshot;

/// Responses queued per stream beyond what HTTP/2 flow control already buffers.
const OUT_QUEUE: usize = 8;
/// A client that takes no response for this long is dropped: it holds a full copy of every
/// change in memory, and a stuck tunnel must not cost the control plane without bound.
const SLOW_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The node metadata key a tunnel names its node with (as ztunnel and istio-agent send it).
const NODE_NAME_METADATA: &str = "NODE_NAME";

/// Tunables of a stream; tests shrink them.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    pub max_response_bytes: usize,
    pub slow_client_timeout: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_response_bytes: push::MAX_RESPONSE_BYTES,
            slow_client_timeout: SLOW_CLIENT_TIMEOUT,
        }
    }
}

/// The ADS service.
pub struct AdsServer {
    meshes: watch::Receiver<Arc<MeshSnapshot>>,
    auth: Arc<Authenticator>,
    connections: Arc<Connections>,
    shutdown: CancellationToken,
    limits: StreamLimits,
}

impl AdsServer {
    /// `shutdown` ends every stream (with UNAVAILABLE), so a graceful server shutdown does not
    /// wait forever on streams that never end by themselves.
    pub fn new(
        meshes: watch::Receiver<Arc<MeshSnapshot>>,
        auth: Arc<Authenticator>,
        connections: Arc<Connections>,
        shutdown: CancellationToken,
        limits: StreamLimits,
    ) -> AdsServer {
        AdsServer {
            meshes,
            auth,
            connections,
            shutdown,
            limits,
        }
    }
}

type SotwStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

/// Queued responses, then the stream's terminal status if the server ended it.
type DeltaStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = SotwStream;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<SotwStream>, Status> {
        Err(Status::unimplemented(
            "nodetunnel-control serves only delta xDS (DeltaAggregatedResources); \
             state-of-the-world StreamAggregatedResources is not supported",
        ))
    }

    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_string(), |a: SocketAddr| a.to_string());
        let caller = match self.auth.authenticate(&request) {
            Ok(caller) => caller,
            Err(status) => {
                tracing::warn!(%peer, reason = status.message(), "xDS stream refused");
                return Err(status);
            }
        };
        let bound_node = match &caller {
            Caller::Token { node, .. } => Some(node.clone()),
            Caller::Certificate { .. } => None,
        };
        let handle = self.connections.register(ConnectionStatus {
            peer: peer.clone(),
            caller: caller_label(&caller),
            bound_node: bound_node.clone(),
            connected_at: unix_now(),
            ..ConnectionStatus::default()
        });
        let (out, rx) = mpsc::channel(OUT_QUEUE);
        // The final status travels apart from the (possibly full) queue and follows it, so a
        // client learns why it was dropped once it has read what was already queued.
        let (end, end_rx) = oneshot::channel::<Status>();
        let responses = ReceiverStream::new(rx)
            .map(Ok)
            .chain(futures_util::stream::once(end_rx).filter_map(|end| end.ok().map(Err)));
        let stream = XdsStream {
            handle,
            peer,
            node_id: None,
            bound_node,
            subscriptions: HashMap::new(),
            meshes: self.meshes.clone(),
            out,
            end: Some(end),
            nonces: 0,
            limits: self.limits,
        };
        tokio::spawn(stream.run(request.into_inner(), self.shutdown.clone()));
        Ok(Response::new(Box::pin(responses)))
    }
}

fn caller_label(caller: &Caller) -> String {
    match caller {
        Caller::Token { label, .. } => format!("token:{label}"),
        Caller::Certificate { identity } => format!("certificate:{identity}"),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why a stream ended, other than the client closing it.
enum End {
    /// Tell the client this status, then close.
    Refuse(Status),
    /// The client went away (its receive side is gone).
    Gone(String),
    /// Reading the client's requests failed: a reset, or a request we cannot decode (too large,
    /// malformed). The status goes back too, which a client still listening can act on.
    Broken(Status),
    /// The client stopped reading.
    Slow,
}

/// One subscribed type on one stream.
struct Subscription {
    wildcard: bool,
    names: HashSet<String>,
    held: Held,
    /// The mesh generation `held` matches.
    generation: u64,
}

impl Subscription {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

struct XdsStream {
    handle: ConnectionHandle,
    peer: String,
    node_id: Option<String>,
    /// The node the caller's token is bound to, if it is a token caller.
    bound_node: Option<String>,
    subscriptions: HashMap<ResourceType, Subscription>,
    meshes: watch::Receiver<Arc<MeshSnapshot>>,
    out: mpsc::Sender<DeltaDiscoveryResponse>,
    /// Carries the terminal status when the server ends the stream.
    end: Option<oneshot::Sender<Status>>,
    nonces: u64,
    limits: StreamLimits,
}

impl XdsStream {
    async fn run(
        mut self,
        mut requests: Streaming<DeltaDiscoveryRequest>,
        shutdown: CancellationToken,
    ) {
        let end = tokio::select! {
            end = self.serve(&mut requests) => end,
            () = shutdown.cancelled() => Err(End::Refuse(Status::unavailable(
                "nodetunnel-control is shutting down; reconnect to another instance",
            ))),
        };
        let node = self.node_id.as_deref().unwrap_or("-");
        match end {
            Ok(()) => tracing::info!(node, peer = %self.peer, "xDS stream closed by the client"),
            Err(End::Gone(reason)) => {
                tracing::info!(node, peer = %self.peer, %reason, "xDS stream ended")
            }
            Err(End::Broken(status)) => {
                tracing::info!(node, peer = %self.peer, code = ?status.code(), reason = status.message(), "xDS stream broke");
                self.finish(status);
            }
            Err(End::Slow) => {
                tracing::warn!(
                    node,
                    peer = %self.peer,
                    timeout = ?self.limits.slow_client_timeout,
                    "dropping xDS client: it stopped reading responses"
                );
                self.finish(Status::resource_exhausted(format!(
                    "dropped by nodetunnel-control: no response was read for {:?}; reconnect",
                    self.limits.slow_client_timeout
                )));
            }
            Err(End::Refuse(status)) => {
                tracing::warn!(node, peer = %self.peer, reason = status.message(), "closing xDS stream");
                self.finish(status);
            }
        }
    }

    fn finish(&mut self, status: Status) {
        if let Some(end) = self.end.take() {
            let _ = end.send(status);
        }
    }

    async fn serve(&mut self, requests: &mut Streaming<DeltaDiscoveryRequest>) -> Result<(), End> {
        loop {
            tokio::select! {
                request = requests.message() => match request {
                    Ok(Some(request)) => self.on_request(request).await?,
                    Ok(None) => return Ok(()),
                    Err(status) => return Err(End::Broken(status)),
                },
                changed = self.meshes.changed() => {
                    if changed.is_err() {
                        return Err(End::Refuse(Status::unavailable("nodetunnel-control stopped watching the mesh")));
                    }
                    self.push_changes().await?;
                }
            }
        }
    }

    /// xDS serves every tunnel the whole mesh (as istiod does for ztunnel: it routes to remote
    /// workloads too), so the token's node limits only the CA. A tunnel that says it runs on
    /// another node than its token names is misconfigured, and its certificate requests will be
    /// refused; saying so here, where it connects, points at the cause early.
    fn warn_on_node_mismatch(&self, request: &DeltaDiscoveryRequest) {
        let Some(bound) = &self.bound_node else {
            return;
        };
        let claimed = request
            .node
            .as_ref()
            .and_then(|n| n.metadata.as_ref())
            .and_then(|m| m.fields.get(NODE_NAME_METADATA))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.as_str()),
                _ => None,
            });
        if let Some(claimed) = claimed.filter(|c| *c != bound) {
            tracing::warn!(
                node = self.node_id.as_deref().unwrap_or("-"),
                peer = %self.peer,
                node_name = %claimed,
                token_node = %bound,
                "the tunnel says it runs on another node than its token is bound to; \
                 the CA will refuse it certificates for its own node's workloads"
            );
        }
    }

    async fn on_request(&mut self, request: DeltaDiscoveryRequest) -> Result<(), End> {
        if self.node_id.is_none() {
            let Some(id) = request
                .node
                .as_ref()
                .map(|n| n.id.clone())
                .filter(|id| !id.is_empty())
            else {
                return Err(End::Refuse(Status::invalid_argument(
                    "the first DeltaDiscoveryRequest on a stream must carry node.id \
                     (ztunnel~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local)",
                )));
            };
            tracing::info!(node = %id, peer = %self.peer, "tunnel connected for delta xDS");
            self.handle.update(|s| s.node_id = id.clone());
            self.node_id = Some(id);
            self.warn_on_node_mismatch(&request);
        }
        let Some(ty) = ResourceType::from_type_url(&request.type_url) else {
            tracing::warn!(
                node = self.node_id.as_deref().unwrap_or("-"),
                type_url = %request.type_url,
                "ignoring a request for a resource type this control plane does not serve"
            );
            return Ok(());
        };
        if !request.response_nonce.is_empty() {
            self.on_answer(ty, &request);
        }
        if !self.subscriptions.contains_key(&ty) {
            return self.subscribe(ty, request).await;
        }
        if !request.initial_resource_versions.is_empty() {
            tracing::debug!(type_url = %request.type_url, "ignoring initial_resource_versions after the first request of a type");
        }
        if request.resource_names_subscribe.is_empty()
            && request.resource_names_unsubscribe.is_empty()
        {
            return Ok(());
        }
        self.resubscribe(ty, request).await
    }

    /// ACK or NACK of one of our responses.
    fn on_answer(&mut self, ty: ResourceType, request: &DeltaDiscoveryRequest) {
        let nonce = request.response_nonce.clone();
        match &request.error_detail {
            Some(error) => {
                tracing::warn!(
                    node = self.node_id.as_deref().unwrap_or("-"),
                    type_url = ty.type_url(),
                    %nonce,
                    code = error.code,
                    message = %error.message,
                    "tunnel rejected (NACKed) a response; not resending those versions"
                );
                self.update_type(ty, |t| {
                    t.nack_count += 1;
                    t.last_nack = Some(Nack {
                        nonce,
                        message: error.message.clone(),
                        at: unix_now(),
                    });
                });
            }
            None => self.update_type(ty, |t| {
                t.acks += 1;
                t.last_acked_nonce = Some(nonce);
            }),
        }
    }

    /// A type's first request: record what the client holds, send the difference (always at
    /// least one response).
    async fn subscribe(
        &mut self,
        ty: ResourceType,
        request: DeltaDiscoveryRequest,
    ) -> Result<(), End> {
        let snapshot = self.meshes.borrow().clone();
        let current = snapshot.mesh.resources(ty);
        let mut sub = Subscription {
            wildcard: request.resource_names_subscribe.is_empty(),
            names: HashSet::new(),
            held: Held::new(),
            generation: snapshot.generation,
        };
        for name in request.resource_names_subscribe {
            if name == "*" {
                sub.wildcard = true;
            } else {
                sub.names.insert(name);
            }
        }
        for (name, version) in request.initial_resource_versions {
            // Share the mesh's name where it has one; a name it lacks is held only until the
            // removal below is sent.
            let key = current
                .get_key_value(name.as_str())
                .map_or_else(|| Arc::from(name.as_str()), |(k, _)| k.clone());
            sub.held.insert(key, mesh::Version::parse(&version));
        }
        let mut diff = mesh::diff(&sub.held, current, |n| sub.wants(n));
        missing_names(&mut diff, &sub, current, sub.names.iter());
        mesh::apply(&mut sub.held, &diff);
        tracing::debug!(
            node = self.node_id.as_deref().unwrap_or("-"),
            type_url = ty.type_url(),
            wildcard = sub.wildcard,
            names = sub.names.len(),
            sending = diff.changed.len(),
            removing = diff.removed.len(),
            "subscribed"
        );
        let (wildcard, names, held) = (sub.wildcard, sub.names.len(), sub.held.len());
        self.subscriptions.insert(ty, sub);
        self.update_type(ty, |t| {
            t.type_url = ty.type_url().to_string();
            t.wildcard = wildcard;
            t.subscribed_names = names;
            t.held = held;
        });
        self.send(ty, snapshot.generation, &diff, true).await
    }

    /// A later request that changes a type's subscription.
    async fn resubscribe(
        &mut self,
        ty: ResourceType,
        request: DeltaDiscoveryRequest,
    ) -> Result<(), End> {
        let snapshot = self.meshes.borrow().clone();
        let current = snapshot.mesh.resources(ty);
        let Some(sub) = self.subscriptions.get_mut(&ty) else {
            return Ok(());
        };
        let mut added = Vec::new();
        for name in request.resource_names_unsubscribe {
            if name == "*" {
                sub.wildcard = false;
            } else {
                sub.names.remove(&name);
            }
        }
        for name in request.resource_names_subscribe {
            if name == "*" {
                sub.wildcard = true;
            } else if sub.names.insert(name.clone()) {
                added.push(name);
            }
        }
        // The client forgets what it unsubscribed from; no removal is sent for those.
        sub.held
            .retain(|name, _| sub.wildcard || sub.names.contains(&**name));
        // Bring the whole type up to the current generation while at it.
        let mut diff = mesh::diff(&sub.held, current, |n| sub.wants(n));
        missing_names(&mut diff, sub, current, added.iter());
        mesh::apply(&mut sub.held, &diff);
        sub.generation = snapshot.generation;
        let (wildcard, names, held) = (sub.wildcard, sub.names.len(), sub.held.len());
        self.update_type(ty, |t| {
            t.wildcard = wildcard;
            t.subscribed_names = names;
            t.held = held;
        });
        self.send(ty, snapshot.generation, &diff, !added.is_empty())
            .await
    }

    /// A new mesh generation: each subscribed type gets what changed for it.
    async fn push_changes(&mut self) -> Result<(), End> {
        let snapshot = self.meshes.borrow_and_update().clone();
        let mut types: Vec<_> = self.subscriptions.keys().copied().collect();
        types.sort();
        for ty in types {
            let Some(sub) = self.subscriptions.get_mut(&ty) else {
                continue;
            };
            if sub.generation == snapshot.generation {
                continue;
            }
            let diff = mesh::diff(&sub.held, snapshot.mesh.resources(ty), |n| sub.wants(n));
            mesh::apply(&mut sub.held, &diff);
            sub.generation = snapshot.generation;
            let held = sub.held.len();
            if diff.is_empty() {
                continue;
            }
            tracing::debug!(
                node = self.node_id.as_deref().unwrap_or("-"),
                type_url = ty.type_url(),
                generation = snapshot.generation,
                changed = diff.changed.len(),
                removed = diff.removed.len(),
                "pushing changes"
            );
            self.update_type(ty, |t| t.held = held);
            self.send(ty, snapshot.generation, &diff, false).await?;
        }
        Ok(())
    }

    /// Queues the responses for `diff`; a client that does not make room in time is dropped.
    async fn send(
        &mut self,
        ty: ResourceType,
        generation: u64,
        diff: &mesh::Diff,
        always: bool,
    ) -> Result<(), End> {
        let conn = self.handle.id();
        let nonces = &mut self.nonces;
        // The first response of a type on a stream goes out whole, as istiod sends it: clients
        // take their first response as "in sync", so it must hold everything. Later pushes are
        // split to stay under common receive limits.
        let max_bytes = if always {
            usize::MAX
        } else {
            self.limits.max_response_bytes
        };
        let responses =
            push::responses(ty, diff, &generation.to_string(), max_bytes, always, || {
                *nonces += 1;
                format!("{conn}-{nonces}")
            });
        for response in responses {
            let (resources, removals, nonce) = (
                response.resources.len() as u64,
                response.removed_resources.len() as u64,
                response.nonce.clone(),
            );
            match tokio::time::timeout(self.limits.slow_client_timeout, self.out.send(response))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(End::Gone("the client stopped receiving".into())),
                Err(_) => return Err(End::Slow),
            }
            self.update_type(ty, |t| {
                t.responses_sent += 1;
                t.resources_sent += resources;
                t.removals_sent += removals;
                t.last_sent_nonce = Some(nonce);
            });
        }
        Ok(())
    }

    fn update_type(&self, ty: ResourceType, f: impl FnOnce(&mut TypeStatus)) {
        self.handle.update(|s| {
            f(s.types.entry(ty.short_name().to_string()).or_default());
        });
    }
}

/// Explicitly subscribed names the mesh does not have and the client was not told about: sent
/// as removals, which is how delta xDS says "does not exist".
fn missing_names<'a>(
    diff: &mut mesh::Diff,
    sub: &Subscription,
    current: &mesh::ResourceMap,
    names: impl Iterator<Item = &'a String>,
) {
    for name in names {
        if !current.contains_key(name.as_str()) && !sub.held.contains_key(name.as_str()) {
            diff.removed.push(Arc::from(name.as_str()));
        }
    }
}
