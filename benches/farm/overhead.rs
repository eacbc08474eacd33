//! Overhead: the real binary and real Blender on this machine. A Cycles scene of 24 frames (8 with --quick), 320×240,
//! 16 samples, is generated with scripts/make_scene.py. Then, alternating, three rounds (one with --quick) of:
//!
//! - baseline: `blender -b scene.blend -o DIR/#### -t 1 -a`, timed from start to exit;
//! - blenderdist: `blenderdist host JOBDIR RENDERDIR --listen 127.0.0.1:0 --no-mdns` and one
//!   `blenderdist join ADDR --no-mdns --threads 1 --cache-dir FRESH`, started first and connected (its log says
//!   `joined host`); nothing is pre-warmed. The job file is renamed into JOBDIR and the clock runs until every frame
//!   is in RENDERDIR/NAME/ (polled every 10 ms). The fresh cache means the volunteer fetches the .blend in that time;
//!   the host hashes it in that time too.
//!
//! The figure is the round with the median ratio blenderdist ÷ baseline; goal ≤ 1.05. Once more, the volunteer runs
//! with `--process-per-frame` (one Blender per frame), shown beside it against the same baseline. A binary without
//! that flag has only one path, which is then reported as the default. The notes split each time into the wait for
//! the first frame (start-up) and the time per frame after it.

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{
    common::{self, note, row, secs, Opts},
    procs::{self, Proc},
};

const GOAL: f64 = 1.05;
const LIMIT: Duration = Duration::from_secs(300);

pub fn run(opts: &Opts) -> anyhow::Result<()> {
    opts.require_bin()?;
    let blender = Command::new("blender").arg("--version").output().context("blender is not on PATH")?;
    if !blender.status.success() {
        bail!("`blender --version` failed");
    }
    let frames: u32 = if opts.quick { 8 } else { 24 };
    let rounds = if opts.quick { 1 } else { 3 };
    let dir = opts.temp_dir("overhead")?;
    let scene = dir.path().join("scene.blend");
    make_scene(&scene, frames, &dir.path().join("make_scene.log"))?;
    let per_frame_flag = supports_process_per_frame(&opts.bin)?;

    // (blender -a, blenderdist) per round.
    let mut results: Vec<(Arrivals, Arrivals)> = vec![];
    for round in 1..=rounds {
        let base = blender_anim(&scene, &dir.path().join(format!("anim-{round}")), frames)?;
        eprintln!("   round {round}: blender -a {}", secs(base.total()));
        let farm = farm_run(opts, &scene, &dir.path().join(format!("farm-{round}")), frames, &[])?;
        eprintln!("   round {round}: blenderdist {}", secs(farm.total()));
        results.push((base, farm));
    }
    // The round with the median ratio counts, so one round disturbed by something else on the machine does not.
    let ratio = |(b, f): &(Arrivals, Arrivals)| f.total().as_secs_f64() / b.total().as_secs_f64();
    let mut order: Vec<usize> = (0..results.len()).collect();
    order.sort_by(|&a, &b| ratio(&results[a]).total_cmp(&ratio(&results[b])));
    let (base, farm) = &results[order[order.len() / 2]];
    let label = if per_frame_flag { "persistent Blender (default)" } else { "default path" };
    row(
        &format!("Overhead: host + 1 volunteer, {frames} Cycles frames, {label} ÷ blender -a"),
        &secs(farm.total()),
        &secs(base.total()),
        &format!("{:.3}", ratio(&results[order[order.len() / 2]])),
        &format!("≤ {GOAL}"),
        common::yes_no(ratio(&results[order[order.len() / 2]]) <= GOAL),
    );
    if rounds > 1 {
        let each: Vec<String> = results
            .iter()
            .map(|r| {
                format!("{:.2} s / {:.2} s = {:.3}", r.1.total().as_secs_f64(), r.0.total().as_secs_f64(), ratio(r))
            })
            .collect();
        note(&format!("Overhead, each round (blenderdist / blender -a), the median counting: {}.", each.join("; ")));
    }
    note(&format!(
        "Overhead, where the time goes in the median round: first frame after {} with blenderdist, {} with \
         blender -a; then {:.3} s per frame against {:.3} s.",
        secs(farm.first()),
        secs(base.first()),
        farm.per_frame(),
        base.per_frame()
    ));

    if per_frame_flag {
        let t = farm_run(opts, &scene, &dir.path().join("farm-per-frame"), frames, &["--process-per-frame"])?;
        eprintln!("   blenderdist --process-per-frame {}", secs(t.total()));
        row(
            "Overhead: same, join --process-per-frame ÷ blender -a",
            &secs(t.total()),
            &secs(base.total()),
            &format!("{:.3}", t.total().as_secs_f64() / base.total().as_secs_f64()),
            "(comparison)",
            "-",
        );
        note(&format!(
            "Overhead with --process-per-frame: first frame after {}, then {:.3} s per frame.",
            secs(t.first()),
            t.per_frame()
        ));
    } else {
        note("Overhead: this binary's `join` has no --process-per-frame; its default path was measured alone.");
    }
    Ok(())
}

/// When each frame file appeared, counted from the start (polled every 10 ms).
struct Arrivals(Vec<Duration>);

impl Arrivals {
    fn total(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }

    fn first(&self) -> Duration {
        self.0.first().copied().unwrap_or_default()
    }

    /// Mean time between frames after the first.
    fn per_frame(&self) -> f64 {
        (self.total() - self.first()).as_secs_f64() / (self.0.len().max(2) - 1) as f64
    }
}

