//! Every type that crosses the wire, the protocol names and the size limits.
//!
//! Goals: a volunteer and an owner agree on work (offers, claims, grants, result notices) with small CBOR messages,
//! and move large, content-addressed blobs (.blend files, rendered frames) over raw streams that never hold a whole
//! blob in memory. Non-goals: authentication beyond libp2p's noise handshake, gossipsub's signatures, a private
//! farm's key and the owner's chunk tickets (see docs/SECURITY.md).
//!
//! Compatibility: new enum variants are only ever added at the end; a change that an older peer cannot ignore bumps
//! [`PROTOCOL_VERSION`] and the version in the protocol names.

use std::fmt;

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod chunks;
mod deliver;
mod limits;
mod manifest;
mod names;
mod status;
mod wire;
pub use chunks::*;
pub use deliver::*;
pub use limits::*;
pub use manifest::*;
pub use names::*;
pub use status::*;
pub use wire::*;

/// Version of the whole blenderdist protocol; peers with another version refuse each other.
pub const PROTOCOL_VERSION: u32 = 2;
/// Identify's protocol string: peers that announce another one are not blenderdist nodes of our version.
pub const IDENTIFY_PROTOCOL: &str = "/blenderdist/2";
/// Gossipsub topic on which an owner announces its jobs.
pub const OFFER_TOPIC: &str = "blenderdist/offers/2";
/// Gossipsub topic on which an owner announces its signed update manifest.
pub const UPDATE_TOPIC: &str = "blenderdist/updates/1";
/// Largest signed manifest (a few binaries' hashes and a signature).
pub const MAX_MANIFEST: usize = 16 * 1024;
/// Request-response protocol for claims, grants and result notices.
pub const WORK_PROTOCOL: StreamProtocol = StreamProtocol::new("/blenderdist/work/2");
/// Raw-stream protocol for content-addressed blobs, both directions.
pub const BLOB_PROTOCOL: StreamProtocol = StreamProtocol::new("/blenderdist/blob/2");
/// Raw-stream protocol for self-update: the signed manifest and the builds it names. Deliberately unversioned and
/// frozen (its messages only ever gain variants at the end), so a volunteer can still fetch the owner's new build
/// when the rest of the protocol has moved to another version.
pub const UPDATE_PROTOCOL: StreamProtocol = StreamProtocol::new("/blenderdist/update");

/// A sha256 digest naming a blob.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    pub fn from_hasher(hasher: Sha256) -> Self {
        Self(hasher.finalize().into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Self(out))
    }

    /// The first 8 hex digits, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", self.short())
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Published by an owner on [`OFFER_TOPIC`] when its jobs change and every few seconds (gossipsub keeps no history).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobOffer {
    pub version: u32,
    /// Increases with every publication, so identical re-publications are not dropped as duplicates.
    pub seq: u64,
    pub jobs: Vec<OfferedJob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferedJob {
    pub job: String,
    /// Frames not yet granted.
    pub pending: u32,
}

/// Volunteer → owner over [`WORK_PROTOCOL`]. Every message about a frame names the .blend it was granted from, so
/// nothing rendered from a job's old .blend is ever taken for its new one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkRequest {
    /// Ask for up to `slots` frames; `caps` says what this volunteer's Blender can render.
    Claim {
        version: u32,
        slots: u32,
        #[serde(default)]
        caps: Option<VolunteerCaps>,
    },
    /// A granted frame rendered; its blob is `size` bytes with hash `blob`. The owner answers `Upload` or `Discard`.
    ///
    /// `outputs`: files the scene's compositor File Output nodes wrote for this frame, pushed before the frame itself
    /// when the owner answers `Upload`; each lands in the job's render folder under its own (checked) name.
    Rendered {
        job: String,
        frame: u32,
        blend: BlobHash,
        blob: BlobHash,
        size: u64,
        ext: String,
        #[serde(default)]
        outputs: Vec<ExtraOutput>,
    },
    /// A granted frame failed to render.
    Failed { job: String, frame: u32, blend: BlobHash, error: String },
    /// Still rendering this frame: extends its lease. Answered `Noted`, or `Discard` when the volunteer should stop.
    Renew { job: String, frame: u32, blend: BlobHash },
    /// What is the farm doing? (`blenderdist status`.) Answered `Status`.
    Status,
}

/// One file a compositor File Output node wrote for a frame, besides the frame itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraOutput {
    /// Where it goes under the job's render folder, as the node named it: `passes/Image0012.exr`.
    pub name: String,
    pub blob: BlobHash,
    pub size: u64,
}

/// Most [`ExtraOutput`]s one frame may bring.
pub const MAX_EXTRA_OUTPUTS: usize = 64;

/// What a volunteer's Blender can do, measured when it starts; the owner sends it only frames it can render.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VolunteerCaps {
    /// Blender's version, e.g. `3.4.1`.
    pub blender: String,
    /// Blender's build hash, for the record.
    pub build_hash: String,
    /// The Cycles device this volunteer renders with (`CPU`, `CUDA`...).
    pub device: String,
    /// Whether Blender has OpenImageDenoise (Debian's 3.4 build has not).
    pub denoiser: bool,
    /// Whether Eevee and Workbench render here (they need OpenGL; headless, Mesa's EGL can provide it). `None`
    /// until the volunteer has tried, in the background after it starts.
    #[serde(default)]
    pub opengl: Option<bool>,
    /// The name the volunteer goes by (`join --name`, default its host name); display only, never trusted: a host
    /// keeps it through [`display_name`].
    #[serde(default)]
    pub name: Option<String>,
}

