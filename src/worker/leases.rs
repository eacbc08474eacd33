//! The frames a volunteer holds — rendering or prefetched — and the one task that renews their leases. When the
//! owner answers a renewal with `Discard` (the frame was recalled, or done elsewhere) the frame's token is
//! cancelled, which stops its render.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use libp2p::PeerId;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::{
    net::Client,
    protocol::{BlobHash, FrameGrant, WorkRequest, WorkResponse},
};

/// How often held leases are renewed; well inside the owner's lease timeout.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// A held frame: its owner, job, frame, the version it was granted from, and the token that stops it.
#[derive(Clone)]
struct Held {
    host: PeerId,
    job: String,
    frame: u32,
    blend: BlobHash,
    token: CancellationToken,
}

/// Names one grant. Two grants of the same frame to this volunteer (a re-grant after a lease expired) are two
/// leases, so releasing the older one never stops renewing the newer.
pub type LeaseId = u64;

#[derive(Clone, Default)]
pub struct Leases {
    held: Arc<Mutex<HashMap<LeaseId, Held>>>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl Leases {
    /// Starts holding a granted frame; the token is cancelled if the owner recalls it.
    pub fn hold(&self, host: PeerId, grant: &FrameGrant) -> (LeaseId, CancellationToken) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = CancellationToken::new();
        let held = Held { host, job: grant.job.clone(), frame: grant.frame, blend: grant.blend, token: token.clone() };
        self.lock().insert(id, held);
        (id, token)
    }

    pub fn release(&self, id: LeaseId) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseId, Held>> {
        // A poisoned map of tokens is still a valid map of tokens.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Renews every held lease every [`RENEW_EVERY`], until the client's network stops. Each owner's leases are
    /// renewed by their own future, so an owner that is slow to answer delays nobody else's renewals.
    pub async fn renew_forever(self, client: Client) {
        let mut every = tokio::time::interval(RENEW_EVERY);
        every.tick().await;
        loop {
            every.tick().await;
            let mut by_host: HashMap<PeerId, Vec<(LeaseId, Held)>> = HashMap::new();
            for (id, held) in self.lock().iter() {
                by_host.entry(held.host).or_default().push((*id, held.clone()));
            }
            let renewals = by_host.into_iter().map(|(host, leases)| self.renew_host(&client, host, leases));
            if futures::future::join_all(renewals).await.into_iter().any(|stopped| stopped) {
                return;
            }
        }
    }

    /// Renews one owner's leases in turn; true when the network has stopped.
    async fn renew_host(&self, client: &Client, host: PeerId, leases: Vec<(LeaseId, Held)>) -> bool {
        for (id, Held { job, frame, blend, token, .. }) in leases {
            let request = WorkRequest::Renew { job: job.clone(), frame, blend };
            match client.request(host, request).await {
                Ok(WorkResponse::Discard) => {
                    info!("host recalled frame {frame} of {job}; stopping it");
                    token.cancel();
                    self.release(id);
                }
                Ok(_) => {}
                Err(crate::net::NetError::Stopped) => return true,
                // The owner is unreachable; if it stays so, its scheduler requeues the frame anyway.
                Err(e) => debug!("renewing frame {frame} of {job} failed: {e}"),
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regrant_of_the_same_frame_is_a_lease_of_its_own() {
        let leases = Leases::default();
        let grant = FrameGrant { job: "j".into(), frame: 7, blend: BlobHash::of_bytes(b"v1"), blend_size: 1 };
        let host = PeerId::random();
        let (first, _) = leases.hold(host, &grant);
        // The lease expired on the owner, which granted the frame to this volunteer again.
        let (second, _) = leases.hold(host, &grant);
        leases.release(first);
        assert!(leases.lock().contains_key(&second), "releasing the old grant stopped renewing the new one");
        leases.release(second);
        assert!(leases.lock().is_empty());
    }
}
