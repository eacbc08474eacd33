//! `blenderdist relay` (and the relay `join --relay` runs beside a volunteer): a node that only relays, for owners
//! behind home routers. It holds their reservations and carries circuits within its limits (see
//! [`crate::net::relay`]); it takes no work and serves no files.

use std::{future::Future, path::PathBuf, time::Duration};

use anyhow::Context as _;
use libp2p::{multiaddr::Protocol, Multiaddr, PeerId};
use tracing::info;

use crate::{
    net::{self, Client, NetConfig, NetEvent, RelayConfig, RelayLimits},
    store::keys,
};

/// What a relay is asked to do, in the library's own terms.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub listen: Vec<Multiaddr>,
    pub limits: RelayLimits,
    /// The relay's key: its peer id must stay the same across restarts, since owners name it in `--relay`.
    pub key_file: PathBuf,
    /// A private farm's key (`--swarm-key`): only its members can reach the relay, and so open circuits through it.
    /// A private host can use no other relay, since its connections all need the key.
    pub swarm_key: Option<crate::net::SwarmKey>,
}

/// A running relay. It relays until dropped.
pub struct RunningRelay {
    pub peer_id: PeerId,
    /// Its listen addresses, with `/p2p/ID`.
    pub addrs: Vec<Multiaddr>,
    /// Keeps the network running.
    _client: Client,
}

impl RunningRelay {
    /// The address to give owners: a public one if it listens on one, else any but loopback.
    pub fn best_addr(&self) -> Option<&Multiaddr> {
        let ip = |a: &Multiaddr| {
            a.iter().find_map(|p| match p {
                Protocol::Ip4(ip) => Some(ip),
                _ => None,
            })
        };
        let public = |a: &&Multiaddr| ip(a).is_some_and(|ip| !ip.is_private() && !ip.is_loopback());
        let not_loopback = |a: &&Multiaddr| ip(a).is_some_and(|ip| !ip.is_loopback());
        self.addrs.iter().find(public).or_else(|| self.addrs.iter().find(not_loopback)).or(self.addrs.first())
    }
}

/// Runs a relay until `shutdown` (the `relay` command), printing the address owners give to `host --relay`.
pub async fn run(options: RelayOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let limits = options.limits;
    let relay = start(options).await?;
    if let Some(addr) = relay.best_addr() {
        println!(
            "blenderdist relay {} is ready ({}). Owners behind a home router run:",
            relay.peer_id,
            limits.describe()
        );
        println!("    blenderdist host JOBDIR RENDERDIR --relay {addr}");
    }
    shutdown.await;
    info!("relay shutting down");
    Ok(())
}

/// Starts a relay and waits until it listens.
pub async fn start(options: RelayOptions) -> anyhow::Result<RunningRelay> {
    if let Some(dir) = options.key_file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the folder {}", dir.display()))?;
    }
    let keypair = keys::load_or_create(&options.key_file)?;
    let (client, mut events) = net::spawn_with(
        NetConfig {
            keypair,
            swarm_key: options.swarm_key.clone(),
            is_host: false,
            listen: options.listen.clone(),
            bootstrap: vec![],
            mdns: false,
            max_peers: crate::protocol::DEFAULT_MAX_PEERS,
        },
        RelayConfig { reserve_on: vec![], serve: Some(options.limits) },
    )?;
    let peer_id = client.peer_id();
    let mut addrs = Vec::new();
    let deadline = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(deadline);
    // An unspecified address yields one address per interface, all at once: collect them for a moment.
    loop {
        let settle = if addrs.len() >= options.listen.len() { 200 } else { 5000 };
        tokio::select! {
            event = events.recv() => match event {
                Some(NetEvent::Listening(addr)) => addrs.push(addr.with(Protocol::P2p(peer_id))),
                Some(NetEvent::ListenFailed(reason)) => anyhow::bail!("{reason}"),
                Some(_) => {}
                None => anyhow::bail!("the relay's network stopped"),
            },
            _ = tokio::time::sleep(Duration::from_millis(settle)) => break,
            _ = &mut deadline => break,
        }
    }
    anyhow::ensure!(!addrs.is_empty(), "the relay could not listen on any of {:?}", options.listen);
    for addr in &addrs {
        info!("relay {peer_id} reachable at {addr}");
    }
    // Nothing else comes of the events (work requests are not answered: a relay takes no work), but they must be
    // read, or the network loop would wait on a full channel.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    Ok(RunningRelay { peer_id, addrs, _client: client })
}
