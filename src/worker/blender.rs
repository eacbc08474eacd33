//! The only code that starts Blender. A [`Renderer`] turns (blend file, frame) into an image file; the real one,
//! [`BlenderRenderer`], runs Blender with `--factory-startup --disable-autoexec`, so a stranger's .blend can never
//! run Python on a volunteer whatever its preferences say, and drives it with a small Python driver shipped inside
//! this binary (`driver.py`). Blender's exit code lies, so success means the driver said so *and* the file exists
//! and is not empty; on failure the tail of Blender's output goes into the error.

use std::{
    collections::VecDeque,
    future::Future,
    path::{Path, PathBuf},
    process::Stdio,
};

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The driver Blender runs; written next to the cache so Blender can read it.
pub const DRIVER_PY: &str = include_str!("driver.py");
/// Lines the driver prints for us start with this; everything else is Blender's own output.
const MARK: &str = "@@BLENDERDIST@@ ";
/// Lines of Blender's output kept for error reports.
const TAIL_LINES: usize = 25;

#[derive(Debug, Clone)]
pub struct RenderRequest {
    pub blend: PathBuf,
    pub frame: u32,
    /// An empty folder for this frame's output.
    pub out_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct RenderedFrame {
    pub path: PathBuf,
    /// The image format's extension, lower case, without a dot.
    pub ext: String,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}{}", if tail.is_empty() { String::new() } else { format!("\n--- last lines of Blender's output ---\n{tail}") })]
pub struct RenderError {
    pub message: String,
    pub tail: String,
}

impl RenderError {
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), tail: String::new() }
    }
}

/// Something that renders one frame. Implementations: [`BlenderRenderer`], and `FakeRenderer` for tests.
pub trait Renderer: Send + Sync + 'static {
    fn render(&self, request: &RenderRequest) -> impl Future<Output = Result<RenderedFrame, RenderError>> + Send;
}

/// A shared renderer renders too, so tests can keep a handle on a fake one.
impl<R: Renderer> Renderer for std::sync::Arc<R> {
    fn render(&self, request: &RenderRequest) -> impl Future<Output = Result<RenderedFrame, RenderError>> + Send {
        (**self).render(request)
    }
}

/// Starts one Blender per frame.
#[derive(Debug, Clone)]
pub struct BlenderRenderer {
    pub program: PathBuf,
    pub threads: Option<u32>,
    pub driver: PathBuf,
}

impl BlenderRenderer {
    /// Writes the driver into `work_dir` and checks that `program` runs.
    pub async fn new(program: PathBuf, threads: Option<u32>, work_dir: &Path) -> Result<Self, RenderError> {
        tokio::fs::create_dir_all(work_dir)
            .await
            .map_err(|e| RenderError::new(format!("cannot create {}: {e}", work_dir.display())))?;
        let driver = work_dir.join("blenderdist_driver.py");
        tokio::fs::write(&driver, DRIVER_PY)
            .await
            .map_err(|e| RenderError::new(format!("cannot write {}: {e}", driver.display())))?;
        let version = tokio::process::Command::new(&program)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| RenderError::new(format!("cannot run Blender at {}: {e}", program.display())))?;
        if !version.status.success() {
            return Err(RenderError::new(format!("{} --version failed", program.display())));
        }
        Ok(Self { program, threads, driver })
    }

    /// `--blender`, else `$BLENDER`, else `blender` on PATH.
    pub fn default_program(flag: Option<PathBuf>) -> PathBuf {
        flag.or_else(|| std::env::var_os("BLENDER").map(PathBuf::from)).unwrap_or_else(|| PathBuf::from("blender"))
    }

    fn command(&self, blend: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.program);
        // Order matters to Blender: options that apply to the file come after it.
        cmd.arg("-b")
            .arg("--factory-startup")
            .arg("--disable-autoexec")
            .arg(blend)
            .arg("--python-exit-code")
            .arg("1")
            .arg("--python")
            .arg(&self.driver)
            .arg("--");
        if let Some(t) = self.threads {
            cmd.arg("--threads").arg(t.to_string());
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        cmd
    }
}

