//! `blenderdist status`: which host to ask and how to show its report.

use clap::Args;
use libp2p::Multiaddr;

use super::{parse_addr, AddrError, SwarmKeyArgs};

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

impl StatusArgs {
    pub fn address(&self) -> Result<Multiaddr, AddrError> {
        parse_addr(self.host.as_deref().unwrap_or("127.0.0.1"))
    }
}

fn parse_interval(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if (0.1..=3600.0).contains(&secs) => Ok(secs),
        Ok(_) => Err("give between 0.1 and 3600 seconds".into()),
        Err(e) => Err(e.to_string()),
    }
}
