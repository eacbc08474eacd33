//! A frame returned in one exchange (`/blenderdist/deliver/1`): the notice, the claim for the next frame and the bytes
//! on one stream, stored durably before `Stored`; and what the host does with deliveries it must not take.

use std::time::Duration;

use blenderdist::worker::fake::FakeRenderer;
use blenderdist::{
    net::Client,
    protocol::{
        read_header, read_header_max, write_header_max, BlobHash, BlobReply, Delivery, DeliveryReply, FrameGrant,
        WorkResponse, DELIVER_PROTOCOL, MAX_DELIVERY_HEADER,
    },
};
use futures::AsyncWriteExt;
use libp2p::PeerId;

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(60);

fn delivery(grant: &FrameGrant, bytes: &[u8], ext: &str, claim: u32) -> Delivery {
    Delivery {
        job: grant.job.clone(),
        frame: grant.frame,
        blend: grant.blend,
        blob: BlobHash::of_bytes(bytes),
        size: bytes.len() as u64,
        ext: ext.into(),
        claim,
        caps: None,
    }
}

/// One exchange: the header, the host's answer, and (when it says `Upload`) `sent` as the frame's bytes and the
/// host's last word.
async fn exchange(
    client: &Client,
    host: PeerId,
    delivery: &Delivery,
    sent: &[u8],
) -> (DeliveryReply, Option<BlobReply>) {
    let mut stream = client.streams().open_stream(host, DELIVER_PROTOCOL).await.unwrap();
    write_header_max(&mut stream, delivery, MAX_DELIVERY_HEADER).await.unwrap();
    let reply: DeliveryReply = read_header_max(&mut stream, MAX_DELIVERY_HEADER).await.unwrap();
    if reply.upload != WorkResponse::Upload {
        return (reply, None);
    }
    stream.write_all(sent).await.unwrap();
    stream.flush().await.unwrap();
    let stored: BlobReply = read_header(&mut stream).await.unwrap();
    (reply, Some(stored))
}

