//! The libp2p behaviour every blenderdist node runs, owner and volunteer alike.

use std::time::Duration;

use libp2p::{
    allow_block_list, autonat, connection_limits, dcutr, gossipsub, identify, identity::Keypair, mdns, ping, relay,
    request_response, swarm::behaviour::toggle::Toggle, swarm::NetworkBehaviour,
};

use crate::protocol::{
    WorkRequest, WorkResponse, IDENTIFY_PROTOCOL, MAX_CONNECTIONS_PER_PEER, MAX_OFFER, MAX_PENDING_INCOMING,
    MAX_STATUS_MESSAGE, MAX_WORK_MESSAGE, OFFER_TOPIC, UPDATE_TOPIC, WORK_PROTOCOL,
};

/// Agent string prefix an owner announces through identify, so volunteers can claim at once instead of waiting for
/// the next offer.
pub const HOST_AGENT: &str = "blenderdist-host/";
pub const VOLUNTEER_AGENT: &str = "blenderdist-volunteer/";

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// First, so connections over the limits or from banned peers are refused before any other behaviour spends
    /// anything on them.
    pub limits: connection_limits::Behaviour,
    /// Peers banned for overspending their budget (see `budget.rs`): their connections are closed and refused.
    pub banned: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    /// Off with `--no-mdns`, so parallel tests never see each other.
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub gossipsub: gossipsub::Behaviour,
    pub work: request_response::cbor::Behaviour<WorkRequest, WorkResponse>,
    pub stream: libp2p_stream::Behaviour,
    /// Relay v2 client: reservations on relays (owners behind NAT), dials through them (see `relay.rs`).
    pub relay_client: relay::client::Behaviour,
    /// Turns relayed connections into direct ones by hole punching.
    pub dcutr: dcutr::Behaviour,
    /// Relay v2 server, on `relay` and `join --relay` nodes only.
    pub relay_server: Toggle<relay::Behaviour>,
    /// AutoNAT v2 client, on owners: asks relays to dial back the public address they saw, to learn whether
    /// volunteers can reach the owner directly.
    pub autonat_client: Toggle<autonat::v2::client::Behaviour>,
    /// AutoNAT v2 server, beside the relay server.
    pub autonat_server: Toggle<autonat::v2::server::Behaviour>,
}

impl Behaviour {
    pub fn new(
        key: &Keypair,
        is_host: bool,
        use_mdns: bool,
        max_peers: u32,
        relay_client: relay::client::Behaviour,
        relay_server: Option<relay::Config>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let me = key.public().to_peer_id();
        let autonat_server = relay_server.is_some().then(autonat::v2::server::Behaviour::default);
        let autonat_client = is_host.then(autonat::v2::client::Behaviour::default);
        let relay_server = relay_server.map(|config| {
            let mut server = relay::Behaviour::new(me, config);
            // Its operator says it is reachable: offer the relay protocol without waiting for proof.
            server.set_status(Some(relay::Status::Enable));
            server
        });
        let agent = if is_host { HOST_AGENT } else { VOLUNTEER_AGENT };
        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                .with_agent_version(format!("{agent}{}", env!("CARGO_PKG_VERSION"))),
        );
        let mdns = if use_mdns {
            Some(mdns::tokio::Behaviour::new(mdns::Config::default(), key.public().to_peer_id())?)
        } else {
            None
        };
        let gossip_config = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(Duration::from_secs(1))
            .validation_mode(gossipsub::ValidationMode::Strict)
            // Nothing is forwarded before the event loop has judged it (see `gossip.rs`).
            .validate_messages()
            .max_transmit_size(MAX_OFFER + 4096)
            .build()?;
        let mut gossipsub =
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_config)?;
        let topics = [OFFER_TOPIC, UPDATE_TOPIC].map(|t| gossipsub::IdentTopic::new(t).hash());
        let (params, thresholds) = super::gossip::score_params(&topics);
        gossipsub.with_peer_score(params, thresholds)?;
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
            .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
            .with_max_established(Some(max_peers));
        let codec = request_response::cbor::codec::Codec::default()
            .set_request_size_maximum(MAX_WORK_MESSAGE)
            .set_response_size_maximum(MAX_STATUS_MESSAGE);
        let work = request_response::Behaviour::with_codec(
            codec,
            [(WORK_PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
        );
        Ok(Self {
            limits: connection_limits::Behaviour::new(limits),
            banned: allow_block_list::Behaviour::default(),
            identify,
            ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(5))),
            mdns: Toggle::from(mdns),
            gossipsub,
            work,
            stream: libp2p_stream::Behaviour::new(),
            relay_client,
            dcutr: dcutr::Behaviour::new(me),
            relay_server: Toggle::from(relay_server),
            autonat_client: Toggle::from(autonat_client),
            autonat_server: Toggle::from(autonat_server),
        })
    }
}
