//! Real Blender under faults: a host SIGKILLed and restarted, a volunteer SIGKILLed mid-job, suspend and resume,
//! files Blender cannot render, and output formats. Frames are compared with plain `blender -b -a`.

use std::{
    collections::HashMap,
    path::Path,
    process::Command,
    time::{Duration, SystemTime},
};

use crate::{blender_e2e::*, common::*};

const LIMIT: Duration = Duration::from_secs(300);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn mtimes(dir: &Path) -> HashMap<String, SystemTime> {
    files_in(dir)
        .into_iter()
        .map(|n| {
            let t = std::fs::metadata(dir.join(&n)).unwrap().modified().unwrap();
            (n, t)
        })
        .collect()
}

fn skip_test() -> bool {
    skip_without_blender()
}

#[test]
fn a_host_killed_with_sigkill_resumes_from_its_durable_state() {
    if skip_test() {
        return;
    }
    let dirs = Dirs::new();
    let blend = dirs.jobdir.join("scene.blend");
    make_scene(&blend, 10, "96x72", 8);
    let baseline = dirs.root.path().join("baseline");
    render_baseline(&blend, &baseline);
    let listen = format!("127.0.0.1:{}", free_port());

    let (mut host, addr) = spawn_host(&dirs.jobdir, &dirs.renderdir, &["--listen", &listen]);
    let hidden = [dirs.jobdir.as_path(), dirs.renderdir.as_path()];
    let _v = spawn_isolated_volunteer(&hidden, &dirs.cache("v"), &addr, &[]);
    write_job(&dirs.jobdir, "k", "scene.blend", 1, 10);
    let out = dirs.renderdir.join("k");
    wait_until_blocking("three frames", LIMIT, || files_in(&out).len() >= 3);
    host.0.kill().unwrap(); // SIGKILL
    host.0.wait().unwrap();
    // Frames the host had recorded as done (the job log says so only after the commit) must never be rendered again.
    let log = std::fs::read_to_string(dirs.jobdir.join("k.log")).unwrap();
    let done: Vec<String> = log
        .lines()
        .filter_map(|l| l.split("frame ").nth(1)?.split(" done by").next()?.parse::<u32>().ok())
        .map(|f| format!("{f:04}.png"))
        .collect();
    assert!(!done.is_empty(), "{log}");
    let before: HashMap<String, SystemTime> = mtimes(&out).into_iter().filter(|(n, _)| done.contains(n)).collect();

    let (_host, addr2) = spawn_host(&dirs.jobdir, &dirs.renderdir, &["--listen", &listen]);
    assert_eq!(addr, addr2, "the restarted host has another address or identity");
    let names = frame_names(1, 10, "png");
    // Only finished frames ever appear in the frame folder: no partial or temporary file at any point.
    wait_until_blocking("the rest of the job", LIMIT, || {
        let files = files_in(&out);
        assert!(files.iter().all(|f| names.contains(f)), "unexpected file in the frame folder: {files:?}");
        files == names
    });
    assert_same_pixels(&baseline, &out, &names);
    let after = mtimes(&out);
    for (name, t) in before {
        assert_eq!(after[&name], t, "{name} was rendered again after the restart");
    }
}

#[test]
fn a_volunteer_killed_mid_job_loses_no_frame() {
    if skip_test() {
        return;
    }
    let dirs = Dirs::new();
    let blend = dirs.jobdir.join("scene.blend");
    make_scene(&blend, 8, "96x72", 8);
    let baseline = dirs.root.path().join("baseline");
    render_baseline(&blend, &baseline);
    let (_host, addr) = spawn_host(&dirs.jobdir, &dirs.renderdir, &[]);
    let hidden = [dirs.jobdir.as_path(), dirs.renderdir.as_path()];
    let mut doomed = spawn_isolated_volunteer(&hidden, &dirs.cache("doomed"), &addr, &[]);
    let _steady = spawn_isolated_volunteer(&hidden, &dirs.cache("steady"), &addr, &[]);
    write_job(&dirs.jobdir, "vk", "scene.blend", 1, 8);
    let out = dirs.renderdir.join("vk");
    wait_until_blocking("two frames", LIMIT, || files_in(&out).len() >= 2);
    doomed.0.kill().unwrap(); // SIGKILL, mid-frame
    doomed.0.wait().unwrap();
    let names = frame_names(1, 8, "png");
    wait_until_blocking("every frame", LIMIT, || files_in(&out) == names);
    assert_same_pixels(&baseline, &out, &names);
}

