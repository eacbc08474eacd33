//! Self-update: an owner relaunches itself when its program file is replaced, and volunteers fetch the owner's
//! signed build for their platform and relaunch on it. See docs/SECURITY.md for the trust model.
//!
//! Layout: [`manifest`] signs and checks manifests; [`host`] knows the owner's builds and watches its file;
//! [`volunteer`] decides whether to trust an owner, fetches, checks and stages a build; this file holds what both
//! sides share: the self-check and the relaunch.

pub mod host;
pub mod manifest;
pub mod volunteer;

use std::{path::Path, process::Stdio, time::Duration};

/// What `blenderdist --self-check` prints when all is well.
pub const SELF_CHECK_OK: &str = "self-check ok";

/// Runs `program --self-check`: the new build must start, run its checks and say so within a minute.
pub async fn self_check(program: &Path) -> Result<(), String> {
    let run =
        tokio::process::Command::new(program).arg("--self-check").stdin(Stdio::null()).kill_on_drop(true).output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .map_err(|_| "it did not finish within 60 s".to_string())?
        .map_err(|e| format!("it cannot be run: {e}"))?;
    let said = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && said.contains(SELF_CHECK_OK) {
        Ok(())
    } else {
        let mut detail = format!("{}{}", said.trim(), String::from_utf8_lossy(&out.stderr).trim());
        crate::protocol::truncate_utf8(&mut detail, 500);
        Err(format!("it exited with {} ({detail})", out.status))
    }
}

/// The checks `--self-check` runs in the new build before an old one hands over to it.
pub fn run_self_check() -> Result<String, String> {
    tokio::runtime::Runtime::new().map_err(|e| format!("no async runtime: {e}"))?;
    use crate::blender_scripts::{DEPS_PY, DRIVER_MARK, DRIVER_PY};
    if !DRIVER_PY.contains(DRIVER_MARK) || !DEPS_PY.contains("--out") {
        return Err("the embedded Blender scripts are missing".into());
    }
    let key = libp2p::identity::Keypair::generate_ed25519();
    key.sign(b"check").map_err(|e| format!("cannot sign: {e}"))?;
    Ok(format!(
        "blenderdist {} ({}, protocol {}) {SELF_CHECK_OK}",
        env!("CARGO_PKG_VERSION"),
        manifest::TARGET,
        crate::protocol::PROTOCOL_VERSION
    ))
}

/// The program's log writer thread (`main.rs`), flushed and stopped by dropping its guard.
static LOG_WRITER: std::sync::Mutex<Option<tracing_appender::non_blocking::WorkerGuard>> = std::sync::Mutex::new(None);

/// Holds the log writer's guard until [`flush_log`] (at exit) or a relaunch.
pub fn keep_log_writer(guard: tracing_appender::non_blocking::WorkerGuard) {
    *LOG_WRITER.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
}

/// Writes out every queued log line and stops the log writer thread; later lines are lost.
pub fn flush_log() {
    drop(LOG_WRITER.lock().unwrap_or_else(|e| e.into_inner()).take());
}

/// Replaces this process with `program`, given the same arguments. Returns only if that fails.
pub fn relaunch(program: &Path) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    tracing::info!("relaunching as {}", program.display());
    // The log lines still queued are written before this process image goes.
    flush_log();
    std::process::Command::new(program).args(std::env::args_os().skip(1)).exec()
}
