//! Scaling: an in-process host and fake volunteers (one render slot each) render one job; by default 50 volunteers,
//! 100 ms per frame, 2,000 frames (500 with --quick); `--volunteers N --frames N --frame-ms N` pick other sizes. The
//! volunteers connect first; the clock starts when the job file is renamed into JOBDIR and stops when the host's job
//! log says `finished:`, that is after the last frame file is in place. Efficiency = ideal makespan (frames × frame
//! time ÷ volunteers) ÷ measured makespan; goal ≥ 0.95.
//!
//! The host's folders (JOBDIR, RENDERDIR, state) are on disk, where its fsyncs cost what they cost an owner: on a
//! fresh ext4 file system in a loop-mounted image under --tmp (`loopdisk`: this VM's own file system made the figures
//! depend on what was deleted before the run), or in --tmp itself where no file system can be made. The volunteers' caches go to tmpfs (/dev/shm) when there is one: on a real farm each volunteer writes to its
//! own disk, and 50 of them creating and deleting files on the host's file system would slow the host's fsyncs (an
//! ext4 fsync commits the whole journal). Three runs (one with --quick), each with a fresh farm; the median counts.
//! Then as many runs with the disk busy: a thread of this benchmark ([`common::DiskBusy`]) writes and fsyncs 4 MiB
//! chunks to a file in the host's temp folder in a loop from before the volunteers connect until the job finishes;
//! their median is a second row. The notes add what one stored frame costs the host's disk, and one more run with
//! the host's folders on tmpfs too, to show how much of the gap is the host waiting for its disk.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use blenderdist::{
    protocol::BlobHash,
    store::state::{JobRecord, StateStore},
};

use crate::{
    common::{self, note, row, secs, DiskBusy, Farm, LogTail, Opts, Stamped},
    loopdisk::LoopDisk,
};

const VOLUNTEERS: usize = 50;
const FRAME_MS: u64 = 100;
const GOAL: f64 = 0.95;

/// One farm's sizes.
#[derive(Clone, Copy)]
struct Sizes {
    volunteers: usize,
    frames: u32,
    frame_time: Duration,
    /// The job's `verify =` fraction (`--verify`; 0 unless given, so the figures measure the farm without checks).
    verify: f64,
}

impl Sizes {
    fn ideal(&self) -> Duration {
        self.frame_time * self.frames / self.volunteers as u32
    }
}

