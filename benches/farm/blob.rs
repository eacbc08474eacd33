//! Blob transfer: a 1 GiB file (256 MiB with --quick) of pseudo-random bytes moved over loopback, two ways, in the
//! same run, alternating, twice each (once with --quick); the faster of each counts.
//!
//! - blenderdist: two libp2p nodes from `blenderdist::net::spawn` (noise, yamux, as in production), already connected.
//!   The first serves the file with `host::blobs::BlobServer`; the second opens a `/blenderdist/blob/1` stream, sends
//!   `BlobRequest::Get`, reads `BlobReply::Found` and receives with `BlobStore::receive`, which hashes, writes, fsyncs
//!   and renames into place. Timed from opening the stream to `receive` returning. The host's hashing of the file
//!   (done once per .blend, when the job is loaded) is not included.
//! - baseline: a plain tokio TCP connection on 127.0.0.1; the sender copies the file to the socket in 64 KiB chunks,
//!   the receiver writes it to a file in 64 KiB chunks, fsyncs, renames and fsyncs the folder. No hashing.
//!
//! Goal: blenderdist's throughput ≥ 0.5 × the plain copy's. Three more figures go to the notes, to show where time
//! goes: the plain copy with sha256 on the receiving side, the plain copy read into memory (no disk), and the blob
//! stream read into memory (no hash, no disk). Both ends run in this one process, so they share the machine's cores.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};
use blenderdist::{
    host::blobs::BlobServer,
    net::{self, Client, NetConfig, NetEvent},
    protocol::{read_header, write_header, BlobHash, BlobReply, BlobRequest, BLOB_PROTOCOL},
    store::blobs::{hash_file, BlobStore},
};
use futures::AsyncReadExt as _;
use libp2p::{identity::Keypair, multiaddr::Protocol, PeerId};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::{self, note, row, Opts};

const CHUNK: usize = 64 * 1024;
const GOAL: f64 = 0.5;
const MIB: f64 = 1024.0 * 1024.0;

pub async fn run(opts: &Opts) -> anyhow::Result<()> {
    let size: u64 = if opts.quick { 256 << 20 } else { 1 << 30 };
    let rounds = if opts.quick { 1 } else { 2 };
    let dir = opts.temp_dir("blob")?;
    let src = dir.path().join("source.bin");
    eprintln!("   writing {} MiB of test data", size >> 20);
    write_source(src.clone(), size).await?;
    // Hashing reads the file once, so both transfers find it in the page cache.
    let (hash, _) = hash_file(&src).await?;
    let pair = BlobPair::start(dir.path(), hash, &src, None).await?;
    let store = BlobStore::open(dir.path().join("store"))?;
    let plain_dst = dir.path().join("plain.bin");

    let (mut plain, mut fetch) = (Duration::MAX, Duration::MAX);
    for round in 1..=rounds {
        let t = plain_copy(&src, Some(&plain_dst), false, size).await?;
        std::fs::remove_file(&plain_dst)?;
        eprintln!("   round {round}: plain TCP copy {}", rate(size, t));
        plain = plain.min(t);
        let t = pair.fetch(&store, hash).await?;
        std::fs::remove_file(store.path(&hash))?;
        eprintln!("   round {round}: blob fetch {}", rate(size, t));
        fetch = fetch.min(t);
    }
    let hashed = plain_copy(&src, Some(&plain_dst), true, size).await?;
    std::fs::remove_file(&plain_dst)?;
    let plain_to_memory = plain_copy(&src, None, false, size).await?;
    let to_memory = pair.fetch_to_memory(hash, size).await?;

    let ratio = plain.as_secs_f64() / fetch.as_secs_f64();
    row(
        &format!("Blob transfer: {} MiB fetch over /blenderdist/blob/1 ÷ plain TCP copy", size >> 20),
        &rate(size, fetch),
        &rate(size, plain),
        &format!("{ratio:.3}"),
        &format!("≥ {GOAL}"),
        common::yes_no(ratio >= GOAL),
    );
    note(&format!(
        "Blob transfer, other figures from the same run (ratio to the plain copy in brackets): plain TCP copy with \
         sha256 at the receiver {} ({:.2}); plain TCP read into memory, no disk {} ({:.2}); the blob stream read into \
         memory, no hash, no disk {} ({:.2}).",
        rate(size, hashed),
        plain.as_secs_f64() / hashed.as_secs_f64(),
        rate(size, plain_to_memory),
        plain.as_secs_f64() / plain_to_memory.as_secs_f64(),
        rate(size, to_memory),
        plain.as_secs_f64() / to_memory.as_secs_f64(),
    ));
    Ok(())
}

pub(crate) fn rate(size: u64, t: Duration) -> String {
    format!("{:.0} MiB/s ({:.2} s)", size as f64 / MIB / t.as_secs_f64(), t.as_secs_f64())
}

pub(crate) async fn write_source(path: PathBuf, size: u64) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&path)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            common::fill_pseudo_random(&mut buf[..n], &mut seed);
            file.write_all(&buf[..n])?;
            left -= n as u64;
        }
        // Flushed now, so its write-back does not overlap the timed transfers.
        file.sync_all()?;
        anyhow::Ok(())
    })
    .await?
}

