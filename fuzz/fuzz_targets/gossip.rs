//! Gossip from any peer: job offers (`decode_offer`) and signed update manifests (`from_cbor`, then
//! `update::manifest::verify`, which reads the signer's key, checks the signature and decodes the manifest).
//! The first byte says what the rest is (see `seeds::gossip_mode`); `MANIFEST` signs the rest with the trusted key,
//! so the decoding behind a valid signature is reached too.
#![no_main]

use blenderdist::protocol::{decode_offer, from_cbor, SignedManifest, MAX_MANIFEST, MAX_OFFER};
use blenderdist::update::manifest::verify;
use blenderdist_fuzz::seeds::{gossip_mode, owner_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let key = owner_key();
    let trusted = key.public().to_peer_id();
    match mode {
        gossip_mode::OFFER => {
            if let Ok(offer) = decode_offer(rest) {
                assert!(rest.len() <= MAX_OFFER);
                blenderdist_fuzz::cbor_stable(&offer);
            }
        }
        gossip_mode::SIGNED => {
            // As the event loop decodes the update topic.
            let Ok(signed) = from_cbor::<SignedManifest>(rest, MAX_MANIFEST + 1024) else { return };
            blenderdist_fuzz::cbor_stable(&signed);
            if let Ok(manifest) = verify(&signed, trusted) {
                blenderdist_fuzz::cbor_stable(&manifest);
            }
        }
        gossip_mode::MANIFEST => {
            let signature = key.sign(rest).expect("ed25519 signs anything");
            let signed = SignedManifest { manifest: rest.to_vec(), signer: key.public().encode_protobuf(), signature };
            if let Ok(manifest) = verify(&signed, trusted) {
                assert!(rest.len() <= MAX_MANIFEST);
                blenderdist_fuzz::cbor_stable(&manifest);
            }
        }
        _ => {}
    }
});
