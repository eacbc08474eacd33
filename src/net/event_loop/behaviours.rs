//! What the loop does with its behaviours' events: identify (roles, protocol versions), mDNS discoveries, gossip
//! (judged before it is forwarded), the work protocol's requests and answers, and the relay, hole-punching and
//! AutoNAT events it hands to `relay`.

use super::*;

impl EventLoop {
    pub(super) async fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, connection_id }) => {
                self.relays.on_identified(peer_id, connection_id);
                let role = if info.agent_version.starts_with(HOST_AGENT) { Role::Host } else { Role::NotHost };
                self.roles.insert(peer_id, role);
                if info.protocol_version != IDENTIFY_PROTOCOL {
                    let theirs = one_line(&info.protocol_version, 64);
                    warn!(%peer_id, "refusing peer: it speaks {theirs}, this node speaks {IDENTIFY_PROTOCOL}");
                    let host = info.agent_version.starts_with(HOST_AGENT);
                    let volunteer = info.agent_version.starts_with(VOLUNTEER_AGENT);
                    // An owner and a volunteer of different versions stay connected, so the volunteer can fetch the
                    // owner's build over the unversioned update protocol; no work passes between them (the work
                    // protocols are versioned). Anything else of another version is dropped.
                    let keep = if self.is_host { volunteer } else { host };
                    if !keep {
                        let _ = self.swarm.disconnect_peer_id(peer_id);
                    }
                    self.emit(NetEvent::Incompatible { peer: peer_id, theirs, host }).await;
                } else if info.agent_version.starts_with(HOST_AGENT) && !self.relays.hold_host(peer_id) {
                    self.emit(NetEvent::HostFound(peer_id)).await;
                }
            }
            // A peer that stops answering pings is treated as gone, so its frames are requeued promptly. One that
            // does not speak ping at all (another version, say) is not thereby dead.
            BehaviourEvent::Ping(ping::Event { peer, connection, result: Err(e) })
                if !matches!(e, ping::Failure::Unsupported) =>
            {
                debug!(%peer, "ping failed: {e}; closing the connection");
                self.swarm.close_connection(connection);
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                // Only volunteers dial what they discover; owners wait to be found.
                if self.is_host {
                    return;
                }
                for (peer, addr) in found {
                    let member = self.admission.may_dial_lan_peer(&peer, std::time::Instant::now());
                    if !member || self.swarm.is_connected(&peer) || !self.discovered.insert(peer) {
                        continue;
                    }
                    info!(%peer, %addr, "found a peer on the LAN");
                    let opts = DialOpts::peer_id(peer).addresses(vec![addr]).build();
                    if let Err(e) = self.swarm.dial(opts) {
                        debug!(%peer, "dial not started: {e}");
                        self.discovered.remove(&peer);
                    }
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message_id, message }) => {
                self.on_gossip(propagation_source, message_id, message).await;
            }
            BehaviourEvent::Work(event) => self.on_work_event(event).await,
            BehaviourEvent::RelayClient(event) => self.relays.on_client_event(event),
            BehaviourEvent::RelayServer(event) => self.relays.on_server_event(event),
            BehaviourEvent::AutonatClient(event) => self.relays.on_autonat(event),
            BehaviourEvent::Dcutr(event) => {
                if let Some(host) = self.relays.on_dcutr(event) {
                    self.emit(NetEvent::HostFound(host)).await;
                }
            }
            _ => {}
        }
    }

    async fn on_work_event(&mut self, event: request_response::Event<crate::protocol::WorkRequest, WorkResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    if !self.charge(peer, Charge::Request) {
                        // Dropping the channel fails the request on the peer's side.
                        debug!(%peer, "dropping a request: the peer is over its budget");
                        return;
                    }
                    self.emit(NetEvent::Request { peer, request, channel }).await;
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(reply) = self.pending_requests.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request { peer, reason: error.to_string() }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, "inbound work request failed: {error}");
                // An undecodable or oversized request is garbage; timeouts and closed connections are not.
                if matches!(error, request_response::InboundFailure::Io(_)) {
                    self.charge(peer, Charge::Strike);
                }
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Judges a gossip message before gossipsub forwards it (see [`gossip::judge`]): an owner's offer or manifest
    /// goes on to the node's owner, anything else goes nowhere and, if it was garbage or not an owner's, counts
    /// against the peer that sent it. Logged at debug level only: a peer must not be able to fill the log.
    async fn on_gossip(&mut self, via: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        let topic = if message.topic == self.topic.hash() {
            Some(Topic::Offers)
        } else if message.topic == self.update_topic.hash() {
            Some(Topic::Updates)
        } else {
            None
        };
        // Strict validation: `source` is the verified author, not the forwarding peer.
        let author = message.source.map_or(Role::NotHost, |a| self.roles.get(&a).copied().unwrap_or(Role::Unknown));
        let judgement = gossip::judge(topic, author, &message.data);
        self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&id, &via, judgement.acceptance());
        let Some(from) = message.source else { return };
        match judgement {
            Judgement::Accept(Gossip::Offer(offer)) => self.emit(NetEvent::Offer { from, offer }).await,
            Judgement::Accept(Gossip::Manifest(signed)) => self.emit(NetEvent::Manifest { from, signed }).await,
            Judgement::Reject(why) => {
                debug!(%via, author = %from, "rejected a gossip message: {why}");
                self.charge(via, Charge::Strike);
            }
            Judgement::Ignore => debug!(%via, author = %from, "ignored a gossip message from an unknown author"),
        }
    }
}
