//! Self-update: the host relaunches on a new build of its program file; volunteers fetch the owner-signed build and
//! relaunch on it; bad manifests, corrupt blobs and builds failing their self-check are refused.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use blenderdist::{
    host::blobs::BlobServer,
    net::{self, NetConfig},
    protocol::{BlobHash, PlatformBinary, UpdateManifest, PROTOCOL_VERSION},
    update::{
        host::OwnBinary,
        manifest::{sign, TARGET},
        volunteer::Updater,
    },
};

use crate::{blender_e2e::make_scene, common::*};

const LIMIT: Duration = Duration::from_secs(180);

/// A private, writable copy of the binary under test.
fn copy_bin(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("blenderdist");
    std::fs::copy(BIN, &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Installs "another build" over `path` the way an owner would: a new file renamed into place. The copy has bytes
/// appended, so it has another hash and still runs.
fn install_new_build(path: &Path, tag: &str) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    let mut bytes = std::fs::read(path).unwrap();
    bytes.extend_from_slice(tag.as_bytes());
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn hash_of(path: &Path) -> BlobHash {
    BlobHash::of_bytes(&std::fs::read(path).unwrap())
}

fn spawn_host_program(program: &Path, dirs: &Dirs, listen: &str, extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["--listen", listen];
    args.extend_from_slice(extra);
    spawn_host_from(program, &dirs.jobdir, &dirs.renderdir, &args)
}

/// A volunteer run from `program`, its log in `log`.
fn spawn_volunteer_program(program: &Path, addr: &str, cache: &Path, log: &Path, extra: &[&str]) -> Proc {
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(program)
        .args(["join", addr, "--no-mdns", "--threads", "1", "--cache-dir"])
        .arg(cache)
        .args(extra)
        .env("RUST_LOG", "blenderdist=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Proc(child)
}

fn free_listen() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("127.0.0.1:{port}")
}

fn skip_test() -> bool {
    if !blender_available() {
        skip("blender is not installed");
        return true;
    }
    false
}

fn alive(p: &mut Proc) -> bool {
    p.0.try_wait().unwrap().is_none()
}

#[test]
fn a_host_relaunches_on_a_new_build_and_its_volunteers_follow() {
    if skip_test() {
        return;
    }
    let dirs = Dirs::new();
    make_scene(&dirs.jobdir.join("scene.blend"), 2, "32x24", 1);
    let host_bin = copy_bin(&dirs.root.path().join("host-bin"));
    let vol_bin = copy_bin(&dirs.root.path().join("volunteer-bin"));
    let listen = free_listen();
    let (mut host, addr) = spawn_host_program(&host_bin, &dirs, &listen, &[]);
    let log = dirs.root.path().join("volunteer.log");
    let mut volunteer = spawn_volunteer_program(&vol_bin, &addr, &dirs.cache("v"), &log, &[]);
    write_job(&dirs.jobdir, "before", "scene.blend", 1, 2);
    let before = dirs.renderdir.join("before");
    wait_until_blocking("the first job", LIMIT, || files_in(&before) == frame_names(1, 2, "png"));
    let stamps: Vec<_> =
        files_in(&before).iter().map(|f| std::fs::metadata(before.join(f)).unwrap().modified().unwrap()).collect();

    install_new_build(&host_bin, "blenderdist test build 2");
    let new = hash_of(&host_bin);
    wait_until_blocking("the volunteer to switch to the host's new build", LIMIT, || hash_of(&vol_bin) == new);
    write_job(&dirs.jobdir, "after", "scene.blend", 1, 2);
    wait_until_blocking("a job after the update", LIMIT, || {
        files_in(&dirs.renderdir.join("after")) == frame_names(1, 2, "png")
    });
    // Both relaunched in place (exec keeps the process), and the finished frames were kept, not rendered again.
    assert!(alive(&mut host) && alive(&mut volunteer));
    let again: Vec<_> =
        files_in(&before).iter().map(|f| std::fs::metadata(before.join(f)).unwrap().modified().unwrap()).collect();
    assert_eq!(stamps, again, "frames finished before the update were rendered again");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("passed its self-check"), "{text}");
}

#[test]
fn a_new_build_that_fails_its_self_check_is_not_switched_to() {
    if skip_test() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dirs = Dirs::new();
    make_scene(&dirs.jobdir.join("scene.blend"), 2, "32x24", 1);
    // The owner offers, for this platform, a "build" that cannot pass a self-check.
    let release = dirs.root.path().join("release");
    std::fs::create_dir_all(&release).unwrap();
    let broken = release.join(TARGET);
    std::fs::write(&broken, "#!/bin/sh\necho broken build\nexit 1\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let release_arg = release.to_string_lossy().into_owned();
    let (_host, addr) = spawn_host_program(Path::new(BIN), &dirs, &free_listen(), &["--release-dir", &release_arg]);
    let vol_bin = copy_bin(&dirs.root.path().join("volunteer-bin"));
    let before = hash_of(&vol_bin);
    let log = dirs.root.path().join("volunteer.log");
    let mut volunteer = spawn_volunteer_program(&vol_bin, &addr, &dirs.cache("v"), &log, &[]);
    wait_until_blocking("the refusal in the volunteer's log", LIMIT, || {
        std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("failed its self-check") && t.contains("keeping this program"))
    });
    write_job(&dirs.jobdir, "j", "scene.blend", 1, 2);
    wait_until_blocking("the job on the old program", LIMIT, || {
        files_in(&dirs.renderdir.join("j")) == frame_names(1, 2, "png")
    });
    assert_eq!(hash_of(&vol_bin), before, "the volunteer's program was replaced");
    assert!(alive(&mut volunteer));
}

#[test]
fn no_auto_updates_keeps_the_program_and_keeps_working() {
    if skip_test() {
        return;
    }
    let dirs = Dirs::new();
    make_scene(&dirs.jobdir.join("scene.blend"), 2, "32x24", 1);
    let host_bin = copy_bin(&dirs.root.path().join("host-bin"));
    let vol_bin = copy_bin(&dirs.root.path().join("volunteer-bin"));
    let original = hash_of(&vol_bin);
    let (_host, addr) = spawn_host_program(&host_bin, &dirs, &free_listen(), &[]);
    let log = dirs.root.path().join("volunteer.log");
    let mut volunteer = spawn_volunteer_program(&vol_bin, &addr, &dirs.cache("v"), &log, &["--no-auto-updates"]);
    install_new_build(&host_bin, "blenderdist test build 3");
    wait_until_blocking("the volunteer to decline the update", LIMIT, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("--no-auto-updates keeps this program"))
    });
    write_job(&dirs.jobdir, "j", "scene.blend", 1, 2);
    wait_until_blocking("the job", LIMIT, || files_in(&dirs.renderdir.join("j")) == frame_names(1, 2, "png"));
    assert_eq!(hash_of(&vol_bin), original);
    assert!(alive(&mut volunteer));
}

