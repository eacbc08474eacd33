//! Content-addressed blob store: .blend files and rendered frames, each named by the sha256 of its bytes.
//!
//! Layout: `dir/<64 hex digits>` holds complete, verified blobs; `dir/tmp/` holds blobs being received. `tmp` lives
//! inside `dir` so both are on one filesystem and the final rename is atomic: a blob path either does not exist or
//! holds exactly the bytes its name promises (the data is fsync'ed before the rename and the directory after it, so
//! this holds across power loss too). `tmp` is emptied on open, since anything there was cut off by a crash.
//!
//! Blobs can be GBs, so data moves in chunks (64 KiB from the network, batches of 256 KiB to and from disk) and is
//! hashed as it passes; no blob is ever held in memory whole. The network side uses `futures::io` traits (libp2p
//! streams), the disk side blocking threads, one trip per batch (`store::disk`).
//!
//! Every temp file is owned by a guard that deletes it when dropped, so a receive that fails *or is cancelled*
//! (e.g. by the caller's timeout — a stalled peer looks like a pending read, which only a timeout can end) leaves
//! nothing behind.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use sha2::{Digest, Sha256};
use tokio::fs::File;

use super::disk::{self, BatchReader, BatchWriter};
use crate::protocol::{BlobHash, MAX_BLOB_SIZE};

