//! Bounded peers: a flood of connections, requests or streams from one peer gets it banned and leaves the job
//! finishing and other volunteers served; a job's files go only to volunteers granted a frame of it; and an owner
//! that stops answering never wedges a volunteer's render slot.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use blenderdist::{
    net::{self, Client, NetConfig, NetEvent},
    protocol::{
        read_header, read_header_max, to_cbor, write_header, BlobHash, BlobReply, BlobRequest, FileKind, FrameGrant,
        JobManifest, ProjectFile, SignedManifest, UpdateRequest, WorkRequest, WorkResponse, BLOB_PROTOCOL,
        DEFAULT_MAX_PEERS, MAX_MANIFEST, PROTOCOL_VERSION, UPDATE_PROTOCOL,
    },
    worker::{fake::FakeRenderer, Patience, WorkerConfig},
};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{identity::Keypair, Multiaddr, PeerId};

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(120);

/// A network node of identity `key` that keeps dialling `addr`.
fn node(key: &Keypair, addr: &Multiaddr) -> Client {
    let (client, mut events) = net::spawn(NetConfig {
        keypair: key.clone(),
        swarm_key: None,
        is_host: false,
        listen: vec![],
        bootstrap: vec![addr.clone()],
        mdns: false,
        max_peers: DEFAULT_MAX_PEERS,
    })
    .unwrap();
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    client
}

async fn connected(client: &Client, host: PeerId) -> bool {
    client.connected_peers().await.is_ok_and(|peers| peers.contains(&host))
}

