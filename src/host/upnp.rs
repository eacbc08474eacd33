//! `host --upnp`: the host's side of a router port mapping ([`crate::net::upnp`]): create it once the listeners
//! are up, advertise its address, keep it while the host runs and delete it when the host stops.

use std::net::SocketAddr;

use libp2p::{multiaddr::Protocol, Multiaddr, PeerId};
use tokio::{sync::oneshot, task::JoinHandle};
use tracing::{info, warn};

use crate::net::{
    upnp::{PortMapping, UpnpConfig},
    Client,
};

/// What `--upnp` achieved, for the ready line: the join address through the mapping, or why there is none.
pub type UpnpOutcome = Result<Multiaddr, String>;

/// The host task's end of the mapping: [`MappingSlot::release`] removes the mapping (if one was made, even one
/// still being made) once the host's loop has stopped.
pub(super) struct MappingSlot(oneshot::Receiver<MappingKeeper>);

impl MappingSlot {
    pub(super) async fn release(self) {
        if let Ok(keeper) = self.0.await {
            keeper.stop().await;
        }
    }
}

/// A slot for the mapping, and the sender [`map`] fills it through.
pub(super) fn slot() -> (oneshot::Sender<MappingKeeper>, MappingSlot) {
    let (tx, rx) = oneshot::channel();
    (tx, MappingSlot(rx))
}

/// The task keeping the mapping alive; [`MappingKeeper::stop`] deletes it.
pub(super) struct MappingKeeper {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl MappingKeeper {
    /// Deletes the mapping (bounded in time) and waits for that.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// With `config` (`--upnp`): maps a port to one of `addrs` (the host's listen addresses), advertises the external
/// address and hands the mapping to the host's task through `slot`. Never fails the host: without a mapping it
/// still serves the volunteers that can reach it, and the outcome says why.
pub(super) async fn map(
    config: Option<UpnpConfig>,
    addrs: &[Multiaddr],
    client: &Client,
    peer_id: PeerId,
    slot: oneshot::Sender<MappingKeeper>,
) -> Option<UpnpOutcome> {
    let config = config?;
    let (outcome, keeper) = create(&config, addrs, client, peer_id).await;
    if let Some(Err(keeper)) = keeper.map(|keeper| slot.send(keeper)) {
        // The host's task is gone already: nothing else will remove the mapping.
        keeper.stop().await;
    }
    Some(outcome)
}

async fn create(
    config: &UpnpConfig,
    addrs: &[Multiaddr],
    client: &Client,
    peer_id: PeerId,
) -> (UpnpOutcome, Option<MappingKeeper>) {
    let listening: Vec<SocketAddr> = addrs.iter().filter_map(tcp_socket_addr).collect();
    let mapping = match PortMapping::create(&listening, config).await {
        Ok(mapping) => mapping,
        Err(e) => {
            warn!("no port mapped by UPnP: {e}");
            return (Err(e.to_string()), None);
        }
    };
    info!("port mapped by UPnP: {} forwards to {}", mapping.external, mapping.internal);
    let external = mapping.multiaddr();
    if client.add_external_address(external.clone()).await.is_err() {
        warn!("the network stopped before the UPnP address could be advertised");
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(mapping.keep(async move {
        let _ = stopped.await;
    }));
    (Ok(external.with(Protocol::P2p(peer_id))), Some(MappingKeeper { stop, task }))
}

/// `/ip4/A/tcp/P[/p2p/ID]` as a socket address.
fn tcp_socket_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut parts = addr.iter();
    let ip = match parts.next()? {
        Protocol::Ip4(ip) => std::net::IpAddr::V4(ip),
        Protocol::Ip6(ip) => std::net::IpAddr::V6(ip),
        _ => return None,
    };
    match parts.next()? {
        Protocol::Tcp(port) => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}
