//! When a job ends: its movie (`video = mp4`) and the owner's `notify = COMMAND`, both written up in the job log.
//!
//! Both are slow or may hang (ffmpeg encodes for minutes, a mail command waits on the network), so neither runs on
//! the host's event loop: `Host::job_ended` copies what they need (the job file's options, the scheduler's counts,
//! the folders) into an `Ending` and hands it to a task of its own. Nothing comes back to the loop; what happened
//! goes to `JOBDIR/NAME.log`. Every program runs in a process group of its own with a time limit, its output read
//! up to a bound; at the limit the whole group is killed, so nothing it started outlives it.
//!
//! Once per end: the loop calls `Host::job_ended` when the frame that completes a job is stored (guarded by
//! `report_finished`) and when the scheduler fails a job (once per failure). A restarted host stores no frame of a
//! job that was done, so nothing runs again; a job failure is not durable, so a job that fails again after a restart
//! (it is retried) ends, and notifies, again. Nothing from volunteers reaches the command or its environment.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::process::Command;

use super::{
    jobfile::{FrameRate, VideoFormat},
    joblog::JobLog,
    limited::{describe, printable_lines, run_limited, Captured},
    project::human_size,
    Host,
};

/// The first bytes of each of a program's output streams that reach the job log; the rest is counted, not kept.
pub const MAX_OUTPUT: usize = 8 * 1024;
/// Reading the scene's frame rate loads the .blend once; a huge scene takes a while, never this long.
const BLENDER_TIMEOUT: Duration = Duration::from_secs(120);
/// ffmpeg's limit grows with the movie: this much, plus [`VIDEO_TIME_PER_FRAME`] for each frame.
const VIDEO_TIMEOUT: Duration = Duration::from_secs(600);
const VIDEO_TIME_PER_FRAME: Duration = Duration::from_secs(2);
/// Blender's own default, for when the scene cannot be asked and the job file has no `fps =`.
const DEFAULT_FPS: FrameRate = FrameRate { num: 24, den: 1 };
/// Prints the rendering scene's frame rate; `--factory-startup --disable-autoexec` keep the .blend's Python out.
const FPS_EXPR: &str =
    "import bpy; r = bpy.context.scene.render; print('@@BLENDERDIST-FPS@@', r.fps, repr(r.fps_base))";
const FPS_MARK: &str = "@@BLENDERDIST-FPS@@";

/// The host's settings for the work done when a job ends.
#[derive(Debug, Clone)]
pub struct FinishConfig {
    /// How long a `notify` command may run before it and every process it started are killed (default 60 s).
    pub notify_timeout: Duration,
    /// The ffmpeg that makes `video =` movies (default `ffmpeg`, looked up on PATH).
    pub ffmpeg: PathBuf,
}

impl Default for FinishConfig {
    fn default() -> Self {
        FinishConfig { notify_timeout: Duration::from_secs(60), ffmpeg: PathBuf::from("ffmpeg") }
    }
}

/// How a job ended, in the words of the notify command's `BLENDERDIST_STATE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEnd {
    Done,
    Failed,
}

impl JobEnd {
    fn word(self) -> &'static str {
        match self {
            JobEnd::Done => "done",
            JobEnd::Failed => "failed",
        }
    }
}

/// Everything the end of one job needs, copied from the loop's state so the task shares nothing with it.
struct Ending {
    job: String,
    end: JobEnd,
    jobdir: PathBuf,
    renderdir: PathBuf,
    blend: PathBuf,
    first: u32,
    last: u32,
    done: u32,
    total: u32,
    notify: Option<String>,
    video: Option<VideoFormat>,
    fps: Option<FrameRate>,
    blender: Option<PathBuf>,
    config: FinishConfig,
    log: JobLog,
}

