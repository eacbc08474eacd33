//! `blenderdist generate`: shell completions and man pages, made from the clap definitions in [`crate::cli`] so they
//! never drift from the real options. scripts/install.sh installs them.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::cli::Cli;

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut Cli::command(), "blenderdist", out);
}

/// Writes `blenderdist.1` and one page per command (`blenderdist-host.1`, ...) into `dir`, creating it; returns the
/// paths written.
pub fn man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut root = Cli::command();
    root.build();
    let mut pages = vec![("blenderdist".to_string(), root.clone())];
    for sub in root.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("blenderdist-{}", sub.get_name());
        // The page's title and synopsis read `blenderdist-host`, as git's do, so `man blenderdist-host` finds it.
        pages.push((name.clone(), sub.clone().name(name).version(root.get_version().unwrap_or_default().to_string())));
    }
    let mut written = Vec::new();
    for (name, command) in pages {
        let mut roff = Vec::new();
        clap_mangen::Man::new(command).render(&mut roff).with_context(|| format!("cannot render the {name} page"))?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, roff).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_know_every_command_and_option() {
        let mut bash = Vec::new();
        completions(clap_complete::Shell::Bash, &mut bash);
        let bash = String::from_utf8(bash).expect("completions are text");
        for word in ["host", "join", "status", "--http", "--name", "--watch", "--renderers"] {
            assert!(bash.contains(word), "bash completions lack {word}");
        }
    }

    #[test]
    fn man_pages_for_every_command() {
        let dir = tempfile::tempdir().expect("temp dir");
        let written = man_pages(dir.path()).expect("pages");
        let names: Vec<String> =
            written.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            [
                "blenderdist.1",
                "blenderdist-host.1",
                "blenderdist-join.1",
                "blenderdist-status.1",
                "blenderdist-relay.1",
                "blenderdist-generate.1"
            ]
        );
        let host = std::fs::read_to_string(dir.path().join("blenderdist-host.1")).expect("host page");
        assert!(host.contains(".TH blenderdist-host 1"), "{host}");
        assert!(host.contains("http"), "the host page documents --http");
    }
}
