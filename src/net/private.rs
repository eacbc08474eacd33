//! The private farm: a 256-bit pre-shared swarm key (libp2p `pnet`, the scheme IPFS private networks use). With a
//! key, every TCP connection starts with a nonce exchange and is then encrypted with XSalsa20 under the key, below
//! noise: a node without the same key cannot get through the handshake, so it never sees an offer, a .blend or a
//! build. This module holds the key (its text forms, its file), the transport that applies it, and the words for a
//! connection that failed because the two sides disagree about the key.
//!
//! What the key does not do: members are still untrusted volunteers (spot checks, budgets and bans all apply), and
//! relayed connections would bypass it (docs/SECURITY.md, "A private farm").

use std::{
    fmt,
    path::Path,
    time::{Duration, Instant},
};

use libp2p::{
    core::{muxing::StreamMuxerBox, transport::Boxed, upgrade::Version},
    identity::Keypair,
    noise,
    pnet::{PnetConfig, PnetOutput, PreSharedKey},
    tcp, yamux, PeerId, Transport,
};

/// Bytes in a swarm key.
pub const SWARM_KEY_BYTES: usize = 32;

/// The first two lines of an IPFS `swarm.key` file (base16 is the only encoding it defines that we read).
const KEY_FILE_HEADER: &str = "/key/swarm/psk/1.0.0/";
const KEY_FILE_ENCODING: &str = "/base16/";

/// A private farm's key. Its text form is 64 hexadecimal characters, easy to paste into a join line; its file is an
/// IPFS `swarm.key`. Debug output shows a fingerprint, never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SwarmKey([u8; SWARM_KEY_BYTES]);

#[derive(Debug, thiserror::Error)]
pub enum SwarmKeyError {
    #[error("{0}")]
    Malformed(String),
    #[error("cannot read the swarm key file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the swarm key file {path} is not a swarm key: {reason}")]
    BadFile { path: String, reason: String },
    #[error("cannot write the swarm key file {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

impl SwarmKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; SWARM_KEY_BYTES];
        rand::fill(&mut bytes);
        Self(bytes)
    }

    /// 64 hexadecimal characters, as printed in the host's join line.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A short, non-secret name for the key, for logs: the same key gives the same fingerprint on every node
    /// (it is go-libp2p's and IPFS's fingerprint, cut to 8 bytes).
    pub fn fingerprint(&self) -> String {
        let full = self.psk().fingerprint().to_string();
        full.chars().take(16).collect()
    }

    /// Parses the key's text: 64 hexadecimal characters, or the whole text of an IPFS `swarm.key` file. The error
    /// says what is wrong without repeating the text (it may be someone's key with a typo).
    pub fn parse(text: &str) -> Result<Self, SwarmKeyError> {
        let text = text.trim();
        let hex = match text.lines().map(str::trim).collect::<Vec<_>>().as_slice() {
            [one] => *one,
            [KEY_FILE_HEADER, KEY_FILE_ENCODING, key] => *key,
            [KEY_FILE_HEADER, encoding, _] => {
                return Err(SwarmKeyError::Malformed(format!(
                    "a swarm.key in the {encoding} encoding; only {KEY_FILE_ENCODING} is supported"
                )))
            }
            _ => {
                return Err(SwarmKeyError::Malformed(format!(
                    "expected {} hexadecimal characters (or a swarm.key file starting with {KEY_FILE_HEADER})",
                    SWARM_KEY_BYTES * 2
                )))
            }
        };
        if hex.len() != SWARM_KEY_BYTES * 2 {
            return Err(SwarmKeyError::Malformed(format!(
                "expected {} hexadecimal characters, got {}",
                SWARM_KEY_BYTES * 2,
                hex.chars().count()
            )));
        }
        let mut bytes = [0u8; SWARM_KEY_BYTES];
        hex::decode_to_slice(hex, &mut bytes).map_err(|_| {
            SwarmKeyError::Malformed("it holds characters other than 0-9 and a-f (the key is hexadecimal)".into())
        })?;
        Ok(Self(bytes))
    }

    /// Reads a key file: an IPFS `swarm.key`, or a file holding the 64 hexadecimal characters.
    pub fn read_file(path: &Path) -> Result<Self, SwarmKeyError> {
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| SwarmKeyError::Read { path: shown.clone(), source })?;
        Self::parse(&text).map_err(|e| SwarmKeyError::BadFile { path: shown, reason: e.to_string() })
    }

    /// The host's own key for `host --private`: read from `path`, or made and written there (mode 0600, as an IPFS
    /// `swarm.key`) the first time, so the join line stays the same across restarts.
    pub fn load_or_create(path: &Path) -> Result<Self, SwarmKeyError> {
        match std::fs::metadata(path) {
            Ok(_) => Self::read_file(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                crate::store::keys::write_private(path, key.to_key_file().as_bytes())
                    .map_err(|source| SwarmKeyError::Write { path: path.display().to_string(), source })?;
                Ok(key)
            }
            Err(source) => Err(SwarmKeyError::Read { path: path.display().to_string(), source }),
        }
    }

    /// The key in IPFS's `swarm.key` format, which `join --swarm-key-file` also reads.
    pub fn to_key_file(&self) -> String {
        format!("{KEY_FILE_HEADER}\n{KEY_FILE_ENCODING}\n{}\n", self.to_hex())
    }

    fn psk(&self) -> PreSharedKey {
        PreSharedKey::new(self.0)
    }
}

