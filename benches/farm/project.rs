//! Project: the real binary and real Blender on a project of many dependency files. The issue's goal: "time from
//! job file to first frame for a project of 1,000 dependency files totalling 1 GiB, first time and after changing
//! one texture; the second under 5 % of the first".
//!
//! The project (100 files, 100 MiB with --quick) is generated in the temp folder: `tex/t0000.png`... hold
//! 1,073,742 pseudo-random bytes each (1,000 of them make 1 GiB). They are not images: the .blend, written by
//! Blender's Python ([`MAKE_BLEND`]), refers to each from an image data-block with a fake user that nothing renders,
//! so the owner's Blender lists them as dependencies and no render ever reads them. One real 64×64 PNG,
//! `tex/real.png`, textures a plane that fills the camera's view (Cycles, CPU, 64×48, 4 samples, no denoising,
//! frame 1), so the frame depends on it.
//!
//! - baseline: `blender -b main.blend -o DIR/#### -t 1 -f 1`, timed from start to exit.
//! - cold: `blenderdist host JOBDIR RENDERDIR --listen 127.0.0.1:0 --no-mdns` and one
//!   `blenderdist join ADDR --no-mdns --threads 1 --cache-dir FRESH`, started first and connected (its log says
//!   `joined host`). The job file (the absolute .blend path, frames 1..1) is renamed into JOBDIR and the clock runs
//!   until RENDERDIR/NAME/0001.png exists (polled every 10 ms). In that time the host's Blender lists the files, the
//!   host hashes them, the volunteer fetches them all, lays them out and renders.
//! - changed: once the job log says `finished`, `tex/real.png` is replaced (temp file and rename) by a PNG of other
//!   colours, and the clock runs until 0001.png holds other bytes. Same processes: the volunteer's cache is warm.
//!
//! Goal: changed ÷ cold ≤ 0.05. The notes split both times using the job log (`accepted` / `restarted`), the
//! volunteer's log (`fetching ...`) and the moment a frame folder appears in the volunteer's work folder (Blender
//! begins), and say how much the volunteer's blob cache grew in each run.

