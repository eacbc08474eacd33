//! The command line. The words here are relied on by scripts and tests: change them only with the docs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use libp2p::{multiaddr::Protocol, Multiaddr};

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

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The host: HOST, HOST:PORT or a multiaddr, as for `join`. Default: this machine's host on the default port.
    #[arg(value_name = "HOST")]
    pub host: Option<String>,
    /// Print one JSON document (the schema is in docs/PROTOCOL.md) instead of the tables; with --watch, one line
    /// of JSON per report.
    #[arg(long)]
    pub json: bool,
    /// Keep the report live, redrawn in place like `top`, until Ctrl-C.
    #[arg(short, long)]
    pub watch: bool,
    /// Seconds between reports with --watch.
    #[arg(long, value_name = "SECS", default_value_t = 2.0, requires = "watch", value_parser = parse_interval)]
    pub interval: f64,
    #[command(flatten)]
    pub key: SwarmKeyArgs,
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

fn parse_interval(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if (0.1..=3600.0).contains(&secs) => Ok(secs),
        Ok(_) => Err("give between 0.1 and 3600 seconds".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: Generate,
}

/// What `blenderdist generate` writes; scripts/install.sh uses both.
#[derive(Debug, Subcommand)]
pub enum Generate {
    /// Print a completion script for SHELL on stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages into DIR: blenderdist.1 and one per command (blenderdist-host.1, ...).
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

impl StatusArgs {
    pub fn address(&self) -> Result<Multiaddr, AddrError> {
        parse_addr(self.host.as_deref().unwrap_or("127.0.0.1"))
    }
}

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

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Host to join: HOST, HOST:PORT or a multiaddr (with or without /p2p/ID); repeatable. None: find hosts by mDNS.
    #[arg(value_name = "BOOTSTRAP")]
    pub bootstrap: Vec<String>,
    /// Do not look for hosts on the LAN by mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Where this volunteer's key and blob cache live. Default: the XDG cache dir (~/.cache/blenderdist).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// The Blender to run. Default: $BLENDER, then `blender` on PATH.
    #[arg(long, value_name = "PATH")]
    pub blender: Option<PathBuf>,
    /// Threads per Blender, passed as `-t` (0: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<u32>,
    /// Frames to render at once, each with its own Blender.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub renderers: u32,
    /// Start a new Blender for every frame instead of keeping one open per job (slower; for comparison).
    #[arg(long)]
    pub process_per_frame: bool,
    /// Cycles device to render with: CPU, CUDA, OPTIX, HIP, ONEAPI or METAL; one Blender does not offer on this
    /// machine stops `join` with the list of those it does
    #[arg(long, value_name = "DEVICE", default_value = "CPU", value_parser = ["CPU", "CUDA", "OPTIX", "HIP", "ONEAPI", "METAL"])]
    pub device: String,
    /// Stop Blender and fail the frame when one frame takes longer than this many seconds (0: no limit).
    #[arg(long, value_name = "SECS", default_value_t = 21_600)]
    pub frame_timeout: u64,
    /// Stop Blender and fail the frame when Blender's resident memory exceeds this many MiB.
    #[arg(long, value_name = "MIB")]
    pub max_memory: Option<u64>,
    /// Keep this program when the host offers a new build (stops if the protocol versions become incompatible).
    #[arg(long)]
    pub no_auto_updates: bool,
    /// The name hosts show for this volunteer in their logs and status. Default: this machine's host name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// To join a private farm: its key, from the host's join line
    #[command(flatten)]
    pub key: SwarmKeyArgs,
    /// Also serve as a relay for owners behind home routers (only useful on a machine with a public address); its
    /// address is logged at start.
    #[arg(long)]
    pub relay: bool,
    /// Where the relay listens, with --relay (HOST:PORT or a multiaddr). Default: 0.0.0.0:7464.
    #[arg(long, value_name = "ADDR", requires = "relay")]
    pub relay_listen: Option<String>,
    /// Let each circuit of the relay carry this many MiB, with --relay (see `relay --data-limit`).
    #[arg(long, value_name = "MB", requires = "relay", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub relay_data_limit: Option<u64>,
    /// Address other volunteers reach this one on, to fetch the chunks of a job's files it holds; repeatable.
    /// Default: 0.0.0.0:0 (every interface, a port the system picks).
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<String>,
    /// Most upload, in Mbit/s, for chunks served to other volunteers (0: no limit).
    #[arg(long, value_name = "MBIT", default_value_t = 20.0)]
    pub max_upload: f64,
    /// Most GiB of job files kept in the cache; the least recently used go first (0: no limit).
    #[arg(long, value_name = "GIB", default_value_t = 20.0)]
    pub cache_size: f64,
    /// Share nothing with other volunteers: listen nowhere, serve no chunks (still fetch from them).
    #[arg(long)]
    pub no_share: bool,
}

/// This machine's host name, the default volunteer name.
fn machine_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok().or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
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

fn relay_listen(listen: &[String]) -> Result<Vec<Multiaddr>, AddrError> {
    if listen.is_empty() {
        let port = crate::net::relay::DEFAULT_RELAY_PORT;
        return Ok(vec![Multiaddr::from(std::net::Ipv4Addr::UNSPECIFIED).with(Protocol::Tcp(port))]);
    }
    listen.iter().map(|a| parse_addr(a)).collect()
}

/// `--cache-dir`, made absolute, or the XDG cache folder.
fn cache_dir(dir: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    use anyhow::Context as _;
    match dir {
        // Blender is given paths inside the cache; they must not depend on its working folder.
        Some(dir) => std::path::absolute(dir).with_context(|| format!("bad cache folder {}", dir.display())),
        None => Ok(dirs::cache_dir()
            .context("no cache folder is known for this user; pass --cache-dir")?
            .join("blenderdist")),
    }
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

impl JoinArgs {
    /// The relay this volunteer also runs (`--relay`), if any.
    pub fn relay_options(&self) -> anyhow::Result<Option<crate::relay::RelayOptions>> {
        if !self.relay {
            return Ok(None);
        }
        Ok(Some(crate::relay::RelayOptions {
            listen: relay_listen(self.relay_listen.as_slice())?,
            limits: crate::net::RelayLimits { data_bytes: self.relay_data_limit.map(|mb| mb << 20) },
            key_file: cache_dir(self.cache_dir.as_ref())?.join("relay.key"),
            // Beside a member of a private farm, the relay serves that farm's members only.
            swarm_key: self.key.key()?,
        }))
    }

    /// The volunteer's options: addresses parsed, the cache folder made absolute, defaults filled in.
    pub fn into_options(self) -> anyhow::Result<crate::worker::JoinOptions> {
        let bootstrap = self.bootstrap.iter().map(|a| parse_addr(a)).collect::<Result<Vec<_>, _>>()?;
        let swarm_key = self.key.key()?;
        let cache_dir = cache_dir(self.cache_dir.as_ref())?;
        let render = crate::worker::blender::BlenderOptions {
            threads: self.threads,
            process_per_frame: self.process_per_frame,
            limits: crate::worker::Limits {
                frame_time: (self.frame_timeout > 0).then(|| std::time::Duration::from_secs(self.frame_timeout)),
                memory: self.max_memory.map(|mib| mib << 20),
            },
            keep_open: self.renderers as usize,
            device: self.device,
        };
        Ok(crate::worker::JoinOptions {
            bootstrap,
            mdns: !self.no_mdns,
            cache_dir,
            blender: crate::worker::blender::BlenderRenderer::default_program(self.blender),
            render,
            renderers: self.renderers,
            auto_updates: !self.no_auto_updates,
            name: self.name.or_else(machine_name),
            swarm_key,
            share: crate::worker::seed::ShareOptions::new(
                if self.listen.is_empty() {
                    vec![Multiaddr::from(std::net::Ipv4Addr::UNSPECIFIED).with(Protocol::Tcp(0))]
                } else {
                    self.listen.iter().map(|a| parse_addr(a)).collect::<Result<_, _>>()?
                },
                megabits_to_bytes(self.max_upload)?,
                gib_to_bytes(self.cache_size)?,
                self.no_share,
            ),
        })
    }
}

/// `--max-upload` in bytes a second.
fn megabits_to_bytes(mbit: f64) -> anyhow::Result<u64> {
    if !(mbit.is_finite() && mbit >= 0.0) {
        anyhow::bail!("--max-upload must be a number of Mbit/s, 0 or more (0: no limit)");
    }
    Ok((mbit * 1e6 / 8.0) as u64)
}

/// `--cache-size` in bytes.
fn gib_to_bytes(gib: f64) -> anyhow::Result<u64> {
    if !(gib.is_finite() && gib >= 0.0) {
        anyhow::bail!("--cache-size must be a number of GiB, 0 or more (0: no limit)");
    }
    Ok((gib * (1u64 << 30) as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharing_limits() {
        assert_eq!(megabits_to_bytes(20.0).unwrap(), 2_500_000);
        assert_eq!(megabits_to_bytes(0.0).unwrap(), 0);
        assert!(megabits_to_bytes(-1.0).is_err() && megabits_to_bytes(f64::NAN).is_err());
        assert_eq!(gib_to_bytes(0.5).unwrap(), 512 << 20);
        assert!(gib_to_bytes(f64::INFINITY).is_err());
        let args = Cli::try_parse_from(["blenderdist", "join", "h", "--listen", "10.0.0.2:7000", "--cache-size", "2"]);
        let Some(Command::Join(join)) = args.unwrap().command else { panic!("not a join") };
        let options = join.into_options().unwrap();
        assert_eq!(options.share.listen, vec!["/ip4/10.0.0.2/tcp/7000".parse::<Multiaddr>().unwrap()]);
        assert_eq!((options.share.max_upload, options.share.cache_size), (2_500_000, 2 << 30));
    }

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
