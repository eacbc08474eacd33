//! Volunteers share a job's large files with each other (`protocol::chunks`): in-process nodes on loopback, each a
//! libp2p node of its own listening on 127.0.0.1, with the fake renderer.

use std::{path::Path, time::Duration};

use blenderdist::{
    protocol::{BlobHash, CHUNK_SIZE},
    worker::{self, fake::FakeRenderer, seed::ShareOptions, WorkerConfig},
};
use libp2p::Multiaddr;

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(90);

/// A volunteer that listens on loopback for other volunteers; `corrupt` flips a byte of every chunk it serves.
fn start_sharing_worker(
    cache: std::path::PathBuf,
    host: Multiaddr,
    corrupt: bool,
) -> (tokio::task::JoinHandle<anyhow::Result<()>>, tokio::sync::oneshot::Sender<()>) {
    let (stop, shutdown) = shutdown_switch();
    let config = WorkerConfig {
        cache_dir: cache,
        bootstrap: vec![host],
        mdns: false,
        renderers: 1,
        updater: None,
        caps: None,
        patience: Default::default(),
        swarm_key: None,
    };
    let share = ShareOptions { listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()], corrupt, ..Default::default() };
    let renderer = FakeRenderer::new(Duration::from_millis(30));
    (worker::start_sharing(config, share, renderer, shutdown).unwrap(), stop)
}

/// The lines of a volunteer's `chunks-received.log`: blob, then `owner N`, then `PEER N` per volunteer that sent.
fn received(cache: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(cache.join("chunks-received.log")).unwrap_or_default();
    text.lines().map(|l| l.split_whitespace().map(str::to_string).collect()).collect()
}

fn peer_id_of(cache: &Path) -> String {
    let key = std::fs::read(cache.join("node.key")).unwrap();
    let key = libp2p::identity::Keypair::from_protobuf_encoding(&key).unwrap();
    key.public().to_peer_id().to_string()
}

/// `size` bytes no compression or pattern could fake.
fn noise(size: u64, seed: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(size as usize);
    let mut state = BlobHash::of_bytes(seed).0.to_vec();
    while (bytes.len() as u64) < size {
        state = BlobHash::of_bytes(&state).0.to_vec();
        bytes.extend_from_slice(&state);
    }
    bytes.truncate(size as usize);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volunteer_nobody_can_dial_still_fetches_chunks_from_one_that_listens() {
    let dirs = Dirs::new();
    let size = CHUNK_SIZE * 3 + 12_345;
    let blend = noise(size, b"undialable");
    let blob = BlobHash::of_bytes(&blend);
    std::fs::write(dirs.jobdir.join("scene.blend"), &blend).unwrap();
    write_job(&dirs.jobdir, "shot", "scene.blend", 1, 20);
    let (host, _stop_host) = start_host(&dirs).await;
    let (open, closed) = (dirs.cache("open"), dirs.cache("closed"));
    let (_open, _stop_open) = start_sharing_worker(open.clone(), host.addrs[0].clone(), false);
    wait_until("the listening volunteer's fetch", LIMIT, || !received(&open).is_empty()).await;
    // Listens nowhere: it dials the one that listens.
    let (_closed, _stop_closed) =
        start_fake_worker(closed.clone(), host.addrs[0].clone(), FakeRenderer::new(Duration::from_millis(30)));
    wait_until("the undialable volunteer's fetch", LIMIT, || !received(&closed).is_empty()).await;
    let line = &received(&closed)[0];
    let open_id = peer_id_of(&open);
    let from_open = line.iter().position(|w| *w == open_id).map(|i| line[i + 1].parse::<usize>().unwrap());
    assert!(from_open.is_some_and(|n| n > 0), "nothing came from the listening volunteer: {line:?}");
    assert_eq!(std::fs::read(closed.join("blobs").join(blob.to_hex())).unwrap(), blend);
    let out = dirs.renderdir.join("shot");
    wait_until("all 20 frames", LIMIT, || files_in(&out) == frame_names(1, 20, "png")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volunteers_fetch_chunks_from_each_other_and_drop_one_that_corrupts_them() {
    let dirs = Dirs::new();
    let size = CHUNK_SIZE * 6 + CHUNK_SIZE / 2;
    let blend = noise(size, b"swarm");
    let blob = BlobHash::of_bytes(&blend);
    std::fs::write(dirs.jobdir.join("big.blend"), &blend).unwrap();
    write_job(&dirs.jobdir, "big", "big.blend", 1, 30);
    let (host, _stop_host) = start_host(&dirs).await;
    let addr = host.addrs[0].clone();
    let chunks = size.div_ceil(CHUNK_SIZE) as usize;

    // The corrupting volunteer comes first and gets everything from the owner.
    let (bad, good, late) = (dirs.cache("bad"), dirs.cache("good"), dirs.cache("late"));
    let (_bad, _stop_bad) = start_sharing_worker(bad.clone(), addr.clone(), true);
    wait_until("the first volunteer's fetch", LIMIT, || !received(&bad).is_empty()).await;
    let first = &received(&bad)[0];
    assert_eq!(first[..3], [blob.to_hex(), "owner".into(), chunks.to_string()], "{first:?}");

    // The next one is told of it, gets a corrupt chunk, drops it and fetches the rest elsewhere (the owner).
    let (_good, _stop_good) = start_sharing_worker(good.clone(), addr.clone(), false);
    wait_until("the second volunteer's fetch", LIMIT, || !received(&good).is_empty()).await;
    let bad_id = peer_id_of(&bad);
    let warned = || warnings().iter().any(|w| w.contains(&bad_id) && w.contains("corrupt chunk"));
    assert!(warned(), "no warning names the corrupting volunteer {bad_id}: {:?}", warnings());
    assert!(!received(&good)[0].contains(&bad_id), "{:?}", received(&good));

    // The third gets chunks from the second (and perhaps a corrupt one from the first, which it drops).
    let (_late, _stop_late) = start_sharing_worker(late.clone(), addr.clone(), false);
    wait_until("the third volunteer's fetch", LIMIT, || !received(&late).is_empty()).await;
    let line = &received(&late)[0];
    let good_id = peer_id_of(&good);
    let from_good = line.iter().position(|w| *w == good_id).map(|i| line[i + 1].parse::<usize>().unwrap());
    assert!(from_good.is_some_and(|n| n > 0), "the third volunteer got nothing from the second: {line:?}");
    assert!(!line.contains(&bad_id), "{line:?}");

    // Every volunteer holds the verified blob, and the owner sent less than one copy per volunteer.
    for cache in [&bad, &good, &late] {
        assert_eq!(std::fs::read(cache.join("blobs").join(blob.to_hex())).unwrap(), blend);
    }
    let sent = host.chunks.bytes_sent();
    assert!(sent < 3 * size, "the owner sent {sent} bytes of chunks for 3 volunteers of a {size}-byte blob");

    let out = dirs.renderdir.join("big");
    wait_until("all 30 frames", LIMIT, || files_in(&out) == frame_names(1, 30, "png")).await;
    for f in 1..=30 {
        assert_eq!(std::fs::read(out.join(format!("{f:04}.png"))).unwrap(), FakeRenderer::content(&blob.to_hex(), f));
    }
}
