//! When a job ends: `notify = COMMAND` (its environment, once per end, its time limit, its output in the job log)
//! and `video = mp4` (a real movie from real Blender frames at the scene's frame rate, and a clear word when ffmpeg
//! is missing). A real host in-process; fake volunteers, except for the movie.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use blenderdist::{
    host::{HostConfig, RunningHost},
    worker::fake::FakeRenderer,
};

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(30);

/// Writes `NAME.job` with option lines, atomically.
fn write_job_with(dirs: &Dirs, name: &str, first: u32, last: u32, options: &str) {
    let tmp = dirs.jobdir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, format!("scene.blend\n{first}\n{last}\n{options}\n")).unwrap();
    std::fs::rename(tmp, dirs.jobdir.join(format!("{name}.job"))).unwrap();
}

fn log_of(dirs: &Dirs, job: &str) -> String {
    std::fs::read_to_string(dirs.jobdir.join(format!("{job}.log"))).unwrap_or_default()
}

async fn host_with(
    dirs: &Dirs,
    change: impl FnOnce(&mut HostConfig),
) -> (RunningHost, tokio::sync::oneshot::Sender<()>) {
    init_tracing();
    let mut config = dirs.host_config();
    change(&mut config);
    let (stop, shutdown) = shutdown_switch();
    (blenderdist::host::start(config, shutdown).await.unwrap(), stop)
}

fn fake(ms: u64) -> Arc<FakeRenderer> {
    Arc::new(FakeRenderer::new(Duration::from_millis(ms)))
}