/// Size of every read and write: large enough to amortise syscalls, small enough to never matter for memory.
const CHUNK: usize = 64 * 1024;
/// A transfer that makes no progress for this long is abandoned, so a stalled peer cannot hold a frame forever.
pub const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Subdirectory of the store for partial blobs.
const TMP_DIR: &str = "tmp";
/// Makes temp names unique within the process, so concurrent receives of one blob never share a file.
static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// What can go wrong moving a blob. Messages name the blob (short hash) or the file involved.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A local file or directory operation failed.
    #[error("blob store i/o on {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// Reading the blob from the peer's stream failed (reset, closed with an error).
    #[error("blob {}: receiving failed: {source}", blob.short())]
    Recv { blob: BlobHash, source: io::Error },
    /// Writing a file to the peer's stream failed.
    #[error("sending {}: {source}", path.display())]
    Send { path: PathBuf, source: io::Error },
    /// The stream ended (or a copied file shrank or grew) before the announced size.
    #[error("blob {}: got {actual} bytes, expected {expected}", blob.short())]
    SizeMismatch { blob: BlobHash, expected: u64, actual: u64 },
    /// The bytes do not hash to the announced name; nothing was stored.
    #[error("blob {}: content hashes to {} instead", expected.short(), actual.short())]
    HashMismatch { expected: BlobHash, actual: BlobHash },
    /// Announced or found size over [`MAX_BLOB_SIZE`]; refused before anything is read or moved.
    #[error("blob {}: {size} bytes is over the {max}-byte limit", blob.short())]
    TooLarge { blob: BlobHash, size: u64, max: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BlobError {
    let path = path.to_path_buf();
    move |source| BlobError::Io { path, source }
}

/// A directory of verified blobs. Open it once per process and share it: opening empties `tmp`, which would
/// destroy the partial files of receives still running on another handle.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Creates `dir` and `dir/tmp` if missing and removes whatever a previous run left in `tmp`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let dir = dir.into();
        let tmp = dir.join(TMP_DIR);
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        for entry in std::fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let path = entry.map_err(io_err(&tmp))?.path();
            let removed = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir_all(&path));
            removed.map_err(io_err(&path))?;
        }
        Ok(Self { dir })
    }

    /// Where the blob lives (or would live) in the store.
    pub fn path(&self, hash: &BlobHash) -> PathBuf {
        self.dir.join(hash.to_hex())
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh temp path for a blob assembled elsewhere (from chunks), in the store's `tmp` folder (emptied at open);
    /// [`persist`] it to [`BlobStore::path`] once it is verified.
    pub fn temp_path(&self, hash: &BlobHash) -> PathBuf {
        let n = NEXT_TMP.fetch_add(1, Ordering::Relaxed);
        self.dir.join(TMP_DIR).join(format!("{}.{}.{n}.chunks", hash.to_hex(), std::process::id()))
    }

    /// Whether the blob is in the store. Only complete, verified blobs are ever at their path.
    pub fn contains(&self, hash: &BlobHash) -> bool {
        self.path(hash).is_file()
    }

    /// Streams exactly `size` bytes from `reader` into the store, hashing as it goes; verifies size and hash; on
    /// success the blob is fsync'ed, renamed into place and its path returned. On any failure or cancellation the
    /// temp file is removed and nothing lands. Bytes after the first `size` are left unread in `reader`.
    ///
    /// A blob already present is received again and replaced by identical bytes; callers that want to skip the
    /// transfer check [`BlobStore::contains`] before asking for it.
    pub async fn receive<R: AsyncRead + Unpin>(
        &self,
        hash: &BlobHash,
        size: u64,
        reader: &mut R,
    ) -> Result<PathBuf, BlobError> {
        check_size(hash, size)?;
        let tmp = self.new_tmp(hash);
        let guard = TempGuard(Some(&tmp));
        stream_into(reader, size, hash, BatchWriter::new(&tmp, true), &tmp, |_, _| ()).await?;
        let dest = self.path(hash);
        persist(&tmp, &dest).await?;
        guard.disarm();
        Ok(dest)
    }

    /// Registers an existing file (e.g. a just-rendered frame) by hashing it and moving it into the store: a rename
    /// on the same filesystem, otherwise a verified copy followed by removing the original. Returns (hash, size,
    /// path). The file must be complete and no longer written to, and writable by us (it is fsync'ed before the
    /// rename). If the blob is already stored the original is simply removed; a file that already is the stored
    /// blob is left alone. On failure the original stays where it was.
    pub async fn insert_file(&self, file: &Path) -> Result<(BlobHash, u64, PathBuf), BlobError> {
        let (hash, size) = digest_blocking(file.to_path_buf(), true).await?;
        check_size(&hash, size)?;
        let dest = self.path(&hash);
        if same_file(file, &dest).await {
            return Ok((hash, size, dest));
        }
        match tokio::fs::rename(file, &dest).await {
            Ok(()) => sync_dir(&self.dir).await?,
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                if !self.contains(&hash) {
                    self.copy_in(file, &hash, size).await?;
                }
                tokio::fs::remove_file(file).await.map_err(io_err(file))?;
            }
            Err(e) => return Err(io_err(file)(e)),
        }
        Ok((hash, size, dest))
    }

    /// Copies `file` into the store under `hash`, re-hashing the copy: the file may have changed since it was
    /// hashed, and the store must never hold a blob under the wrong name.
    async fn copy_in(&self, file: &Path, hash: &BlobHash, size: u64) -> Result<(), BlobError> {
        let tmp = self.new_tmp(hash);
        let guard = TempGuard(Some(&tmp));
        let (src, out_path) = (file.to_path_buf(), tmp.clone());
        let copied = tokio::task::spawn_blocking(move || {
            let out = std::fs::OpenOptions::new().write(true).create_new(true).open(&out_path);
            let mut out = out.map_err(io_err(&out_path))?;
            let digest = digest_file(&src, Some((&mut out, &out_path)), false)?;
            out.sync_all().map_err(io_err(&out_path))?;
            Ok(digest)
        });
        let (actual, actual_size) = copied.await.map_err(|e| io_err(file)(io::Error::other(e)))??;
        verify(hash, size, actual_size, actual)?;
        persist(&tmp, &self.path(hash)).await?;
        guard.disarm();
        Ok(())
    }

    /// A fresh name in `tmp` for the blob: pid and counter make it unique, and it is created with `create_new`.
    fn new_tmp(&self, hash: &BlobHash) -> PathBuf {
        let n = NEXT_TMP.fetch_add(1, Ordering::Relaxed);
        self.dir.join(TMP_DIR).join(format!("{}.{}.{n}.part", hash.to_hex(), std::process::id()))
    }
}

/// Streams `size` bytes from `reader` into `dest_tmp` (a temp path the caller chose, created or truncated),
/// verifying size and hash, and fsyncs it; removes `dest_tmp` on failure or cancellation. The host uses this to
/// receive a frame into RENDERDIR's temp folder, then [`persist`]s it into the job folder before marking it done.
pub async fn receive_verified<R: AsyncRead + Unpin>(
    reader: &mut R,
    size: u64,
    expected: &BlobHash,
    dest_tmp: &Path,
) -> Result<(), BlobError> {
    receive_verified_then(reader, size, expected, dest_tmp, |_, _| ()).await
}

