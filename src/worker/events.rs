//! What the network tells a volunteer: which owners are reachable, when they offer work, and what they run. A
//! trusted owner's signed manifest naming another build starts an update; the slots then drain.

use std::{collections::HashSet, sync::Arc};

use libp2p::PeerId;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, info, warn};

use crate::{
    net::{Client, NetEvent},
    protocol::{SignedManifest, IDENTIFY_PROTOCOL, PROTOCOL_VERSION},
    update::volunteer::{fetch_manifest, log_refusal, Decision, Updater},
};

/// Keeps the set of reachable owners up to date, wakes idle slots when an owner offers work, and hands manifests
/// to the updater. Ends with an error when an owner is incompatible and this volunteer may not update.
pub(super) async fn track_hosts(
    mut events: mpsc::Receiver<NetEvent>,
    client: Client,
    hosts: watch::Sender<HashSet<PeerId>>,
    offers: Arc<Notify>,
    updater: Option<Arc<Updater>>,
    draining: watch::Sender<bool>,
) -> anyhow::Result<()> {
    while let Some(event) = events.recv().await {
        match event {
            NetEvent::HostFound(peer) => {
                info!("joined host {peer}");
                hosts.send_modify(|h| {
                    h.insert(peer);
                });
                offers.notify_waiters();
                if let Some(updater) = &updater {
                    // Every owner is asked what it runs when it connects.
                    ask_manifest(&client, updater, peer, &draining);
                }
            }
            NetEvent::Manifest { from, signed } => {
                // Only owners we are connected to and that identified as hosts; gossip relays anyone's messages.
                if !hosts.borrow().contains(&from) {
                    debug!("ignoring an update manifest from {from}, which is not a host this volunteer joined");
                    continue;
                }
                if let Some(updater) = &updater {
                    let (client, updater, draining) = (client.clone(), updater.clone(), draining.clone());
                    tokio::spawn(async move { consider(&client, &updater, from, signed, &draining).await });
                }
            }
            NetEvent::Incompatible { peer, theirs, host: true } => {
                let auto = updater.as_ref().is_some_and(|u| u.auto());
                if let Some(updater) = updater.as_ref().filter(|_| auto) {
                    // The update protocol is unversioned: the owner's new build can still be fetched.
                    ask_manifest(&client, updater, peer, &draining);
                }
                if !auto {
                    anyhow::bail!(
                        "host {peer} speaks {theirs} and this volunteer speaks {IDENTIFY_PROTOCOL}; with \
                         --no-auto-updates it cannot switch: install the host's blenderdist version here"
                    );
                }
            }
            NetEvent::Offer { from, offer } => {
                if offer.version != PROTOCOL_VERSION {
                    warn!("host {from} speaks protocol version {}, this volunteer {PROTOCOL_VERSION}", offer.version);
                    continue;
                }
                // Work is claimed only from hosts this volunteer is connected to and that identified as hosts.
                if !hosts.borrow().contains(&from) {
                    continue;
                }
                if offer.jobs.iter().any(|j| j.pending > 0) {
                    offers.notify_waiters();
                }
            }
            NetEvent::PeerGone(peer) => {
                hosts.send_if_modified(|h| h.remove(&peer));
            }
            NetEvent::Request { peer, channel, .. } => {
                debug!(%peer, "ignoring a work request: volunteers do not serve work");
                drop(channel);
            }
            NetEvent::Incompatible { .. } | NetEvent::Listening(_) | NetEvent::ListenFailed(_) => {}
        }
    }
    // The event loop owning the swarm is gone: carrying on would only look alive.
    anyhow::bail!("the network task stopped; the volunteer can no longer reach any host")
}

/// Asks `owner` for its manifest and considers it, in the background.
fn ask_manifest(client: &Client, updater: &Arc<Updater>, owner: PeerId, draining: &watch::Sender<bool>) {
    let (client, updater, draining) = (client.clone(), updater.clone(), draining.clone());
    tokio::spawn(async move {
        match fetch_manifest(&client, owner).await {
            Ok(Some(signed)) => consider(&client, &updater, owner, signed, &draining).await,
            Ok(None) => debug!("owner {owner} offers no update manifest"),
            Err(e) => debug!("cannot get the update manifest of {owner}: {e}"),
        }
    });
}

async fn consider(
    client: &Client,
    updater: &Updater,
    from: PeerId,
    signed: SignedManifest,
    draining: &watch::Sender<bool>,
) {
    match updater.consider(client, from, &signed).await {
        Ok(Decision::UpToDate) => debug!("owner {from} runs this same build"),
        Ok(Decision::Declined(hash)) => {
            info!("owner {from} runs build {}; --no-auto-updates keeps this program", hash.short())
        }
        Ok(Decision::Staged(_)) => {
            draining.send_replace(true);
        }
        Err(reason) => log_refusal(from, &reason),
    }
}