/// The `KEY=value` lines a notify command wrote with `env | grep ^BLENDERDIST_`.
fn env_lines(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn fake_blend(dirs: &Dirs) {
    std::fs::write(dirs.jobdir.join("scene.blend"), b"not really a blend").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_runs_once_with_the_jobs_environment_when_it_is_done_and_not_again_after_a_restart() {
    let dirs = Dirs::new();
    fake_blend(&dirs);
    let env = dirs.root.path().join("env.txt");
    write_job_with(&dirs, "shot", 1, 3, &format!("notify = env | grep ^BLENDERDIST_ >> '{}'; echo ran", env.display()));
    let (host, stop) = host_with(&dirs, |_| {}).await;
    let (_w, _sw) = start_fake_worker(dirs.cache("w"), host.addrs[0].clone(), fake(5));
    wait_until("notify to end", LIMIT, || log_of(&dirs, "shot").contains("notify: exit status 0")).await;

    let got: BTreeMap<String, String> = env_lines(&env).into_iter().collect();
    let path = |p: &Path| p.display().to_string();
    let want: BTreeMap<String, String> = [
        ("BLENDERDIST_JOB", "shot".to_string()),
        ("BLENDERDIST_STATE", "done".to_string()),
        ("BLENDERDIST_RENDERDIR", path(&dirs.renderdir.join("shot"))),
        ("BLENDERDIST_FRAMES", "3".to_string()),
        ("BLENDERDIST_FRAMES_TOTAL", "3".to_string()),
        ("BLENDERDIST_BLEND", path(&dirs.jobdir.join("scene.blend"))),
        ("BLENDERDIST_JOBLOG", path(&dirs.jobdir.join("shot.log"))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(got, want, "the notify command's BLENDERDIST_ environment");
    let log = log_of(&dirs, "shot");
    assert!(log.contains("notify stdout: ran"), "{log}");
    // The command runs after the finished line, once.
    let finished = log.find("finished: 3 frames").unwrap_or(usize::MAX);
    assert!(log.find("notify: running").is_some_and(|at| at > finished), "{log}");

    // A host restarted after the job was done does not run the command again.
    let _ = stop.send(());
    let _ = host.task.await;
    let (host2, _stop2) = host_with(&dirs, |_| {}).await;
    let (_w2, _sw2) = start_fake_worker(dirs.cache("w2"), host2.addrs[0].clone(), fake(5));
    wait_until("the job back after the restart", LIMIT, || log_of(&dirs, "shot").matches("accepted").count() == 2)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env_lines(&env).iter().filter(|(k, _)| k == "BLENDERDIST_JOB").count(), 1, "notify ran again");
    assert_eq!(log_of(&dirs, "shot").matches("notify: running").count(), 1, "{}", log_of(&dirs, "shot"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_runs_when_the_job_fails_and_no_video_is_made() {
    let dirs = Dirs::new();
    fake_blend(&dirs);
    let env = dirs.root.path().join("env.txt");
    let options = format!("notify = env | grep ^BLENDERDIST_ > '{}'\nvideo = mp4", env.display());
    write_job_with(&dirs, "bad", 1, 3, &options);
    let (host, _stop) = host_with(&dirs, |c| c.scheduler.max_frame_failures = 1).await;
    let mut failing = FakeRenderer::new(Duration::from_millis(5));
    failing.fail.insert(2);
    let (_w, _sw) = start_fake_worker(dirs.cache("w"), host.addrs[0].clone(), failing);
    wait_until("notify to end", LIMIT, || log_of(&dirs, "bad").contains("notify: exit status 0")).await;

    let log = log_of(&dirs, "bad");
    assert!(log.contains("job failed") && log.contains("video: not made, as the job failed"), "{log}");
    assert!(!dirs.renderdir.join("bad.mp4").exists());
    let got = env_lines(&env);
    let value = |key: &str| got.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap_or_default();
    assert_eq!((value("BLENDERDIST_JOB"), value("BLENDERDIST_STATE")), ("bad".into(), "failed".into()));
    let frames: u32 = value("BLENDERDIST_FRAMES").parse().unwrap();
    assert!(frames <= 2 && value("BLENDERDIST_FRAMES_TOTAL") == "3", "{got:?}");
    // Nothing a volunteer said (its error text, its name or peer id) reaches the command's environment.
    let text = std::fs::read_to_string(&env).unwrap();
    assert!(!text.contains("fake failure") && !text.contains("12D3"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_command_past_its_time_limit_is_killed_with_all_it_started_and_the_log_says_so() {
    let dirs = Dirs::new();
    fake_blend(&dirs);
    let pid_file = dirs.root.path().join("sleep.pid");
    let command = format!("sleep 30 & echo $! > '{}'; echo started; wait; echo never", pid_file.display());
    write_job_with(&dirs, "slow", 1, 2, &format!("notify = {command}"));
    let (host, _stop) = host_with(&dirs, |c| c.finish.notify_timeout = Duration::from_secs(1)).await;
    let (_w, _sw) = start_fake_worker(dirs.cache("w"), host.addrs[0].clone(), fake(5));
    wait_until("the time limit in the log", LIMIT, || log_of(&dirs, "slow").contains("its time limit")).await;

    let log = log_of(&dirs, "slow");
    assert!(log.contains("notify: still running after 1 s, its time limit: killed it and everything it started"));
    assert!(log.contains("notify stdout: started") && !log.contains("stdout: never"), "{log}");
    // The background `sleep` was in the command's process group: it is gone (or a zombie nobody reaped yet).
    let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    wait_until("the background sleep to die", LIMIT, || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.is_empty() || stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_output_goes_to_the_job_log_bounded_and_printable_with_its_exit_status() {
    let dirs = Dirs::new();
    fake_blend(&dirs);
    let command = r"printf 'hello\n\033[31mred\007\n'; echo oops >&2; head -c 20000 /dev/zero | tr '\0' x; exit 3";
    write_job_with(&dirs, "loud", 1, 1, &format!("notify = {command}"));
    let (host, _stop) = host_with(&dirs, |_| {}).await;
    let (_w, _sw) = start_fake_worker(dirs.cache("w"), host.addrs[0].clone(), fake(5));
    wait_until("notify to end", LIMIT, || log_of(&dirs, "loud").contains("notify: exit status 3")).await;

    let log = log_of(&dirs, "loud");
    for part in ["notify stdout: hello", "notify stdout: ?[31mred?", "notify stderr: oops", "more bytes not logged"] {
        assert!(log.contains(part), "{part:?} missing from:\n{log}");
    }
    assert!(!log.contains('\u{1b}') && !log.contains('\u{7}'), "control characters reached the log");
    let xs = log.lines().find(|l| l.contains("xxxx")).unwrap_or_default();
    assert!(xs.len() < 8300, "{} bytes of output in one line", xs.len());
}

fn ffmpeg_available() -> bool {
    ["ffmpeg", "ffprobe"].iter().all(|program| {
        Command::new(program)
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A tiny Cycles scene (odd size, so the movie must be scaled to even dimensions) at a frame rate of 12.
fn make_scene_at_12_fps(path: &Path, frames: u32) {
    let expr = "import bpy; bpy.context.scene.render.fps = 12; bpy.context.scene.render.fps_base = 1.0; \
                bpy.ops.wm.save_mainfile(compress=False)";
    let (script, path, frames) = (script("make_scene.py"), path.to_string_lossy(), frames.to_string());
    let args = ["-b", "--factory-startup", "--python-exit-code", "1", "--python", &script, "--python-expr", expr];
    let mut all = args.to_vec();
    all.extend(["--", &path, "--frames", &frames, "--res", "65x49", "--samples", "2"]);
    blender(&all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_mp4_assembles_the_real_frames_at_the_scenes_frame_rate() {
    if !blender_available() {
        return skip("blender is not installed (scripts/install-deps.sh installs it)");
    }
    if !ffmpeg_available() {
        return skip("ffmpeg is not installed (scripts/install-deps.sh installs it)");
    }
    let dirs = Dirs::new();
    make_scene_at_12_fps(&dirs.jobdir.join("scene.blend"), 4);
    let (host, _stop) = host_with(&dirs, |c| c.blender = Some("blender".into())).await;
    let mut volunteer = Command::new(BIN);
    volunteer.args(["join", &host.addrs[0].to_string(), "--no-mdns", "--threads", "1", "--cache-dir"]);
    let _v = Proc(volunteer.arg(dirs.cache("v")).stdin(Stdio::null()).spawn().unwrap());
    write_job_with(&dirs, "shot", 1, 4, "video = mp4");
    let log = || log_of(&dirs, "shot");
    wait_until("the movie", Duration::from_secs(120), || {
        log().contains("video: wrote") || log().contains("no shot.mp4")
    })
    .await;

    assert!(log().contains("at 12 fps into shot.mp4"), "{}", log());
    let movie = dirs.renderdir.join("shot.mp4");
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries"])
        .args(["stream=codec_name,pix_fmt,width,height,r_frame_rate,nb_read_frames", "-of", "default=nw=1"])
        .arg(&movie)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let got: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let want: BTreeMap<&str, &str> = [
        ("codec_name", "h264"),
        ("pix_fmt", "yuv420p"),
        ("width", "64"),
        ("height", "48"),
        ("r_frame_rate", "12/1"),
        ("nb_read_frames", "4"),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want, "ffprobe {}: {}", movie.display(), String::from_utf8_lossy(&out.stderr));
    let leftovers: Vec<String> = files_in(&dirs.renderdir).into_iter().filter(|n| n.ends_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ffmpeg_the_job_log_says_how_to_get_the_movie_and_the_job_is_still_done() {
    let dirs = Dirs::new();
    fake_blend(&dirs);
    let options = "video = mp4\nfps = 25\nnotify = echo \"video=${BLENDERDIST_VIDEO:-none} state=$BLENDERDIST_STATE\"";
    write_job_with(&dirs, "shot", 1, 2, options);
    let nowhere = dirs.root.path().join("no-ffmpeg-here").join("ffmpeg");
    let (host, _stop) = host_with(&dirs, |c| c.finish.ffmpeg = nowhere).await;
    let (_w, _sw) = start_fake_worker(dirs.cache("w"), host.addrs[0].clone(), fake(5));
    wait_until("notify to end", LIMIT, || log_of(&dirs, "shot").contains("notify: exit status 0")).await;

    let log = log_of(&dirs, "shot");
    assert!(log.contains("finished: 2 frames"), "{log}");
    assert!(log.contains("video: ffmpeg not found; install it (apt-get install ffmpeg) to get shot.mp4"), "{log}");
    assert!(log.contains("notify stdout: video=none state=done"), "{log}");
    assert!(!dirs.renderdir.join("shot.mp4").exists());
}
