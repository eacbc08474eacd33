//! Relays and hole punching, for nodes behind home routers (libp2p circuit relay v2 and DCUtR).
//!
//! An owner behind NAT holds a reservation on a public relay (`host --relay ADDR`) and gives volunteers the relayed
//! address `/ip4/R/tcp/P/p2p/RELAY/p2p-circuit/p2p/HOST`. A volunteer first connects to the relay directly (so
//! identify tells it the address its router shows the world, which hole punching needs), then dials through the
//! relay; DCUtR then makes both sides dial each other at once, and once a direct connection stands the relayed one is
//! closed, so blobs and frames never pass the relay. A relay carries coordination only unless its operator allowed
//! data (`relay --data-limit`): a volunteer whose hole punch failed through a relay that carries no data says so and
//! claims nothing from that owner, instead of taking frames it cannot fetch.
//!
//! This file keeps that state for the event loop: which relays to reserve on, which connections are relayed, the
//! limits relays announced, and which owners wait for a direct connection before the volunteer may work for them.

mod config;

use std::collections::{HashMap, HashSet};

use libp2p::{
    autonat,
    core::transport::ListenerId,
    core::ConnectedPoint,
    dcutr,
    multiaddr::Protocol,
    relay,
    swarm::{dial_opts::DialOpts, ConnectionId},
    Multiaddr, PeerId, Swarm,
};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::behaviour::Behaviour;

use config::{bytes_text, RETRY};
pub use config::{
    is_relayed, relay_of, RelayConfig, RelayLimits, DATA_CIRCUIT_DURATION, DEFAULT_RELAY_PORT, HOLE_PUNCH_WAIT,
    MIN_DATA_RELAY,
};

/// A relay this node keeps a reservation on.
struct Reservation {
    /// The relay's address, ending in `/p2p/ID`.
    relay: Multiaddr,
    listener: Option<ListenerId>,
    next_try: Instant,
}

/// An owner a volunteer reached through a relay only, waiting for hole punching.
struct Held {
    /// When to stop waiting; `None` once the volunteer has said it cannot work for this owner.
    deadline: Option<Instant>,
}

/// A relayed connection: the peer at its end and the relay it goes through.
#[derive(Clone)]
struct RelayedLink {
    peer: PeerId,
    relay: PeerId,
    /// The relay's address, for messages.
    relay_addr: Multiaddr,
}

pub(super) struct Relays {
    reservations: Vec<Reservation>,
    /// Relays that identified this node over a direct connection, so hole punching knows its public address.
    identified: HashSet<PeerId>,
    /// When each relay may be dialled again (volunteers dial a relay before dialling through it).
    relay_dials: HashMap<PeerId, Instant>,
    /// The data limit each relay announced for this node's outbound circuits (`None` inside: no limit).
    circuit_limits: HashMap<PeerId, Option<u64>>,
    relayed: HashMap<ConnectionId, RelayedLink>,
    /// Direct connections per peer.
    direct: HashMap<PeerId, HashSet<ConnectionId>>,
    /// Owners found over relayed connections only (volunteers): their [`super::NetEvent::HostFound`] waits.
    held: HashMap<PeerId, Held>,
    serving: bool,
    /// What AutoNAT last said of each public address of this node (true: reachable), to log changes only.
    reachability: HashMap<Multiaddr, bool>,
}

impl Relays {
    pub(super) fn new(config: &RelayConfig) -> Self {
        let now = Instant::now();
        Self {
            reservations: config
                .reserve_on
                .iter()
                .map(|relay| Reservation { relay: relay.clone(), listener: None, next_try: now })
                .collect(),
            identified: HashSet::new(),
            relay_dials: HashMap::new(),
            circuit_limits: HashMap::new(),
            relayed: HashMap::new(),
            direct: HashMap::new(),
            held: HashMap::new(),
            serving: config.serve.is_some(),
            reachability: HashMap::new(),
        }
    }