fn granted(reply: &DeliveryReply) -> Vec<FrameGrant> {
    match &reply.claim {
        Some(WorkResponse::Granted(grants)) => grants.clone(),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_delivery_stores_its_frame_and_brings_the_next_grant() {
    let HostAndPeer { dirs, host, stop: _stop_host, client, events: _events } = host_and_peer(1, 3).await;
    let mut grant = claim_one_frame(&client, host.peer_id).await.expect("a first grant");
    let mut delivered = Vec::new();
    for round in 0..3 {
        let bytes = FakeRenderer::content("delivered", grant.frame);
        let (reply, stored) = exchange(&client, host.peer_id, &delivery(&grant, &bytes, "png", 1), &bytes).await;
        assert_eq!(reply.upload, WorkResponse::Upload, "round {round}");
        assert_eq!(stored, Some(BlobReply::Stored), "round {round}");
        // Stored means durable and in place, before the volunteer hears it.
        let file = dirs.renderdir.join("j").join(format!("{:04}.png", grant.frame));
        assert_eq!(std::fs::read(&file).unwrap(), bytes, "{}", file.display());
        delivered.push(grant.frame);
        let next = granted(&reply);
        if round < 2 {
            assert_eq!(next.len(), 1, "round {round}: {:?}", reply.claim);
            grant = next[0].clone();
        } else {
            assert_eq!(reply.claim, Some(WorkResponse::NoWork), "nothing left to grant");
        }
    }
    delivered.sort();
    assert_eq!(delivered, vec![1, 2, 3]);
    wait_until("the job to finish", LIMIT, || {
        std::fs::read_to_string(dirs.jobdir.join("j.log")).unwrap_or_default().contains("finished:")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_the_host_did_not_ask_for_write_nothing() {
    let HostAndPeer { dirs, host, stop: _stop_host, client, events: _events } = host_and_peer(1, 2).await;
    let grant = claim_one_frame(&client, host.peer_id).await.expect("a grant");
    let bytes = FakeRenderer::content("delivered", grant.frame);

    // A frame never granted to this peer: not wanted, and no claim answered when none was made.
    let other = FrameGrant { frame: 3 - grant.frame, ..grant.clone() };
    let (reply, stored) = exchange(&client, host.peer_id, &delivery(&other, &bytes, "png", 0), &bytes).await;
    assert_eq!((reply.upload, reply.claim, stored), (WorkResponse::Discard, None, None));
    // A path-escaping extension and an empty frame.
    for (ext, size) in [("/../../x", bytes.len() as u64), ("png", 0)] {
        let forged = Delivery { size, ..delivery(&grant, &bytes, ext, 0) };
        let (reply, _) = exchange(&client, host.peer_id, &forged, &bytes).await;
        assert!(matches!(reply.upload, WorkResponse::Refused { .. }), "{ext} {size}: {reply:?}");
    }
    // Invited, but the bytes are not the ones announced.
    let mut tampered = bytes.clone();
    tampered[0] ^= 1;
    let (reply, stored) = exchange(&client, host.peer_id, &delivery(&grant, &bytes, "png", 0), &tampered).await;
    assert_eq!(reply.upload, WorkResponse::Upload);
    assert!(matches!(stored, Some(BlobReply::Refused { .. })), "{stored:?}");
    assert!(files_in(&dirs.renderdir.join("j")).is_empty(), "a frame was written");
    // The frame is still this peer's to deliver.
    let (reply, stored) = exchange(&client, host.peer_id, &delivery(&grant, &bytes, "png", 0), &bytes).await;
    assert_eq!((reply.upload, stored), (WorkResponse::Upload, Some(BlobReply::Stored)));
    // A junk header, last (what the host does with the connection after it is not this test's concern): nothing
    // more is written, and a real volunteer renders the rest.
    let mut stream = client.streams().open_stream(host.peer_id, DELIVER_PROTOCOL).await.unwrap();
    let _ = stream.write_all(b"\x00\x00\x00\x08garbage!").await;
    let _ = stream.close().await;
    assert_eq!(files_in(&dirs.renderdir.join("j")).len(), 1);
    let (_w, _stop_w) =
        start_fake_worker(dirs.cache("w"), host.addrs[0].clone(), FakeRenderer::new(Duration::from_millis(5)));
    wait_until("the job", LIMIT, || files_in(&dirs.renderdir.join("j")) == frame_names(1, 2, "png")).await;
}

/// A volunteer meeting an owner without `/blenderdist/deliver/1` (an older build) learns so from the first refused
/// stream and returns every frame the general way: notice, claim and upload apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volunteer_returns_frames_the_general_way_to_an_owner_without_deliveries() {
    init_tracing();
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"an older owner's scene").unwrap();
    let blend_name = BlobHash::of_bytes(b"an older owner's scene").to_hex();
    let (stop_host, shutdown) = shutdown_switch();
    let config = blenderdist::host::HostConfig { without_deliveries: true, ..dirs.host_config() };
    let host = blenderdist::host::start(config, shutdown).await.unwrap();
    let renderer = FakeRenderer::new(Duration::from_millis(20));
    let (_v, _stop_v) = start_fake_worker(dirs.cache("v"), host.addrs[0].clone(), renderer);
    write_job(&dirs.jobdir, "old", "scene.blend", 1, 6);

    let out = dirs.renderdir.join("old");
    wait_until("all 6 frames", LIMIT, || files_in(&out) == frame_names(1, 6, "png")).await;
    for f in 1..=6 {
        let bytes = std::fs::read(out.join(format!("{f:04}.png"))).unwrap();
        assert_eq!(bytes, FakeRenderer::content(&blend_name, f), "frame {f}");
    }
    let log_path = dirs.jobdir.join("old.log");
    wait_until("the finished line", LIMIT, || std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("finished")))
        .await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(log.matches(" done by ").count(), 6, "{log}");
    assert!(!log.contains("failed"), "{log}");
    drop(stop_host);
}
