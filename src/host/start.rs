//! Starting a host: its folders and state, the network, the job folder's watcher and the event loop.

use super::*;

/// Opens the state, starts the network and the job-folder watcher, and spawns the host's event loop.
pub async fn start(
    config: HostConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningHost> {
    check_dir(&config.jobdir, "job folder")?;
    let mut shutdown = Box::pin(shutdown);
    let owner_lock = tokio::select! {
        lock = owner::acquire(&config.jobdir) => lock?,
        _ = &mut shutdown => return Err(owner::StoppedAsStandby.into()),
    };
    std::fs::create_dir_all(&config.renderdir)
        .with_context(|| format!("cannot create the render folder {}", config.renderdir.display()))?;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create the state folder {}", config.state_dir.display()))?;
    let keypair = keys::load_or_create(&config.state_dir.join("node.key"))?;
    let swarm_key = config.privacy.key(&config.state_dir)?;
    if let Some(key) = &swarm_key {
        info!("private farm: only nodes with the swarm key (fingerprint {}) can connect", key.fingerprint());
    }
    let own = OwnBinary::locate().await?;
    let builds = crate::update::host::builds(&own, config.release_dir.as_deref()).await?;
    let manifest = crate::update::manifest::sign(&keypair, &crate::update::host::manifest(&own, &builds))?;
    let state = std::sync::Arc::new(StateStore::open(&config.state_dir.join("state.redb"))?);
    let relays = net::RelayConfig { reserve_on: config.relays.clone(), serve: None };
    let (client, mut events) = net::spawn_with(
        NetConfig {
            keypair: keypair.clone(),
            swarm_key: swarm_key.clone(),
            is_host: true,
            listen: config.listen.clone(),
            bootstrap: vec![],
            mdns: config.mdns,
            max_peers: crate::protocol::DEFAULT_MAX_PEERS,
        },
        relays,
    )?;
    let peer_id = client.peer_id();
    // Wait until every listener is up, so the printed join line and the tests' addresses are real. An unspecified
    // address (0.0.0.0) yields one address per interface, all at once: collect them for a moment.
    let mut addrs: Vec<Multiaddr> = Vec::new();
    let mut early = Vec::new();
    // A relay's reservation takes a connection to the relay and two round trips more.
    let wait = if config.relays.is_empty() { 5 } else { 15 };
    let deadline = tokio::time::sleep(Duration::from_secs(wait));
    tokio::pin!(deadline);
    let unspecified = config.listen.iter().any(|a| {
        a.iter().any(|p| {
            matches!(p, Protocol::Ip4(ip) if ip.is_unspecified())
                || matches!(p, Protocol::Ip6(ip) if ip.is_unspecified())
        })
    });
    loop {
        let relayed = addrs.iter().filter(|a| net::relay::is_relayed(a)).count();
        let settle = if addrs.len() - relayed >= config.listen.len() && relayed >= config.relays.len().min(1) {
            if !unspecified {
                break;
            }
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        tokio::select! {
            Some(event) = events.recv() => match event {
                // A relayed address already ends in this host's id.
                NetEvent::Listening(addr) if net::peer_of(&addr) == Some(peer_id) => addrs.push(addr),
                NetEvent::Listening(addr) => addrs.push(addr.with(Protocol::P2p(peer_id))),
                NetEvent::ListenFailed(reason) => anyhow::bail!("{reason}"),
                other => early.push(other),
            },
            _ = tokio::time::sleep(settle) => break,
            _ = &mut deadline => break,
        }
    }
    if addrs.is_empty() {
        anyhow::bail!("could not listen on any of {:?}", config.listen);
    }
    let (arrivals_tx, arrivals) = mpsc::channel(64);
    // Who may fetch a job's files is the scheduler's to say: the blob server asks the event loop on `access`.
    let (access_tx, access) = mpsc::channel(64);
    // A delivery's notice and claim are the scheduler's to answer too: the blob server asks on `work`.
    let (work_tx, work) = mpsc::channel(64);
    let blob_server = BlobServer::new(config.renderdir.join(".blenderdist-tmp"), arrivals_tx, access_tx, work_tx)?;
    #[cfg(feature = "testing")]
    let deliveries = !config.without_deliveries;
    #[cfg(not(feature = "testing"))]
    let deliveries = true;
    blob_server.spawn(&client, deliveries)?;
    let chunk_server = chunks::ChunkServer::new(blob_server.clone(), keypair.clone());
    chunk_server.spawn(&client)?;
    blob_server.serve_updates(manifest.clone(), builds.into_iter().map(|(b, path)| (b.hash, path)).collect());
    let watcher = watch::JobDirWatcher::start(&config.jobdir);
    let preparer = project::Preparer::new(config.blender.clone(), &config.state_dir.join("projects"))
        .with_context(|| format!("cannot prepare {}", config.state_dir.join("projects").display()))?;
    let (prepared_tx, prepared) = mpsc::channel(16);
    let (checked_tx, checked) = mpsc::channel(64);
    let banned = state.banned().with_context(|| format!("cannot read the bans in {}", state.path().display()))?;
    let bans: Vec<crate::protocol::BannedPeer> = banned
        .iter()
        .filter_map(|(bytes, reason)| {
            let id = PeerId::from_bytes(bytes).ok()?.to_string();
            Some(crate::protocol::BannedPeer { name: id.clone(), id, reason: reason.clone() })
        })
        .collect();
    let banned: Vec<PeerId> = banned.iter().filter_map(|(bytes, _)| PeerId::from_bytes(bytes).ok()).collect();
    if !banned.is_empty() {
        info!("{} volunteers are banned from this farm (they delivered wrong frames)", banned.len());
    }
    let (dashboard, snapshots) = match config.http {
        Some(addr) => {
            let (tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(http::Snapshot::default()));
            let bound = http::serve(addr, config.renderdir.clone(), rx)
                .await
                .with_context(|| format!("cannot serve the dashboard on {addr}"))?;
            (Some(bound), Some(dashboard::Publisher::new(tx)))
        }
        None => (None, None),
    };
    let mut host = Host {
        joblog: joblog::JobLog::start(config.jobdir.clone()),
        frames: frames::FrameQueue::default(),
        preparer: std::sync::Arc::new(preparer),
        prepared_tx,
        scheduler: Scheduler::new(config.scheduler),
        verifier: Verifier::new(VerifyConfig::default(), banned),
        bans,
        checked_tx,
        jobs: jobs::JobTable::default(),
        blob_server,
        grant_times: HashMap::new(),
        tallies: status::Tallies::default(),
        snapshots,
        offer_seq: 0,
        offer_now: false,
        manifest,
        _owner_lock: owner_lock,
        state,
        client,
        config,
    };
    for event in early {
        host.on_net_event(event).await;
    }
    info!("host {peer_id} watching {}", host.config.jobdir.display());
    let (upnp_config, upnp_client) = (host.config.upnp.clone(), host.client.clone());
    // The router's port mapping, made while the loop already serves the LAN, goes with the host.
    let (mapping_tx, mapping) = upnp::slot();
    let task = tokio::spawn(async move {
        let result = host.run(Inbox { events, arrivals, access, work, prepared, checked }, watcher, shutdown).await;
        mapping.release().await;
        result
    });
    let upnp = upnp::map(upnp_config, &addrs, &upnp_client, peer_id, mapping_tx).await;
    Ok(RunningHost { peer_id, addrs, task, own, dashboard, upnp, swarm_key, chunks: chunk_server })
}

/// `--blender`, else `$BLENDER`, else `blender` when it is on PATH.
pub fn owners_blender(flag: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(program) = flag.or_else(|| std::env::var_os("BLENDER").map(PathBuf::from)) {
        return Some(program);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("blender")).find(|p| p.is_file()).map(|_| PathBuf::from("blender"))
}

fn check_dir(dir: &std::path::Path, what: &str) -> anyhow::Result<()> {
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot open the {what} {}", dir.display()))?;
    anyhow::ensure!(meta.is_dir(), "the {what} {} is not a folder", dir.display());
    Ok(())
}
