//! Addresses and dial failures in words a person can act on.

use libp2p::{multiaddr::Protocol, Multiaddr, PeerId};

/// The peer an address leads to: its last `/p2p/ID` part (a relayed address names the relay first), if any.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter()
        .filter_map(|p| match p {
            Protocol::P2p(peer) => Some(peer),
            _ => None,
        })
        .last()
}

/// Why a dial failed, in words a person can act on: refused, timed out, the wrong peer, or the transport's own text
/// (a failed handshake, another farm).
pub(super) fn dial_reason(error: &libp2p::swarm::DialError) -> String {
    use libp2p::swarm::DialError;
    match error {
        DialError::WrongPeerId { obtained, .. } => {
            format!("another node answers there (peer id {obtained}, not the one in the address)")
        }
        DialError::Transport(attempts) => {
            let reasons: Vec<String> = attempts.iter().map(|(_, e)| transport_reason(e)).collect();
            reasons.join("; ")
        }
        other => other.to_string(),
    }
}

const CLOSED_EARLY: &str = "it closed the connection during the handshake (busy, at its connection limits, ignoring \
                            this node for a while, or not a blenderdist node)";

/// A dial error's whole text, every transport attempt and every error in each chain, for recognising its kind.
pub(super) fn dial_text(error: &libp2p::swarm::DialError) -> String {
    match error {
        libp2p::swarm::DialError::Transport(attempts) => {
            attempts.iter().map(|(_, e)| chain_text(e)).collect::<Vec<_>>().join("; ")
        }
        other => chain_text(other),
    }
}

/// An error and its sources, joined by colons.
pub(super) fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn transport_reason(error: &(dyn std::error::Error + 'static)) -> String {
    // The io::Error underneath is wrapped in types that do not expose it as a source; its words are reliable.
    let text = chain_text(error);
    let lower = text.to_lowercase();
    let known = [
        ("connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("no route to host", "no route to the host"),
        ("network is unreachable", "the network is unreachable"),
        // The other side closed the connection mid-handshake: at its connection limits, ignoring this node, or
        // not a blenderdist node at all.
        ("broken pipe", CLOSED_EARLY),
        ("connection reset", CLOSED_EARLY),
        ("noise", "the secure handshake failed (not a blenderdist node, or another farm)"),
        ("multistream", "it does not speak blenderdist's protocols"),
    ];
    match known.iter().find(|(words, _)| lower.contains(words)) {
        Some((_, reason)) => (*reason).to_string(),
        None => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}
