//! Trust nothing a volunteer sends: frames are checked before they are stored, and spot checks (another volunteer
//! renders the same frame) catch a volunteer whose Blender cheats, ban it and render its frames again.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use futures::AsyncWriteExt as _;
use libp2p::PeerId;

use blenderdist::protocol::{
    read_header, write_header, BlobHash, BlobReply, BlobRequest, WorkRequest, WorkResponse, BLOB_PROTOCOL,
};

use crate::blender_e2e::{assert_same_pixels, make_scene, render_baseline};
use crate::common::*;

const LIMIT: Duration = Duration::from_secs(300);

/// A Blender that renders every scene with 1 sample whatever the file says: a volunteer cheating to earn frames
/// faster. It adds a script before the volunteer's driver; the script sets the samples now and after every load.
fn cheating_blender(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("cheat.py");
    std::fs::write(
        &script,
        "import bpy\n\
         from bpy.app.handlers import persistent\n\
         @persistent\n\
         def cheat(*_):\n\
         \x20   for scene in bpy.data.scenes:\n\
         \x20       scene.cycles.samples = 1\n\
         cheat()\n\
         bpy.app.handlers.load_post.append(cheat)\n\
         bpy.app.handlers.render_pre.append(cheat)\n",
    )
    .unwrap();
    let wrapper = dir.join("cheating-blender");
    let text = format!(
        "#!/bin/bash\n\
         args=()\n\
         for a in \"$@\"; do\n\
         \x20 if [ \"$a\" = --python-exit-code ]; then args+=(--python {}); fi\n\
         \x20 args+=(\"$a\")\n\
         done\n\
         exec blender \"${{args[@]}}\"\n",
        script.display()
    );
    std::fs::write(&wrapper, text).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

fn volunteer(addr: &str, name: &str, cache: &Path, threads: &str, blender: Option<&Path>, log: &Path) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(["join", addr, "--no-mdns", "--no-auto-updates", "--threads", threads, "--name", name, "--cache-dir"]);
    cmd.arg(cache);
    if let Some(blender) = blender {
        cmd.arg("--blender").arg(blender);
    }
    let log = std::fs::File::create(log).unwrap();
    Proc(cmd.stdin(Stdio::null()).stderr(log).spawn().unwrap())
}

