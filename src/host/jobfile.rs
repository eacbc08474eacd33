//! Job files: how the owner asks the farm to render something.
//!
//! The owner drops `NAME.job` into JOBDIR. Its first three lines are the .blend file (absolute, or relative to
//! JOBDIR), the first frame and the last frame. Later lines are `key = value` options, blank lines or `#` comments:
//! `priority = N`, and what to do when the job ends (see `host/finish.rs`): `notify = COMMAND`, `video = mp4` and
//! `fps = N` for that video.
//! The format is tiny and line-based so it can be written by hand, by a shell one-liner or in Notepad, which is why
//! CRLF endings, a byte-order mark, blanks around values and blank lines at the end are all tolerated.
//!
//! A person fixes these files by hand, so every [`JobFileError`] names the offending line, text or path. Messages
//! are written to follow the job file's name, e.g. `format!("{}: {err}", path.display())`.

use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Blender's MAXFRAME: a later frame cannot be rendered, so reject it here rather than on a worker.
pub const MAX_FRAME: u32 = 1_048_574;
/// A longer job is almost surely a typo (an extra digit), and would flood the scheduler with pointless work.
pub const MAX_JOB_FRAMES: u32 = 1_000_000;
/// Job files are a few lines long; a bigger file is something else misnamed, and is not worth reading into memory.
pub const MAX_JOB_FILE_BYTES: u64 = 64 * 1024;
/// Highest frame rate `fps =` accepts: beyond it the number is a typo, not a movie.
pub const MAX_FPS: u32 = 1000;
/// The options a job file may have, for the message about an unknown one.
const KNOWN_OPTIONS: &str = "priority, notify, video, fps, verify";
/// The share of a volunteer's frames another volunteer renders again, unless `verify =` says otherwise.
pub const DEFAULT_VERIFY: f64 = 0.05;

/// One parsed job file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFile {
    /// The file name without `.job`; unique within JOBDIR, so it identifies the job.
    pub name: String,
    /// The .blend to render, already joined to JOBDIR when relative so nothing later depends on the working directory.
    pub blend: PathBuf,
    pub first: u32,
    pub last: u32,
    /// Higher runs first; 0 unless the `priority` option says otherwise.
    pub priority: i32,
    /// `notify = COMMAND`: a shell command the host runs when the job is done or failed (see `host/finish.rs`).
    pub notify: Option<String>,
    /// `video = mp4`: the finished frames are also assembled into `RENDERDIR/NAME.mp4`.
    pub video: Option<VideoFormat>,
    /// `fps = N`: the movie's frame rate, instead of the scene's.
    pub fps: Option<FrameRate>,
    /// `verify = FRACTION`, in millionths: the share of each volunteer's frames rendered again by another one to
    /// check them (a volunteer's first frame of the job always is, unless it is 0). `None`: [`DEFAULT_VERIFY`].
    pub verify_ppm: Option<u32>,
}

impl JobFile {
    /// The `verify =` fraction, from 0 (no checks) to 1 (every frame).
    pub fn verify(&self) -> f64 {
        self.verify_ppm.map_or(DEFAULT_VERIFY, |ppm| f64::from(ppm) / 1e6)
    }
}

/// The movie formats `video =` can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoFormat {
    /// H.264 in an MP4 file: what every player and every chat or mail client shows.
    Mp4,
}

impl VideoFormat {
    /// The file extension, also the word the job file uses.
    pub fn extension(self) -> &'static str {
        match self {
            VideoFormat::Mp4 => "mp4",
        }
    }
}

/// A frame rate as a reduced fraction, as Blender keeps it (`fps / fps_base`) and ffmpeg takes it (`30000/1001`):
/// a decimal would turn NTSC's 29.97 into a rate that drifts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRate {
    pub num: u32,
    pub den: u32,
}

impl FrameRate {
    /// `num/den` reduced, if it is a rate in (0, [`MAX_FPS`]].
    pub fn new(num: u64, den: u64) -> Option<FrameRate> {
        if num == 0 || den == 0 || num > u64::from(MAX_FPS) * den {
            return None;
        }
        let g = gcd(num, den);
        Some(FrameRate { num: u32::try_from(num / g).ok()?, den: u32::try_from(den / g).ok()? })
    }