impl Host {
    /// A job is done or failed: makes its movie and runs its notify command, if it has them, in a task of its own.
    pub(super) fn job_ended(&self, name: &str, end: JobEnd) {
        let Some(file) = self.jobs.file(name) else { return };
        if file.notify.is_none() && file.video.is_none() {
            return;
        }
        let (done, total) = self.scheduler.status(name).map_or((0, 0), |s| (s.done, s.total));
        let ending = Ending {
            job: name.to_string(),
            end,
            jobdir: self.config.jobdir.clone(),
            renderdir: self.config.renderdir.clone(),
            blend: file.blend.clone(),
            first: file.first,
            last: file.last,
            done,
            total,
            notify: file.notify.clone(),
            video: file.video,
            fps: file.fps,
            blender: self.config.blender.clone(),
            config: self.config.finish.clone(),
            log: self.joblog.clone(),
        };
        tokio::spawn(ending.run());
    }
}

impl Ending {
    async fn run(self) {
        let video = match (self.end, self.video) {
            (JobEnd::Done, Some(format)) => self.make_video(format).await,
            (JobEnd::Failed, Some(_)) => {
                self.say("video: not made, as the job failed");
                None
            }
            (_, None) => None,
        };
        if let Some(command) = &self.notify {
            self.run_notify(command, video.as_deref()).await;
        }
    }

    fn say(&self, line: &str) {
        self.log.append(&self.job, line);
    }

    /// Logs a program's output, one sanitized line each, and whether some of it was left out.
    fn say_output(&self, what: &str, output: &Captured) {
        for line in printable_lines(&output.bytes) {
            self.say(&format!("{what}: {line}"));
        }
        if output.dropped > 0 {
            self.say(&format!("{what}: ({} more bytes not logged)", output.dropped));
        }
        if output.held_open {
            self.say(&format!("{what}: (still open after the program ended: a process it left running holds it)"));
        }
    }

    async fn run_notify(&self, command: &str, video: Option<&Path>) {
        let limit = self.config.notify_timeout;
        let folder = absolute(&self.renderdir.join(&self.job));
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(command).current_dir(&self.jobdir);
        // Only this job's BLENDERDIST_ variables: none inherited from the host's environment can pass for one.
        for (key, _) in std::env::vars_os() {
            if key.as_encoded_bytes().starts_with(b"BLENDERDIST_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("BLENDERDIST_JOB", &self.job)
            .env("BLENDERDIST_STATE", self.end.word())
            .env("BLENDERDIST_RENDERDIR", &folder)
            .env("BLENDERDIST_FRAMES", self.done.to_string())
            .env("BLENDERDIST_FRAMES_TOTAL", self.total.to_string())
            .env("BLENDERDIST_BLEND", absolute(&self.blend))
            .env("BLENDERDIST_JOBLOG", absolute(&self.jobdir.join(format!("{}.log", self.job))));
        if let Some(video) = video {
            cmd.env("BLENDERDIST_VIDEO", video);
        }
        self.say(&format!("notify: running `{command}` (job {})", self.end.word()));
        match run_limited(cmd, limit, MAX_OUTPUT).await {
            Err(e) => self.say(&format!("notify: cannot start sh: {e}")),
            Ok(ran) => {
                self.say_output("notify stdout", &ran.stdout);
                self.say_output("notify stderr", &ran.stderr);
                self.say(&match ran.status {
                    Some(status) => format!("notify: {} after {:.1} s", describe(status), ran.took.as_secs_f64()),
                    None => format!(
                        "notify: still running after {} s, its time limit: killed it and everything it started \
                         (its process group)",
                        limit.as_secs_f64()
                    ),
                });
            }
        }
    }

    /// Assembles the frames into `RENDERDIR/NAME.EXT` with ffmpeg; returns the movie's path when it was made.
    async fn make_video(&self, format: VideoFormat) -> Option<PathBuf> {
        let movie = format!("{}.{}", self.job, format.extension());
        match self.encode(&movie).await {
            Ok(target) => Some(target),
            Err(why) => {
                self.say(&format!("video: {why}"));
                None
            }
        }
    }

    /// [`Ending::make_video`]'s steps; an error is the job log's line (it names the movie).
    async fn encode(&self, movie: &str) -> Result<PathBuf, String> {
        let ffmpeg = &self.config.ffmpeg;
        let mut probe = Command::new(ffmpeg);
        probe.args(["-hide_banner", "-version"]);
        match run_limited(probe, Duration::from_secs(30), 256).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(format!("ffmpeg not found; install it (apt-get install ffmpeg) to get {movie}"))
            }
            Err(e) => return Err(format!("cannot start {}: {e}; no {movie}", ffmpeg.display())),
            Ok(_) => {}
        }
        let folder = absolute(&self.renderdir.join(&self.job));
        let (scan, first, last) = (folder.clone(), self.first, self.last);
        let ext = tokio::task::spawn_blocking(move || frame_extension(&scan, first, last))
            .await
            .map_err(|e| e.to_string())
            .and_then(|found| found)
            .map_err(|why| format!("{why}; no {movie}"))?;
        let rate = self.frame_rate().await;
        let frames = last - first + 1;
        // Unique, so two endings of a job (a range extended meanwhile) never write one file; a dot, so it is no job.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temp = absolute(&self.renderdir.join(format!(".{movie}.{}-{seq}.tmp", std::process::id())));
        let target = absolute(&self.renderdir.join(movie));
        self.say(&format!("video: encoding {frames} frames ({first}..{last}, .{ext}) at {rate} fps into {movie}"));
        let cmd = ffmpeg_command(ffmpeg, &folder, &ext, rate, (first, frames), &temp);
        let limit = VIDEO_TIMEOUT + VIDEO_TIME_PER_FRAME * frames;
        let ran = run_limited(cmd, limit, MAX_OUTPUT)
            .await
            .map_err(|e| format!("cannot start {}: {e}; no {movie}", ffmpeg.display()))?;
        self.say_output("video: ffmpeg", &ran.stderr);
        let written = match ran.status {
            Some(status) if status.success() => {
                tokio::fs::rename(&temp, &target).await.map_err(|e| format!("cannot write {}: {e}", target.display()))
            }
            Some(status) => Err(format!("ffmpeg failed ({})", describe(status))),
            None => Err(format!("ffmpeg took over {} s: killed it", limit.as_secs())),
        };
        if let Err(why) = written {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(format!("{why}; no {movie}"));
        }
        let size = tokio::fs::metadata(&target).await.map(|m| m.len()).unwrap_or(0);
        let took = ran.took.as_secs_f64();
        self.say(&format!("video: wrote {} ({}) in {took:.1} s", target.display(), human_size(size)));
        Ok(target)
    }

