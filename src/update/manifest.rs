//! Signing and checking update manifests. A manifest counts only when it is signed by the owner the volunteer
//! trusts: the signer's public key must hash to that owner's peer id, and the signature must verify.

use libp2p::{
    identity::{Keypair, PublicKey},
    PeerId,
};

use crate::protocol::{from_cbor, to_cbor, SignedManifest, UpdateManifest, MAX_MANIFEST};

/// This build's target triple, as the manifest names platforms.
pub const TARGET: &str = env!("BLENDERDIST_TARGET");

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    /// Peer ids as text: the error stays small, and only ever ends up in a log line.
    #[error("the manifest is signed by {signer}, not by the trusted owner {trusted}")]
    WrongSigner { signer: String, trusted: String },
    #[error("the manifest's signer key cannot be read")]
    BadKey,
    #[error("the manifest's signature does not verify")]
    BadSignature,
    #[error("the manifest cannot be read: {0}")]
    Undecodable(String),
    #[error("cannot sign the manifest: {0}")]
    Sign(String),
}

/// Signs `manifest` with the owner's node key.
pub fn sign(key: &Keypair, manifest: &UpdateManifest) -> Result<SignedManifest, ManifestError> {
    let bytes = to_cbor(manifest).map_err(|e| ManifestError::Sign(e.to_string()))?;
    let signature = key.sign(&bytes).map_err(|e| ManifestError::Sign(e.to_string()))?;
    Ok(SignedManifest { manifest: bytes, signer: key.public().encode_protobuf(), signature })
}

/// Checks that `signed` comes from `trusted` and returns what it says.
pub fn verify(signed: &SignedManifest, trusted: PeerId) -> Result<UpdateManifest, ManifestError> {
    let key = PublicKey::try_decode_protobuf(&signed.signer).map_err(|_| ManifestError::BadKey)?;
    let signer = key.to_peer_id();
    if signer != trusted {
        return Err(ManifestError::WrongSigner { signer: signer.to_string(), trusted: trusted.to_string() });
    }
    if !key.verify(&signed.manifest, &signed.signature) {
        return Err(ManifestError::BadSignature);
    }
    from_cbor(&signed.manifest, MAX_MANIFEST).map_err(|e| ManifestError::Undecodable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{BlobHash, PlatformBinary};

    fn manifest() -> UpdateManifest {
        UpdateManifest {
            protocol_version: 1,
            version: "0.1.0".into(),
            build: BlobHash::of_bytes(b"build"),
            issued_at: 7,
            binaries: vec![PlatformBinary { target: TARGET.into(), hash: BlobHash::of_bytes(b"bin"), size: 3 }],
        }
    }

    #[test]
    fn only_the_trusted_owners_signature_counts() {
        let owner = Keypair::generate_ed25519();
        let stranger = Keypair::generate_ed25519();
        let trusted = owner.public().to_peer_id();
        let good = sign(&owner, &manifest()).unwrap();
        assert_eq!(verify(&good, trusted), Ok(manifest()));

        // Signed by another key.
        let other = sign(&stranger, &manifest()).unwrap();
        assert!(matches!(verify(&other, trusted), Err(ManifestError::WrongSigner { .. })));
        // Another key claiming to be the owner: the owner's key, a stranger's signature.
        let forged = SignedManifest { signature: other.signature.clone(), ..good.clone() };
        assert_eq!(verify(&forged, trusted), Err(ManifestError::BadSignature));
        // Unsigned.
        let unsigned = SignedManifest { signature: vec![], ..good.clone() };
        assert_eq!(verify(&unsigned, trusted), Err(ManifestError::BadSignature));
        // Tampered after signing.
        let mut tampered = good.clone();
        tampered.manifest[3] ^= 1;
        assert_eq!(verify(&tampered, trusted), Err(ManifestError::BadSignature));
        // Junk key.
        let junk = SignedManifest { signer: vec![1, 2, 3], ..good };
        assert_eq!(verify(&junk, trusted), Err(ManifestError::BadKey));
    }
}