    /// Parses `24`, `23.976` (up to 6 decimals) or `30000/1001`: plain digits only, as frame numbers are.
    pub fn parse(text: &str) -> Option<FrameRate> {
        let digits = |t: &str| !t.is_empty() && t.len() <= 9 && t.bytes().all(|b| b.is_ascii_digit());
        if let Some((num, den)) = text.split_once('/') {
            let (num, den) = (num.trim(), den.trim());
            if !digits(num) || !digits(den) {
                return None;
            }
            return FrameRate::new(num.parse().ok()?, den.parse().ok()?);
        }
        let (whole, frac) = match text.split_once('.') {
            Some((whole, frac)) if frac.len() <= 6 && digits(frac) => (whole, frac),
            Some(_) => return None,
            None => (text, ""),
        };
        if !digits(whole) {
            return None;
        }
        let scale = 10u64.pow(frac.len() as u32);
        let frac = if frac.is_empty() { 0 } else { frac.parse::<u64>().ok()? };
        FrameRate::new(whole.parse::<u64>().ok()? * scale + frac, scale)
    }

    pub fn as_f64(self) -> f64 {
        f64::from(self.num) / f64::from(self.den)
    }
}

/// `24` or `30000/1001`, which is also how ffmpeg's `-framerate` takes it.
impl fmt::Display for FrameRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 {
            write!(f, "{}", self.num)
        } else {
            write!(f, "{}/{}", self.num, self.den)
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One of the three fixed lines. Each always sits on the same line, so errors about it need no separate line number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Blend = 1,
    First = 2,
    Last = 3,
}

impl Field {
    /// The 1-based line number of this field.
    pub fn line(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Blend => ".blend file path",
            Field::First => "first frame",
            Field::Last => "last frame",
        })
    }
}

/// Everything that can be wrong with a job file. I/O errors are kept as text so the type stays `PartialEq`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobFileError {
    #[error("{name:?} is not a job file name: it must be NAME.job with a non-empty NAME free of control characters")]
    BadName { name: String },
    #[error("is a directory, not a file")]
    IsDirectory,
    #[error("is a dangling symbolic link (to {})", target.display())]
    DanglingLink { target: PathBuf },
    #[error("is not a regular file (a pipe, socket or device?)")]
    NotAFile,
    #[error("is {size} bytes, more than the {MAX_JOB_FILE_BYTES} a job file may have")]
    TooLarge { size: u64 },
    #[error("cannot be read: {0}")]
    Unreadable(String),
    #[error("is not UTF-8 text (the first bad byte is on line {line})")]
    NotUtf8 { line: usize },
    #[error("has {found} of the 3 required lines (.blend file, first frame, last frame)")]
    MissingLines { found: usize },
    #[error("line {}: {field} is empty", field.line())]
    EmptyField { field: Field },
    #[error("line {}: {field} {text:?} is not a number", field.line())]
    NotANumber { field: Field, text: String },
    #[error("line {}: {field} {text:?} is negative; frames start at 0", field.line())]
    NegativeFrame { field: Field, text: String },
    #[error("line {}: {field} {text} is past {MAX_FRAME}, the last frame Blender can render", field.line())]
    FrameTooLarge { field: Field, text: String },
    #[error("last frame {last} is before first frame {first}")]
    LastBeforeFirst { first: u32, last: u32 },
    #[error("range {first}..={last} has {frames} frames, more than the {MAX_JOB_FRAMES} a job may have")]
    AbsurdRange { first: u32, last: u32, frames: u64 },
    #[error("line {line}: {text:?} is not an option; options look like `key = value`")]
    MalformedOption { line: usize, text: String },
    #[error("unknown option {key:?} on line {line} (the known options are: {KNOWN_OPTIONS})")]
    UnknownOption { key: String, line: usize },
    #[error("option {key:?} is set twice, on line {first} and line {line}")]
    DuplicateOption { key: String, first: usize, line: usize },
    #[error("line {line}: priority {value:?} is not a whole number from -2147483648 to 2147483647")]
    BadPriority { line: usize, value: String },
    #[error("line {line}: notify needs a command, e.g. `notify = mail -s \"job done\" me@example.com </dev/null`")]
    EmptyNotify { line: usize },
    #[error("line {line}: the notify command has a control character in it")]
    NotifyControl { line: usize },
    #[error(
        "line {line}: verify {value:?} is not a fraction from 0 to 1 (0.05 checks one frame in 20; 0 turns checks off)"
    )]
    BadVerify { line: usize, value: String },
    #[error("line {line}: video {value:?} is not a format blenderdist can make (the only one is: mp4)")]
    BadVideo { line: usize, value: String },
    #[error(
        "line {line}: fps {value:?} is not a frame rate like 24, 23.976 or 30000/1001 (above 0, at most {MAX_FPS})"
    )]
    BadFps { line: usize, value: String },
    #[error("the .blend file {} does not exist", path.display())]
    BlendMissing { path: PathBuf },
    #[error("the .blend file {} is a directory, not a file", path.display())]
    BlendIsDirectory { path: PathBuf },
    #[error("the .blend file {} is not a regular file", path.display())]
    BlendNotAFile { path: PathBuf },
    #[error("the .blend file {} cannot be read: {error}", path.display())]
    BlendUnreadable { path: PathBuf, error: String },
}