/// [`receive_verified`], then `then` on the verified file in the same trip to a blocking thread as its last write
/// and fsync: given the path and, when the file came in one batch, its bytes. The host checks a frame's image so.
pub async fn receive_verified_then<R: AsyncRead + Unpin, T: Send + 'static>(
    reader: &mut R,
    size: u64,
    expected: &BlobHash,
    dest_tmp: &Path,
    then: impl FnOnce(&Path, Option<&[u8]>) -> T + Send + 'static,
) -> Result<T, BlobError> {
    check_size(expected, size)?;
    let guard = TempGuard(Some(dest_tmp));
    let done = stream_into(reader, size, expected, BatchWriter::new(dest_tmp, false), dest_tmp, then).await?;
    guard.disarm();
    Ok(done)
}

/// Renames `from` to `to` (same filesystem, replacing `to`) and fsyncs `to`'s directory, so that once this returns
/// the file is at `to` even after a power cut. Call it before recording anything that relies on the file.
pub async fn persist(from: &Path, to: &Path) -> Result<(), BlobError> {
    tokio::fs::rename(from, to).await.map_err(io_err(to))?;
    let parent = to.parent().filter(|p| !p.as_os_str().is_empty());
    sync_dir(parent.unwrap_or(Path::new("."))).await
}

/// Streams a file to a writer, read in batches of [`disk::BATCH`], and flushes it (the writer is not closed). Returns
/// bytes sent.
pub async fn send_file<W: AsyncWrite + Unpin>(path: &Path, writer: &mut W) -> Result<u64, BlobError> {
    let mut file = BatchReader::new(path);
    let mut buf = Vec::new();
    let mut sent = 0u64;
    loop {
        buf = file.read(buf).await.map_err(io_err(path))?;
        let n = buf.len();
        if n == 0 {
            break;
        }
        write_within(writer, &buf, path).await?;
        sent += n as u64;
    }
    writer.flush().await.map_err(send_err(path))?;
    Ok(sent)
}

/// [`send_file`] of the file at `path` whose bytes `kept` already holds, when it does (see [`hash_file_keeping`]).
pub async fn send_kept<W: AsyncWrite + Unpin>(
    path: &Path,
    kept: Option<&[u8]>,
    writer: &mut W,
) -> Result<u64, BlobError> {
    let Some(bytes) = kept else { return send_file(path, writer).await };
    write_within(writer, bytes, path).await?;
    writer.flush().await.map_err(send_err(path))?;
    Ok(bytes.len() as u64)
}

/// Writes `buf`, failing when the peer takes none of it for [`STALL_TIMEOUT`].
async fn write_within<W: AsyncWrite + Unpin>(writer: &mut W, buf: &[u8], path: &Path) -> Result<(), BlobError> {
    match tokio::time::timeout(STALL_TIMEOUT, writer.write_all(buf)).await {
        Ok(written) => written.map_err(send_err(path)),
        Err(_) => {
            let e = io::Error::new(io::ErrorKind::TimedOut, "the peer took no data for a minute");
            Err(send_err(path)(e))
        }
    }
}

fn send_err(path: &Path) -> impl FnOnce(io::Error) -> BlobError {
    let path = path.to_path_buf();
    move |source| BlobError::Send { path, source }
}

/// sha256 and size of a file, streamed on a blocking thread (files can be GBs; hashing them would stall the runtime).
pub async fn hash_file(path: &Path) -> Result<(BlobHash, u64), BlobError> {
    digest_blocking(path.to_path_buf(), false).await
}

/// [`hash_file`], keeping the file's bytes when it holds at most [`disk::BATCH`] (a rendered frame about to be sent:
/// one trip to a blocking thread and one read instead of two of each).
pub async fn hash_file_keeping(path: &Path) -> Result<(BlobHash, u64, Option<Vec<u8>>), BlobError> {
    let task_path = path.to_path_buf();
    let task = tokio::task::spawn_blocking(move || {
        let path = task_path.as_path();
        let size = std::fs::metadata(path).map_err(io_err(path))?.len();
        if size > disk::BATCH as u64 {
            return digest_file(path, None, false).map(|(hash, size)| (hash, size, None));
        }
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        Ok((BlobHash::of_bytes(&bytes), bytes.len() as u64, Some(bytes)))
    });
    task.await.map_err(|e| io_err(path)(io::Error::other(e)))?
}

fn check_size(hash: &BlobHash, size: u64) -> Result<(), BlobError> {
    let (blob, max) = (*hash, MAX_BLOB_SIZE);
    if size > max {
        return Err(BlobError::TooLarge { blob, size, max });
    }
    Ok(())
}

