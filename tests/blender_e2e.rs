//! End to end with real Blender: the `blenderdist` binary as host and volunteers, frames compared pixel for pixel
//! with what plain `blender -b -a` renders. Volunteers run where they cannot read JOBDIR.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(300);

/// Generates a small animated Cycles scene (denoising off: Debian's Blender has no OpenImageDenoise).
pub fn make_scene(path: &Path, frames: u32, res: &str, samples: u32) {
    let (frames, samples) = (frames.to_string(), samples.to_string());
    let script = script("make_scene.py");
    let path = path.to_string_lossy();
    let args = ["-b", "--factory-startup", "--python-exit-code", "1", "--python", &script, "--", &path];
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--frames", &frames, "--res", res, "--samples", &samples]);
    blender(&all);
}

/// Renders `blend` with plain `blender -b -a` into `dir/NNNN.png`.
pub fn render_baseline(blend: &Path, dir: &Path) {
    let pattern = format!("{}/####", dir.display());
    blender(&["-b", &blend.to_string_lossy(), "-o", &pattern, "-t", "1", "-a"]);
}

/// Asserts that every frame in `got` has exactly the pixels of the same frame in `want`.
pub fn assert_same_pixels(want: &Path, got: &Path, names: &[String]) {
    for name in names {
        let a = png_pixels(&want.join(name));
        let b = png_pixels(&got.join(name));
        assert_eq!((a.0, a.1, &a.2), (b.0, b.1, &b.2), "{name}: size or format differs");
        assert!(a.3 == b.3, "{name}: pixels differ from blender -b -a");
    }
}

/// Whether this machine lets us hide a folder behind a tmpfs in a private mount namespace (needs root).
pub fn can_hide_folders() -> bool {
    Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts a volunteer that cannot see `hidden` (each gets an empty tmpfs over it, in its own mount namespace).
pub fn spawn_isolated_volunteer(hidden: &[&Path], cache: &Path, addr: &str, extra: &[&str]) -> Proc {
    Proc(isolated_volunteer(hidden, cache, addr, extra).stdin(Stdio::null()).spawn().unwrap())
}

/// [`spawn_isolated_volunteer`] with its log (stderr) in `log`.
pub fn spawn_isolated_volunteer_logged(hidden: &[&Path], cache: &Path, addr: &str, log: &Path) -> Proc {
    let file = std::fs::File::create(log).unwrap();
    Proc(isolated_volunteer(hidden, cache, addr, &[]).stdin(Stdio::null()).stderr(file).spawn().unwrap())
}

fn isolated_volunteer(hidden: &[&Path], cache: &Path, addr: &str, extra: &[&str]) -> Command {
    let mut script = String::from("set -e; ");
    for (i, _) in hidden.iter().enumerate() {
        script.push_str(&format!("mount -t tmpfs blenderdist-hidden \"${}\"; ", i + 1));
    }
    // The proof that it cannot read the owner's files: they are gone in its view of the file system.
    for (i, _) in hidden.iter().enumerate() {
        script.push_str(&format!("test -z \"$(ls -A \"${}\")\"; ", i + 1));
    }
    script.push_str(&format!("shift {}; exec \"$@\"", hidden.len()));
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c", &script, "sh"]);
    cmd.args(hidden);
    cmd.arg(BIN).args(["join", addr, "--no-mdns", "--threads", "1", "--cache-dir"]).arg(cache).args(extra);
    cmd
}

pub fn skip_without_blender() -> bool {
    if !blender_available() {
        skip("blender is not installed (CI installs it: apt-get install -y blender)");
        return true;
    }
    if !can_hide_folders() {
        skip("needs root for `unshare -m` to hide JOBDIR from volunteers");
        return true;
    }
    false
}

#[test]
fn two_isolated_volunteers_render_frames_identical_to_blender_a() {
    if skip_without_blender() {
        return;
    }
    let dirs = Dirs::new();
    let blend = dirs.jobdir.join("scene.blend");
    make_scene(&blend, 6, "160x120", 8);
    let baseline = dirs.root.path().join("baseline");
    render_baseline(&blend, &baseline);

    let (_host, addr) = spawn_host(&dirs.jobdir, &dirs.renderdir, &[]);
    let hidden = [dirs.jobdir.as_path(), dirs.renderdir.as_path()];
    let _a = spawn_isolated_volunteer(&hidden, &dirs.cache("a"), &addr, &[]);
    let _b = spawn_isolated_volunteer(&hidden, &dirs.cache("b"), &addr, &[]);
    write_job(&dirs.jobdir, "shot", "scene.blend", 1, 6);

    let out = dirs.renderdir.join("shot");
    let names = frame_names(1, 6, "png");
    wait_until_blocking("6 real frames", LIMIT, || files_in(&out) == names);
    assert_same_pixels(&baseline, &out, &names);
    let log = std::fs::read_to_string(dirs.jobdir.join("shot.log")).unwrap();
    let by: std::collections::HashSet<&str> =
        log.lines().filter_map(|l| l.split(" done by ").nth(1)?.split(" in ").next()).collect();
    assert_eq!(by.len(), 2, "both volunteers should have rendered:\n{log}");
}

/// A .blend whose registered text block would create a marker file if Python in it ever ran.
fn make_autoexec_scene(blend: &Path, marker: &Path) {
    let script = script("make_autoexec_scene.py");
    blender(&[
        "-b",
        "--factory-startup",
        "--python-exit-code",
        "1",
        "--python",
        &script,
        "--",
        &blend.to_string_lossy(),
        &marker.to_string_lossy(),
    ]);
}

/// A HOME whose Blender preferences turn "Auto Run Python Scripts" on.
fn home_with_autoexec(root: &Path) -> PathBuf {
    let home = root.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let out = Command::new("blender")
        .args(["-b", "--python-exit-code", "1", "--python", &script("enable_autoexec_prefs.py")])
        .env("HOME", &home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    home
}

#[test]
fn a_volunteer_with_autorun_preferences_never_runs_python_from_the_blend() {
    if skip_without_blender() {
        return;
    }
    let dirs = Dirs::new();
    let blend = dirs.jobdir.join("evil.blend");
    let marker = dirs.root.path().join("python-ran");
    make_autoexec_scene(&blend, &marker);
    let home = home_with_autoexec(dirs.root.path());

    // The control: with these preferences, plain Blender does run the file's script.
    let control = Command::new("blender")
        .arg("-b")
        .arg(&blend)
        .args(["-o", &format!("{}/ctl_####", dirs.root.path().display()), "-f", "1"])
        .env("HOME", &home)
        .output()
        .unwrap();
    assert!(control.status.success());
    assert!(marker.exists(), "the control failed: the script did not run even in plain Blender");
    std::fs::remove_file(&marker).unwrap();

    let (_host, addr) = spawn_host(&dirs.jobdir, &dirs.renderdir, &[]);
    let mut volunteer = Command::new(BIN);
    volunteer.args(["join", &addr, "--no-mdns", "--cache-dir"]).arg(dirs.cache("v")).env("HOME", &home);
    let _v = Proc(volunteer.stdin(Stdio::null()).spawn().unwrap());
    write_job(&dirs.jobdir, "evil", "evil.blend", 1, 2);
    wait_until_blocking("both frames", LIMIT, || files_in(&dirs.renderdir.join("evil")) == frame_names(1, 2, "png"));
    assert!(!marker.exists(), "the volunteer ran Python embedded in the job's .blend");
}
