//! `blenderdist host`: the owner's arguments and their conversion into a [`crate::host::HostConfig`].

use std::path::PathBuf;

use clap::Args;
use libp2p::{multiaddr::Protocol, Multiaddr};

use super::{parse_addr, AddrError, SwarmKeyArgs};
use crate::net::DEFAULT_PORT;

#[derive(Debug, Args)]
pub struct HostArgs {
    /// Folder watched for NAME.job files.
    pub jobdir: PathBuf,
    /// Folder receiving the frames, in RENDERDIR/NAME/.
    pub renderdir: PathBuf,
    /// Address to listen on, HOST:PORT or a multiaddr; repeatable. Default: 0.0.0.0:7463.
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<String>,
    /// Do not announce this host on the LAN by mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Where the node key and the durable job state live. Default: RENDERDIR/.blenderdist.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Builds of blenderdist for other platforms, each file named by its target triple
    /// (x86_64-apple-darwin, x86_64-pc-windows-msvc.exe, ...), offered to volunteers as updates.
    #[arg(long, value_name = "DIR")]
    pub release_dir: Option<PathBuf>,
    /// The owner's Blender, used to list the files each .blend needs (default: $BLENDER, then `blender` on PATH;
    /// without one, every .blend travels alone)
    #[arg(long, value_name = "PATH")]
    pub blender: Option<PathBuf>,
    /// Serve a read-only dashboard on this address (e.g. 127.0.0.1:8080); off unless given
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    /// Ask the home router (UPnP) to forward a TCP port to this host, and print a join line with the router's
    /// external address; the mapping is renewed while the host runs and removed when it stops. Off unless given:
    /// it sends SSDP multicast to the local network
    #[arg(long)]
    pub upnp: bool,
    /// With --upnp: map the port even when the router's external address is private (a LAN nested behind another
    /// LAN, a test lab); without it such a mapping is refused, since volunteers on the internet could not use it
    #[arg(long, requires = "upnp")]
    pub upnp_allow_private: bool,
    /// With --upnp: the lease to ask the router for, in seconds (renewed at half of it). For tests of the renewal.
    #[arg(long, value_name = "SECS", hide = true, requires = "upnp", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(2..=86_400))]
    pub upnp_lease: u64,
    /// Make the farm private: only nodes holding its key can connect. The key is made on the first run, kept in
    /// the state folder (swarm.key, mode 0600) and printed in the join line
    #[arg(long)]
    pub private: bool,
    /// With --swarm-key or --swarm-key-file: a private farm with that key (several hosts sharing one farm)
    #[command(flatten)]
    pub key: SwarmKeyArgs,
    /// A relay to reach this host through, when it sits behind a home router: the relay's full address
    /// (/ip4/…/tcp/7464/p2p/ID, as `blenderdist relay` prints it); repeatable. The join line then gives the relayed
    /// address.
    #[arg(long = "relay", value_name = "ADDR")]
    pub relay: Vec<String>,
}

impl HostArgs {
    /// The host's configuration: addresses parsed, defaults filled in.
    pub fn into_config(self) -> anyhow::Result<crate::host::HostConfig> {
        let listen = if self.listen.is_empty() {
            vec![Multiaddr::from(std::net::Ipv4Addr::UNSPECIFIED).with(Protocol::Tcp(DEFAULT_PORT))]
        } else {
            self.listen.iter().map(|a| parse_addr(a)).collect::<Result<_, _>>()?
        };
        let state_dir = self.state_dir.unwrap_or_else(|| self.renderdir.join(".blenderdist"));
        let privacy = match self.key.key()? {
            Some(key) => crate::net::Privacy::Key(key),
            None if self.private => crate::net::Privacy::OwnKey,
            None => crate::net::Privacy::Open,
        };
        Ok(crate::host::HostConfig {
            jobdir: self.jobdir,
            renderdir: self.renderdir,
            state_dir,
            listen,
            mdns: !self.no_mdns,
            scheduler: crate::scheduler::SchedulerConfig::default(),
            release_dir: self.release_dir,
            blender: crate::host::owners_blender(self.blender),
            http: self.http,
            finish: Default::default(),
            upnp: self.upnp.then_some(crate::net::upnp::UpnpConfig {
                allow_private: self.upnp_allow_private,
                lease: std::time::Duration::from_secs(self.upnp_lease),
            }),
            privacy,
            relays: self.relay.iter().map(|a| relay_addr(a)).collect::<Result<_, _>>()?,
            #[cfg(feature = "testing")]
            without_deliveries: false,
        })
    }
}

/// A relay's address as owners give it: a multiaddr ending in the relay's `/p2p/ID`.
fn relay_addr(text: &str) -> Result<Multiaddr, AddrError> {
    let addr = parse_addr(text)?;
    match addr.iter().last() {
        Some(Protocol::P2p(_)) if !crate::net::relay::is_relayed(&addr) => Ok(addr),
        _ => Err(AddrError {
            text: text.to_string(),
            reason: "a relay's address must end in /p2p/ID, as `blenderdist relay` prints it".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_address_must_name_the_relay() {
        let id = libp2p::PeerId::random();
        let good = format!("/ip4/203.0.113.7/tcp/7464/p2p/{id}");
        assert_eq!(relay_addr(&good).unwrap().to_string(), good);
        for bad in ["203.0.113.7:7464".to_string(), format!("{good}/p2p-circuit/p2p/{id}")] {
            let e = relay_addr(&bad).unwrap_err().to_string();
            assert!(e.contains("must end in /p2p/ID"), "{e}");
        }
    }
}