/// Parses the text of a job file. Pure: does not touch the disk, so it is cheap to test and to re-run.
///
/// The first three lines are the fields, always; a leading blank line is an empty field, not skipped, so that line
/// numbers in messages match what the owner sees in an editor. Only blank lines at the very end are ignored.
pub fn parse_job_text(name: &str, text: &str, jobdir: &Path) -> Result<JobFile, JobFileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines.truncate(lines.iter().rposition(|l| !l.is_empty()).map_or(0, |i| i + 1));
    let [blend, first, last, options @ ..] = &lines[..] else {
        return Err(JobFileError::MissingLines { found: lines.len() });
    };
    if blend.is_empty() {
        return Err(JobFileError::EmptyField { field: Field::Blend });
    }
    let first = parse_frame(Field::First, first)?;
    let last = parse_frame(Field::Last, last)?;
    if last < first {
        return Err(JobFileError::LastBeforeFirst { first, last });
    }
    let frames = u64::from(last - first) + 1;
    if frames > u64::from(MAX_JOB_FRAMES) {
        return Err(JobFileError::AbsurdRange { first, last, frames });
    }

    let mut job = JobFile { name: name.to_string(), blend: jobdir.join(blend), first, last, ..JobFile::default() };
    let mut seen: Vec<(String, usize)> = Vec::new();
    for (line, raw) in (4..).zip(options) {
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        let split = raw.split_once('=').map(|(key, value)| (key.trim(), value.trim()));
        let Some((key, value)) = split.filter(|(key, _)| !key.is_empty()) else {
            let text = raw.to_string();
            return Err(JobFileError::MalformedOption { line, text });
        };
        let key = key.to_string();
        if let Some(&(_, first)) = seen.iter().find(|(k, _)| *k == key) {
            return Err(JobFileError::DuplicateOption { key, first, line });
        }
        parse_option(&mut job, &key, value, line)?;
        seen.push((key, line));
    }
    Ok(job)
}

/// Applies one `key = value` option line to `job`.
fn parse_option(job: &mut JobFile, key: &str, value: &str, line: usize) -> Result<(), JobFileError> {
    let value_text = || value.to_string();
    match key {
        "priority" => {
            job.priority = value.parse().map_err(|_| JobFileError::BadPriority { line, value: value_text() })?;
        }
        "notify" if value.is_empty() => return Err(JobFileError::EmptyNotify { line }),
        "notify" if value.chars().any(|c| c.is_control() && c != '\t') => {
            return Err(JobFileError::NotifyControl { line })
        }
        "notify" => job.notify = Some(value.to_string()),
        "video" => match value {
            "mp4" => job.video = Some(VideoFormat::Mp4),
            _ => return Err(JobFileError::BadVideo { line, value: value_text() }),
        },
        "verify" => {
            let fraction = value.parse::<f64>().ok().filter(|f| (0.0..=1.0).contains(f) && !value.starts_with('-'));
            let fraction = fraction.ok_or_else(|| JobFileError::BadVerify { line, value: value_text() })?;
            job.verify_ppm = Some((fraction * 1e6).round() as u32);
        }
        "fps" => {
            job.fps = Some(FrameRate::parse(value).ok_or_else(|| JobFileError::BadFps { line, value: value_text() })?)
        }
        _ => return Err(JobFileError::UnknownOption { key: key.to_string(), line }),
    }
    Ok(())
}

