//! Junk on the host's port and misbehaving peers neither stop the host nor the job in progress, and never get a
//! frame written that the host did not grant and verify.

use std::{io::Write, time::Duration};

use blenderdist::{
    protocol::{
        read_header, write_header, BlobHash, BlobReply, BlobRequest, ExtraOutput, WorkRequest, WorkResponse,
        BLOB_PROTOCOL, CHUNK_PROTOCOL, DELIVER_PROTOCOL, PROTOCOL_VERSION,
    },
    worker::fake::FakeRenderer,
};
use futures::AsyncWriteExt;

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_bytes_and_half_open_connections_do_not_stop_the_host_or_the_job() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"blend").unwrap();
    let (host, _stop_host) = start_host(&dirs).await;
    let addr = host.addrs[0].clone();
    let port = tcp_port(&addr);
    write_job(&dirs.jobdir, "j", "scene.blend", 1, 20);
    let (_w, _stop_w) = start_fake_worker(dirs.cache("w"), addr, FakeRenderer::new(Duration::from_millis(100)));

    // While the job renders: connections that send junk, that stop half-way through a handshake-like prefix, and
    // that never send anything at all (held open until the end of the test).
    let mut held = Vec::new();
    for i in 0..30u8 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        match i % 3 {
            0 => {
                let junk: Vec<u8> = (0..4096u32).map(|n| (n as u8).wrapping_mul(31).wrapping_add(i)).collect();
                let _ = s.write_all(&junk);
            }
            1 => {
                let _ = s.write_all(b"\x13/multistream/1.0.0\n");
            }
            _ => {}
        }
        held.push(s);
    }
    wait_until("all 20 frames despite the junk", LIMIT, || {
        files_in(&dirs.renderdir.join("j")) == frame_names(1, 20, "png")
    })
    .await;
    assert!(!host.task.is_finished(), "the host stopped");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_results_and_unasked_uploads_are_refused() {
    let HostAndPeer { dirs, host, stop: _stop_host, client, events: _events } = host_and_peer(1, 3).await;
    let host_id = host.peer_id;
    // Wait for the connection and for the job to be known.
    let mut connected = false;
    for _ in 0..100 {
        if client.connected_peers().await.unwrap().contains(&host_id) && dirs.jobdir.join("j.log").exists() {
            connected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(connected, "no connection to the host");

    let junk = b"pretend this is a frame".to_vec();
    let blend = BlobHash::of_bytes(b"blend");
    let hash = BlobHash::of_bytes(&junk);
    // A result for a frame never granted to this peer.
    let forged = WorkRequest::Rendered {
        job: "j".into(),
        frame: 1,
        blend,
        blob: hash,
        size: junk.len() as u64,
        ext: "png".into(),
        outputs: vec![],
    };
    let answer = client.request(host_id, forged).await.unwrap();
    assert_ne!(answer, WorkResponse::Upload, "a forged result was invited");
    // A path-escaping extension on a frame it was granted.
    let granted =
        client.request(host_id, WorkRequest::Claim { version: PROTOCOL_VERSION, slots: 1, caps: None }).await.unwrap();
    let WorkResponse::Granted(grants) = granted else { panic!("no grant: {granted:?}") };
    let (frame, blend) = (grants[0].frame, grants[0].blend);
    let evil = WorkRequest::Rendered {
        job: "j".into(),
        frame,
        blend,
        blob: hash,
        size: 5,
        ext: "/../../x".into(),
        outputs: vec![],
    };
    assert!(matches!(client.request(host_id, evil).await.unwrap(), WorkResponse::Refused { .. }));
    // File Output names that would leave the job's folder or pass for a frame file.
    for name in ["../../escape.png", "/etc/x.png", "0007.png", ".blenderdist-tmp/x.png", "x.sh"] {
        let output = ExtraOutput { name: name.into(), blob: hash, size: 5 };
        let evil = WorkRequest::Rendered {
            job: "j".into(),
            frame,
            blend,
            blob: hash,
            size: 5,
            ext: "png".into(),
            outputs: vec![output],
        };
        let answer = client.request(host_id, evil).await.unwrap();
        assert!(matches!(answer, WorkResponse::Refused { .. }), "{name}: {answer:?}");
    }
    // An upload nobody asked for.
    let mut control = client.streams();
    let mut stream = control.open_stream(host_id, BLOB_PROTOCOL).await.unwrap();
    write_header(&mut stream, &BlobRequest::Put { hash, size: junk.len() as u64 }).await.unwrap();
    let _ = stream.write_all(&junk).await;
    let reply: BlobReply = read_header(&mut stream).await.unwrap();
    assert!(matches!(reply, BlobReply::Refused { .. }), "{reply:?}");
    // An invited upload whose bytes do not match the announced hash.
    let notice = WorkRequest::Rendered {
        job: "j".into(),
        frame,
        blend,
        blob: hash,
        size: junk.len() as u64,
        ext: "png".into(),
        outputs: vec![],
    };
    assert_eq!(client.request(host_id, notice).await.unwrap(), WorkResponse::Upload);
    let mut stream = control.open_stream(host_id, BLOB_PROTOCOL).await.unwrap();
    write_header(&mut stream, &BlobRequest::Put { hash, size: junk.len() as u64 }).await.unwrap();
    let mut tampered = junk.clone();
    tampered[0] ^= 1;
    stream.write_all(&tampered).await.unwrap();
    let reply: BlobReply = read_header(&mut stream).await.unwrap();
    assert!(matches!(reply, BlobReply::Refused { .. }), "{reply:?}");
    // A request for a blob the host does not serve, and a junk header.
    let mut stream = control.open_stream(host_id, BLOB_PROTOCOL).await.unwrap();
    write_header(&mut stream, &BlobRequest::Get { hash: BlobHash::of_bytes(b"secret") }).await.unwrap();
    assert_eq!(read_header::<_, BlobReply>(&mut stream).await.unwrap(), BlobReply::Missing);
    let mut stream = control.open_stream(host_id, BLOB_PROTOCOL).await.unwrap();
    let _ = stream.write_all(b"\x00\x00\x00\x08garbage!").await;
    let _ = stream.close().await;

    assert!(files_in(&dirs.renderdir.join("j")).is_empty(), "a forged frame was written");
    // Leaving returns the frame this peer was granted to the queue at once.
    drop(control);
    drop(client);
    // The host is still serving: a real volunteer renders the whole job.
    let (_w, _stop_w) =
        start_fake_worker(dirs.cache("w"), host.addrs[0].clone(), FakeRenderer::new(Duration::from_millis(5)));
    wait_until("the job", LIMIT, || files_in(&dirs.renderdir.join("j")) == frame_names(1, 3, "png")).await;
    let blend_name = BlobHash::of_bytes(b"blend").to_hex();
    for f in 1..=3 {
        let bytes = std::fs::read(dirs.renderdir.join("j").join(format!("{f:04}.png"))).unwrap();
        assert_eq!(bytes, FakeRenderer::content(&blend_name, f));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_rendered_from_a_jobs_old_blend_is_discarded() {
    let dirs = Dirs::new();
    let blend_path = dirs.jobdir.join("scene.blend");
    std::fs::write(&blend_path, b"version one").unwrap();
    let (host, _stop_host) = start_host(&dirs).await;
    write_job(&dirs.jobdir, "j", "scene.blend", 1, 1);
    let (client, _events) = raw_peer(&host.addrs[0]);
    let claim = WorkRequest::Claim { version: PROTOCOL_VERSION, slots: 1, caps: None };
    let old = claim_one_frame(&client, host.peer_id).await.expect("no grant").blend;
    std::fs::write(&blend_path, b"version two").unwrap();
    let log = dirs.jobdir.join("j.log");
    wait_until("the restart", LIMIT, || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("restarted"))).await;
    // The same peer now holds frame 1 of the new version too; its old render must still not count.
    let regrant = client.request(host.peer_id, claim.clone()).await.unwrap();
    assert!(matches!(regrant, WorkResponse::Granted(_)), "{regrant:?}");
    let stale = WorkRequest::Rendered {
        job: "j".into(),
        frame: 1,
        blend: old,
        blob: BlobHash::of_bytes(b"old pixels"),
        size: 10,
        ext: "png".into(),
        outputs: vec![],
    };
    assert_eq!(client.request(host.peer_id, stale).await.unwrap(), WorkResponse::Discard);
    let renew = WorkRequest::Renew { job: "j".into(), frame: 1, blend: old };
    assert_eq!(client.request(host.peer_id, renew).await.unwrap(), WorkResponse::Discard);
}

/// A volunteer drops the streams of requests it no longer needs, hundreds at a time with a job of many files (the
/// project benchmark's volunteer was banned for it): a stream closed before its first header is no strike. Junk
/// headers still are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_closed_before_their_header_are_no_strike_but_junk_is() {
    let HostAndPeer { dirs: _dirs, host, stop: _stop_host, client, events: _events } = host_and_peer(1, 3).await;
    let host_id = host.peer_id;
    let grant = claim_one_frame(&client, host_id).await.expect("a grant");
    let mut control = client.streams();
    // Far more than the 20 strikes a peer may cause, on every raw-stream protocol the owner serves.
    for protocol in [BLOB_PROTOCOL, CHUNK_PROTOCOL, DELIVER_PROTOCOL] {
        for _ in 0..40 {
            let mut stream = control.open_stream(host_id, protocol.clone()).await.unwrap();
            stream.close().await.unwrap();
        }
    }
    // Still served: the frame's renewal is answered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let renew = WorkRequest::Renew { job: grant.job.clone(), frame: grant.frame, blend: grant.blend };
    assert_eq!(client.request(host_id, renew.clone()).await.unwrap(), WorkResponse::Noted);
    // Junk first headers are strikes: enough of them get the peer banned.
    for _ in 0..40 {
        let Ok(mut stream) = control.open_stream(host_id, BLOB_PROTOCOL).await else { break };
        let _ = stream.write_all(b"\x00\x00\x00\x08garbage!").await;
        let _ = stream.close().await;
    }
    let banned = async {
        loop {
            if client.request(host_id, renew.clone()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(LIMIT, banned).await.expect("junk headers never got the peer banned");
}
