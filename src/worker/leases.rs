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

/// A held frame: owner, job, frame, and the .blend it was granted from.
type LeaseKey = (PeerId, String, u32, BlobHash);

#[derive(Clone, Default)]
pub struct Leases {
    held: Arc<Mutex<HashMap<LeaseKey, CancellationToken>>>,
}

impl Leases {
    /// Starts holding a granted frame; the token is cancelled if the owner recalls it.
    pub fn hold(&self, host: PeerId, grant: &FrameGrant) -> CancellationToken {
        let token = CancellationToken::new();
        self.lock().insert((host, grant.job.clone(), grant.frame, grant.blend), token.clone());
        token
    }

    pub fn release(&self, host: PeerId, grant: &FrameGrant) {
        self.lock().remove(&(host, grant.job.clone(), grant.frame, grant.blend));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseKey, CancellationToken>> {
        // A poisoned map of tokens is still a valid map of tokens.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Renews every held lease every [`RENEW_EVERY`], until the client's network stops.
    pub async fn renew_forever(self, client: Client) {
        let mut every = tokio::time::interval(RENEW_EVERY);
        every.tick().await;
        loop {
            every.tick().await;
            let held: Vec<(LeaseKey, CancellationToken)> =
                self.lock().iter().map(|(k, t)| (k.clone(), t.clone())).collect();
            for ((host, job, frame, blend), token) in held {
                let request = WorkRequest::Renew { job: job.clone(), frame, blend };
                match client.request(host, request).await {
                    Ok(WorkResponse::Discard) => {
                        info!("host recalled frame {frame} of {job}; stopping it");
                        token.cancel();
                        self.lock().remove(&(host, job, frame, blend));
                    }
                    Ok(_) => {}
                    Err(crate::net::NetError::Stopped) => return,
                    // The owner is unreachable; if it stays so, its scheduler requeues the frame anyway.
                    Err(e) => debug!("renewing frame {frame} of {job} failed: {e}"),
                }
            }
        }
    }
}
