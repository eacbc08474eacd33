//! What the host prints once it listens: how volunteers reach it (directly, through a relay only, by a UPnP port
//! mapping) and the join lines to give them, with a private farm's key.

use libp2p::{multiaddr::Protocol, Multiaddr};

use super::RunningHost;
use crate::net;

/// The ready line and the join lines: how volunteers reach the host (directly, or through a relay only); with
/// `--upnp`, the address through the router's port mapping first (or why there is none), then the one on this host's
/// own network. A private farm's join lines carry its key.
pub(super) fn print_ready(host: &RunningHost, relays: &[Multiaddr]) {
    let id = host.peer_id;
    let key = host.swarm_key.as_ref().map_or(String::new(), |k| format!(" --swarm-key {}", k.to_hex()));
    let local = join_address(&host.addrs, relays);
    match (&host.upnp, local) {
        (Some(Ok(mapped)), local) => {
            let external = mapped.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect::<Multiaddr>();
            println!("blenderdist host {id} is ready; port mapped by UPnP: {external}. On each volunteer machine run:");
            println!("    blenderdist join {mapped}{key}");
            if let Some((addr, _)) = local {
                println!("or, on this host's own network:");
                println!("    blenderdist join {addr}{key}");
            }
        }
        (Some(Err(reason)), Some((addr, reach))) => {
            println!("blenderdist host {id} is ready, {reach}; no port mapped by UPnP: {reason}.");
            println!("On each volunteer machine that can reach this one run:");
            println!("    blenderdist join {addr}{key}");
        }
        (Some(Err(reason)), None) => println!("blenderdist host {id} is ready; no port mapped by UPnP: {reason}."),
        (None, Some((addr, reach))) => {
            println!("blenderdist host {id} is ready, {reach}. On each volunteer machine run:");
            println!("    blenderdist join {addr}{key}");
        }
        (None, None) => {}
    }
}

/// The address to print in the join line, and how volunteers reach the host, in words for the ready line: a
/// non-loopback IPv4 address when there is one; a relayed address when the host holds a reservation and listens on
/// no public address (through the first relay in `relays`, the owner's `--relay`, that gave it a slot).
fn join_address<'a>(addrs: &'a [Multiaddr], relays: &[Multiaddr]) -> Option<(&'a Multiaddr, String)> {
    let is_loopback = |a: &Multiaddr| a.iter().any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_loopback()));
    let (relayed, direct): (Vec<&Multiaddr>, Vec<&Multiaddr>) = addrs.iter().partition(|a| net::relay::is_relayed(a));
    let public =
        direct.iter().find(|a| a.iter().any(|p| matches!(p, Protocol::Ip4(ip) if net::upnp::is_public(ip.into()))));
    // A relay hands out every address it has; the one the owner named is the one known to work.
    let named =
        relays.iter().find_map(|r| relayed.iter().find(|a| net::relay::relay_of(a).is_some_and(|(p, _)| p == *r)));
    match (public, named.or(relayed.first())) {
        (None, Some(relayed)) => {
            let relay = net::relay::relay_of(relayed).map_or_else(|| relayed.to_string(), |(r, _)| r.to_string());
            Some((relayed, format!("reachable through relay {relay} only")))
        }
        _ => {
            let best = public.copied().or_else(|| direct.iter().copied().find(|a| !is_loopback(a)));
            let reach = if public.is_none() && !relays.is_empty() {
                "reachable directly on its own network only: no relay has given it a slot yet (see the log)"
            } else {
                "reachable directly"
            };
            best.or(direct.first().copied()).map(|a| (a, reach.to_string()))
        }
    }
}
