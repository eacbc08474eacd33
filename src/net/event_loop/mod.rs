//! The loop that owns the `Swarm`: it turns swarm events into [`NetEvent`]s and [`Command`]s into swarm calls, and
//! keeps the bootstrap peers connected. It also enforces the peers' bounds: it charges their requests to their
//! budget, judges gossip before it is forwarded, and carries out bans (closing and refusing connections).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use futures::StreamExt;
use libp2p::{
    gossipsub, identify, mdns, ping, request_response,
    swarm::{dial_opts::DialOpts, ConnectionId, SwarmEvent},
    Multiaddr, PeerId, Swarm,
};
use tokio::{
    sync::{mpsc, oneshot},
    time::{Duration, Instant},
};
use tracing::{debug, info, warn};

use super::{
    behaviour::{Behaviour, BehaviourEvent, HOST_AGENT, VOLUNTEER_AGENT},
    budget::{Budgets, Charge},
    dial::{chain_text, dial_reason, dial_text, peer_of},
    gossip::{self, Gossip, Judgement, Role, Topic},
    lock,
    private::Admission,
    relay::{RelayConfig, Relays},
    Command, NetError, NetEvent, REDIAL_MAX, REDIAL_MIN,
};
mod behaviours;

use crate::protocol::{encode_offer, one_line, to_cbor, WorkResponse, IDENTIFY_PROTOCOL, OFFER_TOPIC, UPDATE_TOPIC};

/// A bootstrap address we keep a connection to.
struct Bootstrap {
    addr: Multiaddr,
    /// Known from the address's `/p2p/` part, or learnt on the first connection.
    peer: Option<PeerId>,
    connected: bool,
    /// The dial in flight, to recognise its connection even when the address was a DNS name.
    dialing: Option<ConnectionId>,
    next_dial: Instant,
    backoff: Duration,
}

pub(super) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    topic: gossipsub::IdentTopic,
    update_topic: gossipsub::IdentTopic,
    pending_requests: HashMap<request_response::OutboundRequestId, oneshot::Sender<Result<WorkResponse, NetError>>>,
    bootstrap: Vec<Bootstrap>,
    /// Peers seen by mDNS that we are dialling or connected to, so each is dialled once.
    discovered: HashSet<PeerId>,
    is_host: bool,
    /// What each connected peer said it is, for judging the gossip it authors.
    roles: HashMap<PeerId, Role>,
    /// Every peer's budget; shared with the [`super::Client`]s, which charge streams and strikes.
    budgets: Arc<Mutex<Budgets>>,
    /// The private farm's key, and what the loop remembers of peers refused over it.
    pub(super) admission: Admission,
    /// Reservations on relays, relayed connections and hole punching (see `relay.rs`).
    relays: Relays,
}

impl EventLoop {
    pub(super) fn new(
        mut swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<NetEvent>,
        bootstrap: Vec<Multiaddr>,
        is_host: bool,
        budgets: Arc<Mutex<Budgets>>,
    ) -> Result<Self, String> {
        let topic = gossipsub::IdentTopic::new(OFFER_TOPIC);
        swarm.behaviour_mut().gossipsub.subscribe(&topic).map_err(|e| e.to_string())?;
        let update_topic = gossipsub::IdentTopic::new(UPDATE_TOPIC);
        swarm.behaviour_mut().gossipsub.subscribe(&update_topic).map_err(|e| e.to_string())?;
        let now = Instant::now();
        let bootstrap = bootstrap
            .into_iter()
            .map(|addr| Bootstrap {
                peer: peer_of(&addr),
                addr,
                connected: false,
                dialing: None,
                next_dial: now,
                backoff: REDIAL_MIN,
            })
            .collect();
        Ok(Self {
            swarm,
            commands,
            events,
            topic,
            update_topic,
            pending_requests: HashMap::new(),
            bootstrap,
            discovered: HashSet::new(),
            is_host,
            roles: HashMap::new(),
            budgets,
            admission: Admission::default(),
            relays: Relays::new(&RelayConfig::default()),
        })
    }

    pub(super) fn with_relays(mut self, relays: Relays) -> Self {
        if relays.only_relays() {
            // A relay takes no work: it need not hear offers or manifests (nor pass them on).
            let gossip = &mut self.swarm.behaviour_mut().gossipsub;
            let _ = gossip.unsubscribe(&self.topic);
            let _ = gossip.unsubscribe(&self.update_topic);
        }
        Self { relays, ..self }
    }