/// A volunteer whose Blender lowers the samples delivers the job's first frames; two honest volunteers (one on
/// another thread count) join. The cheat's first frame is rendered again, the copies disagree with it and agree
/// with each other: the cheat is banned, every frame it delivered is rendered again, and every final frame is
/// pixel-identical to plain `blender -b -a`. The honest volunteers check each other and are never banned.
#[test]
fn a_cheating_volunteer_is_caught_banned_and_its_frames_rendered_again() {
    if !blender_available() {
        return skip("blender is not installed (CI installs it: apt-get install -y blender)");
    }
    let dirs = Dirs::new();
    let blend = dirs.jobdir.join("scene.blend");
    make_scene(&blend, 6, "64x48", 16);
    let baseline = dirs.root.path().join("baseline");
    render_baseline(&blend, &baseline);
    let logs = dirs.root.path();
    let (_host, addr) = spawn_host(&dirs.jobdir, &dirs.renderdir, &[]);

    let cheat_blender = cheating_blender(dirs.root.path());
    let _cheat = volunteer(&addr, "cheater", &dirs.cache("cheat"), "1", Some(&cheat_blender), &logs.join("cheat.log"));
    write_job_with(&dirs.jobdir, "shot", "scene.blend", 1, 6, "");
    let log_path = dirs.jobdir.join("shot.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until_blocking("the cheat's first frame", LIMIT, || log().contains(" done by cheater "));

    let _alice = volunteer(&addr, "alice", &dirs.cache("alice"), "1", None, &logs.join("alice.log"));
    let _bob = volunteer(&addr, "bob", &dirs.cache("bob"), "2", None, &logs.join("bob.log"));
    let after_ban = || {
        let log = log();
        log.find("failed verification").map(|at| log[at..].to_string()).unwrap_or_default()
    };
    wait_until_blocking("the cheat's ban", LIMIT, || !after_ban().is_empty());
    let out = dirs.renderdir.join("shot");
    let names = frame_names(1, 6, "png");
    // The job ends again once the cheat's frames are rendered again.
    wait_until_blocking("the job, rendered honestly", LIMIT, || after_ban().contains("finished: 6 frames"));
    assert_eq!(files_in(&out), names);
    // Each honest volunteer's first frame is checked by the other, which may finish after the job.
    wait_until_blocking("the honest volunteers' checks", LIMIT, || log().contains("verified: frame"));
    let log = log();
    assert!(log.contains("cheater (12D3KooW") && log.contains("failed verification on frame"), "{log}");
    assert!(log.contains("frames are rendered again"), "{log}");
    for honest in ["alice (", "bob ("] {
        let accused = log.lines().any(|l| {
            l.split("failed verification").next().is_some_and(|who| who.contains(honest))
                && l.contains("failed verification")
        });
        assert!(!accused, "{honest} was accused:\n{log}");
    }
    assert_same_pixels(&baseline, &out, &names);
    // `status` names the banned volunteer and why.
    let status = Command::new(BIN).args(["status", &addr, "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert_eq!(status["banned"][0]["name"], "cheater", "{status}");
    assert!(status["banned"][0]["reason"].as_str().unwrap_or_default().contains("failed verification"), "{status}");
    let cheat_log = std::fs::read_to_string(logs.join("cheat.log")).unwrap_or_default();
    assert!(cheat_log.contains("banned from this farm"), "the cheat is told: {cheat_log}");
}

/// A granted peer that uploads a truncated or empty frame (with a hash that matches what it sent) has it refused:
/// nothing lands in the render folder, the job log says why, and the frame is rendered by someone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_empty_frames_are_refused_and_rendered_elsewhere() {
    let HostAndPeer { dirs, host, stop: _stop_host, client, events: _events } = host_and_peer(1, 2).await;
    let host_id: PeerId = host.peer_id;
    let good = blenderdist::worker::fake::FakeRenderer::content(&BlobHash::of_bytes(b"blend").to_hex(), 1);
    for junk in [good[..good.len() / 2].to_vec(), b"GIF89a not a png".to_vec()] {
        let Some(grant) = claim_one_frame(&client, host_id).await else { panic!("no grant") };
        let hash = BlobHash::of_bytes(&junk);
        let notice = WorkRequest::Rendered {
            job: "j".into(),
            frame: grant.frame,
            blend: grant.blend,
            blob: hash,
            size: junk.len() as u64,
            ext: "png".into(),
            outputs: vec![],
        };
        assert_eq!(client.request(host_id, notice).await.unwrap(), WorkResponse::Upload);
        let mut control = client.streams();
        let mut stream = control.open_stream(host_id, BLOB_PROTOCOL).await.unwrap();
        write_header(&mut stream, &BlobRequest::Put { hash, size: junk.len() as u64 }).await.unwrap();
        stream.write_all(&junk).await.unwrap();
        let reply: BlobReply = read_header(&mut stream).await.unwrap();
        assert!(matches!(reply, BlobReply::Refused { .. }), "{reply:?}");
    }
    // The job log is written by a thread of its own: wait for both lines.
    let log_path = dirs.jobdir.join("j.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until("both refusals in the job log", Duration::from_secs(30), || log().matches(" refused: ").count() >= 2)
        .await;
    let log = log();
    assert!(log.contains("refused: the .png file it does not decode as .png"), "{log}");
    assert!(log.contains("refused: the .png file it is not a .png image (its content is Gif)"), "{log}");
    assert!(files_in(&dirs.renderdir.join("j")).is_empty(), "a refused frame was stored");
    // A refusal is the sender's fault, not the frame's: the job goes on, on an honest volunteer.
    let (_w, _stop_w) = start_fake_worker(
        dirs.cache("w"),
        host.addrs[0].clone(),
        blenderdist::worker::fake::FakeRenderer::new(Duration::from_millis(5)),
    );
    wait_until("the job", Duration::from_secs(60), || files_in(&dirs.renderdir.join("j")) == frame_names(1, 2, "png"))
        .await;
}

/// Three fresh identities, each granted frame 1 in turn, report it failed: the host's own Blender renders that
/// frame before failing the job. Here it renders (the scene is fine), so the reports are overruled and a real
/// volunteer renders the job to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_identities_cannot_fail_a_job_the_owners_blender_renders() {
    if !blender_available() {
        return skip("blender is not installed (CI installs it: apt-get install -y blender)");
    }
    let dirs = Dirs::new();
    make_scene(&dirs.jobdir.join("scene.blend"), 2, "64x48", 4);
    let log = fail_frame_one_thrice(&dirs, "scene.blend").await;
    assert!(log.contains("frames are overruled") || log.contains("reports are overruled"), "{log}");
    assert!(!log.contains("job failed"), "{log}");
    let addr = host_addr(&dirs);
    let _v = volunteer(&addr, "honest", &dirs.cache("honest"), "1", None, &dirs.root.path().join("honest.log"));
    let log_path = dirs.jobdir.join("j.log");
    wait_until("the job", LIMIT, || {
        std::fs::read_to_string(&log_path).unwrap_or_default().contains("finished: 2 frames")
    })
    .await;
}

/// The same reports about a frame the owner's Blender cannot render either: the job fails, with both reasons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_the_owners_blender_reproduces_fails_the_job() {
    if !blender_available() {
        return skip("blender is not installed (CI installs it: apt-get install -y blender)");
    }
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("junk.blend"), b"not a blend at all").unwrap();
    let log = fail_frame_one_thrice(&dirs, "junk.blend").await;
    let log_path = dirs.jobdir.join("j.log");
    wait_until("the job to fail", LIMIT, || {
        std::fs::read_to_string(&log_path).unwrap_or_default().contains("job failed")
    })
    .await;
    let log = log + &std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(log.contains("the owner's Blender fails on it too"), "{log}");
}