pub async fn run(opts: &Opts) -> anyhow::Result<()> {
    opts.require_bin()?;
    let sizes = Sizes {
        volunteers: opts.volunteers.unwrap_or(VOLUNTEERS),
        frames: opts.frames.unwrap_or(if opts.quick { 500 } else { 2000 }),
        frame_time: Duration::from_millis(opts.frame_ms.unwrap_or(FRAME_MS)),
        verify: opts.verify.unwrap_or(0.0),
    };
    let Sizes { volunteers, frames, frame_time, .. } = sizes;
    let runs = if opts.quick { 1 } else { 3 };
    let ideal = sizes.ideal();
    let shm = Path::new("/dev/shm").is_dir().then(|| Path::new("/dev/shm"));
    let what = format!("{volunteers} volunteers × {frames} frames of {} ms", frame_time.as_millis());
    // The host's folders go on a file system made for this benchmark (see `loopdisk`), else in --tmp as it is.
    let disk = LoopDisk::make(&opts.tmp);
    let root = disk.as_ref().map_or(opts.tmp.clone(), |d| d.dir().to_path_buf());
    match &disk {
        Ok(_) => note(&format!(
            "Scaling ({what}): the host's folders were on a fresh ext4 file system (mkfs.ext4 defaults, journal on) \
             in a loop-mounted image under {}.",
            opts.tmp.display()
        )),
        Err(e) => note(&format!(
            "Scaling ({what}): the host's folders were in {} as it is; no fresh file system for them: {e:#}.",
            opts.tmp.display()
        )),
    }
    // Every run's folders stay until the end: see [`RunFolders`]. Dropped before the file system they are on.
    let mut kept = RunFolders::default();
    for busy in [false, true] {
        let mut makespans = Vec::new();
        let mut rates = Vec::new();
        for run in 1..=runs {
            let dir = opts.temp_dir_in(&root, "scaling")?;
            let caches = volunteer_dir(shm, dir.path())?;
            // Bounded: stopped when the run ends, and by itself after the run's own time limit.
            let writer = if busy { Some(DiskBusy::start(dir.path(), limit(sizes) * 2)?) } else { None };
            let label = if busy { "disk busy" } else { "quiet" };
            let makespan = measure(&opts.bin, dir.path(), caches.path(), sizes, label).await?;
            let rate = writer.map(DiskBusy::finish);
            eprintln!(
                "   {label} run {run}: makespan {}, efficiency {:.3}{}",
                secs(makespan),
                efficiency(ideal, makespan),
                rate.map(|r| format!(", background writer {r:.0} MiB/s")).unwrap_or_default()
            );
            makespans.push(makespan);
            rates.extend(rate);
            kept.0.extend([dir, caches]);
        }
        let mut sorted = makespans.clone();
        sorted.sort();
        let median = sorted[sorted.len() / 2];
        row(
            &format!("Scaling: efficiency, {what}{}", if busy { ", disk busy" } else { "" }),
            &format!("makespan {}", secs(median)),
            &format!("ideal {}", secs(ideal)),
            &format!("{:.3}", efficiency(ideal, median)),
            &format!("≥ {GOAL}"),
            common::yes_no(efficiency(ideal, median) >= GOAL),
        );
        let all: Vec<String> = makespans.iter().map(|m| format!("{:.3}", efficiency(ideal, *m))).collect();
        if busy {
            let rates: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
            note(&format!(
                "Scaling with the disk busy: a thread of the benchmark wrote and fsynced 4 MiB chunks to a file in \
                 the host's temp folder throughout each run, at {} MiB/s; efficiency of each run{}: {}.",
                rates.join(", "),
                if runs > 1 { ", the median counting" } else { "" },
                all.join(", ")
            ));
        } else if runs > 1 {
            note(&format!("Scaling: efficiency of each quiet run, the median counting: {}.", all.join(", ")));
        }
    }
    let probe = opts.temp_dir_in(&root, "fsync-probe")?;
    let (files, commit) = store_cost(probe.path().to_path_buf()).await?;
    note(&format!(
        "Scaling: what storing one frame costs the host on this disk (200 tries, mean and slowest): writing a small \
         file, fsyncing it, renaming it into a folder and fsyncing the folder {}; one `StateStore::mark_done` commit \
         {}. {volunteers} volunteers deliver a frame every {:.2} ms in the ideal case.",
        files,
        commit,
        frame_time.as_secs_f64() * 1000.0 / volunteers as f64,
    ));
    if let Some(shm) = shm {
        let dir = tempfile::Builder::new().prefix("blenderdist-bench-scaling-").tempdir_in(shm)?;
        let makespan = measure(&opts.bin, dir.path(), dir.path(), sizes, "tmpfs").await?;
        note(&format!(
            "Scaling with the host's folders on tmpfs too (no disk waits), same run: makespan {}, efficiency {:.3}.",
            secs(makespan),
            efficiency(ideal, makespan)
        ));
    }
    Ok(())
}

/// The runs' folders, removed together at the end and the removal written back (`sync`). On ext4 without a journal
/// (this VM's file system) creating a file skips every inode of the folder's block group freed in the last 5 s, or
/// in the last 300 s while its inode table block is not yet written back. Removing one run's 4,000 frames right before
/// the next run made each file the host created cost 0.6-0.8 ms instead of 0.02 ms (measured with 4,000 small
/// files in a folder after such a removal, and in a fresh one), which measures the benchmark's own clean-up, not the
/// host. Cargo's churn under `target/` does the same, hence the default temp folder under /var/tmp.
#[derive(Default)]
struct RunFolders(Vec<tempfile::TempDir>);

impl Drop for RunFolders {
    fn drop(&mut self) {
        self.0.clear();
        let _ = std::process::Command::new("sync").status();
    }
}