/// One answer from the driver.
#[derive(Debug, Deserialize)]
struct DriverReply {
    /// Only on the first line: whether the driver could start (false: `error` says why).
    #[serde(default)]
    ready: Option<bool>,
    #[serde(default)]
    frame: Option<u32>,
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    ext: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    missing_files: Vec<String>,
}

impl Renderer for BlenderRenderer {
    async fn render(&self, request: &RenderRequest) -> Result<RenderedFrame, RenderError> {
        let mut child = self
            .command(&request.blend)
            .spawn()
            .map_err(|e| RenderError::new(format!("cannot start Blender at {}: {e}", self.program.display())))?;
        let out_stem = request.out_dir.join(format!("frame_{:04}", request.frame));
        let line = request_line(request.frame, &out_stem);
        if let Some(mut stdin) = child.stdin.take() {
            // Blender may die before reading; its output then says why.
            let _ = stdin.write_all(line.as_bytes()).await;
        }
        let mut tail = VecDeque::with_capacity(TAIL_LINES);
        let mut replies = Vec::new();
        if let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) {
            let mut out = BufReader::new(stdout).lines();
            let mut err = BufReader::new(stderr).lines();
            let (mut out_open, mut err_open) = (true, true);
            while out_open || err_open {
                let line = tokio::select! {
                    l = out.next_line(), if out_open => l.ok().flatten().or_else(|| { out_open = false; None }),
                    l = err.next_line(), if err_open => l.ok().flatten().or_else(|| { err_open = false; None }),
                };
                let Some(line) = line else { continue };
                match line.strip_prefix(MARK) {
                    Some(json) => replies.push(json.to_string()),
                    None => {
                        if tail.len() == TAIL_LINES {
                            tail.pop_front();
                        }
                        tail.push_back(line);
                    }
                }
            }
        }
        let status = child.wait().await.map_err(|e| RenderError::new(format!("waiting for Blender: {e}")))?;
        let tail = Vec::from(tail).join("\n");
        let fail = |message: String| RenderError { message, tail: tail.clone() };
        let mut missing = Vec::new();
        for json in &replies {
            let Ok(reply) = serde_json::from_str::<DriverReply>(json) else {
                continue;
            };
            missing.extend(reply.missing_files.iter().cloned());
            if reply.ready == Some(false) {
                let error = reply.error.unwrap_or_else(|| "unknown error".into());
                return Err(fail(format!("Blender could not start rendering: {error}")));
            }
            if reply.frame != Some(request.frame) {
                continue;
            }
            if reply.ok != Some(true) {
                let error = reply.error.unwrap_or_else(|| "unknown error".into());
                return Err(fail(format!("Blender failed to render frame {}: {error}", request.frame)));
            }
            if !missing.is_empty() {
                return Err(fail(format!(
                    "the .blend uses files that are not packed into it (Blender renders them pink): {}",
                    missing.join(", ")
                )));
            }
            let (Some(path), Some(ext)) = (reply.path, reply.ext) else {
                continue;
            };
            return match std::fs::metadata(&path) {
                Ok(m) if m.is_file() && m.len() > 0 => Ok(RenderedFrame { path, ext: ext.to_ascii_lowercase() }),
                _ => Err(fail(format!(
                    "Blender reported frame {} saved but {} is missing or empty",
                    request.frame,
                    path.display()
                ))),
            };
        }
        Err(fail(format!("Blender exited ({status}) without rendering frame {}", request.frame)))
    }
}

/// One request line for the driver: `{"frame": N, "out": "/dir/stem"}`.
fn request_line(frame: u32, out: &Path) -> String {
    let mut line = serde_json::json!({ "frame": frame, "out": out.to_string_lossy() }).to_string();
    line.push('\n');
    line
}
