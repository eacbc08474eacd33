//! What a node does with relays, the relay limits, and relayed addresses: the plain data of [`super`].

use libp2p::{multiaddr::Protocol, relay, Multiaddr, PeerId};
use tokio::time::Duration;

/// The TCP port `blenderdist relay` and `join --relay` listen on by default.
pub const DEFAULT_RELAY_PORT: u16 = 7464;
/// How long a volunteer waits for hole punching to give it a direct connection to an owner it reached through a
/// relay, before deciding it has only the relay.
pub const HOLE_PUNCH_WAIT: Duration = Duration::from_secs(30);
/// A relay that lets a circuit carry less than this carries coordination only: no blob or frame goes through it.
pub const MIN_DATA_RELAY: u64 = 1 << 20;
/// How long circuits last on a relay whose operator allowed data (`--data-limit`); libp2p's default is 120 s.
pub const DATA_CIRCUIT_DURATION: Duration = Duration::from_secs(3600);
/// Pause before a lost reservation is asked for again, or a relay is dialled again.
pub(super) const RETRY: Duration = Duration::from_secs(5);

/// What a node does with relays, besides the `super::NetConfig` every node has.
#[derive(Debug, Clone, Default)]
pub struct RelayConfig {
    /// Relays to hold a reservation on (an owner behind NAT), each a full address ending in `/p2p/ID`.
    pub reserve_on: Vec<Multiaddr>,
    /// Serve other nodes as a relay (`relay`, `join --relay`); `None`: this node relays nothing.
    pub serve: Option<RelayLimits>,
}

/// What a relay this node runs lets each circuit carry.
#[derive(Debug, Clone, Copy, Default)]
pub struct RelayLimits {
    /// Bytes one circuit may carry (both directions together); `None`: libp2p's default, 128 KiB for 120 s, which is
    /// enough for coordination and hole punching, not for files.
    pub data_bytes: Option<u64>,
}

impl RelayLimits {
    /// The relay server's configuration: libp2p's defaults, or the operator's data limit for an hour per circuit.
    pub fn server_config(&self) -> relay::Config {
        let mut config = relay::Config::default();
        if let Some(bytes) = self.data_bytes {
            config.max_circuit_bytes = bytes;
            config.max_circuit_duration = DATA_CIRCUIT_DURATION;
        }
        config
    }

    /// The limits in words, for the relay's ready line.
    pub fn describe(&self) -> String {
        let config = self.server_config();
        format!(
            "circuits carry at most {} and last at most {} s",
            bytes_text(config.max_circuit_bytes),
            config.max_circuit_duration.as_secs()
        )
    }
}

pub(super) fn bytes_text(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// Whether an address goes through a relay.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// The relay part of a relayed address: everything before `/p2p-circuit`, and the relay's peer id.
pub fn relay_of(addr: &Multiaddr) -> Option<(Multiaddr, PeerId)> {
    let mut prefix = Multiaddr::empty();
    let mut relay = None;
    for p in addr.iter() {
        match p {
            Protocol::P2pCircuit => return relay.map(|r| (prefix, r)),
            Protocol::P2p(peer) => {
                relay = Some(peer);
                prefix.push(p);
            }
            other => prefix.push(other),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_of_a_relayed_address() {
        let relay = PeerId::random();
        let host = PeerId::random();
        let addr: Multiaddr = format!("/ip4/203.0.113.5/tcp/7464/p2p/{relay}/p2p-circuit/p2p/{host}").parse().unwrap();
        let (prefix, peer) = relay_of(&addr).unwrap();
        assert_eq!(peer, relay);
        assert_eq!(prefix.to_string(), format!("/ip4/203.0.113.5/tcp/7464/p2p/{relay}"));
        assert!(is_relayed(&addr));
        let direct: Multiaddr = format!("/ip4/203.0.113.5/tcp/7463/p2p/{host}").parse().unwrap();
        assert!(relay_of(&direct).is_none());
        assert!(!is_relayed(&direct));
    }

    #[test]
    fn limits_in_words() {
        assert_eq!(RelayLimits::default().describe(), "circuits carry at most 128 KiB and last at most 120 s");
        let data = RelayLimits { data_bytes: Some(500 << 20) };
        assert_eq!(data.describe(), "circuits carry at most 500 MiB and last at most 3600 s");
    }
}
