//! Finding every file a .blend needs, with the owner's own Blender: `deps.py` (shipped in this binary) runs in the
//! background with `--factory-startup --disable-autoexec`, so nothing in the .blend runs, and writes a JSON list of
//! the files it found (libraries recursively, image sequences and UDIM tiles expanded, caches, fonts, IES files,
//! sequencer media...) and of the ones that are missing. It never runs on the host's event loop.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde::Deserialize;

use crate::protocol::FileKind;

/// A tracer that takes longer than this is stopped (loading a huge scene takes a while, never this long).
const TRACE_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest tracer output read back.
const MAX_TRACE_JSON: u64 = 256 * 1024 * 1024;

/// What the tracer found, as it writes it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Trace {
    #[serde(default)]
    pub files: Vec<TracedFile>,
    #[serde(default)]
    pub missing: Vec<MissingFile>,
    #[serde(default)]
    pub cache_folders: Vec<String>,
    #[serde(default)]
    pub scenes: SceneNeeds,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TracedFile {
    pub path: String,
    #[serde(default = "other_kind")]
    pub kind: FileKind,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MissingFile {
    pub path: String,
    #[serde(default)]
    pub used_by: String,
}

/// What the rendering scene needs from a volunteer's Blender.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SceneNeeds {
    #[serde(default)]
    pub engine: String,
    /// Cycles denoising is on: a Blender without OpenImageDenoise fails every frame.
    #[serde(default)]
    pub denoising: bool,
    /// Compositor File Output nodes.
    #[serde(default)]
    pub file_outputs: u32,
    /// The scene renders the sequencer.
    #[serde(default)]
    pub sequencer: bool,
    /// Width and height of its frames in pixels; `None` when cropped to a border (or unknown): frames are then
    /// not checked for their size.
    #[serde(default)]
    pub resolution: Option<(u32, u32)>,
}

fn other_kind() -> FileKind {
    FileKind::Other
}

/// Why the tracer could not say what a .blend needs.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot start Blender at {}: {source}", program.display())]
    Start { program: PathBuf, source: std::io::Error },
    #[error("Blender took over {} s to list the files of {}", TRACE_TIMEOUT.as_secs(), blend.display())]
    Timeout { blend: PathBuf },
    #[error("Blender could not list the files of {} ({status}): {tail}", blend.display())]
    Failed { blend: PathBuf, status: String, tail: String },
    #[error("the file list Blender wrote for {} is unreadable: {reason}", blend.display())]
    Output { blend: PathBuf, reason: String },
}

/// Runs the tracer on `blend` with `program`; `scratch` is a private folder for its output.
pub async fn trace(program: &Path, script: &Path, blend: &Path, scratch: &Path) -> Result<Trace, TraceError> {
    let out = scratch.join(format!("trace-{}.json", std::process::id()));
    let _ = tokio::fs::remove_file(&out).await;
    let mut cmd = tokio::process::Command::new(program);
    // Order matters to Blender: the file first, --python-exit-code before --python.
    cmd.args(["-b", "--factory-startup", "--disable-autoexec"])
        .arg(blend)
        .args(["--python-exit-code", "1", "--python"])
        .arg(script)
        .arg("--")
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| TraceError::Start { program: program.to_path_buf(), source })?;
    let output = match tokio::time::timeout(TRACE_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(source)) => return Err(TraceError::Start { program: program.to_path_buf(), source }),
        Err(_) => return Err(TraceError::Timeout { blend: blend.to_path_buf() }),
    };
    let read = read_output(&out).await;
    let _ = tokio::fs::remove_file(&out).await;
    match read {
        Ok(trace) if output.status.success() => Ok(trace),
        _ if !output.status.success() => Err(TraceError::Failed {
            blend: blend.to_path_buf(),
            status: output.status.to_string(),
            tail: tail(&output.stdout, &output.stderr),
        }),
        Err(reason) => Err(TraceError::Output { blend: blend.to_path_buf(), reason }),
        Ok(trace) => Ok(trace),
    }
}

async fn read_output(path: &Path) -> Result<Trace, String> {
    let meta = tokio::fs::metadata(path).await.map_err(|e| format!("no output ({e})"))?;
    if meta.len() > MAX_TRACE_JSON {
        return Err(format!("{} bytes of output", meta.len()));
    }
    let bytes = tokio::fs::read(path).await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// The last few meaningful lines Blender printed, for the job log.
fn tail(stdout: &[u8], stderr: &[u8]) -> String {
    let text = format!("{}\n{}", String::from_utf8_lossy(stdout), String::from_utf8_lossy(stderr));
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(4)..].join(" | ")
}