    /// Whether `addr` may be dialled now. A relayed address waits until this node listens on a TCP port (hole
    /// punching dials from it) and the relay has identified this node over a direct connection, which is dialled
    /// here when needed.
    pub(super) fn ready_to_dial(&mut self, swarm: &mut Swarm<Behaviour>, addr: &Multiaddr) -> bool {
        let Some((relay_addr, relay)) = relay_of(addr) else { return true };
        if !has_direct_listener(swarm) {
            return false;
        }
        if swarm.is_connected(&relay) {
            return self.identified.contains(&relay);
        }
        let now = Instant::now();
        if self.relay_dials.get(&relay).is_some_and(|next| *next > now) {
            return false;
        }
        self.relay_dials.insert(relay, now + RETRY);
        debug!(%relay_addr, "dialling the relay first");
        if let Err(e) = swarm.dial(DialOpts::peer_id(relay).addresses(vec![relay_addr]).build()) {
            debug!(%relay, "dial of the relay not started: {e}");
        }
        false
    }

    /// Asks for the reservations not held (after the node listens on TCP, so the relay sees the port hole punching
    /// uses), and gives up waiting for hole punching to owners whose time is up. Returns the owners to announce.
    pub(super) fn tick(&mut self, swarm: &mut Swarm<Behaviour>) -> Vec<PeerId> {
        let now = Instant::now();
        if has_direct_listener(swarm) {
            for r in self.reservations.iter_mut().filter(|r| r.listener.is_none() && r.next_try <= now) {
                r.next_try = now + RETRY;
                match swarm.listen_on(r.relay.clone().with(Protocol::P2pCircuit)) {
                    Ok(id) => {
                        debug!(relay = %r.relay, "asking for a reservation");
                        r.listener = Some(id);
                    }
                    Err(e) => warn!("cannot use the relay {}: {e}", r.relay),
                }
            }
        }
        let due: Vec<PeerId> =
            self.held.iter().filter(|(_, h)| h.deadline.is_some_and(|d| d <= now)).map(|(peer, _)| *peer).collect();
        due.into_iter().filter(|peer| self.settle_without_direct(*peer, "no direct connection came up")).collect()
    }

    /// A listener closed: if it was a reservation, it is asked for again shortly (the relay restarted, or the
    /// connection to it broke). True when the listener was a reservation.
    pub(super) fn on_listener_closed(&mut self, id: ListenerId, reason: Option<String>) -> bool {
        let Some(r) = self.reservations.iter_mut().find(|r| r.listener == Some(id)) else { return false };
        r.listener = None;
        r.next_try = Instant::now() + RETRY;
        let why = reason.unwrap_or_else(|| "it closed".into());
        warn!("lost the reservation on relay {} ({why}); asking again in {} s", r.relay, RETRY.as_secs());
        true
    }

    /// Whether this node is a relay (`relay`, or the relay `join --relay` runs beside the volunteer).
    pub(super) fn only_relays(&self) -> bool {
        self.serving
    }

    pub(super) fn owns_listener(&self, id: ListenerId) -> bool {
        self.reservations.iter().any(|r| r.listener == Some(id))
    }

    /// A new listen address: a relayed one means a reservation was granted; a relay node makes its direct ones
    /// its external addresses (a relay hands them to the owners it reserves slots for).
    pub(super) fn on_new_listen_addr(&mut self, swarm: &mut Swarm<Behaviour>, addr: &Multiaddr) {
        if is_relayed(addr) {
            info!("reserved a slot on relay {addr}: volunteers can reach this node through it");
        } else if self.serving && !is_unspecified(addr) {
            swarm.add_external_address(addr.clone());
        }
    }

    pub(super) fn on_identified(&mut self, peer: PeerId, connection: ConnectionId) {
        if !self.relayed.contains_key(&connection) {
            self.identified.insert(peer);
        }
    }