use std::{
    collections::HashSet,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{
    common::{self, note, row, secs, Opts},
    procs::{self, Proc},
};

const GOAL: f64 = 0.05;
/// The bound on each wait; the whole benchmark also runs under `timeout` in scripts/bench.sh.
const LIMIT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(10);
/// 1,000 of these make 1 GiB (1,073,742,000 bytes against 1,073,741,824).
const FILE_BYTES: usize = 1_073_742;
const JOB: &str = "project";

/// Blender Python, run as `blender -b --factory-startup --python-exit-code 1 --python make_blend.py -- DIR COUNT`:
/// writes DIR/project/main.blend, DIR/project/tex/real.png and DIR/changed.png, and prints `PATHS: N`, the number of
/// external files Blender itself lists for the .blend.
const MAKE_BLEND: &str = r#"
import os, sys
import bpy

top, count = os.path.abspath(sys.argv[-2]), int(sys.argv[-1])
proj = os.path.join(top, "project")
blend = os.path.join(proj, "main.blend")

def write_png(path, a, b):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = bpy.data.images.new("tmp_write", 64, 64, alpha=False)
    px = []
    for y in range(64):
        for x in range(64):
            px += (*(a if (x // 8 + y // 8) % 2 == 0 else b), 1.0)
    img.pixels = px
    img.filepath_raw = path
    img.file_format = "PNG"
    img.save()
    bpy.data.images.remove(img)

def save():
    bpy.context.preferences.filepaths.save_version = 0
    bpy.ops.wm.save_as_mainfile(filepath=blend, compress=False, relative_remap=False)

bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.frame_start = scene.frame_end = scene.frame_current = 1
r = scene.render
r.engine = "CYCLES"
r.resolution_x, r.resolution_y, r.resolution_percentage = 64, 48, 100
r.image_settings.file_format = "PNG"
r.image_settings.color_mode = "RGB"
r.filepath = "//render/"
scene.cycles.device = "CPU"
scene.cycles.samples = 4
scene.cycles.use_adaptive_sampling = False
scene.cycles.use_denoising = False
scene.view_settings.view_transform = "Standard"
os.makedirs(proj, exist_ok=True)
save()  # '//' paths need a saved file

real = os.path.join(proj, "tex", "real.png")
write_png(real, (0.9, 0.2, 0.1), (0.1, 0.7, 0.2))
write_png(os.path.join(top, "changed.png"), (0.1, 0.2, 0.9), (0.9, 0.9, 0.1))
image = bpy.data.images.load(real, check_existing=False)
image.filepath = "//tex/real.png"

mat = bpy.data.materials.new("Real")
mat.use_nodes = True
nt = mat.node_tree
nt.nodes.clear()
out = nt.nodes.new("ShaderNodeOutputMaterial")
emission = nt.nodes.new("ShaderNodeEmission")
tex = nt.nodes.new("ShaderNodeTexImage")
tex.image = image
tex.interpolation = "Closest"
nt.links.new(tex.outputs["Color"], emission.inputs["Color"])
nt.links.new(emission.outputs["Emission"], out.inputs["Surface"])
mesh = bpy.data.meshes.new("Plane")
mesh.from_pydata([(-2, -2, 0), (2, -2, 0), (2, 2, 0), (-2, 2, 0)], [], [(0, 1, 2, 3)])
uv = mesh.uv_layers.new(name="UVMap")
for loop, co in zip(uv.data, ((0, 0), (1, 0), (1, 1), (0, 1))):
    loop.uv = co
mesh.materials.append(mat)
scene.collection.objects.link(bpy.data.objects.new("Plane", mesh))
cam = bpy.data.cameras.new("Camera")
cam.type = "ORTHO"
cam.ortho_scale = 3.0
cam_ob = bpy.data.objects.new("Camera", cam)
cam_ob.location = (0, 0, 5)
scene.collection.objects.link(cam_ob)
scene.camera = cam_ob

# Listed as dependencies, never loaded: no shader uses them.
for i in range(count):
    img = bpy.data.images.new(f"t{i:04d}", 4, 4)
    img.source = "FILE"
    img.filepath = f"//tex/t{i:04d}.png"
    img.use_fake_user = True
save()
print("PATHS:", len(bpy.utils.blend_paths(absolute=True, packed=False, local=False)), flush=True)
"#;

pub fn run(opts: &Opts) -> anyhow::Result<()> {
    opts.require_bin()?;
    let version = Command::new("blender").arg("--version").output().context("blender is not on PATH")?;
    if !version.status.success() {
        bail!("`blender --version` failed");
    }
    let files = if opts.quick { 100 } else { 1000 };
    let dir = opts.temp_dir("project")?;
    let started = Instant::now();
    let project = Project::make(dir.path(), files)?;
    eprintln!("   generated {files} files and the .blend in {}", secs(started.elapsed()));

    let base = blender_first_frame(&project.blend, &dir.path().join("baseline"))?;
    eprintln!("   blender -f 1: {}", secs(base));
    let (cold, changed) = farm_runs(opts, &project, &dir.path().join("farm"))?;
    let (cold_t, changed_t) = (cold.frame, changed.frame);
    eprintln!("   blenderdist: cold {}, after one texture changed {}", secs(cold_t), secs(changed_t));

    let size = if files == 1000 {
        "1,000 files, 1 GiB".to_string()
    } else {
        format!("{files} files, {:.2} GiB", (files * FILE_BYTES) as f64 / (1u64 << 30) as f64)
    };
    row(
        &format!("project: job file → first frame, cold ({size})"),
        &secs(cold_t),
        &secs(base),
        &format!("{:.1}", cold_t.as_secs_f64() / base.as_secs_f64()),
        "-",
        "-",
    );
    let ratio = changed_t.as_secs_f64() / cold_t.as_secs_f64();
    row(
        "project: after one texture changed",
        &secs(changed_t),
        &secs(cold_t),
        &format!("{ratio:.3}"),
        &format!("≤ {GOAL}"),
        common::yes_no(ratio <= GOAL),
    );
    note(&format!(
        "project: the baseline is plain `blender -b main.blend -t 1 -f 1` on the owner's machine ({}). {}",
        secs(base),
        cold.carries.as_deref().map(|l| format!("The job log says the job {l}.")).unwrap_or_default()
    ));
    note(&format!("project, cold: {}", cold.describe("accepted (Blender listed the files, the host hashed them)")));
    note(&format!("project, one texture changed: {}", changed.describe("restarted (the host saw the change)")));
    if let Some(render) = changed.render {
        let blender = changed.frame.saturating_sub(render);
        note(&format!(
            "project: after the change, Blender rendering the frame and its delivery took {} of the {}; that alone is \
             {:.3} of the cold time.",
            secs(blender),
            secs(changed.frame),
            blender.as_secs_f64() / cold.frame.as_secs_f64()
        ));
    }
    Ok(())
}

/// The generated project: its main .blend, the texture the frame shows, and the PNG that replaces it.
struct Project {
    blend: PathBuf,
    texture: PathBuf,
    replacement: PathBuf,
}

impl Project {
    fn make(dir: &Path, files: usize) -> anyhow::Result<Self> {
        let script = dir.join("make_blend.py");
        std::fs::write(&script, MAKE_BLEND)?;
        let log = dir.join("make_blend.log");
        let status = Command::new("blender")
            .args(["-b", "--factory-startup", "--python-exit-code", "1", "--python"])
            .arg(&script)
            .arg("--")
            .arg(dir)
            .arg(files.to_string())
            .stdout(std::fs::File::create(&log)?)
            .stderr(Stdio::null())
            .status()?;
        let out = std::fs::read_to_string(&log).unwrap_or_default();
        let paths = out.lines().find_map(|l| l.strip_prefix("PATHS: ")?.trim().parse::<usize>().ok());
        if !status.success() || paths.is_none_or(|n| n < files + 1) {
            bail!("making the .blend failed ({status}, Blender lists {paths:?} files, not {}):\n{out}", files + 1);
        }
        let tex = dir.join("project/tex");
        let mut buf = vec![0u8; FILE_BYTES];
        let mut seed = 0x9E37_79B9_7F4A_7C15;
        for i in 0..files {
            common::fill_pseudo_random(&mut buf, &mut seed);
            let path = tex.join(format!("t{i:04}.png"));
            std::fs::write(&path, &buf).with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(Self {
            blend: dir.join("project/main.blend"),
            texture: tex.join("real.png"),
            replacement: dir.join("changed.png"),
        })
    }

    /// Replaces the texture atomically (a temp file, then a rename) and returns the moment just before the rename.
    fn change_texture(&self) -> anyhow::Result<Instant> {
        let tmp = self.texture.with_file_name(".real.png.tmp");
        std::fs::copy(&self.replacement, &tmp)?;
        let t0 = Instant::now();
        std::fs::rename(&tmp, &self.texture)?;
        Ok(t0)
    }
}

/// `blender -b main.blend -o DIR/#### -t 1 -f 1`, timed from start to exit.
fn blender_first_frame(blend: &Path, out: &Path) -> anyhow::Result<Duration> {
    std::fs::create_dir_all(out)?;
    let log = out.with_extension("log");
    let mut command = Command::new("blender");
    command.arg("-b").arg(blend).arg("-o").arg(out.join("####")).args(["-t", "1", "-f", "1"]);
    command.stdout(std::fs::File::create(&log)?).stderr(Stdio::null());
    let t0 = Instant::now();
    let mut blender = Proc::spawn(command)?;
    let status = loop {
        if let Some(status) = blender.child.try_wait()? {
            break status;
        }
        if t0.elapsed() > LIMIT {
            bail!("blender -f 1 did not finish within {LIMIT:?}; see {}", log.display());
        }
        std::thread::sleep(POLL);
    };
    let took = t0.elapsed();
    if !status.success() || !out.join("0001.png").is_file() {
        bail!("blender -f 1 failed ({status}): {}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    Ok(took)
}

/// What happened in one run, counted from its clock's start.
#[derive(Default)]
struct Timeline {
    /// The job log's line saying the job (re)started.
    logged: Option<Duration>,
    /// What the job log says the job carries (`carries 1000 files besides the .blend, ...`).
    carries: Option<String>,
    /// The volunteer's `fetching ...` lines.
    fetches: Vec<(Duration, String)>,
    /// A new frame folder in the volunteer's work folder: Blender is given the frame.
    render: Option<Duration>,
    frame: Duration,
    /// How much the volunteer's blob cache grew during the run.
    cache_growth: u64,
}

impl Timeline {
    fn describe(&self, logged: &str) -> String {
        let at = |d: Option<Duration>| d.map(secs).unwrap_or_else(|| "(not seen)".into());
        let fetches: Vec<String> = self.fetches.iter().map(|(t, l)| format!("at {} \"{l}\"", secs(*t))).collect();
        format!(
            "job log says {logged} at {}; volunteer: {}; Blender given the frame at {}; frame stored at {}. \
             The volunteer's blob cache grew by {}.",
            at(self.logged),
            if fetches.is_empty() { "no fetching line".into() } else { fetches.join(", ") },
            at(self.render),
            secs(self.frame),
            human_bytes(self.cache_growth),
        )
    }
}

/// A host and one volunteer as processes, with their folders under `root`.
struct Farm {
    host: Proc,
    volunteer: Proc,
    /// The volunteer's log lines the benchmark times, with when they were read.
    events: mpsc::Receiver<(Instant, String)>,
    root: PathBuf,
    jobdir: PathBuf,
    cache: PathBuf,
}

/// The cold run, then the run after one texture changed, on the same host and volunteer.
fn farm_runs(opts: &Opts, project: &Project, root: &Path) -> anyhow::Result<(Timeline, Timeline)> {
    let mut farm = Farm::start(opts, root)?;
    let result = farm.both_runs(project);
    // The job log, for the report: the first ten lines.
    let log = farm.job_log();
    eprintln!("   job log {} (first lines):", farm.jobdir.join(format!("{JOB}.log")).display());
    for line in log.iter().take(10) {
        eprintln!("     {line}");
    }
    if result.is_err() {
        for name in ["host.log", "host.out", "volunteer.log"] {
            let text = std::fs::read_to_string(root.join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("   {name} (last 30 lines):");
            for line in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("     {line}");
            }
        }
    }
    result
}

impl Farm {
    fn start(opts: &Opts, root: &Path) -> anyhow::Result<Self> {
        let (jobdir, renderdir, cache) = (root.join("jobs"), root.join("renders"), root.join("cache"));
        std::fs::create_dir_all(&jobdir)?;
        let mut host = Command::new(&opts.bin);
        host.arg("host").arg(&jobdir).arg(&renderdir).args(["--listen", "127.0.0.1:0", "--no-mdns"]);
        host.stdout(Stdio::piped()).stderr(std::fs::File::create(root.join("host.log"))?);
        let mut host = Proc::spawn(host)?;
        let addr = procs::join_address(&mut host, &root.join("host.out"))?;

        let mut join = Command::new(&opts.bin);
        join.arg("join").arg(addr.to_string()).args(["--no-mdns", "--threads", "1", "--cache-dir"]).arg(&cache);
        // The volunteer's info lines (`joined host`, `fetching ...`) are what the benchmark waits for and times.
        join.env_remove("RUST_LOG").stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut volunteer = Proc::spawn(join)?;
        let events = watch_volunteer(&mut volunteer, &root.join("volunteer.log"))?;
        let t0 = Instant::now();
        loop {
            match events.recv_timeout(Duration::from_secs(30).saturating_sub(t0.elapsed())) {
                Ok((_, line)) if line.contains("joined host") => break,
                Ok(_) => {}
                Err(_) => bail!("the volunteer did not join the host within 30 s; see {}", root.display()),
            }
        }
        // Identify has run; give gossipsub's subscription exchange a moment, as in the overhead benchmark.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Self { host, volunteer, events, root: root.to_path_buf(), jobdir, cache })
    }

    fn both_runs(&mut self, project: &Project) -> anyhow::Result<(Timeline, Timeline)> {
        let frame = self.root.join("renders").join(JOB).join("0001.png");
        let blobs = self.cache.join("blobs");
        let blend = project.blend.to_str().context("the temp folder's path is not UTF-8")?;
        common::write_job(&self.jobdir, JOB, blend, 1, 1)?;
        let t0 = Instant::now();
        let mut cold = self.watch("the first frame", t0, 0, " accepted:", |_| frame.is_file())?;
        cold.carries = self.job_log().into_iter().find_map(|l| Some(l[l.find(" carries ")? + 1..].to_string()));
        self.watch("the job log's `finished` line", t0, 0, " finished", |log| {
            log.iter().any(|l| l.contains(" finished"))
        })?;
        cold.cache_growth = tree_bytes(&blobs);

        let old = std::fs::read(&frame)?;
        let from = self.job_log().len();
        let before = tree_bytes(&blobs);
        let t1 = project.change_texture()?;
        let mut changed = self.watch("a new first frame", t1, from, " restarted", |_| {
            std::fs::read(&frame).is_ok_and(|now| !now.is_empty() && now != old)
        })?;
        changed.cache_growth = tree_bytes(&blobs).saturating_sub(before);
        // For the job log in the report; the figures are in already.
        let _ = self.watch("the job log's second `finished` line", t1, from, " finished", |log| {
            log.iter().any(|l| l.contains(" finished"))
        });
        Ok((cold, changed))
    }

    /// Polls every 10 ms until `done` holds (it sees the job log's lines from line `from` on), noting when the job
    /// log gains a line with `logged`, when the volunteer says it is fetching, and when Blender is given a frame.
    /// Fails on a `rejected` line, on a process that exits, and after [`LIMIT`].
    fn watch(
        &mut self,
        what: &str,
        t0: Instant,
        from: usize,
        logged: &str,
        mut done: impl FnMut(&[String]) -> bool,
    ) -> anyhow::Result<Timeline> {
        let work = self.cache.join("work");
        let mut seen = entries(&work);
        let mut timeline = Timeline::default();
        loop {
            let log = self.job_log();
            let new = &log[from.min(log.len())..];
            if let Some(line) = new.iter().find(|l| l.contains(" rejected:")) {
                bail!("the host rejected the job while waiting for {what}: {line}");
            }
            if timeline.logged.is_none() && new.iter().any(|l| l.contains(logged)) {
                timeline.logged = Some(t0.elapsed());
            }
            while let Ok((at, line)) = self.events.try_recv() {
                // `fetching the files of JOB (version V) from PEER`, `fetching N of the job's files (B bytes)`.
                if let Some(i) = line.find("fetching ") {
                    let text = line[i..].split(" from ").next().unwrap_or_default().to_string();
                    timeline.fetches.push((at.saturating_duration_since(t0), text));
                }
            }
            let now = entries(&work);
            if timeline.render.is_none() && now.difference(&seen).next().is_some() {
                timeline.render = Some(t0.elapsed());
            }
            seen = now;
            if done(new) {
                timeline.frame = t0.elapsed();
                return Ok(timeline);
            }
            for (who, proc) in [("host", &mut self.host), ("volunteer", &mut self.volunteer)] {
                if let Some(status) = proc.child.try_wait()? {
                    bail!("the {who} exited ({status}) while waiting for {what}; see {}", self.root.display());
                }
            }
            if t0.elapsed() > LIMIT {
                bail!("timed out after {LIMIT:?} waiting for {what}; see {}", self.root.display());
            }
            std::thread::sleep(POLL);
        }
    }

    fn job_log(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.jobdir.join(format!("{JOB}.log"))).unwrap_or_default();
        text.lines().map(str::to_string).collect()
    }
}

/// Copies the volunteer's output (both streams) to `log` and passes on the lines the benchmark times.
fn watch_volunteer(volunteer: &mut Proc, log: &Path) -> anyhow::Result<mpsc::Receiver<(Instant, String)>> {
    let (tx, rx) = mpsc::channel();
    let stdout = volunteer.child.stdout.take().context("no stdout")?;
    let stderr = volunteer.child.stderr.take().context("no stderr")?;
    for (stream, tx) in [(Box::new(stdout) as Box<dyn std::io::Read + Send>, tx.clone()), (Box::new(stderr), tx)] {
        procs::copy_lines(stream, log, move |line| {
            if line.contains("joined host") || line.contains("fetching ") {
                let _ = tx.send((Instant::now(), line.to_string()));
            }
        })?;
    }
    Ok(rx)
}

fn entries(dir: &Path) -> HashSet<OsString> {
    std::fs::read_dir(dir).map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect()).unwrap_or_default()
}

/// Bytes in the regular files under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(read) = std::fs::read_dir(dir) else { return 0 };
    read.filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    }
}