#[test]
fn suspending_a_real_job_holds_it_and_removing_the_file_resumes_it() {
    if skip_test() {
        return;
    }
    let dirs = Dirs::new();
    let blend = dirs.jobdir.join("scene.blend");
    make_scene(&blend, 4, "64x48", 4);
    let baseline = dirs.root.path().join("baseline");
    render_baseline(&blend, &baseline);
    let suspend = dirs.jobdir.join("sus.job.suspend");
    std::fs::write(&suspend, b"").unwrap();
    write_job(&dirs.jobdir, "sus", "scene.blend", 1, 4);
    let (_host, addr) = spawn_host(&dirs.jobdir, &dirs.renderdir, &[]);
    let hidden = [dirs.jobdir.as_path(), dirs.renderdir.as_path()];
    let _v = spawn_isolated_volunteer(&hidden, &dirs.cache("v"), &addr, &[]);
    let log = |job: &str| std::fs::read_to_string(dirs.jobdir.join(format!("{job}.log"))).unwrap_or_default();
    wait_until_blocking("the job, accepted suspended", LIMIT, || log("sus").contains("suspended"));
    // A younger job renders to the end meanwhile; the older one would be served first, were it not suspended.
    write_job(&dirs.jobdir, "other", "scene.blend", 1, 1);
    wait_until_blocking("the younger job", LIMIT, || files_in(&dirs.renderdir.join("other")).len() == 1);
    assert!(files_in(&dirs.renderdir.join("sus")).is_empty(), "a suspended job rendered");
    std::fs::remove_file(&suspend).unwrap();
    let names = frame_names(1, 4, "png");
    wait_until_blocking("the resumed job", LIMIT, || files_in(&dirs.renderdir.join("sus")) == names);
    assert_same_pixels(&baseline, &dirs.renderdir.join("sus"), &names);
}

#[test]
fn files_blender_cannot_render_are_reported_with_blenders_own_words() {
    if skip_test() {
        return;
    }
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("junk.blend"), b"this is not a blend file").unwrap();
    write_job(&dirs.jobdir, "junk", "junk.blend", 1, 1);
    // A scene whose texture is missing on the owner's machine too: Blender renders it pink there, so the farm renders
    // the same frame, and the job log says why.
    let tex = dirs.jobdir.join("tex.blend");
    make_scene(&tex, 1, "32x24", 1);
    let expr = "import bpy; i = bpy.data.images.new('t', 4, 4); i.source = 'FILE'; \
                i.filepath = '/nonexistent/blenderdist-texture.png'; i.use_fake_user = True; \
                bpy.ops.wm.save_mainfile()";
    blender(&["-b", &tex.to_string_lossy(), "--python-exit-code", "1", "--python-expr", expr]);
    write_job(&dirs.jobdir, "tex", "tex.blend", 1, 1);
    let (_host, addr) = spawn_host(&dirs.jobdir, &dirs.renderdir, &[]);
    let hidden = [dirs.jobdir.as_path(), dirs.renderdir.as_path()];
    let _v = spawn_isolated_volunteer(&hidden, &dirs.cache("v"), &addr, &[]);

    let log = |job: &str| std::fs::read_to_string(dirs.jobdir.join(format!("{job}.log"))).unwrap_or_default();
    wait_until_blocking("the failure and the frame in the job logs", LIMIT, || {
        log("junk").contains("frame 1 failed") && log("tex").contains("frame 1 done")
    });
    let tex_log = log("tex");
    assert!(
        tex_log.contains("/nonexistent/blenderdist-texture.png is missing on the owner's machine too"),
        "{tex_log}"
    );
    assert!(log("junk").contains("Blender"), "{}", log("junk"));
    assert!(files_in(&dirs.renderdir.join("junk")).is_empty());
}