/// How long one run may take before it counts as hung: ten times the ideal makespan, at least a minute.
fn limit(sizes: Sizes) -> Duration {
    (sizes.ideal() * 10).max(Duration::from_secs(60))
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
async fn measure(bin: &Path, root: &Path, caches: &Path, sizes: Sizes, label: &str) -> anyhow::Result<Duration> {
    let Sizes { volunteers, frames, frame_time, verify } = sizes;
    let mut farm = Farm::start_host_process(bin, root, caches)?;
    let host_pid = farm.host_proc.as_ref().map(|p| p.pid()).context("no host process")?;
    common::write_fake_blend(&farm.jobdir.join("scene.blend"), 64 * 1024, 1)?;
    let renderers: Vec<Arc<Stamped>> = (0..volunteers).map(|_| Arc::new(Stamped::fake(frame_time))).collect();
    let t_connect = Instant::now();
    for r in &renderers {
        farm.add_volunteer(r.clone())?;
    }
    farm.wait_connected(Duration::from_secs(2)).await?;
    let connect = t_connect.elapsed();

    let mut log = LogTail::new(farm.jobdir.join("scale.log"));
    common::write_job_with(&farm.jobdir, "scale", "scene.blend", 1, frames, &format!("verify = {verify}\n"))?;
    let (t0, cpu0, host0) = (Instant::now(), own_cpu_secs(), cpu_secs_of(host_pid));
    common::wait_for("the job to finish", limit(sizes), Duration::from_millis(2), || {
        log.saw_line_starting("finished:")
    })
    .await?;
    let makespan = t0.elapsed();
    let cpu = own_cpu_secs() - cpu0;
    let host_cpu = cpu_secs_of(host_pid) - host0;
    ensure!(
        farm.frames_in("scale") == frames as usize,
        "the job finished with {} frame files",
        farm.frames_in("scale")
    );
    describe(&renderers, t0, makespan, sizes, label, (connect, cpu, host_cpu));
    Ok(makespan)
}

fn cores() -> usize {
    std::thread::available_parallelism().map(usize::from).unwrap_or(1)
}

/// CPU seconds this process (the volunteers) has used, from /proc/self/stat.
fn own_cpu_secs() -> f64 {
    cpu_secs_in(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// CPU seconds process `pid` has used.
fn cpu_secs_of(pid: u32) -> f64 {
    cpu_secs_in(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// CPU seconds (user + system) in the text of a /proc/PID/stat file.
fn cpu_secs_in(stat: &str) -> f64 {
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, f)| f.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    ticks as f64 / crate::procs::clock_ticks_per_second()
}

/// Where the time went: start-up before the first render, the spread of frames per volunteer, and the time from
/// one render's start to the next on the same volunteer (the frame time plus what each frame's round adds).
fn describe(
    renderers: &[Arc<Stamped>],
    t0: Instant,
    makespan: Duration,
    sizes: Sizes,
    label: &str,
    (connect, cpu, host_cpu): (Duration, f64, f64),
) {
    let Sizes { volunteers, frames, frame_time, .. } = sizes;
    let starts: Vec<Vec<Instant>> = renderers.iter().map(|r| r.starts()).collect();
    let all: Vec<Instant> = starts.iter().flatten().copied().collect();
    let (Some(first), Some(last)) = (all.iter().min(), all.iter().max()) else { return };
    let per: Vec<usize> = starts.iter().map(Vec::len).collect();
    let (min, max) = (per.iter().min().unwrap_or(&0), per.iter().max().unwrap_or(&0));
    let gaps: Vec<f64> =
        starts.iter().flat_map(|s| s.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0)).collect();
    let mean_gap = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
    // A render's own time (the fake's sleep and its two file trips), and the slot's time from one render's end to
    // the next one's start (the volunteer's own work between frames).
    let ends: Vec<Vec<Instant>> = renderers.iter().map(|r| r.ends()).collect();
    let mean_ms = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let took: Vec<f64> = starts
        .iter()
        .zip(&ends)
        .flat_map(|(s, e)| s.iter().zip(e).map(|(s, e)| (*e - *s).as_secs_f64() * 1000.0))
        .collect();
    let between: Vec<f64> = starts
        .iter()
        .zip(&ends)
        .flat_map(|(s, e)| {
            e.iter().zip(s.iter().skip(1)).map(|(e, s)| s.saturating_duration_since(*e).as_secs_f64() * 1000.0)
        })
        .collect();
    let firsts: Vec<Instant> = starts.iter().filter_map(|s| s.first().copied()).collect();
    // With every volunteer busy a render starts somewhere every frame time ÷ volunteers; a long pause means the farm
    // stalled (for instance the host's loop waiting on the disk while volunteers wait for their uploads to be stored).
    let mut sorted = all.clone();
    sorted.sort();
    let pause = sorted.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let latest_first = firsts.iter().max().copied().unwrap_or(*first);
    note(&format!(
        "Scaling run ({label}, {volunteers} volunteers, {} ms frames): {} volunteers connected in {}; they began their \
         first render {}–{} after the job file; the last render started at {}, makespan {}; {} renders for {frames} \
         frames; {min}–{max} frames per volunteer; {mean_gap:.1} ms on average from one render's start to the next on \
         a volunteer, of which {:.1} ms in the render (the fake's sleep and file trips) and {:.1} ms from its end to the next \
         render's start; longest time with no render starting anywhere {:.0} ms; during the makespan the host process used {host_cpu:.2} \
         CPU seconds ({:.2} ms per frame) and the volunteers' process {cpu:.2} ({:.2} ms per frame), together {:.0}% \
         of the machine's {} cores.",
        frame_time.as_millis(),
        renderers.len(),
        secs(connect),
        secs(*first - t0),
        secs(latest_first - t0),
        secs(*last - t0),
        secs(makespan),
        all.len(),
        mean_ms(&took),
        mean_ms(&between),
        pause.as_secs_f64() * 1000.0,
        host_cpu * 1000.0 / f64::from(frames),
        cpu * 1000.0 / f64::from(frames),
        100.0 * (cpu + host_cpu) / makespan.as_secs_f64() / cores() as f64,
        cores(),
    ));
}
