//! Which gossip a node takes and passes on. Offers and update manifests are the owners' to publish: gossipsub hands
//! every message to [`judge`] before forwarding it (`validate_messages`), and only a decodable message whose signed
//! author identified itself as an owner is accepted. Anything else goes no further, and the peer that sent garbage
//! loses gossipsub score (see [`score_params`]) and budget.

use std::collections::HashMap;

use libp2p::gossipsub::{MessageAcceptance, PeerScoreParams, PeerScoreThresholds, TopicHash, TopicScoreParams};

use crate::protocol::{decode_offer, from_cbor, JobOffer, SignedManifest, MAX_MANIFEST};

/// The topics a node subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Topic {
    Offers,
    Updates,
}

/// What a connected peer said it is through identify. Authors this node holds no connection to are unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Host,
    NotHost,
    Unknown,
}

/// A decoded gossip message.
#[derive(Debug, PartialEq)]
pub(super) enum Gossip {
    Offer(JobOffer),
    Manifest(SignedManifest),
}

/// What to do with a gossip message.
#[derive(Debug, PartialEq)]
pub(super) enum Judgement {
    /// From an owner: deliver and forward.
    Accept(Gossip),
    /// Garbage, or from a peer that is no owner: drop, and count it against the peer that sent it.
    Reject(&'static str),
    /// From an author this node cannot place (not connected here, or not identified yet): drop without blame. An
    /// owner's offers come again every few seconds.
    Ignore,
}

impl Judgement {
    pub(super) fn acceptance(&self) -> MessageAcceptance {
        match self {
            Judgement::Accept(_) => MessageAcceptance::Accept,
            Judgement::Reject(_) => MessageAcceptance::Reject,
            Judgement::Ignore => MessageAcceptance::Ignore,
        }
    }
}

/// Judges a message on `topic` (`None`: a topic this node does not use) by `author`, its verified signer.
pub(super) fn judge(topic: Option<Topic>, author: Role, data: &[u8]) -> Judgement {
    let decoded = match topic {
        None => return Judgement::Reject("a topic blenderdist does not use"),
        Some(Topic::Offers) => decode_offer(data).ok().map(Gossip::Offer),
        Some(Topic::Updates) => from_cbor(data, MAX_MANIFEST + 1024).ok().map(Gossip::Manifest),
    };
    let Some(decoded) = decoded else { return Judgement::Reject("undecodable") };
    match author {
        Role::Host => Judgement::Accept(decoded),
        Role::NotHost => Judgement::Reject("its author is not an owner"),
        Role::Unknown => Judgement::Ignore,
    }
}

/// Gossipsub scoring that counts only rejected messages (P₄) on our topics: three at once take a peer below the
/// graylist threshold, so gossipsub ignores it until the penalty decays (by a tenth a second). Delivery-based
/// scores, which punish quiet topics such as ours, are off, and so is the IP colocation penalty: many volunteers
/// behind one NAT, or on one test machine, are normal.
pub(super) fn score_params(topics: &[TopicHash]) -> (PeerScoreParams, PeerScoreThresholds) {
    let topic = TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 0.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.9,
        ..TopicScoreParams::default()
    };
    let params = PeerScoreParams {
        topics: topics.iter().map(|t| (t.clone(), topic.clone())).collect::<HashMap<_, _>>(),
        ip_colocation_factor_weight: 0.0,
        slow_peer_weight: 0.0,
        ..PeerScoreParams::default()
    };
    (params, PeerScoreThresholds::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{encode_offer, to_cbor, OfferedJob};

    #[test]
    fn only_decodable_messages_of_owners_are_accepted() {
        let offer = JobOffer { version: 2, seq: 1, jobs: vec![OfferedJob { job: "j".into(), pending: 3 }] };
        let bytes = encode_offer(&offer).unwrap();
        let manifest = SignedManifest { manifest: vec![1], signer: vec![2], signature: vec![3] };
        let manifest_bytes = to_cbor(&manifest).unwrap();
        let junk = b"\xff\x00 junk".to_vec();
        use Role::*;
        let offers = Some(Topic::Offers);
        assert_eq!(judge(offers, Host, &bytes), Judgement::Accept(Gossip::Offer(offer.clone())));
        assert_eq!(judge(Some(Topic::Updates), Host, &manifest_bytes), Judgement::Accept(Gossip::Manifest(manifest)));
        let table = [
            (offers, Host, &junk, MessageAcceptance::Reject),
            (offers, NotHost, &junk, MessageAcceptance::Reject),
            (offers, Unknown, &junk, MessageAcceptance::Reject),
            (offers, NotHost, &bytes, MessageAcceptance::Reject),
            (offers, Unknown, &bytes, MessageAcceptance::Ignore),
            (Some(Topic::Updates), Host, &bytes, MessageAcceptance::Reject),
            (Some(Topic::Updates), NotHost, &manifest_bytes, MessageAcceptance::Reject),
            (None, Host, &bytes, MessageAcceptance::Reject),
        ];
        for (topic, role, data, want) in table {
            assert_eq!(judge(topic, role, data).acceptance(), want, "{topic:?} from {role:?}");
        }
        let big = vec![0u8; crate::protocol::MAX_OFFER + 1];
        assert_eq!(judge(offers, Host, &big).acceptance(), MessageAcceptance::Reject);
    }

    #[test]
    fn score_parameters_are_valid() {
        let (params, thresholds) = score_params(&[TopicHash::from_raw("a"), TopicHash::from_raw("b")]);
        assert_eq!(params.validate(), Ok(()));
        assert_eq!(thresholds.validate(), Ok(()));
        // Three rejected messages at once take a peer below the graylist threshold.
        let p4 = params.topics.values().map(|t| t.topic_weight * t.invalid_message_deliveries_weight).sum::<f64>();
        assert!(p4 / 2.0 * 9.0 < thresholds.graylist_threshold);
    }
}
