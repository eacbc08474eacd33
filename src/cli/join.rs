//! `blenderdist join`: the volunteer's arguments and their conversion into [`crate::worker::JoinOptions`].

use std::path::PathBuf;

use clap::Args;
use libp2p::{multiaddr::Protocol, Multiaddr};

use super::{cache_dir, parse_addr, relay::relay_listen, SwarmKeyArgs};

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
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

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
}
