//! Scaling: an in-process host and 50 fake volunteers (one render slot each, 100 ms per frame) render one job of
//! 2,000 frames (500 with --quick). The volunteers connect first; the clock starts when the job file is renamed into
//! JOBDIR and stops when the host's job log says `finished:`, that is after the last frame file is in place.
//! Efficiency = ideal makespan (frames × 0.1 s ÷ volunteers) ÷ measured makespan; goal ≥ 0.95.
//!
//! The host's folders (JOBDIR, RENDERDIR, state) are under --tmp, on disk, where its fsyncs cost what they cost an
//! owner. The volunteers' caches go to tmpfs (/dev/shm) when there is one: on a real farm each volunteer writes to its
//! own disk, and 50 of them creating and deleting files on the host's file system would slow the host's fsyncs (an
//! ext4 fsync commits the whole journal). Three runs (one with --quick), each with a fresh farm; the median counts.
//! The notes add what one stored frame costs the host's disk, and one more run with the host's folders on tmpfs too,
//! to show how much of the gap is the host waiting for its disk.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::ensure;
use blenderdist::{
    protocol::BlobHash,
    store::state::{JobRecord, StateStore},
};

use crate::common::{self, note, row, secs, Farm, LogTail, Opts, Stamped};

const VOLUNTEERS: usize = 50;
const FRAME_TIME: Duration = Duration::from_millis(100);
const GOAL: f64 = 0.95;

pub async fn run(opts: &Opts) -> anyhow::Result<()> {
    let frames: u32 = if opts.quick { 500 } else { 2000 };
    let runs = if opts.quick { 1 } else { 3 };
    let ideal = FRAME_TIME * frames / VOLUNTEERS as u32;
    let mut makespans = Vec::new();
    let shm = Path::new("/dev/shm").is_dir().then(|| Path::new("/dev/shm"));
    for run in 1..=runs {
        let dir = opts.temp_dir("scaling")?;
        let caches = volunteer_dir(shm, dir.path())?;
        let makespan = measure(dir.path(), caches.path(), frames).await?;
        eprintln!("   run {run}: makespan {}, efficiency {:.3}", secs(makespan), efficiency(ideal, makespan));
        makespans.push(makespan);
    }
    let mut sorted = makespans.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    row(
        &format!("Scaling: efficiency, {VOLUNTEERS} volunteers × {frames} frames of 100 ms"),
        &format!("makespan {}", secs(median)),
        &format!("ideal {}", secs(ideal)),
        &format!("{:.3}", efficiency(ideal, median)),
        &format!("≥ {GOAL}"),
        common::yes_no(efficiency(ideal, median) >= GOAL),
    );
    if runs > 1 {
        let all: Vec<String> = makespans.iter().map(|m| format!("{:.3}", efficiency(ideal, *m))).collect();
        note(&format!("Scaling: efficiency of each run, the median counting: {}.", all.join(", ")));
    }
    let probe = opts.temp_dir("fsync-probe")?;
    let (files, commit) = store_cost(probe.path().to_path_buf()).await?;
    note(&format!(
        "Scaling: what storing one frame costs the host on this disk (200 tries, mean and slowest): writing a small \
         file, fsyncing it, renaming it into a folder and fsyncing the folder {}; one `StateStore::mark_done` commit \
         {}. {VOLUNTEERS} volunteers deliver a frame every {:.1} ms in the ideal case.",
        files,
        commit,
        FRAME_TIME.as_secs_f64() * 1000.0 / VOLUNTEERS as f64,
    ));
    if let Some(shm) = shm {
        let dir = tempfile::Builder::new().prefix("blenderdist-bench-scaling-").tempdir_in(shm)?;
        let makespan = measure(dir.path(), dir.path(), frames).await?;
        note(&format!(
            "Scaling with the host's folders on tmpfs too (no disk waits), same run: makespan {}, efficiency {:.3}.",
            secs(makespan),
            efficiency(ideal, makespan)
        ));
    }
    Ok(())
}

