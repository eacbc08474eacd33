//! One Blender process running `driver.py` on one .blend: started once, then fed frame numbers over stdin and
//! answering one JSON line per frame on stdout. Blender's own output is kept (its last lines) for error reports.
//! A session that dies, hangs past the frame time limit or grows past the memory limit is killed, failing only the
//! frame it was rendering; the caller starts a new one for the next frame.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Deserialize;
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin},
    sync::mpsc,
};

use super::blender::{RenderError, RenderedFrame};

/// Lines the driver prints for us start with this; everything else is Blender's own output.
const MARK: &str = "@@BLENDERDIST@@ ";
/// The folder (inside a frame's work folder) where the driver points compositor File Output nodes, one subfolder
/// per node.
const FILE_OUTPUTS: &str = "file_outputs";
/// Lines of Blender's output kept for error reports.
const TAIL_LINES: usize = 25;
/// Longest line of Blender's output kept (longer ones are cut): room for the driver's ready line, whose list of
/// missing files is bounded by the job manifest's size.
const MAX_LINE: usize = 2 * crate::protocol::MAX_JOB_MANIFEST as usize;
/// How long Blender may take to load a .blend and say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a rendering Blender's memory is checked against the limit.
const MEMORY_CHECK: Duration = Duration::from_millis(250);

/// Limits on one frame's render.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub frame_time: Option<Duration>,
    /// Resident memory, in bytes.
    pub memory: Option<u64>,
}

/// How Blender is started.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: PathBuf,
    pub driver: PathBuf,
    pub threads: Option<u32>,
    /// Cycles device (`CPU`, `CUDA`...), passed to the driver.
    pub device: String,
}

/// One line from the driver. Public (hidden) for the fuzz targets in `fuzz/`.
#[doc(hidden)]
#[derive(Debug, Deserialize)]
pub struct DriverReply {
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

#[doc(hidden)]
pub type Tail = Arc<Mutex<VecDeque<String>>>;

pub struct Session {
    pub blend: PathBuf,
    child: Child,
    stdin: ChildStdin,
    replies: mpsc::Receiver<String>,
    tail: Tail,
    /// External files the .blend needs that are missing: every frame would render pink.
    missing: Vec<String>,
}

impl Session {
    /// Starts Blender on `blend` and waits for the driver's ready line.
    pub async fn start(launch: &Launch, blend: &Path, allowed_missing: &[String]) -> Result<Self, RenderError> {
        let mut cmd = tokio::process::Command::new(&launch.program);
        // Order matters to Blender: the file first, then what applies to it; --python-exit-code before --python.
        cmd.arg("-b").arg("--factory-startup").arg("--disable-autoexec").arg(blend);
        if let Some(t) = launch.threads {
            // As `blender -t N`; the driver also fixes the scene's own thread setting.
            cmd.arg("-t").arg(t.to_string());
        }
        cmd.args(["--python-exit-code", "1", "--python"]).arg(&launch.driver).arg("--");
        if let Some(t) = launch.threads {
            cmd.arg("--threads").arg(t.to_string());
        }
        if !launch.device.is_empty() {
            cmd.arg("--device").arg(&launch.device);
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| RenderError::new(format!("cannot start Blender at {}: {e}", launch.program.display())))?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(RenderError::new("Blender started without its pipes"));
        };
        let tail: Tail = Arc::default();
        let (tx, replies) = mpsc::channel(16);
        tokio::spawn(read_lines(stdout, tail.clone(), Some(tx)));
        tokio::spawn(read_lines(stderr, tail.clone(), None));
        let mut session = Session { blend: blend.to_path_buf(), child, stdin, replies, tail, missing: Vec::new() };
        let ready = match tokio::time::timeout(READY_TIMEOUT, session.next_reply()).await {
            Ok(Some(reply)) => reply,
            Ok(None) => return Err(session.fail("Blender exited before it was ready".into()).await),
            Err(_) => return Err(session.fail("Blender took too long to load the .blend".into()).await),
        };
        if ready.ready != Some(true) {
            let error = ready.error.unwrap_or_else(|| "no reason given".into());
            return Err(session.fail(format!("Blender could not start rendering: {error}")).await);
        }
        session.missing = ready.missing_files.into_iter().filter(|m| !allowed_missing.contains(m)).collect();
        Ok(session)
    }