    /// The job file's `fps`, else the scene's as the owner's Blender reads it, else Blender's default (with a note).
    async fn frame_rate(&self) -> FrameRate {
        if let Some(rate) = self.fps {
            return rate;
        }
        match self.scene_rate().await {
            Ok(rate) => rate,
            Err(why) => {
                self.say(&format!(
                    "video: cannot read the scene's frame rate ({why}); using {DEFAULT_FPS} fps. Set `fps = N` in \
                     the job file to choose"
                ));
                DEFAULT_FPS
            }
        }
    }

    async fn scene_rate(&self) -> Result<FrameRate, String> {
        let Some(blender) = &self.blender else {
            return Err("the host has no Blender to ask; pass host --blender PATH".into());
        };
        let mut cmd = Command::new(blender);
        // Order matters to Blender: the file first, --python-exit-code before the expression.
        cmd.args(["-b", "--factory-startup", "--disable-autoexec"]).arg(&self.blend);
        cmd.args(["--python-exit-code", "1", "--python-expr", FPS_EXPR]);
        let ran = run_limited(cmd, BLENDER_TIMEOUT, 256 * 1024)
            .await
            .map_err(|e| format!("cannot start {}: {e}", blender.display()))?;
        let text = String::from_utf8_lossy(&ran.stdout.bytes);
        let line = text.lines().find_map(|l| l.trim().strip_prefix(FPS_MARK));
        let Some((fps, base)) = line.and_then(|l| l.trim().split_once(' ')) else {
            let status = ran.status.map_or_else(|| "timed out".to_string(), describe);
            return Err(format!("Blender did not say ({status})"));
        };
        // Blender keeps fps_base as a float (1.001 for NTSC): to millionths, it is exact for every real rate.
        let millionths = base.parse::<f64>().ok().map(|b| (b * 1e6).round()).filter(|b| (1.0..=1e12).contains(b));
        let rate = fps
            .parse::<u64>()
            .ok()
            .zip(millionths)
            .and_then(|(fps, base)| FrameRate::new(fps.checked_mul(1_000_000)?, base as u64));
        rate.ok_or_else(|| format!("Blender said fps {fps}, fps_base {base}, which is not a usable rate"))
    }
}