/// The baseline: file → TCP socket → file, fsync, rename, fsync the folder; sha256 on the way when `hash`. Without
/// `dst` the bytes are only read off the socket.
async fn plain_copy(src: &Path, dst: Option<&Path>, hash: bool, size: u64) -> anyhow::Result<Duration> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let src = src.to_path_buf();
    let t0 = Instant::now();
    let sender = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let mut file = tokio::fs::File::open(&src).await?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            socket.write_all(&buf[..n]).await?;
        }
        socket.shutdown().await?;
        anyhow::Ok(())
    });
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let part = dst.map(|d| d.with_extension("part"));
    let mut out = match &part {
        Some(part) => Some(tokio::fs::File::create(part).await?),
        None => None,
    };
    let mut hasher = hash.then(Sha256::new);
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0u64;
    loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&buf[..n]);
        }
        if let Some(out) = out.as_mut() {
            out.write_all(&buf[..n]).await?;
        }
        received += n as u64;
    }
    if let (Some(mut out), Some(part), Some(dst)) = (out, part, dst) {
        out.flush().await?;
        out.sync_all().await?;
        drop(out);
        tokio::fs::rename(&part, dst).await?;
        std::fs::File::open(dst.parent().context("no parent")?)?.sync_all()?;
    }
    let took = t0.elapsed();
    sender.await??;
    if received != size {
        bail!("the plain copy moved {received} bytes instead of {size}");
    }
    if let Some(h) = hasher {
        std::hint::black_box(h.finalize());
    }
    Ok(took)
}

/// Two connected libp2p nodes: one serving the file with `BlobServer`, one fetching it (also used by `pnet.rs`).
pub(crate) struct BlobPair {
    server: Client,
    client: Client,
    /// Kept open: the server's channel of arrived frames (none arrive here).
    _arrivals: tokio::sync::mpsc::Receiver<blenderdist::host::blobs::FrameArrived>,
}

impl BlobPair {
    /// Both nodes private with `swarm_key` when given.
    pub(crate) async fn start(
        dir: &Path,
        hash: BlobHash,
        src: &Path,
        swarm_key: Option<net::SwarmKey>,
    ) -> anyhow::Result<Self> {
        let (server, mut events) = net::spawn(NetConfig {
            keypair: Keypair::generate_ed25519(),
            swarm_key: swarm_key.clone(),
            is_host: true,
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            bootstrap: vec![],
            mdns: false,
            max_peers: blenderdist::protocol::DEFAULT_MAX_PEERS,
        })?;
        let addr = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(event) = events.recv().await {
                if let NetEvent::Listening(addr) = event {
                    return Some(addr);
                }
            }
            None
        })
        .await?
        .context("the serving node did not start listening")?;
        drain(events);
        let (arrivals_tx, arrivals) = tokio::sync::mpsc::channel(1);
        // No scheduler here: the fetching node may have every blob.
        let (access_tx, mut access) = tokio::sync::mpsc::channel::<blenderdist::host::blobs::AccessQuestion>(16);
        tokio::spawn(async move {
            while let Some(question) = access.recv().await {
                let _ = question.reply.send(true);
            }
        });
        // No deliveries here: nothing renders.
        let (work_tx, _work) = tokio::sync::mpsc::channel(1);
        let blob_server =
            BlobServer::new(dir.join(format!("server-tmp-{}", server.peer_id())), arrivals_tx, access_tx, work_tx)?;
        blob_server.serve_job("bench", vec![(hash, src.to_path_buf())]);
        blob_server.spawn(&server, true)?;

        let (client, events) = net::spawn(NetConfig {
            keypair: Keypair::generate_ed25519(),
            swarm_key,
            is_host: false,
            listen: vec![],
            bootstrap: vec![addr.with(Protocol::P2p(server.peer_id()))],
            mdns: false,
            max_peers: blenderdist::protocol::DEFAULT_MAX_PEERS,
        })?;
        drain(events);
        let peer = server.peer_id();
        let start = Instant::now();
        while !client.connected_peers().await?.contains(&peer) {
            if start.elapsed() > Duration::from_secs(20) {
                bail!("the fetching node did not connect");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self { server, client, _arrivals: arrivals })
    }

    fn peer(&self) -> PeerId {
        self.server.peer_id()
    }

    /// Opens a blob stream and asks for `hash`; returns the stream and the announced size.
    async fn request(&self, hash: BlobHash) -> anyhow::Result<(libp2p::Stream, u64)> {
        let mut control = self.client.streams();
        let mut stream = control.open_stream(self.peer(), BLOB_PROTOCOL).await.map_err(|e| anyhow!("{e}"))?;
        write_header(&mut stream, &BlobRequest::Get { hash }).await?;
        match read_header(&mut stream).await? {
            BlobReply::Found { size } => Ok((stream, size)),
            other => bail!("the server answered {other:?}"),
        }
    }

    pub(crate) async fn fetch(&self, store: &BlobStore, hash: BlobHash) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        let fetched = tokio::time::timeout(Duration::from_secs(120), async {
            let (mut stream, size) = self.request(hash).await?;
            store.receive(&hash, size, &mut stream).await?;
            anyhow::Ok(())
        });
        fetched.await.context("the blob fetch took over 2 minutes")??;
        Ok(t0.elapsed())
    }

    pub(crate) async fn fetch_to_memory(&self, hash: BlobHash, size: u64) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        let (mut stream, announced) = self.request(hash).await?;
        let mut buf = vec![0u8; CHUNK];
        let mut received = 0u64;
        while received < announced {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            received += n as u64;
        }
        let took = t0.elapsed();
        if received != size {
            bail!("the blob stream moved {received} bytes instead of {size}");
        }
        Ok(took)
    }
}

/// Reads a node's events so its loop never waits on a full channel.
fn drain(mut events: tokio::sync::mpsc::Receiver<NetEvent>) {
    tokio::spawn(async move { while events.recv().await.is_some() {} });
}
