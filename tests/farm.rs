//! In-process multi-peer tests: a real host and volunteers over loopback TCP (noise, yamux), with a fake renderer.

use std::time::Duration;

use blenderdist::{protocol::BlobHash, worker::fake::FakeRenderer};

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_volunteers_render_every_frame_once_into_the_render_folder() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"not really a blend").unwrap();
    let blend_name = BlobHash::of_bytes(b"not really a blend").to_hex();
    let (host, _stop_host) = start_host(&dirs).await;
    let addr = host.addrs[0].clone();
    let (_a, _stop_a) = start_fake_worker(dirs.cache("a"), addr.clone(), FakeRenderer::new(Duration::from_millis(20)));
    let (_b, _stop_b) = start_fake_worker(dirs.cache("b"), addr, FakeRenderer::new(Duration::from_millis(20)));
    write_job(&dirs.jobdir, "shot", "scene.blend", 1, 12);

    let out = dirs.renderdir.join("shot");
    let want = frame_names(1, 12, "png");
    wait_until("all 12 frames", LIMIT, || files_in(&out) == want).await;
    let log_path = dirs.jobdir.join("shot.log");
    wait_until("the finished line", LIMIT, || std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("finished")))
        .await;
    for f in 1..=12 {
        let bytes = std::fs::read(out.join(format!("{f:04}.png"))).unwrap();
        assert_eq!(bytes, FakeRenderer::content(&blend_name, f), "frame {f}");
    }
    // Each volunteer fetched the .blend once into its own cache, by hash.
    for v in ["a", "b"] {
        let cached = dirs.cache(v).join("blobs").join(&blend_name);
        assert!(cached.exists(), "volunteer {v} has no cached .blend at {}", cached.display());
    }
    let log = std::fs::read_to_string(dirs.jobdir.join("shot.log")).unwrap();
    assert!(log.contains("accepted"), "{log}");
    assert!(log.contains("finished: 12 frames"), "{log}");
    assert_eq!(log.matches(" done by ").count(), 12, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_job_is_reported_by_name_and_the_others_carry_on() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"blend").unwrap();
    std::fs::write(dirs.jobdir.join("broken.job"), "scene.blend\nten\n20\n").unwrap();
    std::fs::write(dirs.jobdir.join("nofile.job"), "missing.blend\n1\n2\n").unwrap();
    write_job(&dirs.jobdir, "good", "scene.blend", 1, 3);
    let (host, _stop_host) = start_host(&dirs).await;
    let (_w, _stop_w) =
        start_fake_worker(dirs.cache("w"), host.addrs[0].clone(), FakeRenderer::new(Duration::from_millis(5)));

    wait_until("the good job", LIMIT, || files_in(&dirs.renderdir.join("good")) == frame_names(1, 3, "png")).await;
    let broken = std::fs::read_to_string(dirs.jobdir.join("broken.log")).unwrap();
    assert!(broken.contains("rejected") && broken.contains("ten"), "{broken}");
    let nofile = std::fs::read_to_string(dirs.jobdir.join("nofile.log")).unwrap();
    assert!(nofile.contains("missing.blend"), "{nofile}");
    assert!(!dirs.renderdir.join("broken").exists() && !dirs.renderdir.join("nofile").exists());
    // Reported once, not once per rescan: three more jobs, each seen by a later scan of the folder.
    let good_blend = std::fs::read_to_string(dirs.jobdir.join("good.job")).unwrap();
    let good_blend = good_blend.lines().next().unwrap_or_default().to_string();
    for i in 0..3 {
        write_job(&dirs.jobdir, &format!("later{i}"), &good_blend, 1, 1);
        let log = dirs.jobdir.join(format!("later{i}.log"));
        wait_until("a later scan", LIMIT, || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("accepted"))).await;
    }
    let again = std::fs::read_to_string(dirs.jobdir.join("broken.log")).unwrap();
    assert_eq!(again.lines().count(), 1, "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volunteer_started_before_the_host_joins_when_it_appears() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"blend").unwrap();
    write_job(&dirs.jobdir, "late", "scene.blend", 1, 2);
    // Reserve a port, release it, and point the volunteer at it before the host exists.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    init_tracing();
    let (_w, _stop_w) = start_fake_worker(dirs.cache("w"), addr.clone(), FakeRenderer::new(Duration::from_millis(5)));
    // The volunteer has found nobody there (its failed dial is logged with the port) before the host starts.
    let refused = format!("127.0.0.1/tcp/{port}");
    wait_until("a failed dial", LIMIT, || {
        warnings().iter().any(|w| w.contains(&refused) && w.contains("cannot reach"))
    })
    .await;
    let mut config = dirs.host_config();
    config.listen = vec![addr];
    let (_stop, shutdown) = shutdown_switch();
    let _host = blenderdist::host::start(config, shutdown).await.unwrap();
    wait_until("both frames", LIMIT, || files_in(&dirs.renderdir.join("late")) == frame_names(1, 2, "png")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_fails_is_reported_in_the_job_log_with_the_reason() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"blend").unwrap();
    write_job(&dirs.jobdir, "f", "scene.blend", 1, 3);
    let (host, _stop_host) = start_host(&dirs).await;
    let mut failing = FakeRenderer::new(Duration::from_millis(5));
    failing.fail.insert(2);
    let (_w, _stop_w) = start_fake_worker(dirs.cache("w"), host.addrs[0].clone(), failing);
    let log = dirs.jobdir.join("f.log");
    wait_until("the failure in the log", LIMIT, || {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("frame 2 failed") && l.contains("fake failure of frame 2"))
    })
    .await;
    wait_until("the other frames", LIMIT, || {
        let files = files_in(&dirs.renderdir.join("f"));
        files.contains(&"0001.png".to_string()) && files.contains(&"0003.png".to_string())
    })
    .await;
}

/// Hashing a huge .blend happens beside the host's event loop: a small job is accepted, rendered and finished while
/// a 4 GiB one (a sparse file, suspended so nobody fetches it) is still being hashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_blend_being_hashed_holds_up_no_other_job() {
    let dirs = Dirs::new();
    let huge = std::fs::File::create(dirs.jobdir.join("huge.blend")).unwrap();
    huge.set_len(4 << 30).unwrap();
    std::fs::write(dirs.jobdir.join("big.job.suspend"), b"").unwrap();
    write_job(&dirs.jobdir, "big", "huge.blend", 1, 2);
    std::fs::write(dirs.jobdir.join("small.blend"), b"small scene").unwrap();
    write_job(&dirs.jobdir, "small", "small.blend", 1, 4);
    let (host, _stop_host) = start_host(&dirs).await;
    let (_w, _stop_w) = start_fake_worker(dirs.cache("w"), host.addrs[0].clone(), FakeRenderer::new(Duration::ZERO));

    let log = |job: &str| std::fs::read_to_string(dirs.jobdir.join(format!("{job}.log"))).unwrap_or_default();
    wait_until("the small job's finished line", LIMIT, || log("small").contains("finished")).await;
    assert!(!log("big").contains("accepted"), "the 4 GiB .blend was hashed before the small job finished");
    wait_until("the big job, once hashed", Duration::from_secs(240), || log("big").contains("accepted")).await;
}
