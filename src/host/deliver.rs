//! The host's side of [`crate::protocol::DELIVER_PROTOCOL`]: a frame's notice, the claim for the volunteer's next frame and the
//! frame's bytes on one stream. The event loop answers the notice and the claim exactly as it answers the same
//! requests sent alone ([`super::Host::on_request`]); the bytes take the path of any upload the host asked for
//! ([`BlobServer::receive_frame`]): verified in the temp folder, stored in the next batch, and only then `Stored`.

use futures::AsyncWriteExt;
use libp2p::{PeerId, Stream};

use super::blobs::BlobServer;
use crate::{
    net::PeerBudgets,
    protocol::{write_header, write_header_max, BlobReply, Delivery, DeliveryReply, WorkResponse, MAX_DELIVERY_HEADER},
};

impl BlobServer {
    pub(super) async fn handle_delivery(
        &self,
        budgets: &PeerBudgets,
        peer: PeerId,
        mut stream: Stream,
    ) -> anyhow::Result<()> {
        let delivery: Delivery = budgets.first_header(peer, &mut stream, MAX_DELIVERY_HEADER).await?;
        let mut requests = vec![delivery.notice()];
        requests.extend(delivery.claim_request());
        let shutting_down = || WorkResponse::Refused { reason: "the host is shutting down".into() };
        let mut answers = self.ask_loop(peer, requests).await.unwrap_or_default().into_iter();
        let upload = answers.next().unwrap_or_else(shutting_down);
        let claim = (delivery.claim > 0).then(|| answers.next().unwrap_or_else(shutting_down));
        // As for the same requests sent alone: every refusal is a strike.
        for answer in std::iter::once(&upload).chain(&claim) {
            if matches!(answer, WorkResponse::Refused { .. }) {
                budgets.strike(peer);
            }
        }
        let send_bytes = matches!(upload, WorkResponse::Upload);
        write_header_max(&mut stream, &DeliveryReply { upload, claim }, MAX_DELIVERY_HEADER).await?;
        if send_bytes {
            let stored = self.receive_frame(peer, delivery.blob, delivery.size, &mut stream).await;
            if matches!(stored, BlobReply::Refused { .. }) {
                budgets.strike(peer);
            }
            write_header(&mut stream, &stored).await?;
        }
        stream.close().await?;
        Ok(())
    }
}