/// Checks what arrived against what was announced; size first, since the hash of a cut-off blob says nothing.
fn verify(blob: &BlobHash, expected: u64, actual: u64, hash: BlobHash) -> Result<(), BlobError> {
    if actual != expected {
        let blob = *blob;
        return Err(BlobError::SizeMismatch { blob, expected, actual });
    }
    if hash != *blob {
        return Err(BlobError::HashMismatch { expected: *blob, actual: hash });
    }
    Ok(())
}

/// Copies exactly `size` bytes from `reader` to `file` (written in batches of [`disk::BATCH`]), hashing them, then
/// verifies and fsyncs the file, and runs `then` (see [`BatchWriter::finish`]). The shared core of every receive;
/// the caller's guard removes `path` on error.
async fn stream_into<R: AsyncRead + Unpin, T: Send + 'static>(
    reader: &mut R,
    size: u64,
    blob: &BlobHash,
    mut file: BatchWriter,
    path: &Path,
    then: impl FnOnce(&Path, Option<&[u8]>) -> T + Send + 'static,
) -> Result<T, BlobError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut pending = Vec::with_capacity(usize::try_from(size).map_or(disk::BATCH, |s| s.min(disk::BATCH)));
    let mut received = 0u64;
    while received < size {
        let want = usize::try_from(size - received).map_or(CHUNK, |left| left.min(CHUNK));
        let read = tokio::time::timeout(STALL_TIMEOUT, reader.read(&mut buf[..want]));
        let Ok(read) = read.await else {
            let source = io::Error::new(io::ErrorKind::TimedOut, format!("no data for {}s", STALL_TIMEOUT.as_secs()));
            return Err(BlobError::Recv { blob: *blob, source });
        };
        let n = match read {
            // A clean end of stream, or a reader that reports the end as an error: `verify` reports the shortfall.
            Ok(0) => break,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(BlobError::Recv { blob: *blob, source }),
            Ok(n) => n,
        };
        hasher.update(&buf[..n]);
        pending.extend_from_slice(&buf[..n]);
        received += n as u64;
        if pending.len() >= disk::BATCH && received < size {
            pending = file.write(pending).await.map_err(io_err(path))?;
        }
    }
    verify(blob, size, received, BlobHash::from_hasher(hasher))?;
    file.finish(pending, then).await.map_err(io_err(path))
}

/// [`digest_file`] on a blocking thread.
async fn digest_blocking(path: PathBuf, sync: bool) -> Result<(BlobHash, u64), BlobError> {
    let task_path = path.clone();
    let task = tokio::task::spawn_blocking(move || digest_file(&task_path, None, sync));
    task.await.map_err(|e| io_err(&path)(io::Error::other(e)))?
}

/// Blocking: hashes `src` in 64 KiB chunks, also writing it to `copy` when given; fsyncs `src` when `sync` (which
/// then needs write access to it). Returns hash and size.
fn digest_file(
    src: &Path,
    mut copy: Option<(&mut std::fs::File, &Path)>,
    sync: bool,
) -> Result<(BlobHash, u64), BlobError> {
    use std::io::{Read, Write};
    let file = std::fs::OpenOptions::new().read(true).write(sync).open(src);
    let mut file = file.map_err(io_err(src))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(src)(e)),
        };
        hasher.update(&buf[..n]);
        if let Some((out, out_path)) = copy.as_mut() {
            out.write_all(&buf[..n]).map_err(io_err(out_path))?;
        }
        size += n as u64;
    }
    if sync {
        file.sync_all().map_err(io_err(src))?;
    }
    Ok((BlobHash::from_hasher(hasher), size))
}

/// Makes a rename in `dir` durable. Only Unix can open and fsync a directory; elsewhere this is a no-op.
async fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    #[cfg(unix)]
    File::open(dir).await.map_err(io_err(dir))?.sync_all().await.map_err(io_err(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Whether both paths name one existing file (so moving one onto the other must not delete it).
async fn same_file(a: &Path, b: &Path) -> bool {
    match (tokio::fs::canonicalize(a).await, tokio::fs::canonicalize(b).await) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Removes a temp file when dropped unless disarmed, covering errors and cancelled futures alike. The removal is a
/// quick blocking unlink; if it fails the file stays in `tmp`, which the next open empties.
struct TempGuard<'a>(Option<&'a Path>);

impl TempGuard<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard<'_> {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
#[path = "blobs_tests.rs"]
mod tests;
