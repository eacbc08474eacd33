//! The only module that knows libp2p. [`spawn`] starts one event loop that owns the `Swarm` (no locks) and returns
//! a cloneable [`Client`] whose async methods send it commands, and a channel of [`NetEvent`]s for the owner or the
//! volunteer. Blobs bypass the loop: [`Client::open_stream`] opens paced streams, [`Client::streams`] hands out
//! libp2p-stream controls.
//!
//! Every peer is bounded (docs/SECURITY.md, "Bounded peers"): connection limits, and a budget of requests, streams
//! and strikes per peer ([`budget`]) whose overspenders are banned; gossip is judged before it is forwarded
//! (`gossip`).

mod behaviour;
pub mod budget;
mod dial;
mod event_loop;
mod gossip;
pub mod private;
pub mod relay;
pub mod upnp;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use libp2p::{
    identity::Keypair, noise, request_response::ResponseChannel, yamux, Multiaddr, PeerId, Stream, StreamProtocol,
};
use tokio::sync::{mpsc, oneshot};

pub use behaviour::{HOST_AGENT, VOLUNTEER_AGENT};
pub use dial::peer_of;
use event_loop::EventLoop;
pub use private::{Privacy, SwarmKey, SwarmKeyError};
pub use relay::{RelayConfig, RelayLimits};

use crate::protocol::{JobOffer, SignedManifest, WorkRequest, WorkResponse};

/// The TCP port a host listens on when `--listen` is not given, and a bootstrap `HOST` without a port dials.
pub const DEFAULT_PORT: u16 = 7463;

/// Bootstrap dials back off from this delay, doubling up to [`REDIAL_MAX`], and start over once connected.
pub const REDIAL_MIN: Duration = Duration::from_millis(500);
pub const REDIAL_MAX: Duration = Duration::from_secs(4);
/// How long opening a stream may take (dialling and negotiating the protocol included), so an owner that accepts
/// connections but never answers cannot hold a volunteer's render slot.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a peer may take to send the first header of a stream it opened; junk and half-open streams are dropped
/// after it.
pub const FIRST_HEADER_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct NetConfig {
    pub keypair: Keypair,
    /// A private farm's key: without the same key no connection to or from this node completes (TCP only).
    pub swarm_key: Option<SwarmKey>,
    pub is_host: bool,
    pub listen: Vec<Multiaddr>,
    /// Addresses to keep connected to, redialled with a capped backoff whenever the connection is down.
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    /// Most connections held at once, all peers together ([`crate::protocol::DEFAULT_MAX_PEERS`] by default).
    pub max_peers: u32,
}

/// What the network tells its owner.
#[derive(Debug)]
pub enum NetEvent {
    Listening(Multiaddr),
    /// A listener could not start or stopped with an error; the text names the address.
    ListenFailed(String),
    /// A peer identified itself as a blenderdist owner.
    HostFound(PeerId),
    /// The last connection to a peer closed.
    PeerGone(PeerId),
    /// A signed offer on the offer topic; `from` is its verified author.
    Offer {
        from: PeerId,
        offer: JobOffer,
    },
    /// A signed update manifest on the update topic; `from` is its verified author.
    Manifest {
        from: PeerId,
        signed: SignedManifest,
    },
    /// A peer speaks another protocol version and was disconnected; `host` if it said it is an owner.
    Incompatible {
        peer: PeerId,
        theirs: String,
        host: bool,
    },
    /// A work request to answer with [`Client::respond`].
    Request {
        peer: PeerId,
        request: WorkRequest,
        channel: ResponseChannel<WorkResponse>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("the network loop has stopped")]
    Stopped,
    #[error("request to {peer} failed: {reason}")]
    Request { peer: PeerId, reason: String },
    #[error("cannot start the network: {0}")]
    Setup(String),
    #[error("cannot open a stream to {peer}: {reason}")]
    Open { peer: PeerId, reason: String },
    /// The peer does not speak the protocol (an older build): asking again will not help.
    #[error("{peer} does not support {protocol}")]
    Unsupported { peer: PeerId, protocol: StreamProtocol },
}

