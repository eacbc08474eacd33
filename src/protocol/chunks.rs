//! The chunk protocol: volunteers share a job's large files with each other, chunk by chunk.
//!
//! A blob larger than one chunk ([`CHUNK_SIZE`]) is fetched in chunks from several peers at once. Its chunk list
//! (the sha256 of each chunk, in order) comes from the owner, over the authenticated connection that also brought
//! the job manifest; each chunk is verified against it on arrival, and the whole blob against its own sha256 at the
//! end. A volunteer serves only chunks it verified, and only to peers holding a [`Ticket`]: a statement signed by
//! the owner's node key that this peer was granted a frame of the job whose manifest has this hash.
//!
//! One exchange per stream on [`CHUNK_PROTOCOL`]: the opener sends a [`ChunkRequest`] header, the other side a
//! [`ChunkReply`] header, then, for `List` and `Chunk`, raw bytes. Headers are length-prefixed CBOR like blob
//! headers, at most [`MAX_CHUNK_HEADER`] bytes. New variants only at the end.

use libp2p::{identity::Keypair, identity::PublicKey, Multiaddr, PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use super::{from_cbor, to_cbor, BlobHash};

/// Raw-stream protocol for chunk lists and chunks, owner → volunteer and volunteer → volunteer. A peer that does
/// not speak it (an older owner) is fetched from whole over the blob protocol.
pub const CHUNK_PROTOCOL: StreamProtocol = StreamProtocol::new("/blenderdist/chunks/1");
/// Size of every chunk but a blob's last. Blobs no larger than this travel whole from the owner.
pub const CHUNK_SIZE: u64 = 1024 * 1024;
/// Largest header on a chunk stream: room for the bitfield of a 64 GiB blob (8 KiB) and a ticket.
pub const MAX_CHUNK_HEADER: u32 = 16 * 1024;
/// Most peers an owner names in one [`ChunkReply::Swarm`].
pub const MAX_SWARM_PEERS: usize = 16;
/// Most addresses kept per peer (a volunteer listening on every interface has a few).
pub const MAX_PEER_ADDRS: usize = 8;
/// How long a ticket is valid after the owner signs it (volunteers ask again long before).
pub const TICKET_LIFETIME_MS: u64 = 60 * 60 * 1000;
/// What a ticket's signature covers, before its body: a signature for another purpose never reads as a ticket.
const TICKET_DOMAIN: &[u8] = b"blenderdist chunk ticket v1\0";

/// First message on a [`CHUNK_PROTOCOL`] stream, from the side that opened it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ChunkRequest {
    /// To the owner: a ticket for the job whose manifest is `manifest`, and the other volunteers granted frames of
    /// it. `addrs` are the addresses this volunteer listens on (multiaddr bytes; empty if it cannot be dialled).
    /// Answered `Swarm` (only to a peer holding a lease on a frame of that job), or `Refused`.
    Swarm { manifest: BlobHash, addrs: Vec<Vec<u8>> },
    /// To the owner: the chunk list of `blob`. Answered `List { count }` and `count` × 32 bytes of sha256.
    List { blob: BlobHash },
    /// To the owner: any one chunk of `blob` among `want` (a bitfield, chunk `i` is bit `i % 8` of byte `i / 8`).
    /// The owner sends the one it has sent least often: each chunk once before any twice. Answered `Chunk`.
    AnyOf { blob: BlobHash, want: Vec<u8> },
    /// To a volunteer: which chunks of `blob` do you hold, verified? Answered `Have`.
    Have { blob: BlobHash, ticket: Ticket },
    /// To a volunteer: chunk `index` of `blob`. Answered `Chunk` and its bytes, or `Missing`.
    Get { blob: BlobHash, index: u32, ticket: Ticket },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ChunkReply {
    Swarm {
        ticket: Ticket,
        peers: Vec<SwarmPeer>,
    },
    /// `count` sha256 digests follow, 32 raw bytes each.
    List {
        count: u32,
    },
    /// A bitfield of the chunks held (see [`ChunkRequest::AnyOf`]).
    Have {
        bits: Vec<u8>,
    },
    /// `size` raw bytes of chunk `index` follow.
    Chunk {
        index: u32,
        size: u32,
    },
    Missing,
    Refused {
        reason: String,
    },
}

/// Another volunteer of the same job, as its owner knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwarmPeer {
    /// Peer id bytes.
    pub id: Vec<u8>,
    /// Multiaddr bytes the peer says it listens on (at most [`MAX_PEER_ADDRS`]); may be empty.
    pub addrs: Vec<Vec<u8>>,
}

