//! Returning a frame in one exchange ([`DELIVER_PROTOCOL`]): the notice, the claim for the slot's next frame and the
//! frame's bytes on one stream, where the general path in `frame.rs` takes three (notice, claim, upload). Per frame
//! that is one substream instead of three, on the volunteer and on the owner. Frames with File Output files, and
//! owners without the protocol, take the general path.

use std::sync::Mutex;

use futures::AsyncWriteExt;
use libp2p::PeerId;
use tokio::sync::oneshot;
use tracing::warn;

use super::{
    blender::Renderer,
    frame::{refusal, reply, with_retries, Exchange, Slot},
};
use crate::{
    net::NetError,
    protocol::{
        read_header_max, write_header_max, BlobHash, BlobReply, Delivery, DeliveryReply, FrameGrant, WorkResponse,
        DELIVER_PROTOCOL, MAX_DELIVERY_HEADER,
    },
    store::blobs::send_kept,
};

/// Where a delivery that claimed the slot's next frame hands its grant over (with the host that granted it). Dropped
/// unused when nothing was granted: the slot then claims the usual way.
pub(super) type Handover = oneshot::Sender<(PeerId, FrameGrant)>;

/// A rendered frame on its way: its file, its format's extension, and its bytes when they were kept in memory
/// ([`crate::store::blobs::hash_file_keeping`]).
pub(super) struct FrameFile<'a> {
    pub path: &'a std::path::Path,
    pub ext: &'a str,
    pub kept: Option<&'a [u8]>,
}

/// How a one-exchange delivery ended.
pub(super) enum Delivered {
    /// The host stored the frame.
    Stored,
    /// The host no longer wants it.
    Discarded,
    /// The host does not speak [`DELIVER_PROTOCOL`] (an older build): take the general path.
    Unsupported,
}

impl<R: Renderer> Slot<R> {
    /// Delivers a rendered frame (no File Output files), claiming the slot's next frame in the
    /// same exchange when `handover` is given. A retried exchange claims again only if no answer to the claim came.
    pub(super) async fn deliver_in_one(
        &self,
        host: PeerId,
        grant: &FrameGrant,
        FrameFile { path, ext, kept }: FrameFile<'_>,
        (blob, size): (BlobHash, u64),
        handover: Option<Handover>,
    ) -> anyhow::Result<Delivered> {
        let handover = Mutex::new(handover);
        let pending = || handover.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        with_retries("delivering the frame", || async {
            let mut stream = match self.client.open_stream(host, DELIVER_PROTOCOL).await {
                Ok(stream) => stream,
                Err(NetError::Unsupported { .. }) => return Ok(Delivered::Unsupported),
                Err(e) => return Err(e.into()),
            };
            let delivery = Delivery {
                job: grant.job.clone(),
                frame: grant.frame,
                blend: grant.blend,
                blob,
                size,
                ext: ext.to_string(),
                claim: u32::from(pending()),
                caps: if pending() { self.current_caps() } else { None },
            };
            write_header_max(&mut stream, &delivery, MAX_DELIVERY_HEADER).await?;
            let answer = tokio::time::timeout(self.patience.reply, read_header_max(&mut stream, MAX_DELIVERY_HEADER));
            let Ok(answer) = answer.await else {
                let limit = self.patience.reply.as_secs();
                return Err(Exchange::Transport(anyhow::anyhow!("the owner did not answer within {limit} s")));
            };
            let DeliveryReply { upload, claim } = answer?;
            if let Some(claim) = claim {
                let handover = handover.lock().unwrap_or_else(|e| e.into_inner()).take();
                hand_over(host, claim, handover);
            }
            match upload {
                WorkResponse::Upload => {}
                WorkResponse::Discard => return Ok(Delivered::Discarded),
                WorkResponse::Refused { reason } => {
                    return Err(Exchange::Final(anyhow::anyhow!("the host refused the frame: {}", refusal(&reason))))
                }
                other => {
                    return Err(Exchange::Final(anyhow::anyhow!(
                        "the host answered {}",
                        refusal(&format!("{other:?}"))
                    )))
                }
            }
            send_kept(path, kept, &mut stream).await?;
            stream.flush().await?;
            match reply(&mut stream, self.patience.stored).await? {
                BlobReply::Stored => Ok(Delivered::Stored),
                BlobReply::Refused { reason } => {
                    Err(Exchange::Final(anyhow::anyhow!("the host refused the frame: {}", refusal(&reason))))
                }
                other => Err(Exchange::Final(anyhow::anyhow!("the host answered {}", refusal(&format!("{other:?}"))))),
            }
        })
        .await
    }
}

/// Gives the slot the frame the host granted with the delivery, if it granted one (we claim one; any extra would
/// only wait for its lease to run out, as in `slots::claim_one`).
fn hand_over(host: PeerId, claim: WorkResponse, handover: Option<Handover>) {
    match claim {
        WorkResponse::Granted(grants) => {
            if let (Some(handover), Some(grant)) = (handover, grants.into_iter().next()) {
                let _ = handover.send((host, grant));
            }
        }
        WorkResponse::Refused { reason } => warn!("host {host} refused work: {}", refusal(&reason)),
        _ => {}
    }
}
