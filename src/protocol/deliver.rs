//! Returning a frame in one exchange: the result notice, the claim for the slot's next frame and the frame's bytes
//! on one stream, where the general path takes three (a [`super::WorkRequest::Rendered`] notice, a
//! [`super::WorkRequest::Claim`] and a [`super::BlobRequest::Put`] stream). Part of [`crate::protocol`].
//!
//! On a [`DELIVER_PROTOCOL`] stream the volunteer writes a [`Delivery`] header; the owner answers a
//! [`DeliveryReply`]; when that says `Upload`, the volunteer sends `size` raw bytes and the owner answers a
//! [`super::BlobReply`] (`Stored` once the frame is durable, or `Refused`). Frames with File Output files take the
//! general path. An owner without this protocol refuses the stream, and the volunteer takes the general path.

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use super::{BlobHash, VolunteerCaps, WorkRequest, WorkResponse, PROTOCOL_VERSION};

/// Raw-stream protocol for [`Delivery`] exchanges.
pub const DELIVER_PROTOCOL: StreamProtocol = StreamProtocol::new("/blenderdist/deliver/1");
/// Largest [`Delivery`] or [`DeliveryReply`] header: a notice, a volunteer's capabilities, a few grants.
pub const MAX_DELIVERY_HEADER: u32 = 16 * 1024;
/// Most frames one [`Delivery`] may claim (a volunteer claims one, for the slot that delivers).
pub const MAX_DELIVERY_CLAIM: u32 = 4;

/// First message on a [`DELIVER_PROTOCOL`] stream, from the volunteer: a rendered frame (as in
/// [`WorkRequest::Rendered`], without File Output files) and the claim for the slot's next frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub job: String,
    pub frame: u32,
    /// The job version the frame was granted from.
    pub blend: BlobHash,
    /// The frame file's hash and size, and its extension.
    pub blob: BlobHash,
    pub size: u64,
    pub ext: String,
    /// Frames to claim for the slot's next render, answered in [`DeliveryReply::claim`]; 0 claims none (a
    /// volunteer draining for an update, or a retried exchange whose claim was answered).
    pub claim: u32,
    /// As in [`WorkRequest::Claim`].
    pub caps: Option<VolunteerCaps>,
}

/// The owner's answer to a [`Delivery`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryReply {
    /// As to a [`WorkRequest::Rendered`] notice: `Upload` (send the bytes now), `Discard` or `Refused`.
    pub upload: WorkResponse,
    /// As to a [`WorkRequest::Claim`]: `Granted`, `NoWork` or `Refused`; `None` when nothing was claimed.
    pub claim: Option<WorkResponse>,
}

impl Delivery {
    /// The result notice this delivery carries.
    pub fn notice(&self) -> WorkRequest {
        WorkRequest::Rendered {
            job: self.job.clone(),
            frame: self.frame,
            blend: self.blend,
            blob: self.blob,
            size: self.size,
            ext: self.ext.clone(),
            outputs: Vec::new(),
        }
    }

    /// The claim this delivery carries, if any, capped at [`MAX_DELIVERY_CLAIM`] frames.
    pub fn claim_request(&self) -> Option<WorkRequest> {
        (self.claim > 0).then(|| WorkRequest::Claim {
            version: PROTOCOL_VERSION,
            slots: self.claim.min(MAX_DELIVERY_CLAIM),
            caps: self.caps.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(claim: u32) -> Delivery {
        Delivery {
            job: "shot".into(),
            frame: 7,
            blend: BlobHash([1; 32]),
            blob: BlobHash([2; 32]),
            size: 10,
            ext: "png".into(),
            claim,
            caps: None,
        }
    }

    #[test]
    fn a_delivery_is_a_notice_and_at_most_a_small_claim() {
        let table = [(0, None), (1, Some(1)), (4, Some(4)), (1000, Some(MAX_DELIVERY_CLAIM))];
        for (claim, slots) in table {
            let d = delivery(claim);
            assert!(
                matches!(d.notice(), WorkRequest::Rendered { frame: 7, size: 10, ref outputs, .. } if outputs.is_empty())
            );
            let asked = d.claim_request().map(|r| match r {
                WorkRequest::Claim { slots, version, .. } if version == PROTOCOL_VERSION => slots,
                other => panic!("{other:?}"),
            });
            assert_eq!(asked, slots, "claim {claim}");
        }
    }

    #[tokio::test]
    async fn the_largest_reply_fits_its_header() {
        let grant = super::super::FrameGrant {
            job: "j".repeat(255),
            frame: u32::MAX,
            blend: BlobHash([3; 32]),
            blend_size: u64::MAX,
        };
        let reply = DeliveryReply {
            upload: WorkResponse::Upload,
            claim: Some(WorkResponse::Granted(vec![grant; MAX_DELIVERY_CLAIM as usize])),
        };
        let mut buf = Vec::new();
        super::super::write_header_max(&mut buf, &reply, MAX_DELIVERY_HEADER).await.unwrap();
        let back: DeliveryReply =
            super::super::read_header_max(&mut buf.as_slice(), MAX_DELIVERY_HEADER).await.unwrap();
        assert_eq!(back, reply);
    }
}