impl SwarmPeer {
    pub fn new(id: PeerId, addrs: &[Multiaddr]) -> Self {
        Self { id: id.to_bytes(), addrs: addrs.iter().take(MAX_PEER_ADDRS).map(|a| a.to_vec()).collect() }
    }

    /// The peer id and its usable addresses; `None` for an undecodable id.
    pub fn decode(&self) -> Option<(PeerId, Vec<Multiaddr>)> {
        let id = PeerId::from_bytes(&self.id).ok()?;
        let addrs = decode_addrs(&self.addrs);
        Some((id, addrs))
    }
}

/// The decodable addresses among `addrs`, at most [`MAX_PEER_ADDRS`].
pub fn decode_addrs(addrs: &[Vec<u8>]) -> Vec<Multiaddr> {
    addrs.iter().take(MAX_PEER_ADDRS).filter_map(|a| Multiaddr::try_from(a.clone()).ok()).collect()
}

/// The owner's word that `holder` was granted a frame of the job with this manifest, until `expires_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketBody {
    pub manifest: BlobHash,
    /// Peer id bytes of the volunteer it was given to.
    pub holder: Vec<u8>,
    /// Milliseconds since the Unix epoch.
    pub expires_ms: u64,
}

/// A [`TicketBody`] signed by the owner's node key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    /// CBOR of the body: the exact bytes signed (after `TICKET_DOMAIN`).
    pub body: Vec<u8>,
    /// The owner's public key (libp2p protobuf encoding).
    pub signer: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Why a ticket does not let a peer fetch chunks.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TicketError {
    #[error("the ticket's signer key is unreadable")]
    BadKey,
    #[error("the ticket is signed by {signer}, not by the job's owner {owner}")]
    WrongSigner { signer: String, owner: String },
    #[error("the ticket's signature does not verify")]
    BadSignature,
    #[error("the ticket is unreadable: {0}")]
    Undecodable(String),
    #[error("the ticket was given to another peer")]
    WrongHolder,
    #[error("the ticket is for another job")]
    WrongJob,
    #[error("the ticket has expired")]
    Expired,
    #[error("cannot sign a ticket: {0}")]
    Sign(String),
}

impl Ticket {
    /// Signs a ticket for `holder` on the job whose manifest is `manifest`, valid for [`TICKET_LIFETIME_MS`].
    pub fn sign(key: &Keypair, manifest: BlobHash, holder: PeerId, now_ms: u64) -> Result<Self, TicketError> {
        let body = TicketBody { manifest, holder: holder.to_bytes(), expires_ms: now_ms + TICKET_LIFETIME_MS };
        let body = to_cbor(&body).map_err(|e| TicketError::Sign(e.to_string()))?;
        let signature = key.sign(&[TICKET_DOMAIN, &body].concat()).map_err(|e| TicketError::Sign(e.to_string()))?;
        Ok(Self { body, signer: key.public().encode_protobuf(), signature })
    }

    /// Checks that `owner` signed this ticket for `holder`, that it has not expired, and returns its manifest hash.
    pub fn verify(&self, owner: PeerId, holder: PeerId, now_ms: u64) -> Result<BlobHash, TicketError> {
        let key = PublicKey::try_decode_protobuf(&self.signer).map_err(|_| TicketError::BadKey)?;
        let signer = key.to_peer_id();
        if signer != owner {
            return Err(TicketError::WrongSigner { signer: signer.to_string(), owner: owner.to_string() });
        }
        if !key.verify(&[TICKET_DOMAIN, &self.body].concat(), &self.signature) {
            return Err(TicketError::BadSignature);
        }
        let body: TicketBody = from_cbor(&self.body, 1024).map_err(|e| TicketError::Undecodable(e.to_string()))?;
        if body.holder != holder.to_bytes() {
            return Err(TicketError::WrongHolder);
        }
        if body.expires_ms < now_ms {
            return Err(TicketError::Expired);
        }
        Ok(body.manifest)
    }