    /// Renders `frame` to `out_stem` plus the format's extension. `Err((error, alive))`: whether the process can
    /// serve more frames.
    pub async fn render(
        &mut self,
        frame: u32,
        out_stem: &Path,
        limits: Limits,
    ) -> Result<RenderedFrame, (RenderError, bool)> {
        if !self.missing.is_empty() {
            let message = format!(
                "the .blend uses files that did not arrive with the job (Blender would render without them): {}",
                self.missing.join(", ")
            );
            return Err((RenderError::new(message), true));
        }
        let mut line = serde_json::json!({ "frame": frame, "out": out_stem.to_string_lossy() }).to_string();
        line.push('\n');
        if let Err(e) = self.stdin.write_all(line.as_bytes()).await {
            return Err((self.fail(format!("Blender stopped reading requests: {e}")).await, false));
        }
        let deadline = limits.frame_time.map(|d| tokio::time::Instant::now() + d);
        let mut memory = tokio::time::interval(MEMORY_CHECK);
        loop {
            let timeout = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                reply = self.next_reply() => {
                    let Some(reply) = reply else {
                        let status = self.child.wait().await.map(|s| s.to_string()).unwrap_or_default();
                        let message = format!("Blender exited ({status}) while rendering frame {frame}");
                        return Err((self.fail(message).await, false));
                    };
                    if reply.frame != Some(frame) {
                        continue;
                    }
                    return self.answer(frame, out_stem, reply).map_err(|e| (e, true));
                }
                _ = timeout => {
                    let limit = limits.frame_time.unwrap_or_default().as_secs();
                    let message = format!("frame {frame} took longer than the {limit} s limit; Blender was stopped");
                    return Err((self.fail(message).await, false));
                }
                _ = memory.tick(), if limits.memory.is_some() => {
                    let (Some(limit), Some(rss)) = (limits.memory, self.resident_bytes()) else { continue };
                    if rss > limit {
                        let message = format!(
                            "Blender used {} MiB rendering frame {frame}, over the {} MiB limit; it was stopped",
                            rss >> 20,
                            limit >> 20
                        );
                        return Err((self.fail(message).await, false));
                    }
                }
            }
        }
    }

    fn answer(&self, frame: u32, out_stem: &Path, reply: DriverReply) -> Result<RenderedFrame, RenderError> {
        let error = |message: String| RenderError { message, tail: self.tail_text() };
        if reply.ok != Some(true) {
            let reason = reply.error.unwrap_or_else(|| "unknown error".into());
            return Err(error(format!("Blender failed to render frame {frame}: {reason}")));
        }
        let (Some(path), Some(ext)) = (reply.path, reply.ext) else {
            return Err(error(format!("the driver reported frame {frame} without its file")));
        };
        // The reply shares stdout with Blender, which prints names taken from the .blend: a crafted name could forge
        // a reply. Only the exact file we asked for, with an image extension, is ever returned to the owner.
        let ext = ext.to_ascii_lowercase();
        let mut expected = out_stem.as_os_str().to_owned();
        expected.push(format!(".{ext}"));
        if !crate::protocol::is_frame_extension(&ext) || path.as_os_str() != expected {
            return Err(error(format!("the driver reported an unexpected file for frame {frame}: {}", path.display())));
        }
        // Blender's exit codes and messages lie; the file is the proof.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() > 0 => {}
            _ => {
                let message =
                    format!("Blender reported frame {frame} saved but {} is missing or empty", path.display());
                return Err(error(message));
            }
        }
        let outputs_dir = out_stem.parent().map(|d| d.join(FILE_OUTPUTS)).unwrap_or_default();
        let outputs = file_outputs(&outputs_dir).map_err(|e| error(format!("frame {frame}: {e}")))?;
        Ok(RenderedFrame { path, ext, outputs })
    }

    /// Ends the session politely: the driver exits when its stdin closes.
    pub async fn close(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = self.child.kill().await;
    }

    async fn next_reply(&mut self) -> Option<DriverReply> {
        loop {
            let json = self.replies.recv().await?;
            if let Some(reply) = parse_reply(&json) {
                return Some(reply);
            }
        }
    }

    /// Kills Blender and builds the error, with the last lines of its output.
    async fn fail(&mut self, message: String) -> RenderError {
        let _ = self.child.kill().await;
        // Let the readers catch Blender's last words.
        tokio::time::sleep(Duration::from_millis(50)).await;
        RenderError { message, tail: self.tail_text() }
    }

    fn tail_text(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        Vec::from(tail.clone()).join("\n")
    }

    /// Blender's resident memory, from /proc (Linux).
    fn resident_bytes(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: u64 =
            status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    }
}

/// A driver reply from a line of Blender's stdout, [`MARK`] already stripped; `None` for anything else.
#[doc(hidden)]
pub fn parse_reply(json: &str) -> Option<DriverReply> {
    serde_json::from_str(json).ok()
}