impl fmt::Debug for SwarmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SwarmKey(fingerprint {})", self.fingerprint())
    }
}

impl std::str::FromStr for SwarmKey {
    type Err = SwarmKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Whether a host's farm is private, and with which key (`host --private`, `host --swarm-key`).
#[derive(Debug, Clone, Default)]
pub enum Privacy {
    /// Anyone who reaches the host's port may volunteer.
    #[default]
    Open,
    /// Private, with the key kept in the state folder ([`SwarmKey::load_or_create`]), made on the first run.
    OwnKey,
    /// Private, with this key (several hosts sharing one farm).
    Key(SwarmKey),
}

/// The name of the host's own key file in its state folder.
pub const SWARM_KEY_FILE: &str = "swarm.key";

impl Privacy {
    /// The key this host uses, reading or making its own in `state_dir`; `None` for an open farm.
    pub fn key(&self, state_dir: &Path) -> Result<Option<SwarmKey>, SwarmKeyError> {
        match self {
            Privacy::Open => Ok(None),
            Privacy::OwnKey => SwarmKey::load_or_create(&state_dir.join(SWARM_KEY_FILE)).map(Some),
            Privacy::Key(key) => Ok(Some(key.clone())),
        }
    }
}

/// TCP, then (in a private farm) the pnet layer, then noise and yamux: the stack every node speaks.
pub(super) fn transport(
    keypair: &Keypair,
    key: Option<&SwarmKey>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let noise = noise::Config::new(keypair)?;
    Ok(match key {
        None => tcp.upgrade(Version::V1Lazy).authenticate(noise).multiplex(yamux::Config::default()).boxed(),
        Some(key) => {
            let pnet = PnetConfig::new(key.psk());
            tcp.and_then(move |socket, _| key_handshake(pnet, socket))
                .upgrade(Version::V1Lazy)
                .authenticate(noise)
                .multiplex(yamux::Config::default())
                .boxed()
        }
    })
}

/// Sent by each side, encrypted, right after pnet's nonce exchange: pnet alone never learns that the keys differ
/// (each side only decrypts the other's bytes to garbage, and both may then wait for lengths that never come), so
/// each side checks that the other's first bytes decrypt to this.
const KEY_CHECK: &[u8; 16] = b"blenderdist-psk1";
/// How long the nonce exchange and the key check may take: a node that is not private answers them with silence.
pub const KEY_CHECK_WITHIN: Duration = Duration::from_secs(5);

/// Why the swarm-key handshake failed; the words are matched by `refusal`.
#[derive(Debug, thiserror::Error)]
pub enum KeyHandshakeError {
    #[error("the other side holds another swarm key")]
    Mismatch,
    #[error("no answer to the swarm-key handshake within {} s", KEY_CHECK_WITHIN.as_secs())]
    NoAnswer,
    #[error("the swarm-key handshake failed: {0}")]
    Io(#[from] std::io::Error),
}

/// pnet's nonce exchange, then the key check, within [`KEY_CHECK_WITHIN`].
async fn key_handshake<S>(pnet: PnetConfig, socket: S) -> Result<PnetOutput<S>, KeyHandshakeError>
where
    S: futures::AsyncRead + futures::AsyncWrite + Send + Unpin + 'static,
{
    use futures::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut out = pnet.handshake(socket).await.map_err(|e| match e {
            libp2p::pnet::PnetError::HandshakeError(io) | libp2p::pnet::PnetError::IoError(io) => io,
        })?;
        out.write_all(KEY_CHECK).await?;
        out.flush().await?;
        let mut theirs = [0u8; KEY_CHECK.len()];
        out.read_exact(&mut theirs).await?;
        if &theirs != KEY_CHECK {
            return Err(KeyHandshakeError::Mismatch);
        }
        Ok(out)
    };
    tokio::time::timeout(KEY_CHECK_WITHIN, exchange).await.map_err(|_| KeyHandshakeError::NoAnswer)?
}

/// What a dialler tells its person when a connection failed in a way that means the two sides hold different keys
/// (or one has none). `None`: the failure says nothing about keys.
pub(super) fn refusal(error_text: &str, ours: Option<&SwarmKey>) -> Option<&'static str> {
    let has = |words: &str| error_text.contains(words);
    match ours {
        // Without a key, our first bytes are plain protocol negotiation; a private node reads them as its nonce and
        // closes when they fail its key check, so the secure handshake that follows fails (with a reset, or on the
        // garbage that came first). An open node fails it only when it closes connections still in their handshake
        // because too many are (hundreds of volunteers starting at once): the dialler tries again by itself.
        None if error_text.to_lowercase().contains("handshake failed") => Some(
            "the host refused the connection: this farm is private; ask its owner for the join line with --swarm-key \
             (unless the farm is open and the host too busy with other volunteers' handshakes: then this one tries \
             again)",
        ),
        None => None,
        Some(_) if has(&KeyHandshakeError::Mismatch.to_string()) => Some(
            "the host refused the connection: its farm has another key than the one given with --swarm-key (the key \
             may have changed); ask its owner for the current join line",
        ),
        Some(_) if has("swarm-key handshake") => Some(
            "the host did not take the private handshake: its farm is not private (join without --swarm-key), or it \
             is not a blenderdist node",
        ),
        Some(_) => None,
    }
}

