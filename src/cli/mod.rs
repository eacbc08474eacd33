//! The command line. The words here are relied on by scripts and tests: change them only with the docs.
//!
//! This module holds the top-level [`Cli`] and [`Command`], and what several commands share (addresses, the
//! private farm's key, the cache folder); each command's arguments and their conversion into the library's own
//! options live in a file named for the command.

mod generate;
mod host;
mod join;
mod relay;
mod status;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use libp2p::{multiaddr::Protocol, Multiaddr};

pub use self::{
    generate::{Generate, GenerateArgs},
    host::HostArgs,
    join::JoinArgs,
    relay::RelayArgs,
    status::StatusArgs,
};
use crate::net::DEFAULT_PORT;

#[derive(Debug, Parser)]
#[command(name = "blenderdist", version, about = "A peer-to-peer render farm for Blender")]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Check that this build works, print a line ending in "self-check ok" and exit (used before switching builds).
    #[arg(long)]
    pub self_check: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Own a job folder: render its jobs on the volunteers that join, writing frames to RENDERDIR/NAME/.
    Host(HostArgs),
    /// Volunteer this machine's Blender to render frames for hosts.
    Join(JoinArgs),
    /// Show a running host's jobs (progress, ETA) and volunteers.
    Status(StatusArgs),
    /// Relay for owners behind home routers (run it on a machine with a public address): volunteers reach such an
    /// owner through it, then connect directly by hole punching.
    Relay(RelayArgs),
    /// Write shell completions or man pages (see scripts/install.sh).
    Generate(GenerateArgs),
}

/// A private farm's key, given on the command line or in a file (`join`, `status`, `host`).
#[derive(Debug, Args)]
pub struct SwarmKeyArgs {
    /// A private farm's key: 64 hexadecimal characters, as at the end of a private host's join line (on `host`:
    /// make the farm private with this key, e.g. for several hosts sharing one farm)
    #[arg(long, value_name = "KEY", value_parser = parse_swarm_key, conflicts_with = "swarm_key_file")]
    pub swarm_key: Option<crate::net::SwarmKey>,
    /// Read the private farm's key from FILE: the 64 hexadecimal characters, or an IPFS swarm.key file
    #[arg(long, value_name = "FILE")]
    pub swarm_key_file: Option<PathBuf>,
}

impl SwarmKeyArgs {
    /// The key given by either flag; a bad file is an error naming `--swarm-key-file` and the file.
    pub fn key(&self) -> anyhow::Result<Option<crate::net::SwarmKey>> {
        if let Some(path) = &self.swarm_key_file {
            let key = crate::net::SwarmKey::read_file(path).map_err(|e| anyhow::anyhow!("--swarm-key-file: {e}"))?;
            return Ok(Some(key));
        }
        Ok(self.swarm_key.clone())
    }
}

fn parse_swarm_key(text: &str) -> Result<crate::net::SwarmKey, String> {
    crate::net::SwarmKey::parse(text).map_err(|e| e.to_string())
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "\"{text}\" is not an address: {reason} (use HOST, HOST:PORT or a multiaddr such as /ip4/192.168.1.5/tcp/7463)"
)]
pub struct AddrError {
    pub text: String,
    pub reason: String,
}

/// Parses `HOST`, `HOST:PORT`, `[IPV6]:PORT` or a multiaddr. `HOST` alone gets [`DEFAULT_PORT`].
pub fn parse_addr(text: &str) -> Result<Multiaddr, AddrError> {
    let err = |reason: &str| AddrError { text: text.to_string(), reason: reason.to_string() };
    let text = text.trim();
    if text.starts_with('/') {
        return text.parse::<Multiaddr>().map_err(|e| err(&e.to_string()));
    }
    if text.is_empty() {
        return Err(err("it is empty"));
    }
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(Multiaddr::from(ip).with(Protocol::Tcp(DEFAULT_PORT)));
    }
    if let Ok(sock) = text.parse::<std::net::SocketAddr>() {
        return Ok(Multiaddr::from(sock.ip()).with(Protocol::Tcp(sock.port())));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().map_err(|_| err("the port is not a number from 0 to 65535"))?),
        None => (text, DEFAULT_PORT),
    };
    if host.is_empty() || host.contains(['/', ':', ' ']) {
        return Err(err("the host name is not valid"));
    }
    Ok(Multiaddr::empty().with(Protocol::Dns(host.to_string().into())).with(Protocol::Tcp(port)))
}

/// `--cache-dir`, made absolute, or the XDG cache folder.
pub(super) fn cache_dir(dir: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    use anyhow::Context as _;
    match dir {
        // Blender is given paths inside the cache; they must not depend on its working folder.
        Some(dir) => std::path::absolute(dir).with_context(|| format!("bad cache folder {}", dir.display())),
        None => Ok(dirs::cache_dir()
            .context("no cache folder is known for this user; pass --cache-dir")?
            .join("blenderdist")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let cases: &[(&str, Result<&str, ()>)] = &[
            ("127.0.0.1:9000", Ok("/ip4/127.0.0.1/tcp/9000")),
            ("127.0.0.1", Ok("/ip4/127.0.0.1/tcp/7463")),
            ("[::1]:9", Ok("/ip6/::1/tcp/9")),
            ("::1", Ok("/ip6/::1/tcp/7463")),
            ("render-box", Ok("/dns/render-box/tcp/7463")),
            ("render-box:80", Ok("/dns/render-box/tcp/80")),
            ("/ip4/10.0.0.1/tcp/5", Ok("/ip4/10.0.0.1/tcp/5")),
            ("box:notaport", Err(())),
            ("box:70000", Err(())),
            ("", Err(())),
            ("/notaproto/1", Err(())),
        ];
        for (text, want) in cases {
            let got = parse_addr(text).map(|a| a.to_string()).map_err(|_| ());
            assert_eq!(got, want.map(str::to_string), "{text}");
        }
        let e = parse_addr("box:x").unwrap_err().to_string();
        assert!(e.contains("\"box:x\""), "{e}");
    }
}