/// Waits until `client` is connected to `host`.
async fn until_connected(client: &Client, host: PeerId) {
    for _ in 0..600 {
        if connected(client, host).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no connection to the host");
}

/// Claims a frame, trying again until the connection and the job are up, for up to [`LIMIT`].
async fn claim_patiently(client: &Client, host: PeerId) -> Option<FrameGrant> {
    let claim = WorkRequest::Claim { version: PROTOCOL_VERSION, slots: 1, caps: None };
    let start = std::time::Instant::now();
    while start.elapsed() < LIMIT {
        if let Ok(WorkResponse::Granted(grants)) = client.request(host, claim.clone()).await {
            return grants.into_iter().next();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// A peer that asks for nothing it may not have, very fast: renewals of a frame nobody holds.
async fn request_flood(client: Client, host: PeerId, count: usize) {
    let renew = WorkRequest::Renew { job: "none".into(), frame: 1, blend: BlobHash([0; 32]) };
    futures::stream::iter(0..count)
        .for_each_concurrent(64, |_| {
            let (client, renew) = (client.clone(), renew.clone());
            async move {
                let _ = client.request(host, renew).await;
            }
        })
        .await;
}

/// A peer that opens streams very fast, each asking for the (public) update manifest.
async fn stream_flood(client: Client, host: PeerId, count: usize) {
    futures::stream::iter(0..count)
        .for_each_concurrent(64, |_| {
            let mut control = client.streams();
            async move {
                let Ok(mut stream) = control.open_stream(host, UPDATE_PROTOCOL).await else { return };
                if write_header(&mut stream, &UpdateRequest::Manifest).await.is_ok() {
                    let _ = read_header_max::<_, Option<SignedManifest>>(&mut stream, MAX_MANIFEST as u32).await;
                }
            }
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_requests_or_streams_gets_the_peer_banned_and_the_farm_goes_on() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"blend").unwrap();
    let (host, _stop_host) = start_host(&dirs).await;
    let (addr, host_id) = (host.addrs[0].clone(), host.peer_id);
    write_job(&dirs.jobdir, "j", "scene.blend", 1, 60);

    // One identity dials from six nodes at once (a connection flood: at most two get through) and floods requests
    // from each; another floods streams.
    let flooder = Keypair::generate_ed25519();
    let nodes: Vec<Client> = (0..6).map(|_| node(&flooder, &addr)).collect();
    let streamer = node(&Keypair::generate_ed25519(), &addr);
    let start = std::time::Instant::now();
    while !connected(&nodes[0], host_id).await && !connected(&nodes[1], host_id).await {
        assert!(start.elapsed() < LIMIT, "the flooder never got in");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until_connected(&streamer, host_id).await;
    let floods: Vec<_> = nodes.iter().map(|n| tokio::spawn(request_flood(n.clone(), host_id, 1500))).collect();
    let streams = tokio::spawn(stream_flood(streamer.clone(), host_id, 5000));

    // Meanwhile a volunteer renders the job, and a newcomer is served.
    let (_w, _stop_w) = start_fake_worker(dirs.cache("w"), addr.clone(), FakeRenderer::new(Duration::from_millis(50)));
    let (newcomer, _events) = raw_peer(&addr);
    assert!(claim_patiently(&newcomer, host_id).await.is_some(), "a newcomer got no frame during the flood");
    drop(newcomer);
    for flood in floods {
        flood.await.unwrap();
    }
    streams.await.unwrap();
    // Both flooders are banned (for a minute): their requests fail, their connections are closed and refused.
    let status = WorkRequest::Status;
    for client in nodes.iter().chain([&streamer]) {
        assert!(client.request(host_id, status.clone()).await.is_err(), "a flooder is still served");
        assert!(!connected(client, host_id).await, "a flooder is still connected");
    }
    wait_until("the job", LIMIT, || files_in(&dirs.renderdir.join("j")) == frame_names(1, 60, "png")).await;
    assert!(!host.task.is_finished(), "the host stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_leaves_the_job_finishing_and_newcomers_served() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"blend").unwrap();
    let (host, _stop_host) = start_host(&dirs).await;
    let (addr, host_id) = (host.addrs[0].clone(), host.peer_id);
    let port = tcp_port(&addr);
    write_job(&dirs.jobdir, "j", "scene.blend", 1, 30);
    let (_w, _stop_w) = start_fake_worker(dirs.cache("w"), addr.clone(), FakeRenderer::new(Duration::from_millis(100)));
    // More silent connections than the host takes into its handshake at once, held until the end of the test.
    let held: Vec<std::net::TcpStream> =
        (0..300).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok()).collect();
    assert!(held.len() > 200, "only {} connections", held.len());
    // A newcomer gets in (once the silent ones time out of their handshake, 10 s).
    let (newcomer, _events) = raw_peer(&addr);
    // And is served (asking what the farm does: the job may be done by then).
    let status = WorkRequest::Status;
    let start = std::time::Instant::now();
    while !matches!(newcomer.request(host_id, status.clone()).await, Ok(WorkResponse::Status(_))) {
        assert!(start.elapsed() < LIMIT, "a newcomer was not served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(newcomer);
    wait_until("the job", LIMIT, || files_in(&dirs.renderdir.join("j")) == frame_names(1, 30, "png")).await;
    drop(held);
}

/// Asks `host` for blob `hash` over a fresh stream.
async fn get_blob(client: &Client, host: PeerId, hash: BlobHash) -> BlobReply {
    let mut stream = client.streams().open_stream(host, BLOB_PROTOCOL).await.unwrap();
    write_header(&mut stream, &BlobRequest::Get { hash }).await.unwrap();
    read_header(&mut stream).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_files_go_only_to_peers_holding_a_lease_on_one_of_its_frames() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"blend").unwrap();
    let (host, _stop_host) = start_host(&dirs).await;
    write_job(&dirs.jobdir, "j", "scene.blend", 1, 3);
    let (granted, _events) = raw_peer(&host.addrs[0]);
    let grant = claim_one_frame(&granted, host.peer_id).await.expect("no grant");
    let (stranger, _events) = raw_peer(&host.addrs[0]);
    until_connected(&stranger, host.peer_id).await;

    // The manifest (the job's version) and the .blend it names.
    match get_blob(&stranger, host.peer_id, grant.blend).await {
        BlobReply::Refused { reason } => assert!(reason.contains("granted a frame"), "{reason}"),
        other => panic!("a peer without a lease was answered {other:?}"),
    }
    assert_eq!(get_blob(&granted, host.peer_id, grant.blend).await, BlobReply::Found { size: grant.blend_size });
    let blend = BlobHash::of_bytes(b"blend");
    assert!(matches!(get_blob(&stranger, host.peer_id, blend).await, BlobReply::Refused { .. }));
    assert_eq!(get_blob(&granted, host.peer_id, blend).await, BlobReply::Found { size: 5 });
    // The update manifest stays public.
    let mut stream = stranger.streams().open_stream(host.peer_id, UPDATE_PROTOCOL).await.unwrap();
    write_header(&mut stream, &UpdateRequest::Manifest).await.unwrap();
    let manifest: Option<SignedManifest> = read_header_max(&mut stream, MAX_MANIFEST as u32).await.unwrap();
    assert!(manifest.is_some(), "the update manifest is no longer served to anyone");
    // Its lease gone (it gave the frame up), the granted peer is refused too.
    let report = WorkRequest::Failed { job: "j".into(), frame: grant.frame, blend: grant.blend, error: "x".into() };
    assert_eq!(granted.request(host.peer_id, report).await.unwrap(), WorkResponse::Noted);
    assert!(matches!(get_blob(&granted, host.peer_id, blend).await, BlobReply::Refused { .. }));
}

/// What a raw owner serves: a blob stream it holds unanswered, or bytes.
#[derive(Clone)]
struct RawOwner {
    client: Client,
    /// Blobs it serves; any other `Get`, and every `Put`, is held open and never answered.
    served: Arc<Vec<(BlobHash, Vec<u8>)>>,
    held: Arc<Mutex<Vec<libp2p::Stream>>>,
    /// The work requests it got, in order.
    requests: Arc<Mutex<Vec<WorkRequest>>>,
}

impl RawOwner {
    async fn serve_streams(self) {
        let Ok(mut incoming) = self.client.streams().accept(BLOB_PROTOCOL) else { return };
        while let Some((_, mut stream)) = incoming.next().await {
            let this = self.clone();
            tokio::spawn(async move {
                let request: BlobRequest = match read_header(&mut stream).await {
                    Ok(request) => request,
                    Err(_) => return,
                };
                match request {
                    BlobRequest::Get { hash } => {
                        if let Some((_, bytes)) = this.served.iter().find(|(h, _)| *h == hash) {
                            let reply = BlobReply::Found { size: bytes.len() as u64 };
                            let _ = write_header(&mut stream, &reply).await;
                            let _ = stream.write_all(bytes).await;
                            let _ = stream.close().await;
                            return;
                        }
                    }
                    BlobRequest::Put { size, .. } => {
                        let mut buf = vec![0u8; size as usize];
                        let _ = stream.read_exact(&mut buf).await;
                    }
                }
                this.held.lock().unwrap().push(stream);
            });
        }
    }

    /// Grants frame 1 of a version it never serves, then frames 2 and 3 of one it does; asks for every upload.
    async fn answer(self, mut events: tokio::sync::mpsc::Receiver<NetEvent>, stalled: FrameGrant, good: FrameGrant) {
        let mut next = 0;
        while let Some(event) = events.recv().await {
            let NetEvent::Request { peer, request, channel } = event else { continue };
            self.requests.lock().unwrap().push(request.clone());
            let response = match request {
                WorkRequest::Claim { .. } => {
                    next += 1;
                    match next {
                        1 => WorkResponse::Granted(vec![stalled.clone()]),
                        2 | 3 => WorkResponse::Granted(vec![FrameGrant { frame: next, ..good.clone() }]),
                        _ => WorkResponse::NoWork,
                    }
                }
                WorkRequest::Rendered { .. } => WorkResponse::Upload,
                _ => WorkResponse::Noted,
            };
            let _ = self.client.respond(peer, channel, response).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_stops_answering_never_wedges_a_render_slot() {
    init_tracing();
    let dirs = Dirs::new();
    let (client, mut events) = net::spawn(NetConfig {
        keypair: Keypair::generate_ed25519(),
        swarm_key: None,
        is_host: true,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![],
        mdns: false,
        max_peers: DEFAULT_MAX_PEERS,
    })
    .unwrap();
    let addr = loop {
        if let Some(NetEvent::Listening(a)) = events.recv().await {
            break a.with(libp2p::multiaddr::Protocol::P2p(client.peer_id()));
        }
    };
    let blend = b"blend".to_vec();
    let file = ProjectFile {
        path: "/project/scene.blend".into(),
        hash: BlobHash::of_bytes(&blend),
        size: blend.len() as u64,
        kind: FileKind::Blend,
    };
    let manifest = to_cbor(&JobManifest { blend: file.clone(), files: vec![], missing: vec![] }).unwrap();
    let version = BlobHash::of_bytes(&manifest);
    let good = FrameGrant { job: "j".into(), frame: 2, blend: version, blend_size: manifest.len() as u64 };
    let stalled = FrameGrant { frame: 1, blend: BlobHash::of_bytes(b"never served"), ..good.clone() };
    let owner = RawOwner {
        client: client.clone(),
        served: Arc::new(vec![(version, manifest), (file.hash, blend)]),
        held: Arc::default(),
        requests: Arc::default(),
    };
    tokio::spawn(owner.clone().serve_streams());
    tokio::spawn(owner.clone().answer(events, stalled, good));

    let (_stop, shutdown) = shutdown_switch();
    let config = WorkerConfig {
        cache_dir: dirs.cache("w"),
        bootstrap: vec![addr],
        mdns: false,
        renderers: 1,
        updater: None,
        caps: None,
        patience: Patience { reply: Duration::from_secs(1), stored: Duration::from_secs(1) },
        swarm_key: None,
    };
    let _w = blenderdist::worker::start(config, FakeRenderer::new(Duration::from_millis(10)), shutdown).unwrap();
    // Frame 1's files never come: the slot gives the frame up. Frame 2's upload is never acknowledged: the slot
    // gives up on it too, and delivers frame 3, which it could not before frame 2's delivery ended.
    let saw = |want: &dyn Fn(&WorkRequest) -> bool| owner.requests.lock().unwrap().iter().any(want);
    wait_until("frame 1 reported failed", LIMIT, || saw(&|r| matches!(r, WorkRequest::Failed { frame: 1, .. }))).await;
    wait_until("frame 3 rendered after frame 2's stalled upload", LIMIT, || {
        saw(&|r| matches!(r, WorkRequest::Rendered { frame: 3, .. }))
    })
    .await;
    let failed = owner.requests.lock().unwrap().iter().find_map(|r| match r {
        WorkRequest::Failed { frame: 1, error, .. } => Some(error.clone()),
        _ => None,
    });
    assert!(failed.is_some_and(|e| e.contains("did not answer")), "frame 1 failed for another reason");
}