/// Whether an incoming connection failed over the key (a node without it, or with another).
fn refused_incoming(error_text: &str) -> bool {
    error_text.contains(&KeyHandshakeError::Mismatch.to_string()) || error_text.contains("swarm-key handshake")
}

/// Rate-limits the host's note that a non-member was refused: one line per [`REFUSAL_NOTE_EVERY`], with the count
/// of those not mentioned, so a scanner cannot fill the log.
#[derive(Debug, Default)]
pub(super) struct RefusalNotes {
    last: Option<Instant>,
    unsaid: u64,
}

pub(super) const REFUSAL_NOTE_EVERY: Duration = Duration::from_secs(60);

impl RefusalNotes {
    /// Counts one refusal; `Some(n)` when it should be logged now, `n` being the refusals since the last line.
    pub(super) fn note(&mut self, now: Instant) -> Option<u64> {
        self.unsaid += 1;
        let due = self.last.is_none_or(|last| now.duration_since(last) >= REFUSAL_NOTE_EVERY);
        if !due {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unsaid))
    }
}

/// How long a LAN peer that failed the key handshake is left alone before mDNS may make us dial it again.
pub(super) const LAN_REFUSED_FOR: Duration = Duration::from_secs(600);

/// The event loop's memory of key mismatches: which bootstrap addresses were told about (once each), which LAN
/// peers are not members (not redialled for [`LAN_REFUSED_FOR`]), and the host's rate-limited notes.
#[derive(Debug, Default)]
pub(super) struct Admission {
    pub(super) key: Option<SwarmKey>,
    told: std::collections::HashSet<libp2p::Multiaddr>,
    lan_refused: std::collections::HashMap<PeerId, Instant>,
    notes: RefusalNotes,
}