/// A host-like node serving `served` under `hash`, and a volunteer-like node connected to it.
async fn two_nodes(
    dir: &Path,
    hash: BlobHash,
    served: PathBuf,
) -> (net::Client, libp2p::identity::Keypair, libp2p::PeerId, net::Client) {
    init_tracing();
    let key = libp2p::identity::Keypair::generate_ed25519();
    let (host, mut events) = net::spawn(NetConfig {
        keypair: key.clone(),
        swarm_key: None,
        is_host: true,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![],
        mdns: false,
        max_peers: blenderdist::protocol::DEFAULT_MAX_PEERS,
    })
    .unwrap();
    let addr = loop {
        if let Some(net::NetEvent::Listening(a)) = events.recv().await {
            break a;
        }
    };
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    // Serves update manifests and builds only, which need nobody's lease: no access question is ever asked.
    let (access, _) = tokio::sync::mpsc::channel(1);
    let (work, _) = tokio::sync::mpsc::channel(1);
    let server = BlobServer::new(dir.join("host-tmp"), tx, access, work).unwrap();
    server.spawn(&host, true).unwrap();
    server.serve_updates(sign(&key, &manifest_for(hash, 0)).unwrap(), vec![(hash, served)]);
    let (volunteer, mut vevents) = net::spawn(NetConfig {
        keypair: libp2p::identity::Keypair::generate_ed25519(),
        swarm_key: None,
        is_host: false,
        listen: vec![],
        bootstrap: vec![addr],
        mdns: false,
        max_peers: blenderdist::protocol::DEFAULT_MAX_PEERS,
    })
    .unwrap();
    let host_id = host.peer_id();
    loop {
        if let Some(net::NetEvent::HostFound(p)) = vevents.recv().await {
            if p == host_id {
                break;
            }
        }
    }
    tokio::spawn(async move { while vevents.recv().await.is_some() {} });
    (host, key, host_id, volunteer)
}