    /// Records a new connection. A direct one to a peer also reached through a relay closes the relayed ones, so
    /// streams (which libp2p spreads over a peer's connections) never land on a circuit; it also ends the wait of an
    /// owner held for it.
    pub(super) fn on_established(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        connection: ConnectionId,
        endpoint: &ConnectedPoint,
    ) {
        let addr = match endpoint {
            ConnectedPoint::Dialer { address, .. } => address,
            ConnectedPoint::Listener { local_addr, .. } => local_addr,
        };
        if endpoint.is_relayed() {
            if let Some((relay_addr, relay)) = relay_of(addr) {
                self.relayed.insert(connection, RelayedLink { peer, relay, relay_addr });
            }
            if self.direct.get(&peer).is_some_and(|d| !d.is_empty()) {
                swarm.close_connection(connection);
            }
            return;
        }
        self.direct.entry(peer).or_default().insert(connection);
        let relayed: Vec<ConnectionId> = self.relayed.iter().filter(|(_, l)| l.peer == peer).map(|(c, _)| *c).collect();
        if !relayed.is_empty() {
            info!(%peer, "connected directly; closing the relayed connection");
        }
        for c in relayed {
            swarm.close_connection(c);
        }
        // Identify runs on the new connection and announces the owner then.
        self.held.remove(&peer);
    }

    /// A connection closed; `remaining` connections to the peer stay open.
    pub(super) fn on_closed(&mut self, peer: PeerId, connection: ConnectionId, remaining: u32) {
        self.relayed.remove(&connection);
        if remaining == 0 {
            // A relay must identify this node again on the next connection.
            self.identified.remove(&peer);
        }
        if let Some(d) = self.direct.get_mut(&peer) {
            d.remove(&connection);
            if d.is_empty() {
                self.direct.remove(&peer);
            }
        }
        if !self.relayed.values().any(|l| l.peer == peer) {
            // Its next connection decides again.
            self.held.remove(&peer);
        }
    }

    /// An owner identified itself. True when the volunteer must not announce it yet: it is reachable only through a
    /// relay and hole punching has not decided.
    pub(super) fn hold_host(&mut self, peer: PeerId) -> bool {
        if self.direct.contains_key(&peer) || !self.relayed.values().any(|l| l.peer == peer) {
            return false;
        }
        match self.held.get(&peer) {
            Some(_) => true,
            None => {
                info!(%peer, "reached this owner through a relay; trying to connect directly (hole punching)");
                self.held.insert(peer, Held { deadline: Some(Instant::now() + HOLE_PUNCH_WAIT) });
                true
            }
        }
    }

    /// DCUtR's outcome. Returns an owner to announce when it settles the wait.
    pub(super) fn on_dcutr(&mut self, event: dcutr::Event) -> Option<PeerId> {
        let peer = event.remote_peer_id;
        match event.result {
            Ok(_) => {
                info!(%peer, "connection upgraded to a direct one by hole punching");
                None
            }
            Err(e) => {
                if !self.held.contains_key(&peer) {
                    let relay = self.relay_to(peer).map(|(_, addr)| addr.to_string()).unwrap_or_else(|| "?".into());
                    info!(%peer, "hole punching failed ({e}); this peer is reached through relay {relay} only");
                    return None;
                }
                self.settle_without_direct(peer, &e.to_string()).then_some(peer)
            }
        }
    }

