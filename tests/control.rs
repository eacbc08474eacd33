//! Job control and resilience, in process with a fake renderer: suspend, priorities, range edits, a new .blend,
//! removal, volunteers that vanish, a host that restarts, and a standby host.

use std::{sync::Arc, time::Duration};

use blenderdist::{protocol::BlobHash, worker::fake::FakeRenderer};

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(60);

fn fake(ms: u64) -> Arc<FakeRenderer> {
    Arc::new(FakeRenderer::new(Duration::from_millis(ms)))
}

fn count(dir: &std::path::Path) -> usize {
    files_in(dir).len()
}

fn log_of(dirs: &Dirs, job: &str) -> String {
    std::fs::read_to_string(dirs.jobdir.join(format!("{job}.log"))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_job_waits_and_resumes_when_the_file_goes() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"blend").unwrap();
    std::fs::write(dirs.jobdir.join("other.blend"), b"other").unwrap();
    std::fs::write(dirs.jobdir.join("third.blend"), b"third").unwrap();
    let suspend = dirs.jobdir.join("s.job.suspend");
    std::fs::write(&suspend, b"").unwrap();
    write_job(&dirs.jobdir, "s", "scene.blend", 1, 30);
    let (host, _stop) = start_host(&dirs).await;
    let renderer = fake(100);
    let (_w, _sw) = start_fake_worker(dirs.cache("w"), host.addrs[0].clone(), renderer.clone());
    let out = dirs.renderdir.join("s");
    wait_until("the job, accepted suspended", LIMIT, || log_of(&dirs, "s").contains("suspended")).await;
    // A younger job renders to the end while the older, suspended one gets nothing: it would be served first.
    write_job(&dirs.jobdir, "a", "other.blend", 1, 2);
    wait_until("the younger job", LIMIT, || count(&dirs.renderdir.join("a")) == 2).await;
    assert_eq!(count(&out), 0, "a suspended job rendered");

    std::fs::remove_file(&suspend).unwrap();
    wait_until("some frames after resuming", LIMIT, || count(&out) >= 5).await;
    // Suspend mid-job: frames already granted finish, then nothing new: once another job's frames start, no frame
    // of the suspended job is started again.
    std::fs::write(&suspend, b"").unwrap();
    wait_until("the suspension in the job log", LIMIT, || log_of(&dirs, "s").matches("suspended").count() >= 2).await;
    write_job(&dirs.jobdir, "b", "third.blend", 1, 2);
    wait_until("the other job", LIMIT, || count(&dirs.renderdir.join("b")) == 2).await;
    let (of_s, of_b) = (BlobHash::of_bytes(b"blend").to_hex(), BlobHash::of_bytes(b"third").to_hex());
    let order: Vec<String> = renderer.frames().into_iter().map(|(blend, _)| blend).collect();
    let first_b = order.iter().position(|b| *b == of_b).unwrap_or(order.len());
    assert!(!order[first_b..].contains(&of_s), "frames kept coming while suspended");
    let held = count(&out);
    assert!(held < 30, "the job finished before the suspension could be seen");

    std::fs::remove_file(&suspend).unwrap();
    wait_until("the rest after resuming", LIMIT, || count(&out) == 30).await;
    let rendered = renderer.frames().iter().filter(|(blend, _)| *blend == of_s).count();
    assert_eq!(rendered, 30, "some frame was rendered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_renders_first_then_older_jobs_first() {
    let dirs = Dirs::new();
    for name in ["old", "new", "urgent"] {
        std::fs::write(dirs.jobdir.join(format!("{name}.blend")), name.as_bytes()).unwrap();
    }
    write_job(&dirs.jobdir, "old", "old.blend", 1, 4);
    write_job(&dirs.jobdir, "new", "new.blend", 1, 4);
    std::fs::write(dirs.jobdir.join("urgent.job"), "urgent.blend\n1\n4\npriority = 5\n").unwrap();
    // Arrival order is the job file's modification time: set it rather than wait for the clock to move.
    let base = std::time::SystemTime::now() - Duration::from_secs(60);
    for (i, name) in ["old", "new", "urgent"].into_iter().enumerate() {
        let file = std::fs::File::options().write(true).open(dirs.jobdir.join(format!("{name}.job"))).unwrap();
        file.set_modified(base + Duration::from_secs(i as u64)).unwrap();
    }
    let (host, _stop) = start_host(&dirs).await;
    // Jobs are prepared in the background, each in its own time: a volunteer that came before the urgent job was
    // known would rightly get a frame of another. The order is the subject here, so the volunteer comes after all three.
    wait_until("all three jobs accepted", LIMIT, || {
        ["old", "new", "urgent"].iter().all(|name| log_of(&dirs, name).contains("accepted:"))
    })
    .await;
    let renderer = fake(20);
    let (_w, _sw) = start_fake_worker(dirs.cache("w"), host.addrs[0].clone(), renderer.clone());
    wait_until("all three jobs", LIMIT, || renderer.frames().len() == 12).await;

    let hash = |n: &str| BlobHash::of_bytes(n.as_bytes()).to_hex();
    let order: Vec<String> = renderer.frames().into_iter().map(|(blend, _)| blend).collect();
    let want: Vec<String> = ["urgent", "old", "new"].iter().flat_map(|n| vec![hash(n); 4]).collect();
    assert_eq!(order, want, "jobs served out of order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_range_keeps_done_frames_and_a_new_blend_restarts_the_job() {
    let dirs = Dirs::new();
    let blend = dirs.jobdir.join("scene.blend");
    std::fs::write(&blend, b"version one").unwrap();
    write_job(&dirs.jobdir, "r", "scene.blend", 1, 4);
    let (host, _stop) = start_host(&dirs).await;
    let renderer = fake(10);
    let (_w, _sw) = start_fake_worker(dirs.cache("w"), host.addrs[0].clone(), renderer.clone());
    let out = dirs.renderdir.join("r");
    wait_until("frames 1-4", LIMIT, || files_in(&out) == frame_names(1, 4, "png")).await;

    write_job(&dirs.jobdir, "r", "scene.blend", 1, 8);
    wait_until("frames 1-8", LIMIT, || files_in(&out) == frame_names(1, 8, "png")).await;
    let v1 = BlobHash::of_bytes(b"version one").to_hex();
    let rendered: Vec<u32> = renderer.frames().into_iter().map(|(_, f)| f).collect();
    assert_eq!(rendered.len(), 8, "done frames were rendered again after the range grew: {rendered:?}");

    // A changed .blend: every frame again, from the new file, replacing the old ones.
    std::fs::write(&blend, b"version two, longer").unwrap();
    let v2 = BlobHash::of_bytes(b"version two, longer").to_hex();
    wait_until("all frames from the new .blend", LIMIT, || {
        (1..=8).all(|f| std::fs::read(out.join(format!("{f:04}.png"))).ok() == Some(FakeRenderer::content(&v2, f)))
    })
    .await;
    let from_v1 = renderer.frames().iter().filter(|(b, _)| *b == v1).count();
    assert_eq!(from_v1, 8);
    assert!(log_of(&dirs, "r").contains("restarted: the .blend or a file it uses changed"), "{}", log_of(&dirs, "r"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_job_file_cancels_the_job_and_keeps_finished_frames() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"blend").unwrap();
    std::fs::write(dirs.jobdir.join("other.blend"), b"other").unwrap();
    write_job(&dirs.jobdir, "gone", "scene.blend", 1, 200);
    let (host, _stop) = start_host(&dirs).await;
    let renderer = fake(100);
    let (_w, _sw) = start_fake_worker(dirs.cache("w"), host.addrs[0].clone(), renderer.clone());
    let out = dirs.renderdir.join("gone");
    wait_until("a few frames", LIMIT, || count(&out) >= 3).await;
    std::fs::remove_file(dirs.jobdir.join("gone.job")).unwrap();
    wait_until("the cancellation", LIMIT, || log_of(&dirs, "gone").contains("cancelled")).await;
    // Another job renders to the end: once its frames start, no frame of the removed job starts or arrives.
    write_job(&dirs.jobdir, "next", "other.blend", 1, 3);
    wait_until("the next job", LIMIT, || count(&dirs.renderdir.join("next")) == 3).await;
    let (gone, next) = (BlobHash::of_bytes(b"blend").to_hex(), BlobHash::of_bytes(b"other").to_hex());
    let order: Vec<String> = renderer.frames().into_iter().map(|(blend, _)| blend).collect();
    let first_next = order.iter().position(|b| *b == next).unwrap_or(order.len());
    assert!(!order[first_next..].contains(&gone), "frames kept arriving after the job was removed");
    let kept = count(&out);
    assert!((3..200).contains(&kept));
    assert!(log_of(&dirs, "gone").contains("cancelled"), "{}", log_of(&dirs, "gone"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volunteer_that_vanishes_mid_frame_has_its_frames_requeued_at_once() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"blend").unwrap();
    write_job(&dirs.jobdir, "v", "scene.blend", 1, 6);
    let (host, _stop) = start_host(&dirs).await;
    // A volunteer so slow it would hold its frames for a minute, then vanishes.
    let slow_renderer = fake(60_000);
    let (slow, stop_slow) = start_fake_worker(dirs.cache("slow"), host.addrs[0].clone(), slow_renderer.clone());
    wait_until("the slow volunteer rendering", LIMIT, || slow_renderer.active() > 0).await;
    let _ = stop_slow.send(());
    let _ = slow.await;
    let renderer = fake(10);
    let (_w, _sw) = start_fake_worker(dirs.cache("w"), host.addrs[0].clone(), renderer.clone());
    // Well inside the 30 s lease timeout: the disconnection alone requeued the frames.
    wait_until("all frames", Duration::from_secs(20), || count(&dirs.renderdir.join("v")) == 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_host_resumes_without_rendering_done_frames_again() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"blend").unwrap();
    write_job(&dirs.jobdir, "h", "scene.blend", 1, 12);
    let (host, stop) = start_host(&dirs).await;
    let addr = host.addrs[0].clone();
    let renderer = fake(150);
    let (_w, _sw) = start_fake_worker(dirs.cache("w"), addr.clone(), renderer.clone());
    let out = dirs.renderdir.join("h");
    wait_until("some frames", LIMIT, || count(&out) >= 4).await;
    let _ = stop.send(());
    let _ = host.task.await;
    let before: Vec<String> = files_in(&out);

    let mut config = dirs.host_config();
    config.listen = vec![addr.iter().filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_))).collect()];
    let (_stop2, shutdown) = shutdown_switch();
    let _host2 = blenderdist::host::start(config, shutdown).await.unwrap();
    wait_until("the rest of the job", LIMIT, || count(&out) == 12).await;
    let done_before: Vec<u32> = before.iter().filter_map(|n| n.split('.').next()?.parse().ok()).collect();
    for f in done_before {
        let times = renderer.frames().iter().filter(|(_, g)| *g == f).count();
        assert_eq!(times, 1, "frame {f}, done before the restart, was rendered {times} times");
    }
    assert!(files_in(&dirs.renderdir.join(".blenderdist-tmp")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_on_the_same_folder_waits_as_a_standby_and_takes_over() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"blend").unwrap();
    write_job(&dirs.jobdir, "st", "scene.blend", 1, 3);
    let (first, stop_first) = start_host(&dirs).await;
    let mut config = dirs.host_config();
    config.state_dir = dirs.root.path().join("state-standby");
    config.renderdir = dirs.root.path().join("renders-standby");
    let (_stop2, shutdown) = shutdown_switch();
    let standby = tokio::spawn(blenderdist::host::start(config, shutdown));
    // The first host renders a job to the end meanwhile: all that time, the second one waits.
    std::fs::write(dirs.jobdir.join("first.blend"), b"first").unwrap();
    write_job(&dirs.jobdir, "first", "first.blend", 1, 2);
    let (_w1, _sw1) = start_fake_worker(dirs.cache("w1"), first.addrs[0].clone(), fake(10));
    wait_until("a job on the first host", LIMIT, || count(&dirs.renderdir.join("first")) == 2).await;
    assert!(!standby.is_finished(), "the second host started while the first owned the folder");

    let _ = stop_first.send(());
    let _ = first.task.await;
    let second = tokio::time::timeout(LIMIT, standby).await.unwrap().unwrap().unwrap();
    let (_w, _sw) = start_fake_worker(dirs.cache("w"), second.addrs[0].clone(), fake(10));
    let out = dirs.root.path().join("renders-standby").join("st");
    wait_until("the job on the new owner", LIMIT, || files_in(&out) == frame_names(1, 3, "png")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volunteer_with_several_renderers_renders_frames_at_once() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"blend").unwrap();
    write_job(&dirs.jobdir, "n", "scene.blend", 1, 8);
    let (host, _stop) = start_host(&dirs).await;
    let renderer = fake(500);
    let (_sw, shutdown) = shutdown_switch();
    let config = blenderdist::worker::WorkerConfig {
        cache_dir: dirs.cache("w"),
        bootstrap: vec![host.addrs[0].clone()],
        mdns: false,
        renderers: 4,
        updater: None,
        caps: None,
        patience: Default::default(),
        swarm_key: None,
    };
    let _w = blenderdist::worker::start(config, renderer.clone(), shutdown).unwrap();
    wait_until("all frames", LIMIT, || count(&dirs.renderdir.join("n")) == 8).await;
    assert_eq!(renderer.peak_concurrency(), 4, "four renderers should render four frames at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_blend_streams_to_volunteers_beyond_message_size_limits() {
    let dirs = Dirs::new();
    // 24 MiB: well past request-response's 1 MiB / 10 MiB limits.
    let big: Vec<u8> = (0..24 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(dirs.jobdir.join("big.blend"), &big).unwrap();
    write_job(&dirs.jobdir, "big", "big.blend", 1, 2);
    let (host, _stop) = start_host(&dirs).await;
    let (_w, _sw) = start_fake_worker(dirs.cache("w"), host.addrs[0].clone(), fake(10));
    wait_until("both frames", LIMIT, || count(&dirs.renderdir.join("big")) == 2).await;
    let cached = std::fs::read(dirs.cache("w").join("blobs").join(BlobHash::of_bytes(&big).to_hex())).unwrap();
    assert!(cached == big, "the cached .blend differs from the owner's");
}

async fn start_host_with(
    dirs: &Dirs,
    tune: impl FnOnce(&mut blenderdist::scheduler::SchedulerConfig),
) -> (blenderdist::host::RunningHost, tokio::sync::oneshot::Sender<()>) {
    init_tracing();
    let mut config = dirs.host_config();
    tune(&mut config.scheduler);
    let (stop, shutdown) = shutdown_switch();
    (blenderdist::host::start(config, shutdown).await.unwrap(), stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_tail_an_idle_volunteer_gets_a_backup_and_the_first_result_wins() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"blend").unwrap();
    write_job(&dirs.jobdir, "tail", "scene.blend", 1, 1);
    let (host, _stop) = start_host_with(&dirs, |s| s.backup_after = Duration::from_secs(1)).await;
    // The only frame goes to a volunteer that would take ten minutes.
    let slow = fake(600_000);
    let (_s, _ss) = start_fake_worker(dirs.cache("slow"), host.addrs[0].clone(), slow.clone());
    wait_until("the slow volunteer to start", LIMIT, || slow.frames().len() == 1).await;
    let fast = fake(10);
    let (_f, _sf) = start_fake_worker(dirs.cache("fast"), host.addrs[0].clone(), fast.clone());
    wait_until("the backup's frame", LIMIT, || count(&dirs.renderdir.join("tail")) == 1).await;
    assert_eq!(fast.frames().len(), 1, "the idle volunteer did not get a backup copy");
    // The slow volunteer is told to stop at its next lease renewal.
    wait_until("the slow render to be stopped", LIMIT, || slow.peak_concurrency() == 1 && slow.active() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_is_not_renewed_expires_and_the_frame_goes_to_another_volunteer() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"blend").unwrap();
    write_job(&dirs.jobdir, "l", "scene.blend", 1, 2);
    let (host, _stop) = start_host_with(&dirs, |s| s.lease_timeout = Duration::from_secs(2)).await;
    // A peer that claims a frame, stays connected, and never renews nor returns it.
    let (client, _events) = raw_peer(&host.addrs[0]);
    let granted = claim_one_frame(&client, host.peer_id).await.is_some();
    assert!(granted, "the silent peer got no frame");
    let (_w, _sw) = start_fake_worker(dirs.cache("w"), host.addrs[0].clone(), fake(10));
    wait_until("both frames", LIMIT, || count(&dirs.renderdir.join("l")) == 2).await;
    assert!(log_of(&dirs, "l").contains("done by"), "{}", log_of(&dirs, "l"));
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_failing_on_three_volunteers_fails_the_job_with_the_reason() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"blend").unwrap();
    write_job(&dirs.jobdir, "bad", "scene.blend", 1, 3);
    let (host, _stop) = start_host(&dirs).await;
    let mut workers = Vec::new();
    for name in ["a", "b", "c"] {
        let mut r = FakeRenderer::new(Duration::from_millis(10));
        r.fail.insert(2);
        workers.push(start_fake_worker(dirs.cache(name), host.addrs[0].clone(), r));
    }
    wait_until("the job to fail", LIMIT, || log_of(&dirs, "bad").contains("job failed")).await;
    let log = log_of(&dirs, "bad");
    assert_eq!(log.matches("frame 2 failed on 12D").count(), 3, "{log}");
    assert!(log.contains("fake failure of frame 2"), "{log}");
}
