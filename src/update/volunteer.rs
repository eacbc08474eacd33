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
        read_header, read_header_max, write_header, BlobHash, BlobReply, PlatformBinary, SignedManifest, UpdateRequest,
        MAX_MANIFEST, UPDATE_PROTOCOL,
    },
    store::blobs::BlobStore,
};

/// Where a volunteer records the owner it trusts when it found it by mDNS or joined it without `/p2p/ID`.
pub const TRUST_FILE: &str = "trusted-owner";
/// Where a volunteer records when the newest manifest it accepted was issued.
pub const NEWEST_FILE: &str = "newest-manifest";

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
    pub fn trusts(&self, owner: PeerId) -> Result<(), String> {
        if !self.pinned.is_empty() {
            return match self.pinned.contains(&owner) {
                true => Ok(()),
                false => Err(format!("{owner} is not the owner named in this volunteer's bootstrap address")),
            };
        }
        let file = self.cache_dir.join(TRUST_FILE);
        match std::fs::read_to_string(&file) {
            Ok(text) if text.trim() == owner.to_string() => Ok(()),
            Ok(text) => Err(format!(
                "the owner changed: this volunteer trusts {} (recorded in {}), not {owner}; \
                 delete that file to trust the new owner",
                text.trim(),
                file.display()
            )),
            Err(_) => {
                std::fs::write(&file, format!("{owner}\n"))
                    .map_err(|e| format!("cannot record the trusted owner in {}: {e}", file.display()))?;
                info!("trusting owner {owner} for updates from now on (recorded in {})", file.display());
                Ok(())
            }
        }
    }

    /// Handles a manifest from `from`: refuses it (with the reason), or decides, fetching and staging a new build.
    pub async fn consider(&self, client: &Client, from: PeerId, signed: &SignedManifest) -> Result<Decision, String> {
        let _one_at_a_time = self.considering.lock().await;
        // The signature first: only a manifest really signed by `from` may make it the trusted owner.
        let manifest = manifest::verify(signed, from).map_err(|e| e.to_string())?;
        self.trusts(from)?;
        self.check_fresh(manifest.issued_at)?;
        let Some(build) = manifest.binaries.iter().find(|b| b.target == manifest::TARGET) else {
            return Err(format!("the owner offers no build for {}", manifest::TARGET));
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
            return Err(format!("build {} was already refused", build.hash.short()));
        }
        info!("owner {from} runs build {}; fetching it", build.hash.short());
        // A failed transfer may be retried with the next manifest; a corrupt build or a failed check never is.
        let fetched = fetch(client, from, build, &self.cache_dir).await.inspect_err(|e| {
            if e.starts_with("refusing") {
                self.tried.lock().unwrap_or_else(|e| e.into_inner()).insert(build.hash);
            }
        })?;
        let staged = self.stage(&fetched, build.hash).await?;
        if let Err(e) = self_check(&staged).await {
            let _ = std::fs::remove_file(&staged);
            self.tried.lock().unwrap_or_else(|e| e.into_inner()).insert(build.hash);
            return Err(format!(
                "the new build {} failed its self-check ({e}); keeping this program",
                build.hash.short()
            ));
        }
        info!("build {} passed its self-check; switching once the frames in flight are done", build.hash.short());
        *self.staged.lock().unwrap_or_else(|e| e.into_inner()) = Some(staged.clone());
        Ok(Decision::Staged(staged))
    }

    /// Refuses a manifest older than the newest one accepted (kept in the cache dir across relaunches), so a
    /// replayed old manifest cannot take volunteers back to an old build.
    fn check_fresh(&self, issued_at: u64) -> Result<(), String> {
        let file = self.cache_dir.join(NEWEST_FILE);
        let newest: u64 = std::fs::read_to_string(&file).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
        if issued_at < newest {
            return Err(format!(
                "the manifest was issued at {issued_at}, before one already seen ({newest}): a replay"
            ));
        }
        if issued_at > newest {
            std::fs::write(&file, format!("{issued_at}\n"))
                .map_err(|e| format!("cannot record the manifest's date in {}: {e}", file.display()))?;
        }
        Ok(())
    }

    /// Copies a verified build next to the program when that folder is writable, else into the cache dir.
    async fn stage(&self, fetched: &Path, hash: BlobHash) -> Result<PathBuf, String> {
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
        Err("cannot write the new build anywhere".into())
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

/// Asks `owner` for its signed manifest over the unversioned update protocol (`None`: it has none).
pub async fn fetch_manifest(client: &Client, owner: PeerId) -> Result<Option<SignedManifest>, String> {
    let mut stream = client.streams().open_stream(owner, UPDATE_PROTOCOL).await.map_err(|e| e.to_string())?;
    write_header(&mut stream, &UpdateRequest::Manifest).await.map_err(|e| e.to_string())?;
    read_header_max(&mut stream, MAX_MANIFEST as u32).await.map_err(|e| e.to_string())
}

/// Fetches a build by hash from the owner into the blob cache, verified; a corrupt blob is refused.
async fn fetch(client: &Client, owner: PeerId, build: &PlatformBinary, cache_dir: &Path) -> Result<PathBuf, String> {
    let blobs = BlobStore::open(cache_dir.join("updates")).map_err(|e| e.to_string())?;
    let mut stream = client.streams().open_stream(owner, UPDATE_PROTOCOL).await.map_err(|e| e.to_string())?;
    write_header(&mut stream, &UpdateRequest::Build { hash: build.hash }).await.map_err(|e| e.to_string())?;
    match read_header(&mut stream).await.map_err(|e| e.to_string())? {
        BlobReply::Found { size } if size == build.size => {
            blobs.receive(&build.hash, size, &mut stream).await.map_err(|e| match e {
                // Bytes that are not the build the owner signed: never tried again.
                crate::store::blobs::BlobError::HashMismatch { .. } => format!("refusing the new build: {e}"),
                // A broken or stalled transfer: the next manifest tries again.
                other => format!("the transfer of the new build failed: {other}"),
            })
        }
        other => Err(format!("the owner did not serve build {}: {other:?}", build.hash.short())),
    }
}

/// Logs a refusal the way every caller should.
pub fn log_refusal(from: PeerId, reason: &str) {
    warn!("refused an update manifest from {from}: {reason}");
}
