//! The volunteer's side of self-update. It accepts a manifest only from the owner it trusts — the peer id in its
//! bootstrap address, or else the first owner it ever joined (trust on first use, kept in the cache dir) — and only
//! with a valid signature. It then fetches the build for its platform, verifies its hash, runs the new file's
//! `--self-check`, and stages it; the volunteer finishes its frames in flight and relaunches on it.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Mutex,
};

use libp2p::PeerId;
use tracing::{info, warn};

use super::{host::OwnBinary, manifest, self_check};
use crate::{
    net::Client,
    protocol::{
        read_header_max, write_header, BlobHash, BlobReply, PlatformBinary, SignedManifest, UpdateRequest,
        MAX_BLOB_HEADER, MAX_MANIFEST, UPDATE_PROTOCOL,
    },
    store::blobs::BlobStore,
};

/// Where a volunteer records the owner it trusts when it found it by mDNS or joined it without `/p2p/ID`.
pub const TRUST_FILE: &str = "trusted-owner";
/// Where a volunteer records when the newest manifest it accepted was issued.
pub const NEWEST_FILE: &str = "newest-manifest";

/// Why a volunteer did not take an owner's build. Only [`UpdateError::Corrupt`] and [`UpdateError::SelfCheck`]
/// mark a build as never to be tried again; the rest may go better with the next manifest.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("the manifest's signature does not hold: {0}")]
    Signature(#[from] manifest::ManifestError),
    #[error("{owner} is not the owner named in this volunteer's bootstrap address")]
    NotPinned { owner: String },
    #[error(
        "the owner changed: this volunteer trusts {trusted} (recorded in {}), not {owner}; delete that file to trust \
         the new owner",
        file.display()
    )]
    OwnerChanged { trusted: String, file: PathBuf, owner: String },
    #[error("cannot record {what} in {}: {source}", file.display())]
    Record { what: &'static str, file: PathBuf, source: std::io::Error },
    #[error("the manifest was issued at {issued_at}, before one already seen ({newest}): a replay")]
    Replay { issued_at: u64, newest: u64 },
    #[error("the owner offers no build for {0}")]
    NoBuild(&'static str),
    #[error("build {0} was already refused")]
    AlreadyRefused(String),
    #[error("cannot reach the owner's update service: {0}")]
    Network(String),
    #[error("the owner did not serve build {hash}: {reply}")]
    NotServed { hash: String, reply: String },
    /// Bytes that are not the build the owner signed: never tried again.
    #[error("refusing the new build: {0}")]
    Corrupt(crate::store::blobs::BlobError),
    /// A broken or stalled transfer: the next manifest tries again.
    #[error("the transfer of the new build failed: {0}")]
    Transfer(crate::store::blobs::BlobError),
    #[error("cannot write the new build anywhere")]
    Stage,
    #[error("the new build {hash} failed its self-check ({reason}); keeping this program")]
    SelfCheck { hash: String, reason: String },
}

impl UpdateError {
    /// Whether the build must never be fetched again.
    fn is_final(&self) -> bool {
        matches!(self, UpdateError::Corrupt(_) | UpdateError::SelfCheck { .. })
    }
}

/// What the volunteer decided about a manifest.
#[derive(Debug, PartialEq)]
pub enum Decision {
    UpToDate,
    /// `--no-auto-updates`: a newer build exists, and is ignored.
    Declined(BlobHash),
    /// A new build is verified, checked and staged at this path; relaunch when the frames in flight are done.
    Staged(PathBuf),
}

pub struct Updater {
    own: OwnBinary,
    cache_dir: PathBuf,
    /// Peer ids from the bootstrap addresses: when there are any, only they are trusted.
    pinned: HashSet<PeerId>,
    auto: bool,
    /// Builds already tried (fetched, refused or failing their self-check): never tried twice.
    tried: Mutex<HashSet<BlobHash>>,
    staged: Mutex<Option<PathBuf>>,
    /// One manifest at a time: trust on first use must not be won by a race.
    considering: tokio::sync::Mutex<()>,
}

impl Updater {
    pub fn new(own: OwnBinary, cache_dir: &Path, pinned: HashSet<PeerId>, auto: bool) -> Self {
        Self {
            own,
            cache_dir: cache_dir.to_path_buf(),
            pinned,
            auto,
            tried: Mutex::default(),
            staged: Mutex::default(),
            considering: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether this volunteer switches builds (false with `--no-auto-updates`).
    pub fn auto(&self) -> bool {
        self.auto
    }

    pub fn staged(&self) -> Option<PathBuf> {
        self.staged.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether `owner` may tell this volunteer what to run. Records the first owner when nothing pins one.
    pub fn trusts(&self, owner: PeerId) -> Result<(), UpdateError> {
        if !self.pinned.is_empty() {
            return match self.pinned.contains(&owner) {
                true => Ok(()),
                false => Err(UpdateError::NotPinned { owner: owner.to_string() }),
            };
        }
        let file = self.cache_dir.join(TRUST_FILE);
        match std::fs::read_to_string(&file) {
            Ok(text) if text.trim() == owner.to_string() => Ok(()),
            Ok(text) => {
                Err(UpdateError::OwnerChanged { trusted: text.trim().to_string(), file, owner: owner.to_string() })
            }
            Err(_) => {
                std::fs::write(&file, format!("{owner}\n")).map_err(|source| UpdateError::Record {
                    what: "the trusted owner",
                    file: file.clone(),
                    source,
                })?;
                info!("trusting owner {owner} for updates from now on (recorded in {})", file.display());
                Ok(())
            }
        }
    }

    /// Handles a manifest from `from`: refuses it (with the reason), or decides, fetching and staging a new build.
    pub async fn consider(
        &self,
        client: &Client,
        from: PeerId,
        signed: &SignedManifest,
    ) -> Result<Decision, UpdateError> {
        let _one_at_a_time = self.considering.lock().await;
        // The signature first: only a manifest really signed by `from` may make it the trusted owner.
        let manifest = manifest::verify(signed, from)?;
        self.trusts(from)?;
        self.check_fresh(manifest.issued_at)?;
        let Some(build) = manifest.binaries.iter().find(|b| b.target == manifest::TARGET) else {
            return Err(UpdateError::NoBuild(manifest::TARGET));
        };
        if build.hash == self.own.hash {
            return Ok(Decision::UpToDate);
        }
        if !self.auto {
            return Ok(Decision::Declined(build.hash));
        }
        if let Some(staged) = self.staged() {
            return Ok(Decision::Staged(staged));
        }
        if self.tried.lock().unwrap_or_else(|e| e.into_inner()).contains(&build.hash) {
            return Err(UpdateError::AlreadyRefused(build.hash.short()));
        }
        info!("owner {from} runs build {}; fetching it", build.hash.short());
        // A failed transfer may be retried with the next manifest; a corrupt build or a failed check never is.
        let fetched = fetch(client, from, build, &self.cache_dir).await.inspect_err(|e| {
            if e.is_final() {
                self.tried.lock().unwrap_or_else(|e| e.into_inner()).insert(build.hash);
            }
        })?;
        let staged = self.stage(&fetched, build.hash).await?;
        if let Err(e) = self_check(&staged).await {
            let _ = std::fs::remove_file(&staged);
            self.tried.lock().unwrap_or_else(|e| e.into_inner()).insert(build.hash);
            return Err(UpdateError::SelfCheck { hash: build.hash.short(), reason: e });
        }
        info!("build {} passed its self-check; switching once the frames in flight are done", build.hash.short());
        *self.staged.lock().unwrap_or_else(|e| e.into_inner()) = Some(staged.clone());
        Ok(Decision::Staged(staged))
    }

    /// Refuses a manifest older than the newest one accepted (kept in the cache dir across relaunches), so a
    /// replayed old manifest cannot take volunteers back to an old build.
    fn check_fresh(&self, issued_at: u64) -> Result<(), UpdateError> {
        let file = self.cache_dir.join(NEWEST_FILE);
        let newest: u64 = std::fs::read_to_string(&file).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
        if issued_at < newest {
            return Err(UpdateError::Replay { issued_at, newest });
        }
        if issued_at > newest {
            std::fs::write(&file, format!("{issued_at}\n")).map_err(|source| UpdateError::Record {
                what: "the manifest's date",
                file: file.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Copies a verified build next to the program when that folder is writable, else into the cache dir.
    async fn stage(&self, fetched: &Path, hash: BlobHash) -> Result<PathBuf, UpdateError> {
        use std::os::unix::fs::PermissionsExt;
        let name = format!(".blenderdist-update-{}", hash.short());
        let beside = self.own.path.parent().map(|dir| dir.join(&name));
        let in_cache = self.cache_dir.join("bin").join(format!("blenderdist-{}", hash.to_hex()));
        for target in beside.into_iter().chain([in_cache]) {
            if let Some(dir) = target.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if std::fs::copy(fetched, &target).is_ok()
                && std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).is_ok()
            {
                return Ok(target);
            }
        }
        Err(UpdateError::Stage)
    }

    /// Puts the staged build in place of the program (atomically, when its folder is writable) and returns the
    /// file to relaunch.
    pub fn install(&self, staged: &Path) -> PathBuf {
        let beside = staged.parent() == self.own.path.parent();
        if beside && std::fs::rename(staged, &self.own.path).is_ok() {
            return self.own.path.clone();
        }
        staged.to_path_buf()
    }
}

/// How long an owner may take to answer an update request, so one that stops answering never holds the updater.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads an owner's reply header within [`REPLY_TIMEOUT`].
async fn reply<T: for<'de> serde::Deserialize<'de>>(stream: &mut libp2p::Stream, max: u32) -> Result<T, UpdateError> {
    match tokio::time::timeout(REPLY_TIMEOUT, read_header_max(stream, max)).await {
        Ok(header) => header.map_err(|e| UpdateError::Network(e.to_string())),
        Err(_) => Err(UpdateError::Network(format!("no answer in {} s", REPLY_TIMEOUT.as_secs()))),
    }
}

/// Asks `owner` for its signed manifest over the unversioned update protocol (`None`: it has none).
pub async fn fetch_manifest(client: &Client, owner: PeerId) -> Result<Option<SignedManifest>, UpdateError> {
    let net = |e: &dyn std::fmt::Display| UpdateError::Network(e.to_string());
    let mut stream = client.open_stream(owner, UPDATE_PROTOCOL).await.map_err(|e| net(&e))?;
    write_header(&mut stream, &UpdateRequest::Manifest).await.map_err(|e| net(&e))?;
    reply(&mut stream, MAX_MANIFEST as u32).await
}

/// Fetches a build by hash from the owner into the blob cache, verified; a corrupt blob is refused.
async fn fetch(
    client: &Client,
    owner: PeerId,
    build: &PlatformBinary,
    cache_dir: &Path,
) -> Result<PathBuf, UpdateError> {
    let net = |e: &dyn std::fmt::Display| UpdateError::Network(e.to_string());
    let blobs = BlobStore::open(cache_dir.join("updates")).map_err(UpdateError::Transfer)?;
    let mut stream = client.open_stream(owner, UPDATE_PROTOCOL).await.map_err(|e| net(&e))?;
    write_header(&mut stream, &UpdateRequest::Build { hash: build.hash }).await.map_err(|e| net(&e))?;
    match reply(&mut stream, MAX_BLOB_HEADER).await? {
        BlobReply::Found { size } if size == build.size => {
            blobs.receive(&build.hash, size, &mut stream).await.map_err(|e| match e {
                e @ crate::store::blobs::BlobError::HashMismatch { .. } => UpdateError::Corrupt(e),
                other => UpdateError::Transfer(other),
            })
        }
        other => Err(UpdateError::NotServed { hash: build.hash.short(), reply: format!("{other:?}") }),
    }
}

/// Logs a refusal the way every caller should.
pub fn log_refusal(from: PeerId, reason: &UpdateError) {
    warn!("refused an update manifest from {from}: {reason}");
}