fn manifest_for(hash: BlobHash, size: u64) -> UpdateManifest {
    UpdateManifest {
        protocol_version: PROTOCOL_VERSION,
        version: "9.9.9".into(),
        build: hash,
        issued_at: 1,
        binaries: vec![PlatformBinary { target: TARGET.into(), hash, size }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_unsigned_and_corrupt_updates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let own_path = dir.path().join("own-program");
    std::fs::write(&own_path, b"the running program").unwrap();
    let own = OwnBinary { path: own_path.clone(), hash: BlobHash::of_bytes(b"the running program"), size: 19 };
    // The owner announces a build whose bytes it serves corrupted.
    let announced = b"the new program".to_vec();
    let hash = BlobHash::of_bytes(&announced);
    let corrupt = dir.path().join("corrupt");
    std::fs::write(&corrupt, b"the NEW program").unwrap();
    let (_host, owner_key, owner, volunteer) = two_nodes(dir.path(), hash, corrupt).await;
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let updater = Arc::new(Updater::new(own, &cache, HashSet::from([owner]), true));
    let manifest = manifest_for(hash, announced.len() as u64);

    // Signed by another key.
    let stranger = libp2p::identity::Keypair::generate_ed25519();
    let foreign = sign(&stranger, &manifest).unwrap();
    let err = updater.consider(&volunteer, owner, &foreign).await.unwrap_err().to_string();
    assert!(err.contains("not by the trusted owner"), "{err}");
    // From a peer that is not the pinned owner, even if it signs its own manifest.
    let err = updater.consider(&volunteer, stranger.public().to_peer_id(), &foreign).await.unwrap_err().to_string();
    assert!(err.contains("not the owner named"), "{err}");
    // Unsigned.
    let mut unsigned = sign(&owner_key, &manifest).unwrap();
    unsigned.signature.clear();
    let err = updater.consider(&volunteer, owner, &unsigned).await.unwrap_err().to_string();
    assert!(err.contains("signature"), "{err}");
    // Properly signed, but older than one already accepted: a replay.
    let mut newer = manifest.clone();
    newer.issued_at = 5;
    newer.binaries.clear();
    let err = updater.consider(&volunteer, owner, &sign(&owner_key, &newer).unwrap()).await.unwrap_err().to_string();
    assert!(err.contains("no build for"), "{err}");
    let err = updater.consider(&volunteer, owner, &sign(&owner_key, &manifest).unwrap()).await.unwrap_err().to_string();
    assert!(err.contains("a replay"), "{err}");
    let mut manifest = manifest;
    manifest.issued_at = 6;
    // Properly signed, but the blob does not match its hash.
    let good = sign(&owner_key, &manifest).unwrap();
    let err = updater.consider(&volunteer, owner, &good).await.unwrap_err().to_string();
    assert!(err.contains("refusing the new build"), "{err}");
    assert!(updater.staged().is_none());
    assert_eq!(std::fs::read(&own_path).unwrap(), b"the running program");
}

#[test]
fn trust_on_first_use_records_the_owner_and_names_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let own = OwnBinary { path: dir.path().join("p"), hash: BlobHash::of_bytes(b"p"), size: 1 };
    let updater = Updater::new(own, dir.path(), HashSet::new(), true);
    let first = libp2p::identity::Keypair::generate_ed25519().public().to_peer_id();
    let second = libp2p::identity::Keypair::generate_ed25519().public().to_peer_id();
    updater.trusts(first).unwrap();
    updater.trusts(first).unwrap();
    let err = updater.trusts(second).unwrap_err().to_string();
    assert!(
        err.contains("owner changed") && err.contains(&first.to_string()) && err.contains("trusted-owner"),
        "{err}"
    );
}

#[derive(libp2p::swarm::NetworkBehaviour)]
struct FutureHostBehaviour {
    identify: libp2p::identify::Behaviour,
    stream: libp2p_stream::Behaviour,
}

/// A libp2p node that says, through identify, that it is a blenderdist host of protocol version 2, and serves over
/// the unversioned update protocol a manifest signed by its key naming `build` (if any) for this platform.
async fn future_host(build: Option<PathBuf>) -> (libp2p::Multiaddr, tokio::task::JoinHandle<()>) {
    use blenderdist::protocol::{
        read_header, write_header, write_header_max, BlobReply, UpdateRequest, MAX_MANIFEST, UPDATE_PROTOCOL,
    };
    use futures::{AsyncWriteExt, StreamExt};
    use libp2p::{identify, noise, tcp, yamux};
    let key = libp2p::identity::Keypair::generate_ed25519();
    let signed = build.as_ref().map(|path| {
        let bytes = std::fs::read(path).unwrap();
        let hash = BlobHash::of_bytes(&bytes);
        let manifest = UpdateManifest { protocol_version: 2, ..manifest_for(hash, bytes.len() as u64) };
        (sign(&key, &manifest).unwrap(), hash)
    });
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|key| FutureHostBehaviour {
            identify: identify::Behaviour::new(
                identify::Config::new("/blenderdist/3".into(), key.public())
                    .with_agent_version("blenderdist-host/9.0.0".into()),
            ),
            stream: libp2p_stream::Behaviour::new(),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let mut incoming = swarm.behaviour().stream.new_control().accept(UPDATE_PROTOCOL).unwrap();
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            let Ok(request) = read_header::<_, UpdateRequest>(&mut stream).await else { continue };
            match (request, &signed, &build) {
                (UpdateRequest::Manifest, signed, _) => {
                    let manifest = signed.as_ref().map(|(m, _)| m.clone());
                    let _ = write_header_max(&mut stream, &manifest, MAX_MANIFEST as u32).await;
                }
                (UpdateRequest::Build { hash }, Some((_, want)), Some(path)) if hash == *want => {
                    let bytes = std::fs::read(path).unwrap();
                    let _ = write_header(&mut stream, &BlobReply::Found { size: bytes.len() as u64 }).await;
                    let _ = stream.write_all(&bytes).await;
                }
                _ => {
                    let _ = write_header(&mut stream, &BlobReply::Missing).await;
                }
            }
            let _ = stream.close().await;
        }
    });
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
    let addr = loop {
        if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address.with(libp2p::multiaddr::Protocol::P2p(*swarm.local_peer_id()));
        }
    };
    let task = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volunteer_fetches_its_owners_build_across_a_protocol_version_change() {
    let dir = tempfile::tempdir().unwrap();
    // The owner's "version 3" build: another file that still runs.
    let new_build = copy_bin(&dir.path().join("v2"));
    install_new_build(&new_build, "protocol version 2 build");
    let (addr, host) = future_host(Some(new_build.clone())).await;
    let vol_bin = copy_bin(&dir.path().join("volunteer-bin"));
    let log = dir.path().join("volunteer.log");
    let (addr, cache) = (addr.to_string(), dir.path().join("cache"));
    let (vol, log2) = (vol_bin.clone(), log.clone());
    let mut volunteer = tokio::task::spawn_blocking(move || {
        let blender = fake_blender(cache.parent().unwrap());
        spawn_volunteer_program(&vol, &addr, &cache, &log2, &["--blender", &blender.to_string_lossy()])
    })
    .await
    .unwrap();
    let want = hash_of(&new_build);
    let start = std::time::Instant::now();
    while hash_of(&vol_bin) != want {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the volunteer never switched to the version 2 build:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(alive(&mut volunteer), "the volunteer did not relaunch on the new build");
    host.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_protocol_versions_are_named_and_stop_a_volunteer_that_may_not_update() {
    let (addr, host) = future_host(None).await;
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &'static [&'static str]| {
        let cache = dir.path().join(format!("cache{}", extra.len()));
        let addr = addr.to_string();
        tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new(BIN);
            let blender = fake_blender(cache.parent().unwrap());
            cmd.args(["join", &addr, "--no-mdns", "--blender"]).arg(blender).arg("--cache-dir").arg(cache).args(extra);
            let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
            let mut proc = Proc(child);
            // A volunteer that may not update stops by itself; one that may keeps trying: stop it after a while.
            for _ in 0..100 {
                if proc.0.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = proc.0.kill();
            let status = proc.0.wait().unwrap();
            let mut err = String::new();
            std::io::Read::read_to_string(proc.0.stderr.as_mut().unwrap(), &mut err).unwrap();
            (status, err)
        })
    };
    let (status, err) = run(&["--no-auto-updates"]).await.unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("/blenderdist/3") && err.contains("/blenderdist/2"), "{err}");
    let (_, err) = run(&[]).await.unwrap();
    assert!(
        err.contains("/blenderdist/3") && err.contains("/blenderdist/2"),
        "the refusal must name both versions: {err}"
    );
    host.abort();
}