/// The address the in-process host of [`fail_frame_one_thrice`] listens on (written there for the volunteer).
fn host_addr(dirs: &Dirs) -> String {
    std::fs::read_to_string(dirs.root.path().join("host.addr")).unwrap()
}

/// Starts a host with the owner's Blender, makes three fresh identities fail frame 1 of job `j` in turn, and
/// returns the job log once the host answered the third (the host keeps running, leaked, until the test ends).
async fn fail_frame_one_thrice(dirs: &Dirs, blend: &str) -> String {
    init_tracing();
    let (stop, shutdown) = shutdown_switch();
    std::mem::forget(stop);
    let config = blenderdist::host::HostConfig { blender: Some("blender".into()), ..dirs.host_config() };
    let host = blenderdist::host::start(config, shutdown).await.unwrap();
    std::fs::write(dirs.root.path().join("host.addr"), host.addrs[0].to_string()).unwrap();
    write_job(&dirs.jobdir, "j", blend, 1, 2);
    let log_path = dirs.jobdir.join("j.log");
    wait_until("the job", LIMIT, || std::fs::read_to_string(&log_path).unwrap_or_default().contains("accepted")).await;
    for i in 0..3 {
        let (client, _events) = raw_peer(&host.addrs[0]);
        let grant = claim_one_frame(&client, host.peer_id).await.expect("a grant");
        assert_eq!(grant.frame, 1, "identity {i} is granted the failed frame again");
        let report = WorkRequest::Failed { job: "j".into(), frame: 1, blend: grant.blend, error: "it crashed".into() };
        assert_eq!(client.request(host.peer_id, report).await.unwrap(), WorkResponse::Noted);
    }
    wait_until("the owner's render", LIMIT, || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        log.contains("overruled") || log.contains("job failed")
    })
    .await;
    std::mem::forget(host);
    std::fs::read_to_string(&log_path).unwrap_or_default()
}

/// With the owner's Blender, the host knows the scene's size: a frame of another size is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_of_the_wrong_size_is_refused() {
    if !blender_available() {
        return skip("blender is not installed (CI installs it: apt-get install -y blender)");
    }
    let dirs = Dirs::new();
    make_scene(&dirs.jobdir.join("scene.blend"), 2, "64x48", 4);
    init_tracing();
    let (_stop, shutdown) = shutdown_switch();
    let config = blenderdist::host::HostConfig { blender: Some("blender".into()), ..dirs.host_config() };
    let host = blenderdist::host::start(config, shutdown).await.unwrap();
    write_job(&dirs.jobdir, "j", "scene.blend", 1, 2);
    let (client, _events) = raw_peer(&host.addrs[0]);
    let grant = claim_one_frame(&client, host.peer_id).await.expect("a grant");
    // A real PNG, 8×8 pixels, where the scene renders 64×48.
    let small = blenderdist::worker::fake::FakeRenderer::content("x", 1);
    let hash = BlobHash::of_bytes(&small);
    let notice = WorkRequest::Rendered {
        job: "j".into(),
        frame: grant.frame,
        blend: grant.blend,
        blob: hash,
        size: small.len() as u64,
        ext: "png".into(),
        outputs: vec![],
    };
    assert_eq!(client.request(host.peer_id, notice).await.unwrap(), WorkResponse::Upload);
    let mut control = client.streams();
    let mut stream = control.open_stream(host.peer_id, BLOB_PROTOCOL).await.unwrap();
    write_header(&mut stream, &BlobRequest::Put { hash, size: small.len() as u64 }).await.unwrap();
    stream.write_all(&small).await.unwrap();
    let reply: BlobReply = read_header(&mut stream).await.unwrap();
    assert!(matches!(reply, BlobReply::Refused { .. }), "{reply:?}");
    let log_path = dirs.jobdir.join("j.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until("the refusal", Duration::from_secs(30), || log().contains(" refused: ")).await;
    assert!(log().contains("it is 8×8 pixels, the job renders 64×48"), "{}", log());
    assert!(files_in(&dirs.renderdir.join("j")).is_empty());
}
