//! The protocol's size limits and the budgets every peer is held to (docs/PROTOCOL.md, "Limits per peer").

/// Largest work request or response (CBOR); grants and notices are a few hundred bytes.
pub const MAX_WORK_MESSAGE: u64 = 64 * 1024;
/// Largest work response: a [`super::StatusReport`] of a farm with many jobs and volunteers.
pub const MAX_STATUS_MESSAGE: u64 = 4 * 1024 * 1024;
/// Longest volunteer name (bytes) a host keeps; longer ones are cut.
pub const MAX_NAME: usize = 64;
/// Largest gossipsub offer.
pub const MAX_OFFER: usize = 60 * 1024;
/// Largest length-prefixed header on a blob stream.
pub const MAX_BLOB_HEADER: u32 = 4 * 1024;
/// Largest blob a node serves or accepts (a .blend or a frame); streamed, never held in memory.
pub const MAX_BLOB_SIZE: u64 = 64 * 1024 * 1024 * 1024;
/// Longest error text a volunteer may report for a frame.
pub const MAX_ERROR_TEXT: usize = 8 * 1024;
/// Largest [`super::JobManifest`] (CBOR): room for about 100,000 files with long paths.
pub const MAX_JOB_MANIFEST: u64 = 32 * 1024 * 1024;
/// Most files one job may carry (the .blend not counted).
pub const MAX_PROJECT_FILES: usize = 100_000;
/// Longest path in a [`super::JobManifest`], in bytes.
pub const MAX_PROJECT_PATH: usize = 4096;

/// Longest text from a peer (an error report, a refusal's reason) that reaches a log line, the job log or the
/// dashboard, after [`super::one_line`] has escaped it.
pub const MAX_LOGGED_TEXT: usize = 1024;

/// The shape of a token bucket: at most `burst` tokens, refilled at `per_sec` tokens a second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub burst: f64,
    pub per_sec: f64,
}

/// Work requests one peer may send an owner. An honest volunteer sends far fewer: one claim per idle slot per offer
/// (every 3 s) and one renewal per held frame every 5 s, about 26 a second for 64 slots. A peer over it is banned.
pub const REQUEST_BUDGET: Rate = Rate { burst: 500.0, per_sec: 250.0 };
/// Blob and update streams one peer may open to an owner. Volunteers pace their own opens to half this burst at
/// this rate, so an honest one never exceeds it however many small files a job has; a peer over it is banned.
pub const STREAM_BUDGET: Rate = Rate { burst: 1000.0, per_sec: 200.0 };
/// Refused requests, garbage (undecodable requests, stream headers, gossip) and fetches of blobs it may not have
/// that a peer may cause: 20 at once, one more every 3 s. An honest volunteer causes a few when a job changes
/// under it; a peer over it is banned.
pub const STRIKE_BUDGET: Rate = Rate { burst: 20.0, per_sec: 1.0 / 3.0 };
/// A peer's first ban: its connections are closed and refused this long.
pub const BAN_FIRST: std::time::Duration = std::time::Duration::from_secs(60);
/// A peer banned again within [`BAN_MEMORY`] of its last ban's end is banned twice as long, up to this.
pub const BAN_MAX: std::time::Duration = std::time::Duration::from_secs(3600);
/// How long a peer's past ban counts towards doubling the next.
pub const BAN_MEMORY: std::time::Duration = std::time::Duration::from_secs(3600);
/// Connections one peer may hold to a node at once (a volunteer that dialled both its bootstrap address and an
/// address mDNS found has two).
pub const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// Incoming connections still in their handshake at once; more are closed at once (they last at most the
/// handshake timeout, 10 s, and honest volunteers redial).
pub const MAX_PENDING_INCOMING: u32 = 128;
/// Connections a node holds in total unless configured otherwise (`NetConfig::max_peers`).
pub const DEFAULT_MAX_PEERS: u32 = 2000;