/// Polls `dir` every 10 ms until it holds `frames` PNGs, noting when each appeared; stops early when `gone` says the
/// producer ended, and after [`LIMIT`].
fn watch_frames(dir: &Path, frames: u32, t0: Instant, mut gone: impl FnMut() -> bool) -> anyhow::Result<Arrivals> {
    let mut arrivals = vec![];
    loop {
        let n = png_count(dir);
        while arrivals.len() < n.min(frames as usize) {
            arrivals.push(t0.elapsed());
        }
        if arrivals.len() == frames as usize {
            return Ok(Arrivals(arrivals));
        }
        if gone() {
            bail!("{} of {frames} frames appeared in {} before the renderer ended", arrivals.len(), dir.display());
        }
        if t0.elapsed() > LIMIT {
            bail!("{frames} frames did not appear in {} within {LIMIT:?}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn make_scene(out: &Path, frames: u32, log: &Path) -> anyhow::Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make_scene.py");
    let status = Command::new("blender")
        .args(["-b", "--factory-startup", "--python-exit-code", "1", "--python"])
        .arg(&script)
        .arg("--")
        .arg(out)
        .args(["--frames", &frames.to_string(), "--res", "320x240", "--samples", "16"])
        .stdout(std::fs::File::create(log)?)
        .stderr(Stdio::null())
        .status()?;
    if !status.success() || !out.is_file() {
        bail!("make_scene.py failed ({status}); see {}", log.display());
    }
    Ok(())
}

fn supports_process_per_frame(bin: &Path) -> anyhow::Result<bool> {
    let help = Command::new(bin).args(["join", "--help"]).output()?;
    Ok(String::from_utf8_lossy(&help.stdout).contains("--process-per-frame"))
}

/// `blender -b scene.blend -o DIR/#### -t 1 -a`, timed from start to exit.
fn blender_anim(scene: &Path, out: &Path, frames: u32) -> anyhow::Result<Arrivals> {
    std::fs::create_dir_all(out)?;
    let log = out.with_extension("log");
    let mut command = Command::new("blender");
    command.arg("-b").arg(scene).arg("-o").arg(out.join("####")).args(["-t", "1", "-a"]);
    command.stdout(std::fs::File::create(&log)?).stderr(Stdio::null());
    let t0 = Instant::now();
    let mut blender = Proc::spawn(command)?;
    let mut status = None;
    let mut arrivals = watch_frames(out, frames, t0, || {
        status = blender.child.try_wait().ok().flatten();
        status.is_some()
    })
    .with_context(|| format!("blender -a failed; see {}", log.display()))?;
    let status = match status {
        Some(status) => status,
        None => blender.child.wait()?,
    };
    // The process's exit, not the last file, ends the baseline.
    arrivals.0.push(t0.elapsed());
    arrivals.0.remove(arrivals.0.len() - 2);
    if !status.success() {
        bail!("blender -a failed ({status}); see {}", log.display());
    }
    Ok(arrivals)
}

fn png_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().ends_with(".png")).count())
        .unwrap_or(0)
}

/// One host and one volunteer as processes; from the job file's rename until every frame file is in place.
fn farm_run(opts: &Opts, scene: &Path, root: &Path, frames: u32, extra: &[&str]) -> anyhow::Result<Arrivals> {
    let (jobdir, renderdir, cache) = (root.join("jobs"), root.join("renders"), root.join("cache"));
    std::fs::create_dir_all(&jobdir)?;
    std::fs::copy(scene, jobdir.join("scene.blend"))?;

    let mut host = Command::new(&opts.bin);
    host.arg("host").arg(&jobdir).arg(&renderdir).args(["--listen", "127.0.0.1:0", "--no-mdns"]);
    host.stdout(Stdio::piped()).stderr(std::fs::File::create(root.join("host.log"))?);
    let mut host = Proc::spawn(host)?;
    let addr = procs::join_address(&mut host, &root.join("host.out"))?;

    let mut join = Command::new(&opts.bin);
    join.arg("join").arg(addr.to_string()).args(["--no-mdns", "--threads", "1", "--cache-dir"]).arg(&cache);
    join.args(extra).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut volunteer = Proc::spawn(join)?;
    let joined = watch_for_joined(&mut volunteer, &root.join("volunteer.log"))?;
    joined.recv_timeout(Duration::from_secs(30)).context("the volunteer did not join the host within 30 s")?;
    // Identify has run; give gossipsub's subscription exchange a moment, as a volunteer that joined earlier has had.
    std::thread::sleep(Duration::from_millis(500));

    common::write_job(&jobdir, "shot", "scene.blend", 1, frames)?;
    let t0 = Instant::now();
    let arrivals = watch_frames(&renderdir.join("shot"), frames, t0, || {
        matches!(volunteer.child.try_wait(), Ok(Some(_))) || matches!(host.child.try_wait(), Ok(Some(_)))
    })
    .with_context(|| format!("see the logs in {}", root.display()))?;
    volunteer.stop();
    host.stop();
    Ok(arrivals)
}

/// Copies the volunteer's output to `log` and signals once it says `joined host`. Both streams are watched: the
/// binary logs to stderr now, but logged to stdout before.
fn watch_for_joined(volunteer: &mut Proc, log: &Path) -> anyhow::Result<mpsc::Receiver<()>> {
    let (tx, rx) = mpsc::channel();
    let stdout = volunteer.child.stdout.take().context("no stdout")?;
    let stderr = volunteer.child.stderr.take().context("no stderr")?;
    for (stream, tx) in [(Box::new(stdout) as Box<dyn std::io::Read + Send>, tx.clone()), (Box::new(stderr), tx)] {
        procs::copy_lines(stream, log, move |line| {
            if line.contains("joined host") {
                let _ = tx.send(());
            }
        })?;
    }
    Ok(rx)
}