/// Splits a Blender pipe into driver replies (sent on `replies`) and output lines (kept in `tail`), reading it to
/// its end whatever it holds: a reader that stopped early (at a file name that is not UTF-8, say) would leave
/// Blender blocked on a full pipe. Public (hidden) for the fuzz targets.
#[doc(hidden)]
pub async fn read_lines(pipe: impl AsyncRead + Unpin, tail: Tail, replies: Option<mpsc::Sender<String>>) {
    let mut pipe = BufReader::new(pipe);
    let mut raw = Vec::new();
    while let Ok(true) = next_line(&mut pipe, &mut raw, MAX_LINE).await {
        let line = String::from_utf8_lossy(&raw).into_owned();
        if let (Some(json), Some(tx)) = (line.strip_prefix(MARK), &replies) {
            if tx.send(json.to_string()).await.is_err() {
                return;
            }
            continue;
        }
        let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// Reads the next line into `raw`, without its `\n` or `\r\n`, keeping at most `max` bytes of it (the rest of the
/// line is read and dropped); false at the end of the pipe.
async fn next_line(pipe: &mut (impl AsyncBufRead + Unpin), raw: &mut Vec<u8>, max: usize) -> std::io::Result<bool> {
    raw.clear();
    let mut any = false;
    loop {
        let chunk = pipe.fill_buf().await?;
        if chunk.is_empty() {
            break;
        }
        any = true;
        let (used, end) = match chunk.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (chunk.len(), false),
        };
        let keep = used.min(max.saturating_sub(raw.len()));
        raw.extend_from_slice(&chunk[..keep]);
        pipe.consume(used);
        if end {
            break;
        }
    }
    for end in [b'\n', b'\r'] {
        if raw.last() == Some(&end) {
            raw.pop();
        }
    }
    Ok(any)
}

/// The files File Output nodes wrote under `dir` (`dir/<node>/<name>`), found by walking the folder rather than
/// trusting anything printed on stdout; symbolic links are not followed. Each name must be one the owner accepts.
fn file_outputs(dir: &Path) -> Result<Vec<(PathBuf, String)>, String> {
    let mut found = Vec::new();
    let Ok(nodes) = std::fs::read_dir(dir) else { return Ok(found) };
    let mut stack: Vec<(PathBuf, String)> = nodes.filter_map(|e| e.ok()).map(|e| (e.path(), String::new())).collect();
    while let Some((path, name)) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(|e| format!("cannot list {}: {e}", path.display()))? {
                let entry = entry.map_err(|e| format!("cannot list {}: {e}", path.display()))?;
                let child = entry.file_name().to_string_lossy().into_owned();
                let child_name = if name.is_empty() { child } else { format!("{name}/{child}") };
                stack.push((entry.path(), child_name));
            }
        } else if meta.is_file() && meta.len() > 0 && !name.is_empty() {
            if let Err(why) = crate::protocol::check_output_name(&name) {
                return Err(format!("a File Output node wrote {name:?}, which cannot be returned to the owner: {why}"));
            }
            found.push((path, name));
        }
        if found.len() > crate::protocol::MAX_EXTRA_OUTPUTS {
            return Err(format!(
                "File Output nodes wrote more than {} files for one frame",
                crate::protocol::MAX_EXTRA_OUTPUTS
            ));
        }
    }
    found.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzz/fuzz_targets/driver_reply.rs: a byte that is not UTF-8 (a Latin-1 file name Blender prints, say)
    /// stopped the reader, losing every reply after it and leaving Blender to block on a full pipe.
    #[tokio::test]
    async fn output_that_is_not_utf8_is_read_to_the_end() {
        let out = b"Warning: cannot read '/tex/caf\xe9.png'\r\n@@BLENDERDIST@@ {\"frame\": 3, \"ok\": true}\nlast";
        let tail: Tail = Arc::default();
        let (tx, mut rx) = mpsc::channel(4);
        read_lines(&out[..], tail.clone(), Some(tx)).await;
        let reply = parse_reply(&rx.recv().await.unwrap()).unwrap();
        assert_eq!((reply.frame, reply.ok), (Some(3), Some(true)));
        let tail = Vec::from(tail.lock().unwrap().clone());
        assert_eq!(tail, ["Warning: cannot read '/tex/caf\u{fffd}.png'", "last"]);
    }

    /// A line longer than the limit is cut, and the next line is read whole.
    #[tokio::test]
    async fn long_lines_are_cut() {
        let mut pipe = BufReader::with_capacity(4, &b"abcdefghij\nxy\r\n"[..]);
        let mut raw = Vec::new();
        assert!(next_line(&mut pipe, &mut raw, 6).await.unwrap());
        assert_eq!(raw, b"abcdef");
        assert!(next_line(&mut pipe, &mut raw, 6).await.unwrap());
        assert_eq!(raw, b"xy");
        assert!(!next_line(&mut pipe, &mut raw, 6).await.unwrap());
    }
}