/// Parses one frame number. Only plain decimal digits are accepted: `+5`, `1e3` or `1_000` are far more likely
/// mistakes than intent, and a leading `-` gets its own message because "not a number" would be confusing.
fn parse_frame(field: Field, text: &str) -> Result<u32, JobFileError> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    // Once all are digits, parsing can only fail by overflowing u32, which is past MAX_FRAME as well.
    let frame = text.parse::<u32>().ok().filter(|&frame| frame <= MAX_FRAME);
    let text = text.to_string();
    if text.is_empty() {
        Err(JobFileError::EmptyField { field })
    } else if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        Err(JobFileError::NotANumber { field, text })
    } else if digits.len() < text.len() {
        Err(JobFileError::NegativeFrame { field, text })
    } else {
        frame.ok_or(JobFileError::FrameTooLarge { field, text })
    }
}

/// Reads and parses `path` (a `NAME.job` in `jobdir`), then checks that the .blend it names is a readable file.
///
/// Every way the owner can get this wrong is reported instead of skipped: a folder named `.job`, a dangling link, a
/// pipe (which would block a plain read forever), an unreadable or oversized file, non-UTF-8 text, a missing .blend
/// or a .blend that is a directory. Checking the .blend here catches typos before any worker is bothered.
pub fn load_job_file(path: &Path, jobdir: &Path) -> Result<JobFile, JobFileError> {
    let Some(name) = job_name(path) else {
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        return Err(JobFileError::BadName { name });
    };
    let unreadable = |e: std::io::Error| JobFileError::Unreadable(e.to_string());
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound && fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink()) => {
            let target = fs::read_link(path).map_err(unreadable)?;
            return Err(JobFileError::DanglingLink { target });
        }
        Err(e) => return Err(unreadable(e)),
    };
    if meta.is_dir() {
        return Err(JobFileError::IsDirectory);
    }
    if !meta.is_file() {
        return Err(JobFileError::NotAFile);
    }
    if meta.len() > MAX_JOB_FILE_BYTES {
        return Err(JobFileError::TooLarge { size: meta.len() });
    }
    let bytes = fs::read(path).map_err(unreadable)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let line = e.as_bytes().iter().take(valid).filter(|&&b| b == b'\n').count() + 1;
        JobFileError::NotUtf8 { line }
    })?;
    let job = parse_job_text(&name, &text, jobdir)?;
    check_blend(&job.blend)?;
    Ok(job)
}

/// Opens the .blend once so a typo or a permission problem shows up now, on the owner's machine, with a clear message.
fn check_blend(blend: &Path) -> Result<(), JobFileError> {
    let path = blend.to_path_buf();
    let unreadable =
        |e: std::io::Error| JobFileError::BlendUnreadable { path: blend.to_path_buf(), error: e.to_string() };
    let meta = match fs::metadata(blend) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(JobFileError::BlendMissing { path }),
        other => other.map_err(unreadable)?,
    };
    if meta.is_dir() {
        return Err(JobFileError::BlendIsDirectory { path });
    }
    if !meta.is_file() {
        return Err(JobFileError::BlendNotAFile { path });
    }
    fs::File::open(blend).map_err(unreadable)?;
    Ok(())
}

/// The job name for a path: the file name without `.job`, if it ends in exactly `.job` (so editor backups like
/// `x.job~` and parked jobs like `x.job.suspend` are not jobs), the rest is non-empty, and it has no control
/// characters (it ends up in log lines and file names on other machines).
pub fn job_name(path: &Path) -> Option<String> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".job")?;
    // A leading dot would let `..job` or `.blenderdist.job` name a folder outside RENDERDIR/NAME, or ours.
    let usable = !stem.is_empty() && !stem.starts_with('.') && !stem.chars().any(char::is_control);
    usable.then(|| stem.to_string())
}

/// Lists every entry of `jobdir` whose name ends in `.job`, sorted by name, without following into subfolders.
///
/// Folders, dangling links and badly named entries (`.job`, non-UTF-8 names) are listed too, so the caller can
/// tell the owner about them via [`load_job_file`] instead of silently ignoring a job the owner thinks exists.
pub fn scan_job_dir(jobdir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut jobs = Vec::new();
    for entry in fs::read_dir(jobdir)? {
        let entry = entry?;
        if entry.file_name().as_encoded_bytes().ends_with(b".job") {
            jobs.push(entry.path());
        }
    }
    jobs.sort();
    Ok(jobs)
}

#[cfg(test)]
#[path = "jobfile_tests.rs"]
mod tests;