    /// The manifest hash the ticket names, unverified (to find out which owner must have signed it).
    pub fn claimed_manifest(&self) -> Option<BlobHash> {
        from_cbor::<TicketBody>(&self.body, 1024).ok().map(|b| b.manifest)
    }
}

/// How many chunks a blob of `size` bytes has (at least one).
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_SIZE).max(1)
}

/// The size of chunk `index` of a blob of `size` bytes.
pub fn chunk_len(size: u64, index: u64) -> u64 {
    size.saturating_sub(index * CHUNK_SIZE).min(CHUNK_SIZE)
}

/// A set of chunk indices, as sent on the wire (bit `i % 8` of byte `i / 8`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bitfield {
    bits: Vec<u8>,
    len: usize,
}

impl Bitfield {
    pub fn new(len: usize) -> Self {
        Self { bits: vec![0; len.div_ceil(8)], len }
    }

    pub fn full(len: usize) -> Self {
        let mut all = Self::new(len);
        (0..len).for_each(|i| all.set(i));
        all
    }

    /// A received bitfield for a blob of `len` chunks; bits past `len` are ignored, missing bytes read as zero.
    pub fn from_wire(bytes: &[u8], len: usize) -> Self {
        let mut bits = bytes.iter().copied().take(len.div_ceil(8)).collect::<Vec<u8>>();
        bits.resize(len.div_ceil(8), 0);
        if !len.is_multiple_of(8) {
            if let Some(last) = bits.last_mut() {
                *last &= (1u8 << (len % 8)) - 1;
            }
        }
        Self { bits, len }
    }

    pub fn to_wire(&self) -> Vec<u8> {
        self.bits.clone()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: usize) -> bool {
        i < self.len && self.bits[i / 8] & (1 << (i % 8)) != 0
    }

    pub fn set(&mut self, i: usize) {
        if i < self.len {
            self.bits[i / 8] |= 1 << (i % 8);
        }
    }

    pub fn count(&self) -> usize {
        self.bits.iter().map(|b| b.count_ones() as usize).sum()
    }

    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_verify_only_for_their_owner_holder_and_time() {
        let owner = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let holder = PeerId::random();
        let manifest = BlobHash::of_bytes(b"m");
        let ticket = Ticket::sign(&owner, manifest, holder, 1000).unwrap();
        let owner_id = owner.public().to_peer_id();
        assert_eq!(ticket.verify(owner_id, holder, 2000), Ok(manifest));
        assert_eq!(ticket.claimed_manifest(), Some(manifest));
        assert!(matches!(
            ticket.verify(other.public().to_peer_id(), holder, 2000),
            Err(TicketError::WrongSigner { .. })
        ));
        assert_eq!(ticket.verify(owner_id, PeerId::random(), 2000), Err(TicketError::WrongHolder));
        assert_eq!(ticket.verify(owner_id, holder, 1000 + TICKET_LIFETIME_MS + 1), Err(TicketError::Expired));
        let mut forged = ticket.clone();
        forged.body =
            to_cbor(&TicketBody { manifest, holder: PeerId::random().to_bytes(), expires_ms: u64::MAX }).unwrap();
        assert_eq!(forged.verify(owner_id, holder, 2000), Err(TicketError::BadSignature));
    }

    #[test]
    fn bitfields_roundtrip_and_ignore_stray_bits() {
        let mut b = Bitfield::new(10);
        b.set(0);
        b.set(9);
        b.set(42);
        assert_eq!(b.count(), 2);
        assert_eq!(Bitfield::from_wire(&b.to_wire(), 10), b);
        let stray = Bitfield::from_wire(&[0xff, 0xff, 0xff], 10);
        assert_eq!(stray.count(), 10);
        assert_eq!(Bitfield::from_wire(&[], 10).count(), 0);
        assert_eq!(Bitfield::full(9).ones().collect::<Vec<_>>(), (0..9).collect::<Vec<_>>());
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_count(0), 1);
        assert_eq!(chunk_count(CHUNK_SIZE), 1);
        assert_eq!(chunk_count(CHUNK_SIZE + 1), 2);
        assert_eq!(chunk_len(CHUNK_SIZE + 1, 1), 1);
        assert_eq!(chunk_len(CHUNK_SIZE + 1, 0), CHUNK_SIZE);
    }
}