impl Admission {
    pub(super) fn new(key: Option<SwarmKey>) -> Self {
        Self { key, ..Self::default() }
    }

    /// The words for a failed dial to `addr` if it failed over the key, and whether to say them at the default
    /// level (the first time for this address) rather than at debug level.
    pub(super) fn dial_refused(&mut self, addr: &libp2p::Multiaddr, error_text: &str) -> Option<(&'static str, bool)> {
        let words = refusal(error_text, self.key.as_ref())?;
        Some((words, self.told.insert(addr.clone())))
    }

    /// A bootstrap address connected: a later refusal there (a new key) is worth saying again.
    pub(super) fn connected(&mut self, addr: &libp2p::Multiaddr) {
        self.told.remove(addr);
    }

    /// A dial to a peer found by mDNS failed: the words to say if it failed over the key, in which case the peer is
    /// not dialled again for [`LAN_REFUSED_FOR`].
    pub(super) fn lan_dial_failed(&mut self, peer: PeerId, error_text: &str, now: Instant) -> Option<&'static str> {
        let words = refusal(error_text, self.key.as_ref())?;
        self.lan_refused.insert(peer, now);
        Some(words)
    }

    /// Whether mDNS may make us dial `peer`: not while it counts as a non-member.
    pub(super) fn may_dial_lan_peer(&mut self, peer: &PeerId, now: Instant) -> bool {
        self.lan_refused.retain(|_, since| now.duration_since(*since) < LAN_REFUSED_FOR);
        !self.lan_refused.contains_key(peer)
    }

    /// An incoming connection failed: `Some(n)` when this node is private, the failure looks like a non-member's,
    /// and it is time to log the `n` refusals since the last line.
    pub(super) fn incoming_refused(&mut self, error_text: &str, now: Instant) -> Option<u64> {
        self.key.as_ref()?;
        if !refused_incoming(error_text) {
            return None;
        }
        self.notes.note(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_forms() {
        let key = SwarmKey::generate();
        assert_eq!(SwarmKey::parse(&key.to_hex()).unwrap(), key);
        assert_eq!(SwarmKey::parse(&format!("  {}\n", key.to_hex().to_uppercase())).unwrap(), key);
        assert_eq!(SwarmKey::parse(&key.to_key_file()).unwrap(), key);
        // libp2p reads our file form too, so a swarm.key works with other libp2p tools.
        assert!(key.to_key_file().parse::<PreSharedKey>().is_ok());
        let bad: &[(&str, &str)] = &[
            ("abc", "got 3"),
            (&"g".repeat(64), "hexadecimal"),
            ("", "expected 64"),
            ("/key/swarm/psk/1.0.0/\n/base64/\nxyz", "base64"),
            ("a\nb", "expected 64"),
        ];
        for (text, want) in bad {
            let e = SwarmKey::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        assert!(!format!("{key:?}").contains(&key.to_hex()));
    }

    #[test]
    fn host_key_persists_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swarm.key");
        let a = SwarmKey::load_or_create(&path).unwrap();
        let b = SwarmKey::load_or_create(&path).unwrap();
        assert_eq!(a, b);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, "junk").unwrap();
        let e = SwarmKey::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("swarm.key") && e.contains("not a swarm key"), "{e}");
    }

    #[test]
    fn a_keyless_refusal_reads_as_one_sentence() {
        let words = refusal("Handshake failed: connection reset", None).expect("a refusal");
        assert!(words.starts_with("the host refused the connection: this farm is private;"), "{words}");
        assert!(!words.contains("  ") && !words.contains('\n'), "{words:?}");
    }

    #[test]
    fn refusal_notes_are_rate_limited() {
        let mut notes = RefusalNotes::default();
        let t = Instant::now();
        assert_eq!(notes.note(t), Some(1));
        assert_eq!(notes.note(t + Duration::from_secs(1)), None);
        assert_eq!(notes.note(t + Duration::from_secs(2)), None);
        assert_eq!(notes.note(t + REFUSAL_NOTE_EVERY), Some(3));
    }
}