/// Owner → volunteer over [`WORK_PROTOCOL`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkResponse {
    Granted(Vec<FrameGrant>),
    /// Nothing to hand out now; wait for the next offer.
    NoWork,
    /// Push the rendered blob over [`BLOB_PROTOCOL`] now.
    Upload,
    /// The frame is no longer wanted (done by someone else, or the job is gone).
    Discard,
    /// A failure report was recorded.
    Noted,
    /// The request cannot be served; the reason names what is wrong (for example both protocol versions).
    Refused {
        reason: String,
    },
    /// Every job's progress and every volunteer's work (at most [`MAX_STATUS_MESSAGE`] bytes).
    Status(StatusReport),
}

/// What program the owner runs, and where each platform's build of it can be fetched (by hash, over
/// [`BLOB_PROTOCOL`]). Volunteers that trust the owner switch to the build for their platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateManifest {
    pub protocol_version: u32,
    /// The owner's program version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// sha256 of the owner's own binary.
    pub build: BlobHash,
    /// When the owner signed it (milliseconds since the Unix epoch).
    pub issued_at: u64,
    pub binaries: Vec<PlatformBinary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlatformBinary {
    /// A Rust target triple such as `x86_64-unknown-linux-gnu`.
    pub target: String,
    pub hash: BlobHash,
    pub size: u64,
}

/// A manifest with the owner's ed25519 signature over its CBOR encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedManifest {
    /// CBOR of an [`UpdateManifest`]: the exact bytes signed.
    pub manifest: Vec<u8>,
    /// The signer's public key (libp2p protobuf encoding); its peer id must be the trusted owner's.
    pub signer: Vec<u8>,
    pub signature: Vec<u8>,
}

/// One frame leased to a volunteer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameGrant {
    pub job: String,
    pub frame: u32,
    /// The job's version: the hash of its [`JobManifest`], which names the .blend and every file it needs. Every
    /// message about the frame repeats it (the `blend` fields of [`WorkRequest`]).
    pub blend: BlobHash,
    /// Size of the manifest blob.
    pub blend_size: u64,
}

/// First message on a [`BLOB_PROTOCOL`] stream, from the side that opened it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BlobRequest {
    /// Send me the blob with this hash. Answered by a [`BlobReply`], then `size` raw bytes when `Found`.
    Get { hash: BlobHash },
    /// Here come `size` raw bytes of the blob with this hash. Answered by a [`BlobReply`] once stored.
    Put { hash: BlobHash, size: u64 },
}

/// First message on an [`UPDATE_PROTOCOL`] stream, from the volunteer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UpdateRequest {
    /// Answered by an `Option<SignedManifest>` header (at most [`MAX_MANIFEST`] bytes).
    Manifest,
    /// Answered like [`BlobRequest::Get`], for builds named in the manifest only.
    Build { hash: BlobHash },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BlobReply {
    Found { size: u64 },
    Missing,
    Stored,
    Refused { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn header_roundtrip_and_limits() {
        let mut buf = Vec::new();
        let req = BlobRequest::Put { hash: BlobHash::of_bytes(b"x"), size: 1 };
        write_header(&mut buf, &req).await.unwrap();
        let back: BlobRequest = read_header(&mut buf.as_slice()).await.unwrap();
        assert_eq!(back, req);

        let mut huge = (MAX_BLOB_HEADER + 1).to_be_bytes().to_vec();
        huge.extend([0u8; 16]);
        let err = read_header::<_, BlobRequest>(&mut huge.as_slice()).await.unwrap_err();
        assert!(matches!(err, WireError::TooLarge { .. }), "{err}");

        let junk = [0u8, 0, 0, 3, 0xff, 0xff, 0xff];
        let err = read_header::<_, BlobRequest>(&mut &junk[..]).await.unwrap_err();
        assert!(matches!(err, WireError::Decode(_)), "{err}");
    }

    #[test]
    fn hash_hex_roundtrip() {
        let h = BlobHash::of_bytes(b"hello");
        assert_eq!(BlobHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(h.short().len(), 8);
        assert_eq!(BlobHash::from_hex("zz"), None);
    }

    #[test]
    fn output_names() {
        let table = [
            ("Image0012.png", true),
            ("passes/diffuse/Diff0012.exr", true),
            ("0012.png", false),
            ("0012/x.png", false),
            ("../x.png", false),
            ("/etc/x.png", false),
            ("a//x.png", false),
            (".blenderdist-tmp/x.png", false),
            ("a\\x.png", false),
            ("x.sh", false),
            ("x", false),
            ("a/b/c/d/e/f/g/h/i.png", false),
        ];
        for (name, ok) in table {
            assert_eq!(check_output_name(name).is_ok(), ok, "{name}");
        }
    }

    #[test]
    fn names_are_made_safe_to_show() {
        let table = [
            ("alice-desktop", Some("alice-desktop")),
            ("  bob \n\t pc ", Some("bob pc")),
            ("<script>alert(1)</script>", Some("scriptalert(1)/script")),
            ("\u{1b}[31mred", Some("[31mred")),
            ("\n\r", None),
            ("", None),
        ];
        for (name, safe) in table {
            assert_eq!(display_name(name).as_deref(), safe, "{name:?}");
        }
        assert_eq!(display_name(&"é".repeat(100)).map(|n| n.len()), Some(MAX_NAME));
    }

    #[test]
    fn junk_offer_is_an_error() {
        assert!(decode_offer(b"\xff\x00junk").is_err());
        let offer = JobOffer { version: 1, seq: 7, jobs: vec![OfferedJob { job: "a".into(), pending: 3 }] };
        assert_eq!(decode_offer(&encode_offer(&offer).unwrap()).unwrap(), offer);
    }
}