/// Mean and slowest times, in `dir`, of what the host does to store each frame: the file operations (write, fsync,
/// rename into the job folder, fsync the folder) and the durable `StateStore::mark_done` commit.
async fn store_cost(dir: std::path::PathBuf) -> anyhow::Result<(String, String)> {
    const TRIES: u32 = 200;
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let (tmp, frames) = (dir.join("tmp"), dir.join("frames"));
        std::fs::create_dir_all(&tmp)?;
        std::fs::create_dir_all(&frames)?;
        let mut files = Vec::new();
        for i in 0..TRIES {
            let t0 = Instant::now();
            let part = tmp.join(format!("{i}.part"));
            let mut file = std::fs::File::create(&part)?;
            file.write_all(b"fake frame\n")?;
            file.sync_all()?;
            std::fs::rename(&part, frames.join(format!("{i:04}.png")))?;
            std::fs::File::open(&frames)?.sync_all()?;
            files.push(t0.elapsed());
        }
        let state = StateStore::open(&dir.join("state.redb"))?;
        state.put_job("probe", &JobRecord { blend: BlobHash([7; 32]), first: 1, last: TRIES })?;
        let mut commits = Vec::new();
        for frame in 1..=TRIES {
            let t0 = Instant::now();
            state.mark_done("probe", frame)?;
            commits.push(t0.elapsed());
        }
        let summary = |v: &[Duration]| {
            let mean = v.iter().sum::<Duration>() / v.len() as u32;
            let max = v.iter().max().copied().unwrap_or_default();
            format!("{:.2} ms (slowest {:.1} ms)", mean.as_secs_f64() * 1000.0, max.as_secs_f64() * 1000.0)
        };
        anyhow::Ok((summary(&files), summary(&commits)))
    })
    .await?
}

fn efficiency(ideal: Duration, makespan: Duration) -> f64 {
    ideal.as_secs_f64() / makespan.as_secs_f64()
}

/// Where the volunteers' caches go: a folder on tmpfs when there is one, else one beside the host's.
fn volunteer_dir(shm: Option<&Path>, beside: &Path) -> anyhow::Result<tempfile::TempDir> {
    let parent = shm.unwrap_or(beside);
    Ok(tempfile::Builder::new().prefix("blenderdist-bench-caches-").tempdir_in(parent)?)
}

/// One farm with the host under `root` and the volunteers' caches under `caches`, one job; returns its makespan and
/// notes where the time went.
async fn measure(root: &Path, caches: &Path, frames: u32) -> anyhow::Result<Duration> {
    let mut farm = Farm::start_host(root, caches).await?;
    common::write_fake_blend(&farm.jobdir.join("scene.blend"), 64 * 1024, 1)?;
    let renderers: Vec<Arc<Stamped>> = (0..VOLUNTEERS).map(|_| Arc::new(Stamped::fake(FRAME_TIME))).collect();
    for r in &renderers {
        farm.add_volunteer(r.clone())?;
    }
    farm.wait_connected(Duration::from_secs(2)).await?;

    let limit = (FRAME_TIME * frames / VOLUNTEERS as u32 * 10).max(Duration::from_secs(60));
    let mut log = LogTail::new(farm.jobdir.join("scale.log"));
    common::write_job(&farm.jobdir, "scale", "scene.blend", 1, frames)?;
    let t0 = Instant::now();
    common::wait_for("the job to finish", limit, Duration::from_millis(2), || log.saw_line_starting("finished:"))
        .await?;
    let makespan = t0.elapsed();
    ensure!(
        farm.frames_in("scale") == frames as usize,
        "the job finished with {} frame files",
        farm.frames_in("scale")
    );
    describe(&renderers, t0, makespan, frames, root);
    Ok(makespan)
}

/// Where the time went: start-up before the first render, the spread of frames per volunteer, and the time from
/// one render's start to the next on the same volunteer (100 ms of rendering plus what each frame's round adds).
fn describe(renderers: &[Arc<Stamped>], t0: Instant, makespan: Duration, frames: u32, root: &Path) {
    let starts: Vec<Vec<Instant>> = renderers.iter().map(|r| r.starts()).collect();
    let all: Vec<Instant> = starts.iter().flatten().copied().collect();
    let (Some(first), Some(last)) = (all.iter().min(), all.iter().max()) else { return };
    let per: Vec<usize> = starts.iter().map(Vec::len).collect();
    let (min, max) = (per.iter().min().unwrap_or(&0), per.iter().max().unwrap_or(&0));
    let gaps: Vec<f64> =
        starts.iter().flat_map(|s| s.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0)).collect();
    let mean_gap = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
    let firsts: Vec<Instant> = starts.iter().filter_map(|s| s.first().copied()).collect();
    // With every volunteer busy a render starts somewhere every ~2 ms; a long pause means the farm stalled (for
    // instance the host's loop waiting on the disk while volunteers wait for their uploads to be stored).
    let mut sorted = all.clone();
    sorted.sort();
    let pause = sorted.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let latest_first = firsts.iter().max().copied().unwrap_or(*first);
    note(&format!(
        "Scaling run with the host in {}: volunteers began their first render {}–{} after the job file; the last render started \
         at {}, makespan {}; {} renders for {frames} frames; {min}–{max} frames per volunteer; {mean_gap:.1} ms on \
         average from one render's start to the next on a volunteer (rendering takes 100 ms); longest time with no \
         render starting anywhere {:.0} ms.",
        root.parent().map(|p| p.display().to_string()).unwrap_or_default(),
        secs(*first - t0),
        secs(latest_first - t0),
        secs(*last - t0),
        secs(makespan),
        all.len(),
        pause.as_secs_f64() * 1000.0,
    ));
}