    pub(super) async fn run(mut self) {
        for b in &self.bootstrap {
            info!("dialling {}", b.addr);
        }
        let mut redial = tokio::time::interval(REDIAL_MIN / 2);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event).await,
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    // Every client is gone: the node is shutting down.
                    None => return,
                },
                // Bootstrap peers that went away are redialled on a capped backoff, so volunteers resume by themselves;
                // bans decided by clients are carried out, and ended bans lifted.
                _ = redial.tick() => {
                    self.redial();
                    self.apply_bans();
                    for host in self.relays.tick(&mut self.swarm) {
                        self.emit(NetEvent::HostFound(host)).await;
                    }
                }
            }
        }
    }

    fn redial(&mut self) {
        let now = Instant::now();
        // One dial at a time per address, so a host that swallows SYNs does not collect a pile of pending dials;
        // a dial with no answer for 10 s is given up on.
        let due = |b: &Bootstrap| match b.dialing {
            None => b.next_dial <= now,
            Some(_) => b.next_dial + Duration::from_secs(10) <= now,
        };
        for b in self.bootstrap.iter_mut().filter(|b| !b.connected && due(b)) {
            if !self.relays.ready_to_dial(&mut self.swarm, &b.addr) {
                continue;
            }
            debug!(addr = %b.addr, "dialling bootstrap peer");
            let opts = match b.peer {
                Some(peer) => DialOpts::peer_id(peer).addresses(vec![b.addr.clone()]).build(),
                None => DialOpts::unknown_peer_id().address(b.addr.clone()).build(),
            };
            b.dialing = Some(opts.connection_id());
            if let Err(e) = self.swarm.dial(opts) {
                debug!(addr = %b.addr, "dial not started: {e}");
                b.dialing = None;
            }
            b.next_dial = now + b.backoff;
            b.backoff = (b.backoff * 2).min(REDIAL_MAX);
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Request { peer, request, reply } => {
                let id = self.swarm.behaviour_mut().work.send_request(&peer, request);
                self.pending_requests.insert(id, reply);
            }
            Command::Respond { peer, channel, response } => {
                if matches!(response, WorkResponse::Refused { .. }) {
                    self.charge(peer, Charge::Strike);
                }
                // Fails only when the peer is gone or the request timed out; the peer retries on its own.
                if self.swarm.behaviour_mut().work.send_response(channel, response).is_err() {
                    debug!("response not sent: the requesting peer is gone");
                }
            }
            Command::Publish { offer } => match encode_offer(&offer) {
                Ok(bytes) => {
                    if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), bytes) {
                        // Normal until a volunteer subscribes; offers are re-published periodically.
                        debug!("offer not published: {e}");
                    }
                }
                Err(e) => warn!("offer not encodable: {e}"),
            },
            Command::PublishManifest { manifest } => match to_cbor(&manifest) {
                Ok(bytes) => {
                    if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(self.update_topic.clone(), bytes) {
                        debug!("manifest not published: {e}");
                    }
                }
                Err(e) => warn!("manifest not encodable: {e}"),
            },
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::ApplyBans => self.apply_bans(),
            Command::AddExternalAddress { addr } => self.swarm.add_external_address(addr),
            Command::Dial { peer, addrs, reply } => {
                if !self.swarm.is_connected(&peer) && !addrs.is_empty() {
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        debug!(%peer, "dial not started: {e}");
                    }
                }
                let _ = reply.send(());
            }
        }
    }

    /// Charges `peer`; false when it is (now) banned, which is carried out at once.
    fn charge(&mut self, peer: PeerId, charge: Charge) -> bool {
        let allowed = lock(&self.budgets).charge(peer, charge, std::time::Instant::now());
        if !allowed {
            self.apply_bans();
        }
        allowed
    }

    /// Closes and refuses the connections of newly banned peers, and accepts again those whose ban ended.
    fn apply_bans(&mut self) {
        let (bans, lifted) = {
            let mut budgets = lock(&self.budgets);
            (budgets.take_new_bans(), budgets.lift_expired(std::time::Instant::now()))
        };
        for ban in bans {
            // One line per ban, not per message: a peer that floods cannot flood the log too.
            info!(peer = %ban.peer, "ignoring this peer for {} s: {}", ban.length.as_secs(), ban.reason);
            self.swarm.behaviour_mut().banned.block_peer(ban.peer);
        }
        for peer in lifted {
            debug!(%peer, "ban over");
            self.swarm.behaviour_mut().banned.unblock_peer(peer);
        }
    }

    async fn emit(&mut self, event: NetEvent) {
        // The receiver only goes away at shutdown.
        let _ = self.events.send(event).await;
    }

    async fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!("listening on {address}");
                self.relays.on_new_listen_addr(&mut self.swarm, &address);
                self.emit(NetEvent::Listening(address)).await;
            }
            SwarmEvent::ListenerClosed { listener_id, reason, .. }
                if self.relays.on_listener_closed(listener_id, reason.as_ref().err().map(|e| e.to_string())) => {}
            SwarmEvent::ListenerError { listener_id, error } if self.relays.owns_listener(listener_id) => {
                warn!("relay reservation: {error}");
            }
            SwarmEvent::ListenerClosed { addresses, reason: Err(e), .. } => {
                let shown: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
                self.emit(NetEvent::ListenFailed(format!("cannot listen on {}: {e}", shown.join(", ")))).await;
            }
            SwarmEvent::ListenerError { error, .. } => {
                self.emit(NetEvent::ListenFailed(format!("listener error: {error}"))).await;
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                debug!(%peer_id, "connected");
                self.relays.on_established(&mut self.swarm, peer_id, connection_id, &endpoint);
                for b in &mut self.bootstrap {
                    if b.peer == Some(peer_id) || b.dialing == Some(connection_id) {
                        b.peer = Some(peer_id);
                        b.connected = true;
                        self.admission.connected(&b.addr);
                        b.dialing = None;
                        b.backoff = REDIAL_MIN;
                    }
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, .. } if num_established > 0 => {
                self.relays.on_closed(peer_id, connection_id, num_established);
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established: 0, cause, .. } => {
                debug!(%peer_id, ?cause, "disconnected");
                self.relays.on_closed(peer_id, connection_id, 0);
                self.discovered.remove(&peer_id);
                self.roles.remove(&peer_id);
                lock(&self.budgets).forget(&peer_id);
                let now = Instant::now();
                for b in self.bootstrap.iter_mut().filter(|b| b.peer == Some(peer_id)) {
                    b.connected = false;
                    b.next_dial = now + REDIAL_MIN;
                }
                self.emit(NetEvent::PeerGone(peer_id)).await;
            }
            SwarmEvent::OutgoingConnectionError { peer_id, connection_id, error } => {
                let text = dial_text(&error);
                debug!(?peer_id, "dial failed: {text}");
                let now = Instant::now();
                for b in self.bootstrap.iter_mut().filter(|b| b.dialing == Some(connection_id)) {
                    b.dialing = None;
                    // A key mismatch is said once per address: retrying cannot fix it, only a new join line can.
                    match self.admission.dial_refused(&b.addr, &text) {
                        Some((words, true)) => warn!("cannot join {}: {words}", b.addr),
                        Some((words, false)) => debug!("cannot join {}: {words}", b.addr),
                        None => {
                            // Said at the default level: a volunteer with a mistyped address must not wait in silence.
                            let retry = b.next_dial.saturating_duration_since(now).as_secs_f64().ceil();
                            warn!("cannot reach {}: {}; retrying in {retry} s", b.addr, dial_reason(&error));
                        }
                    }
                }
                // A relayed join address is reached by dialling its relay first: a private farm's relay refusing the
                // key is the farm refusing it.
                let through = |b: &&Bootstrap| {
                    !b.connected && peer_id.is_some() && super::relay::relay_of(&b.addr).map(|r| r.1) == peer_id
                };
                for b in self.bootstrap.iter().filter(through) {
                    match self.admission.dial_refused(&b.addr, &text) {
                        Some((words, true)) => warn!("cannot join {} through its relay: {words}", b.addr),
                        Some((words, false)) => debug!("cannot join {} through its relay: {words}", b.addr),
                        None => {}
                    }
                }
                if let Some(peer) = peer_id {
                    let lan = self.discovered.remove(&peer);
                    if let Some(words) =
                        lan.then(|| self.admission.lan_dial_failed(peer, &text, now.into_std())).flatten()
                    {
                        // A node of another farm (or of this one with another key) on the LAN: not redialled for a
                        // while, and said once rather than at every mDNS announcement.
                        let minutes = super::private::LAN_REFUSED_FOR.as_secs() / 60;
                        info!(%peer, "peer found on the LAN: {words}; leaving it alone for {minutes} minutes");
                    }
                }
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                // Junk bytes, port scans and half-open handshakes end here; they cost the node nothing else.
                let text = chain_text(&error);
                debug!(%send_back_addr, "incoming connection failed: {text}");
                if let Some(count) = self.admission.incoming_refused(&text, std::time::Instant::now()) {
                    info!(%send_back_addr, "refused {count} connection(s) from nodes without this private farm's key");
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event).await,
            _ => {}
        }
    }
}