    /// Hole punching to a held owner failed: announce it if its relay carries data, otherwise say why this
    /// volunteer cannot work for it. True: announce.
    fn settle_without_direct(&mut self, peer: PeerId, why: &str) -> bool {
        if self.direct.contains_key(&peer) {
            self.held.remove(&peer);
            return true;
        }
        let Some((relay, relay_addr)) = self.relay_to(peer) else {
            self.held.remove(&peer);
            return false;
        };
        // A relay that never said what its circuits carry is taken to carry libp2p's default, no data.
        let data = self.circuit_limits.get(&relay).copied().unwrap_or(Some(128 << 10));
        if data.is_none_or(|bytes| bytes >= MIN_DATA_RELAY) {
            let carries = data.map_or("no limit".into(), |b| format!("up to {} per circuit", bytes_text(b)));
            warn!(%peer, "hole punching failed ({why}): working through relay {relay_addr}, which carries data ({carries})");
            self.held.remove(&peer);
            return true;
        }
        let carries = data.map_or(String::new(), |b| format!(" (at most {} per circuit)", bytes_text(b)));
        warn!(
            %peer,
            "this owner is reachable only through relay {relay_addr}, which carries no data{carries}, and hole punching \
             failed ({why}): this volunteer cannot fetch its files and takes no frames from it. Ask the owner for a \
             relay started with --data-limit, or to forward a port to the host; trying again when the circuit ends"
        );
        if let Some(h) = self.held.get_mut(&peer) {
            h.deadline = None;
        }
        false
    }

    /// The relay (its id and address) a relayed connection to `peer` goes through.
    fn relay_to(&self, peer: PeerId) -> Option<(PeerId, Multiaddr)> {
        self.relayed.values().find(|l| l.peer == peer).map(|l| (l.relay, l.relay_addr.clone()))
    }

    pub(super) fn on_client_event(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted { relay_peer_id, renewal, limit } => {
                debug!(relay = %relay_peer_id, renewal, ?limit, "reservation accepted");
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, limit } => {
                debug!(relay = %relay_peer_id, ?limit, "circuit through the relay established");
                self.circuit_limits.insert(relay_peer_id, limit.and_then(|l| l.data_in_bytes()));
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, limit } => {
                debug!(peer = %src_peer_id, ?limit, "a peer reached this node through a relay");
            }
        }
    }

    /// A relay (an AutoNAT server) dialled back, or failed to dial back, an address other nodes saw this owner use.
    /// (A dial-back that gets no answer, as behind a home router, ends in a timeout that libp2p does not report: only
    /// reachable addresses, and refusals, are heard of.)
    pub(super) fn on_autonat(&mut self, event: autonat::v2::client::Event) {
        if is_relayed(&event.tested_addr) {
            // A relayed address is reachable by definition while the reservation holds; nothing to learn.
            return;
        }
        let reachable = event.result.is_ok();
        if self.reachability.insert(event.tested_addr.clone(), reachable) == Some(reachable) {
            return;
        }
        let (addr, server) = (event.tested_addr, event.server);
        if reachable {
            info!("reachable directly at {addr}: confirmed by AutoNAT (peer {server} dialled it)");
        } else {
            info!(
                "cannot be reached directly at {addr} (AutoNAT: peer {server} could not dial it); volunteers \
                 outside this network come through a relay"
            );
        }
    }

    pub(super) fn on_server_event(&mut self, event: relay::Event) {
        match event {
            relay::Event::ReservationReqAccepted { src_peer_id, renewed, .. } => {
                if !renewed {
                    info!(peer = %src_peer_id, "relay: reserved a slot");
                }
            }
            relay::Event::CircuitReqAccepted { src_peer_id, dst_peer_id } => {
                info!(from = %src_peer_id, to = %dst_peer_id, "relay: circuit opened");
            }
            relay::Event::CircuitClosed { src_peer_id, dst_peer_id, error } => {
                debug!(from = %src_peer_id, to = %dst_peer_id, ?error, "relay: circuit closed");
            }
            relay::Event::ReservationReqDenied { src_peer_id, status } => {
                info!(peer = %src_peer_id, ?status, "relay: reservation refused");
            }
            relay::Event::CircuitReqDenied { src_peer_id, dst_peer_id, status } => {
                info!(from = %src_peer_id, to = %dst_peer_id, ?status, "relay: circuit refused");
            }
            other => debug!("relay: {other:?}"),
        }
    }
}

fn has_direct_listener(swarm: &Swarm<Behaviour>) -> bool {
    swarm.listeners().any(|a| !is_relayed(a))
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}