pub(crate) enum Command {
    Request {
        peer: PeerId,
        request: WorkRequest,
        reply: oneshot::Sender<Result<WorkResponse, NetError>>,
    },
    Respond {
        peer: PeerId,
        channel: ResponseChannel<WorkResponse>,
        response: WorkResponse,
    },
    Publish {
        offer: JobOffer,
    },
    PublishManifest {
        manifest: SignedManifest,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    /// A budget decided a ban outside the loop (a stream or a strike): carry it out now rather than at the next tick.
    ApplyBans,
    /// An address others can dial us on (a UPnP port mapping): identify advertises it.
    AddExternalAddress {
        addr: Multiaddr,
    },
    /// Dial `peer` at `addrs` unless connected or dialling (another volunteer, to fetch chunks from it).
    Dial {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<()>,
    },
}

/// A cheap, cloneable handle on the event loop.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    peer_id: PeerId,
    /// Shared with the event loop, which bans the peers that overspend.
    budgets: Arc<Mutex<budget::Budgets>>,
    /// Paces this node's stream opens to each peer.
    pacer: Arc<Mutex<budget::Pacer>>,
}

impl Client {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// A control for accepting blob streams (and for tests that open streams without pacing).
    pub fn streams(&self) -> libp2p_stream::Control {
        self.control.clone()
    }

    /// Opens a stream to `peer`, dialling it if needed: paced so this node never opens more than an owner's
    /// stream budget allows, and given up after [`OPEN_TIMEOUT`].
    pub async fn open_stream(&self, peer: PeerId, protocol: StreamProtocol) -> Result<Stream, NetError> {
        let wait = lock(&self.pacer).reserve(peer, std::time::Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let mut control = self.control.clone();
        match tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, protocol)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(protocol))) => {
                Err(NetError::Unsupported { peer, protocol })
            }
            Ok(Err(e)) => Err(NetError::Open { peer, reason: e.to_string() }),
            Err(_) => Err(NetError::Open { peer, reason: format!("no answer in {} s", OPEN_TIMEOUT.as_secs()) }),
        }
    }

    /// A handle on the peers' budgets for code that serves streams outside the event loop.
    pub fn budgets(&self) -> PeerBudgets {
        PeerBudgets { budgets: self.budgets.clone(), commands: self.commands.downgrade() }
    }

    pub async fn request(&self, peer: PeerId, request: WorkRequest) -> Result<WorkResponse, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Request { peer, request, reply }).await?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Answers `peer`'s request; a `Refused` answer counts as a strike against it.
    pub async fn respond(
        &self,
        peer: PeerId,
        channel: ResponseChannel<WorkResponse>,
        response: WorkResponse,
    ) -> Result<(), NetError> {
        self.send(Command::Respond { peer, channel, response }).await
    }

    pub async fn publish(&self, offer: JobOffer) -> Result<(), NetError> {
        self.send(Command::Publish { offer }).await
    }

    pub async fn publish_manifest(&self, manifest: SignedManifest) -> Result<(), NetError> {
        self.send(Command::PublishManifest { manifest }).await
    }

    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::ListenAddrs { reply }).await?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::ConnectedPeers { reply }).await?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Tells peers (through identify) that this node is also reachable on `addr`, e.g. a router's port mapping.
    pub async fn add_external_address(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.send(Command::AddExternalAddress { addr }).await
    }

    /// Starts dialling `peer` at `addrs` unless already connected (or dialling), and returns once the dial is under
    /// way, so a stream opened next waits for that connection.
    pub async fn dial(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Dial { peer, addrs, reply }).await?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    async fn send(&self, command: Command) -> Result<(), NetError> {
        self.commands.send(command).await.map_err(|_| NetError::Stopped)
    }
}

/// The peers' budgets, for code that serves peers outside the event loop (the blob server). Unlike a [`Client`] it
/// does not keep the network running.
#[derive(Clone)]
pub struct PeerBudgets {
    budgets: Arc<Mutex<budget::Budgets>>,
    commands: mpsc::WeakSender<Command>,
}

impl PeerBudgets {
    /// Charges `peer` for a stream it opened to us. False: it is over its budget (or banned) and the stream must be
    /// dropped unanswered; the event loop closes its connections.
    pub fn admit_stream(&self, peer: PeerId) -> bool {
        self.charge(peer, budget::Charge::Stream)
    }

    /// Counts a refused or garbage message against `peer` (see [`crate::protocol::STRIKE_BUDGET`]).
    pub fn strike(&self, peer: PeerId) {
        self.charge(peer, budget::Charge::Strike);
    }

    /// Reads the first header of a stream `peer` opened (at most `max` bytes), within [`FIRST_HEADER_TIMEOUT`]; junk
    /// or silence counts as a strike against it. A stream the peer closed or reset is no strike: an honest volunteer
    /// drops the streams of requests it no longer needs (a chunk that arrived from elsewhere), hundreds at a time
    /// with a job of many files, and each stream was already charged to its stream budget.
    pub async fn first_header<T: for<'de> serde::Deserialize<'de>>(
        &self,
        peer: PeerId,
        stream: &mut Stream,
        max: u32,
    ) -> anyhow::Result<T> {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
        match tokio::time::timeout(FIRST_HEADER_TIMEOUT, crate::protocol::read_header_max(stream, max)).await {
            Ok(Ok(header)) => Ok(header),
            Ok(Err(crate::protocol::WireError::Io(e)))
                if matches!(e.kind(), UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe) =>
            {
                Err(anyhow::anyhow!("the peer closed the stream before its first header: {e}"))
            }
            Ok(Err(e)) => {
                self.strike(peer);
                Err(e.into())
            }
            Err(e) => {
                self.strike(peer);
                Err(e.into())
            }
        }
    }

