//! `blenderdist generate`: shell completions and man pages.

use std::path::PathBuf;

use clap::{Args, Subcommand};

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
