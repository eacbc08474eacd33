//! The render slots of a volunteer. Each renders its current frame while it claims and fetches its next, and
//! uploads the previous frame meanwhile. A frame's delivery claims the frame after next in the same exchange, so in
//! steady state a slot makes one exchange per frame. When the volunteer drains (an update is staged) slots take no
//! new frame and end once their frames in flight are delivered.

use std::{collections::HashSet, sync::Arc, time::Duration};

use libp2p::PeerId;
use tokio::sync::{oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{blender::Renderer, frame, leases::Leases};
use crate::protocol::{FrameGrant, WorkRequest, WorkResponse, PROTOCOL_VERSION};

/// How long an idle volunteer waits for an offer before asking again anyway.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// What a slot listens to.
#[derive(Clone)]
pub(super) struct Signals {
    pub hosts: watch::Receiver<HashSet<PeerId>>,
    pub offers: Arc<Notify>,
    /// True once the volunteer is draining for an update.
    pub draining: watch::Receiver<bool>,
}

/// One render slot: renders its current frame while it claims and fetches its next, so it never sits idle
/// between frames.
pub(super) async fn slot_loop<R: Renderer>(
    slot: Arc<frame::Slot<R>>,
    leases: Leases,
    mut signals: Signals,
) -> anyhow::Result<()> {
    let mut next: Option<Prepared> = None;
    // The previous frame's upload, which runs while this slot renders the next frame.
    let mut delivering: Option<tokio::task::JoinHandle<()>> = None;
    // The frame the previous frame's delivery claimed, when the host granted one.
    let mut handed: Option<oneshot::Receiver<(PeerId, FrameGrant)>> = None;
    loop {
        let current = match next.take() {
            Some(prepared) => prepared,
            None => match take_handed(&slot, &leases, handed.take()).await {
                Some(prepared) => prepared,
                None => match wait_for_grant(&slot, &leases, &mut signals).await {
                    Some(prepared) => prepared,
                    None => {
                        if let Some(previous) = delivering.take() {
                            let _ = previous.await;
                        }
                        return Ok(());
                    }
                },
            },
        };
        let Prepared { host, grant, project, lease, recalled } = current;
        // The next frame (handed over by the previous delivery, or claimed) is fetched while this one renders.
        let prefetch = {
            let (slot, leases, signals, handed) = (slot.clone(), leases.clone(), signals.clone(), handed.take());
            tokio::spawn(async move {
                match take_handed(&slot, &leases, handed).await {
                    Some(prepared) => Some(prepared),
                    None => claim_one(&slot, &leases, &signals).await,
                }
            })
        };
        let dir = slot.new_frame_dir(&grant);
        let done_here = slot.delivered.load(std::sync::atomic::Ordering::Relaxed);
        info!("rendering frame {} of {} ({done_here} frames done here)", grant.frame, grant.job);
        let outcome = slot.render_granted(&grant, project, &recalled, &dir).await;
        // One upload in flight per slot: a slow link slows the slot down instead of piling up frames (two were tried:
        // 2 % faster with 200 volunteers, but File Output uploads of two frames at once timed out once in CI).
        if let Some(previous) = delivering.take() {
            let _ = previous.await;
        }
        let (delivery_slot, delivery_leases) = (slot.clone(), leases.clone());
        // A draining volunteer takes no new frame, so its deliveries claim none.
        let handover = if *signals.draining.borrow() {
            None
        } else {
            let (handover, receiver) = oneshot::channel();
            handed = Some(receiver);
            Some(handover)
        };
        delivering = Some(tokio::spawn(async move {
            delivery_slot.report(host, &grant, outcome, &dir, handover).await;
            delivery_leases.release(lease);
        }));
        next = prefetch.await.ok().flatten();
    }
}

/// A granted frame with its job's files laid out (or the reason they could not be).
struct Prepared {
    host: PeerId,
    grant: FrameGrant,
    project: anyhow::Result<super::layouts::Layout>,
    lease: super::leases::LeaseId,
    recalled: CancellationToken,
}

/// The frame a delivery claimed for this slot, with its lease held and its files fetched; `None` when the delivery
/// brought none (or there was no delivery).
async fn take_handed<R: Renderer>(
    slot: &frame::Slot<R>,
    leases: &Leases,
    handed: Option<oneshot::Receiver<(PeerId, FrameGrant)>>,
) -> Option<Prepared> {
    let (host, grant) = handed?.await.ok()?;
    Some(prepare(slot, leases, host, grant).await)
}

/// Holds a granted frame's lease and fetches its job's files.
async fn prepare<R: Renderer>(slot: &frame::Slot<R>, leases: &Leases, host: PeerId, grant: FrameGrant) -> Prepared {
    let (lease, recalled) = leases.hold(host, &grant);
    let project = slot.fetch_project(host, &grant).await;
    Prepared { host, grant, project, lease, recalled }
}

/// Claims one frame from whichever known owner has one, holds its lease and fetches its .blend.
async fn claim_one<R: Renderer>(slot: &frame::Slot<R>, leases: &Leases, signals: &Signals) -> Option<Prepared> {
    if *signals.draining.borrow() {
        return None;
    }
    let known: Vec<PeerId> = signals.hosts.borrow().iter().copied().collect();
    for host in known {
        match slot
            .client
            .request(host, WorkRequest::Claim { version: PROTOCOL_VERSION, slots: 1, caps: slot.current_caps() })
            .await
        {
            Ok(WorkResponse::Granted(grants)) => {
                // We asked for one; any extra frame would only wait for its lease to run out.
                let grant = grants.into_iter().next()?;
                return Some(prepare(slot, leases, host, grant).await);
            }
            Ok(WorkResponse::Refused { reason }) => {
                warn!(
                    "host {host} refused work: {}",
                    crate::protocol::one_line(&reason, crate::protocol::MAX_LOGGED_TEXT)
                )
            }
            Ok(WorkResponse::NoWork) => {}
            Ok(other) => debug!("unexpected answer to a claim: {other:?}"),
            Err(e) => debug!("claim failed: {e}"),
        }
    }
    None
}

/// Waits until some owner grants a frame. `None` when the volunteer is shutting down.
async fn wait_for_grant<R: Renderer>(
    slot: &frame::Slot<R>,
    leases: &Leases,
    signals: &mut Signals,
) -> Option<Prepared> {
    let mut said_waiting = false;
    loop {
        if *signals.draining.borrow_and_update() {
            return None;
        }
        // Armed before claiming, so an offer that arrives meanwhile is not missed.
        let offers = signals.offers.clone();
        let notified = offers.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        signals.hosts.borrow_and_update();
        if let Some(prepared) = claim_one(slot, leases, signals).await {
            return Some(prepared);
        }
        if !said_waiting && !signals.hosts.borrow().is_empty() {
            info!("waiting for work");
            said_waiting = true;
        }
        tokio::select! {
            _ = notified => {}
            changed = signals.hosts.changed() => changed.ok()?,
            _ = signals.draining.changed() => {}
            _ = tokio::time::sleep(IDLE_POLL) => {}
        }
    }
}
