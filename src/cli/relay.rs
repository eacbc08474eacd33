//! `blenderdist relay`: the relay's arguments and their conversion into [`crate::relay::RelayOptions`].

use std::path::PathBuf;

use clap::Args;
use libp2p::{multiaddr::Protocol, Multiaddr};

use super::{cache_dir, parse_addr, AddrError, SwarmKeyArgs};

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Address to listen on, HOST:PORT or a multiaddr; repeatable. Default: 0.0.0.0:7464.
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<String>,
    /// Let each circuit carry this many MiB (and last an hour), so files and frames can pass when hole punching
    /// fails. Default: coordination only (libp2p's limits: 128 KiB and 120 s per circuit).
    #[arg(long, value_name = "MB", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub data_limit: Option<u64>,
    /// Where the relay's key lives (relay.key: its peer id, which owners put in --relay). Default: the XDG cache
    /// dir (~/.cache/blenderdist).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Relay for a private farm only: its key, as at the end of the host's join line
    #[command(flatten)]
    pub key: SwarmKeyArgs,
}

impl RelayArgs {
    pub fn into_options(self) -> anyhow::Result<crate::relay::RelayOptions> {
        Ok(crate::relay::RelayOptions {
            listen: relay_listen(&self.listen)?,
            limits: crate::net::RelayLimits { data_bytes: self.data_limit.map(|mb| mb << 20) },
            key_file: cache_dir(self.state_dir.as_ref())?.join("relay.key"),
            swarm_key: self.key.key()?,
        })
    }
}

/// `--listen` of a relay (also `join --relay-listen`), or every interface on the default relay port.
pub(super) fn relay_listen(listen: &[String]) -> Result<Vec<Multiaddr>, AddrError> {
    if listen.is_empty() {
        let port = crate::net::relay::DEFAULT_RELAY_PORT;
        return Ok(vec![Multiaddr::from(std::net::Ipv4Addr::UNSPECIFIED).with(Protocol::Tcp(port))]);
    }
    listen.iter().map(|a| parse_addr(a)).collect()
}