/// ffmpeg reading frames `start..start+count` as `FOLDER/%04d.EXT` (how the host names frames; `-pattern_type
/// sequence`, so no glob), writing H.264 in yuv420p (what players show) at even dimensions (which yuv420p needs).
fn ffmpeg_command(
    ffmpeg: &Path,
    folder: &Path,
    ext: &str,
    rate: FrameRate,
    (start, count): (u32, u32),
    out: &Path,
) -> Command {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    // In an image2 pattern `%` is special: a folder or job name holding one is written `%%`.
    let mut pattern: Vec<u8> = Vec::new();
    for &b in folder.as_os_str().as_bytes() {
        pattern.extend_from_slice(if b == b'%' { b"%%" } else { std::slice::from_ref(&b) });
    }
    pattern.extend_from_slice(format!("/%04d.{}", ext.replace('%', "%%")).as_bytes());
    let pattern = std::ffi::OsString::from_vec(pattern);
    let mut cmd = Command::new(ffmpeg);
    cmd.args(["-nostdin", "-hide_banner", "-loglevel", "warning", "-y"]);
    if ext == "exr" {
        // EXR holds linear light; without a transfer curve the movie comes out dark.
        cmd.args(["-apply_trc", "iec61966_2_1"]);
    }
    cmd.args(["-f", "image2", "-pattern_type", "sequence", "-framerate", &rate.to_string()]);
    cmd.args(["-start_number", &start.to_string(), "-i"]).arg(pattern);
    cmd.args(["-frames:v", &count.to_string(), "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2"]);
    cmd.args(["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", "-movflags", "+faststart", "-f", "mp4"]);
    cmd.arg(out);
    cmd
}

/// The extension every frame `first..=last` has in `folder` as `NNNN.EXT`; the newest set when a format change left
/// several (blocking: lists the folder).
fn frame_extension(folder: &Path, first: u32, last: u32) -> Result<String, String> {
    let entries = std::fs::read_dir(folder).map_err(|e| format!("cannot list {}: {e}", folder.display()))?;
    // Per extension: how many frames of the range have it, and the newest such file.
    let mut found: std::collections::HashMap<String, (u32, std::time::SystemTime)> = Default::default();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some((number, ext)) = name.to_str().and_then(|n| n.split_once('.')) else { continue };
        let Ok(frame) = number.parse::<u32>() else { continue };
        if !(first..=last).contains(&frame) || format!("{frame:04}") != number || ext.is_empty() {
            continue;
        }
        let mtime = entry.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
        let slot = found.entry(ext.to_string()).or_insert((0, std::time::UNIX_EPOCH));
        *slot = (slot.0 + 1, slot.1.max(mtime));
    }
    let complete = found.iter().filter(|(_, (n, _))| *n == last - first + 1);
    if let Some((ext, _)) = complete.max_by_key(|(_, (_, newest))| *newest) {
        return Ok(ext.clone());
    }
    let (have, ext) = found.iter().map(|(ext, (n, _))| (*n, ext.as_str())).max().unwrap_or((0, "png"));
    Err(format!("only {have} of frames {first}..{last} are in {} as .{ext} files", folder.display()))
}

/// `path` made absolute against the host's working folder, for programs that run elsewhere.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_extension_is_the_one_every_frame_has() {
        let dir = tempfile::tempdir().unwrap();
        let touch = |name: &str| std::fs::write(dir.path().join(name), b"x").unwrap();
        for name in ["0001.png", "0002.png", "0003.png", "0002.exr", "01.jpg", "notes.txt", "0009.png"] {
            touch(name);
        }
        assert_eq!(frame_extension(dir.path(), 1, 3), Ok("png".to_string()));
        let err = frame_extension(dir.path(), 1, 4).unwrap_err();
        assert!(err.contains("only 3 of frames 1..4 are in") && err.ends_with("as .png files"), "{err}");
        touch("10000.png");
        assert!(frame_extension(dir.path(), 9, 10000).is_err());
    }
}