#[test]
fn movie_formats_become_png_frames_and_exr_stays_exr() {
    if skip_test() {
        return;
    }
    let dirs = Dirs::new();
    for (name, format) in [("movie", "FFMPEG"), ("exr", "OPEN_EXR")] {
        let blend = dirs.jobdir.join(format!("{name}.blend"));
        let script = script("make_scene.py");
        let path = blend.to_string_lossy().into_owned();
        blender(&[
            "-b",
            "--factory-startup",
            "--python-exit-code",
            "1",
            "--python",
            &script,
            "--",
            &path,
            "--frames",
            "2",
            "--res",
            "32x24",
            "--samples",
            "1",
            "--format",
            format,
        ]);
        write_job(&dirs.jobdir, name, &format!("{name}.blend"), 1, 2);
    }
    let baseline = dirs.root.path().join("baseline");
    let movie = dirs.jobdir.join("movie.blend");
    let pattern = format!("{}/####", baseline.display());
    blender(&["-b", &movie.to_string_lossy(), "-o", &pattern, "-F", "PNG", "-t", "1", "-a"]);

    let (_host, addr) = spawn_host(&dirs.jobdir, &dirs.renderdir, &[]);
    let hidden = [dirs.jobdir.as_path(), dirs.renderdir.as_path()];
    let _v = spawn_isolated_volunteer(&hidden, &dirs.cache("v"), &addr, &[]);
    let png = frame_names(1, 2, "png");
    wait_until_blocking("PNG frames of the movie job", LIMIT, || files_in(&dirs.renderdir.join("movie")) == png);
    assert_same_pixels(&baseline, &dirs.renderdir.join("movie"), &png);
    let exr = frame_names(1, 2, "exr");
    wait_until_blocking("EXR frames", LIMIT, || files_in(&dirs.renderdir.join("exr")) == exr);
}

/// Blender processes whose parent is `pid`.
fn blender_children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { return false };
            // pid (comm) state ppid ...: comm may hold spaces, so split after its closing parenthesis.
            let Some((head, rest)) = stat.rsplit_once(')') else { return false };
            let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
            head.contains("(blender") && ppid == Some(pid)
        })
        .collect()
}

#[test]
fn a_blender_that_dies_mid_job_fails_only_its_frame_and_is_restarted() {
    if skip_test() {
        return;
    }
    let dirs = Dirs::new();
    let blend = dirs.jobdir.join("scene.blend");
    make_scene(&blend, 8, "96x72", 16);
    let baseline = dirs.root.path().join("baseline");
    render_baseline(&blend, &baseline);
    let (_host, addr) = spawn_host(&dirs.jobdir, &dirs.renderdir, &[]);
    let hidden = [dirs.jobdir.as_path(), dirs.renderdir.as_path()];
    let crashy = spawn_isolated_volunteer(&hidden, &dirs.cache("crashy"), &addr, &[]);
    let _steady = spawn_isolated_volunteer(&hidden, &dirs.cache("steady"), &addr, &[]);
    write_job(&dirs.jobdir, "crash", "scene.blend", 1, 8);
    let out = dirs.renderdir.join("crash");
    wait_until_blocking("a frame done and a Blender running", LIMIT, || {
        !files_in(&out).is_empty() && !blender_children(crashy.0.id()).is_empty()
    });
    for pid in blender_children(crashy.0.id()) {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    let names = frame_names(1, 8, "png");
    wait_until_blocking("every frame", LIMIT, || files_in(&out) == names);
    assert_same_pixels(&baseline, &out, &names);
    let log = std::fs::read_to_string(dirs.jobdir.join("crash.log")).unwrap();
    assert!(log.contains("failed on") && log.contains("Blender exited"), "{log}");
}

#[test]
fn frame_time_and_memory_limits_stop_blender_and_say_why() {
    if skip_test() {
        return;
    }
    let slow = Dirs::new();
    make_scene(&slow.jobdir.join("scene.blend"), 2, "320x240", 256);
    write_job(&slow.jobdir, "slow", "scene.blend", 1, 1);
    let (_h1, a1) = spawn_host(&slow.jobdir, &slow.renderdir, &[]);
    let hidden = [slow.jobdir.as_path(), slow.renderdir.as_path()];
    let _v1 = spawn_isolated_volunteer(&hidden, &slow.cache("v"), &a1, &["--frame-timeout", "1"]);

    let big = Dirs::new();
    make_scene(&big.jobdir.join("scene.blend"), 2, "64x48", 1);
    write_job(&big.jobdir, "big", "scene.blend", 1, 1);
    let (_h2, a2) = spawn_host(&big.jobdir, &big.renderdir, &[]);
    let hidden = [big.jobdir.as_path(), big.renderdir.as_path()];
    let _v2 = spawn_isolated_volunteer(&hidden, &big.cache("v"), &a2, &["--max-memory", "16"]);

    let log = |d: &Dirs, job: &str| std::fs::read_to_string(d.jobdir.join(format!("{job}.log"))).unwrap_or_default();
    wait_until_blocking("the time limit in the log", LIMIT, || log(&slow, "slow").contains("took longer than the 1 s"));
    wait_until_blocking("the memory limit in the log", LIMIT, || log(&big, "big").contains("over the 16 MiB limit"));
}