    fn charge(&self, peer: PeerId, charge: budget::Charge) -> bool {
        let allowed = lock(&self.budgets).charge(peer, charge, std::time::Instant::now());
        if let (false, Some(commands)) = (allowed, self.commands.upgrade()) {
            // A full queue is fine: the loop also carries out bans on its next tick.
            let _ = commands.try_send(Command::ApplyBans);
        }
        allowed
    }
}

/// Accepts `protocol`'s streams until the network stops, for code that serves peers outside the event loop: each
/// stream is charged to its peer's stream budget (one over it is dropped unanswered, and the peer banned by the
/// network) and handed to `handle` in a task of its own. `what` names the streams in the debug log.
pub fn serve_streams<F, Fut>(
    client: &Client,
    protocol: StreamProtocol,
    what: &'static str,
    handle: F,
) -> Result<(), NetError>
where
    F: Fn(PeerBudgets, PeerId, Stream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    use futures::StreamExt as _;
    let (mut control, budgets) = (client.streams(), client.budgets());
    let mut incoming =
        control.accept(protocol).map_err(|e| NetError::Setup(format!("cannot accept {what} streams: {e}")))?;
    // The task does not keep the network running: it ends with it.
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            if !budgets.admit_stream(peer) {
                continue;
            }
            let served = handle(budgets.clone(), peer, stream);
            tokio::spawn(async move {
                if let Err(e) = served.await {
                    tracing::debug!(%peer, "{what} stream ended: {e}");
                }
            });
        }
    });
    Ok(())
}

/// Builds the swarm, starts listening and dialling, and spawns its event loop on the current tokio runtime. The loop
/// ends when every [`Client`] is dropped.
pub fn spawn(config: NetConfig) -> Result<(Client, mpsc::Receiver<NetEvent>), NetError> {
    spawn_with(config, RelayConfig::default())
}

/// [`spawn`] for a node that uses relays or serves as one (see [`relay`]).
pub fn spawn_with(mut config: NetConfig, relays: RelayConfig) -> Result<(Client, mpsc::Receiver<NetEvent>), NetError> {
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    if config.listen.is_empty() && config.bootstrap.iter().any(relay::is_relayed) {
        // Hole punching dials from the port the relay saw this node use: only a listening port is reused.
        config.listen.push("/ip4/0.0.0.0/tcp/0".parse().map_err(|e| setup(&e))?);
    }
    let server = relays.serve.map(|limits| limits.server_config());
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_other_transport(|key| private::transport(key, config.swarm_key.as_ref()))
        .map_err(|e| setup(&e))?
        .with_dns()
        .map_err(|e| setup(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| setup(&e))?
        .with_behaviour(|key, relay_client| {
            behaviour::Behaviour::new(key, config.is_host, config.mdns, config.max_peers, relay_client, server)
        })
        .map_err(|e| setup(&e))?
        // Volunteers render for minutes between messages; connections must outlive that. Ping detects dead peers.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    for addr in &config.listen {
        swarm.listen_on(addr.clone()).map_err(|e| {
            let reason = match e {
                libp2p::TransportError::Other(io) => io.to_string(),
                other => other.to_string(),
            };
            NetError::Setup(format!("cannot listen on {addr}: {reason}"))
        })?;
    }
    let control = swarm.behaviour().stream.new_control();
    let (commands, command_rx) = mpsc::channel(256);
    let (events, event_rx) = mpsc::channel(1024);
    let peer_id = *swarm.local_peer_id();
    let budgets = Arc::new(Mutex::new(budget::Budgets::default()));
    let mut event_loop = EventLoop::new(swarm, command_rx, events, config.bootstrap, config.is_host, budgets.clone())
        .map_err(NetError::Setup)?
        .with_relays(relay::Relays::new(&relays));
    event_loop.admission = private::Admission::new(config.swarm_key);
    tokio::spawn(event_loop.run());
    let pacer = Arc::default();
    Ok((Client { commands, control, peer_id, budgets, pacer }, event_rx))
}

/// A poisoned lock only means another task panicked mid-update of a plain map; its data is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
