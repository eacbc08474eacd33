//! Text and gossip from peers: a failure report reaches the job log as one escaped line and counts only from the
//! frame's current holder; gossip on the offer topic from a peer that is no owner goes nowhere and fills no log.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use blenderdist::{
    net::VOLUNTEER_AGENT,
    protocol::{encode_offer, JobOffer, OfferedJob, WorkRequest, WorkResponse, IDENTIFY_PROTOCOL, OFFER_TOPIC},
    worker::{fake::FakeRenderer, WorkerConfig},
};
use futures::StreamExt;
use libp2p::{gossipsub, identify, noise, swarm::SwarmEvent, tcp, yamux, Multiaddr, PeerId, Swarm};

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(90);

/// Lines of `JOBDIR/NAME.log` without their timestamps; panics on a line that does not start with one (it would be
/// text a peer slipped in).
fn job_log(dirs: &Dirs, name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(dirs.jobdir.join(format!("{name}.log"))).unwrap_or_default();
    text.lines()
        .map(|line| {
            let stamped = line.len() > 20
                && line.as_bytes()[..19].iter().enumerate().all(|(i, b)| match i {
                    4 | 7 => *b == b'-',
                    10 => *b == b' ',
                    13 | 16 => *b == b':',
                    _ => b.is_ascii_digit(),
                });
            assert!(stamped, "a job log line without a timestamp of its own: {line:?}");
            line[20..].to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_report_reaches_the_job_log_as_one_escaped_line() {
    let HostAndPeer { dirs, host, stop: _stop_host, client, events: _events } = host_and_peer(1, 3).await;
    let grant = claim_one_frame(&client, host.peer_id).await.expect("no grant");
    let error = "Blender crashed\nfinished: 12 frames\r\n\u{1b}[2J\u{202e}".to_string() + &"x".repeat(20_000);
    let report = WorkRequest::Failed { job: "j".into(), frame: grant.frame, blend: grant.blend, error };
    assert_eq!(client.request(host.peer_id, report).await.unwrap(), WorkResponse::Noted);
    wait_until("the failure in the job log", LIMIT, || job_log(&dirs, "j").iter().any(|l| l.contains("failed on")))
        .await;
    let lines = job_log(&dirs, "j");
    assert!(!lines.iter().any(|l| l.starts_with("finished")), "a forged line made it into the job log: {lines:#?}");
    let failed = lines.iter().find(|l| l.contains("failed on")).unwrap();
    assert!(failed.contains("Blender crashed\\nfinished: 12 frames\\r\\n\\u{1b}[2J\\u{202e}xxx"), "{failed}");
    assert!(failed.ends_with('…') && failed.len() < 1200, "the report was not capped: {} bytes", failed.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_reports_from_peers_without_the_frames_grant_count_for_nothing() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"blend").unwrap();
    let (host, _stop_host) = start_host(&dirs).await;
    write_job(&dirs.jobdir, "j", "scene.blend", 1, 3);
    // The holder of frame 1, whose grant tells everyone the job's version.
    let (holder, _events) = raw_peer(&host.addrs[0]);
    let grant = claim_one_frame(&holder, host.peer_id).await.expect("no grant");
    // Fresh identities, more than the failures that fail a job, report frames they were never granted: the held
    // one and one still pending.
    for i in 0..4 {
        let (sybil, _events) = raw_peer(&host.addrs[0]);
        for frame in [grant.frame, 3] {
            let report = WorkRequest::Failed {
                job: "j".into(),
                frame,
                blend: grant.blend,
                error: format!("forged failure {i}"),
            };
            let mut answer = sybil.request(host.peer_id, report.clone()).await;
            for _ in 0..100 {
                if answer.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                answer = sybil.request(host.peer_id, report.clone()).await;
            }
            let answer = answer.unwrap();
            assert!(matches!(&answer, WorkResponse::Refused { reason } if reason.contains("no lease")), "{answer:?}");
        }
    }
    // Nothing of it reached the job log, and the job goes on: an honest volunteer renders every frame.
    drop(holder);
    let (_w, _stop_w) =
        start_fake_worker(dirs.cache("w"), host.addrs[0].clone(), FakeRenderer::new(Duration::from_millis(5)));
    wait_until("the job", LIMIT, || files_in(&dirs.renderdir.join("j")) == frame_names(1, 3, "png")).await;
    let lines = job_log(&dirs, "j");
    assert!(!lines.iter().any(|l| l.contains("forged") || l.contains("failed")), "{lines:#?}");
}

/// A bare gossipsub node that identifies as a volunteer, for sending and watching gossip the way no blenderdist node
/// would.
#[derive(libp2p::swarm::NetworkBehaviour)]
struct GossipNode {
    identify: identify::Behaviour,
    gossipsub: gossipsub::Behaviour,
}

fn gossip_node() -> Swarm<GossipNode> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|key| {
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                    .with_agent_version(format!("{VOLUNTEER_AGENT}test")),
            );
            let config = gossipsub::ConfigBuilder::default().heartbeat_interval(Duration::from_millis(200)).build()?;
            let gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), config)?;
            Ok(GossipNode { identify, gossipsub })
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    swarm.behaviour_mut().gossipsub.subscribe(&gossipsub::IdentTopic::new(OFFER_TOPIC)).unwrap();
    swarm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_gossip_from_a_volunteer_reaches_nobody_and_fills_no_log() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"blend").unwrap();
    let (host, _stop_host) = start_host(&dirs).await;
    write_job(&dirs.jobdir, "j", "scene.blend", 1, 5);

    // The sender of junk listens, and a real volunteer joins it as well as the host: it hears the junk first hand.
    let mut junk = gossip_node();
    let junk_id = *junk.local_peer_id();
    junk.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
    let junk_addr: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = junk.select_next_some().await {
            break address.with(libp2p::multiaddr::Protocol::P2p(junk_id));
        }
    };
    junk.dial(host.addrs[0].clone()).unwrap();
    let published = Arc::new(Mutex::new(0u32));
    let count = published.clone();
    let sender = tokio::spawn(async move {
        let topic = gossipsub::IdentTopic::new(OFFER_TOPIC);
        let mut every = tokio::time::interval(Duration::from_millis(50));
        for i in 0u64.. {
            tokio::select! {
                _ = junk.select_next_some() => {}
                _ = every.tick() => {
                    // Garbage, and well-formed offers of a job that does not exist, with a forged log line.
                    let data = if i % 2 == 0 {
                        format!("junk {i} \u{1b}[31m\n").into_bytes()
                    } else {
                        let job = OfferedJob { job: "evil\nwarning: forged".into(), pending: 9 };
                        encode_offer(&JobOffer { version: 2, seq: i, jobs: vec![job] }).unwrap()
                    };
                    if junk.behaviour_mut().gossipsub.publish(topic.clone(), data).is_ok() {
                        *count.lock().unwrap() += 1;
                    }
                }
            }
        }
    });
    // A second volunteer, which hears gossip only through the host, and records who wrote what it hears.
    let mut watcher = gossip_node();
    watcher.dial(host.addrs[0].clone()).unwrap();
    let authors = Arc::new(Mutex::new(Vec::<Option<PeerId>>::new()));
    let heard = authors.clone();
    let watching = tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(GossipNodeEvent::Gossipsub(gossipsub::Event::Message { message, .. })) =
                watcher.select_next_some().await
            {
                heard.lock().unwrap().push(message.source);
            }
        }
    });
    let (_stop_w, shutdown) = shutdown_switch();
    let config = WorkerConfig {
        cache_dir: dirs.cache("w"),
        bootstrap: vec![host.addrs[0].clone(), junk_addr],
        mdns: false,
        renderers: 1,
        updater: None,
        caps: None,
        patience: Default::default(),
        swarm_key: None,
    };
    let _w = blenderdist::worker::start(config, FakeRenderer::new(Duration::from_millis(50)), shutdown).unwrap();

    let from = |who: PeerId| authors.lock().unwrap().iter().filter(|a| **a == Some(who)).count();
    wait_until("junk published and the host's offers heard", LIMIT, || {
        *published.lock().unwrap() >= 60 && from(host.peer_id) >= 3
    })
    .await;
    wait_until("the job", LIMIT, || files_in(&dirs.renderdir.join("j")) == frame_names(1, 5, "png")).await;
    sender.abort();
    watching.abort();
    assert_eq!(from(junk_id), 0, "the host forwarded gossip from a volunteer");
    let junk_text = junk_id.to_string();
    let warned: Vec<String> = warnings().into_iter().filter(|w| w.contains(&junk_text) || w.contains("evil")).collect();
    assert!(warned.is_empty(), "warnings about the junk: {warned:#?}");
}
