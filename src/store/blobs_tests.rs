//! Tests of the blob store: round trips, refusals, cleanup and bounded memory.
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{stream, StreamExt as _, TryStreamExt as _};

use super::*;

/// Delegates to `inner`, recording the largest read it was asked for.
struct MaxRead<R> {
    inner: R,
    max: usize,
}

impl<R: AsyncRead + Unpin> AsyncRead for MaxRead<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.max = self.max.max(buf.len());
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// `data`, then an error (`fail`) or a stream that never delivers anything more.
fn then(data: &[u8], fail: bool) -> impl AsyncRead + Unpin + '_ {
    let err: Option<io::Result<Vec<u8>>> = fail.then(|| Err(io::ErrorKind::ConnectionReset.into()));
    let tail = stream::iter(err).chain(stream::pending());
    futures::AsyncReadExt::chain(data, tail.into_async_read())
}

fn new_store() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    (dir, store)
}

fn tmp_is_empty(store: &BlobStore) -> bool {
    std::fs::read_dir(store.dir.join(TMP_DIR)).unwrap().next().is_none()
}

#[tokio::test]
async fn receive_roundtrip_then_send() {
    let (_dir, store) = new_store();
    let data = b"0123456789".repeat(20_000); // several chunks
    let hash = BlobHash::of_bytes(&data);
    let stream = [&data[..], b"next message"].concat();
    let mut reader = &stream[..];
    let path = store.receive(&hash, data.len() as u64, &mut reader).await.unwrap();
    assert_eq!(reader, b"next message", "bytes after the blob must stay unread");
    assert_eq!(path, store.path(&hash));
    assert!(store.contains(&hash));
    assert_eq!(std::fs::read(&path).unwrap(), data);
    let mut sent = Vec::new();
    assert_eq!(send_file(&path, &mut sent).await.unwrap(), data.len() as u64);
    assert_eq!(sent, data);
    assert_eq!(hash_file(&path).await.unwrap(), (hash, data.len() as u64));
    assert!(tmp_is_empty(&store));
}

#[tokio::test]
async fn bad_streams_land_nothing() {
    let (_dir, store) = new_store();
    let data = vec![7u8; 200_000];
    let (hash, other) = (BlobHash::of_bytes(&data), BlobHash::of_bytes(b"other"));
    let err = store.receive(&other, 200_000, &mut &data[..]).await.unwrap_err();
    assert!(matches!(err, BlobError::HashMismatch { expected, actual } if expected == other && actual == hash));
    assert!(err.to_string().contains(&other.short()), "{err}");
    let err = store.receive(&hash, 200_001, &mut &data[..]).await.unwrap_err();
    assert!(matches!(err, BlobError::SizeMismatch { actual: 200_000, .. }), "{err}");
    let err = store.receive(&hash, 300_000, &mut then(&data, true)).await.unwrap_err();
    assert!(matches!(err, BlobError::Recv { .. }), "{err}");
    let huge = MAX_BLOB_SIZE + 1;
    let err = store.receive(&hash, huge, &mut &data[..]).await.unwrap_err();
    assert!(matches!(err, BlobError::TooLarge { .. }), "{err}");
    // A stalled peer is ended by the caller's timeout, which drops the receive mid-way.
    let mut stalling = then(&data, false);
    let receive = store.receive(&hash, 300_000, &mut stalling);
    assert!(tokio::time::timeout(Duration::from_millis(200), receive).await.is_err());
    assert!(!store.contains(&hash) && !store.contains(&other));
    assert!(tmp_is_empty(&store));
}

#[tokio::test]
async fn receive_verified_then_persist() {
    let dir = tempfile::tempdir().unwrap();
    let (part, done) = (dir.path().join("0001.png.part"), dir.path().join("0001.png"));
    let (data, hash) = (b"png bytes", BlobHash::of_bytes(b"png bytes"));
    let err = receive_verified(&mut &data[..4], 9, &hash, &part).await.unwrap_err();
    assert!(matches!(err, BlobError::SizeMismatch { .. }), "{err}");
    assert!(!part.exists());
    receive_verified(&mut &data[..], 9, &hash, &part).await.unwrap();
    persist(&part, &done).await.unwrap();
    assert_eq!(std::fs::read(&done).unwrap(), data);
    assert!(!part.exists());
}

#[tokio::test]
async fn insert_file_moves_into_store() {
    let (dir, store) = new_store();
    let src = dir.path().join("0001.png");
    std::fs::write(&src, b"rendered").unwrap();
    let (hash, size, path) = store.insert_file(&src).await.unwrap();
    assert_eq!((hash, size), (BlobHash::of_bytes(b"rendered"), 8));
    assert_eq!(path, store.path(&hash));
    assert_eq!(std::fs::read(&path).unwrap(), b"rendered");
    assert!(!src.exists());
    // Same content again: the original goes, the blob stays. The blob itself: left alone.
    std::fs::write(&src, b"rendered").unwrap();
    assert_eq!(store.insert_file(&src).await.unwrap().2, path);
    assert!(!src.exists());
    assert_eq!(store.insert_file(&path).await.unwrap().0, hash);
    assert_eq!(std::fs::read(&path).unwrap(), b"rendered");
    // The copy used across filesystems re-verifies what it copied.
    std::fs::write(&src, b"copied").unwrap();
    let copied = BlobHash::of_bytes(b"copied");
    store.copy_in(&src, &copied, 6).await.unwrap();
    assert_eq!(std::fs::read(store.path(&copied)).unwrap(), b"copied");
    let before = BlobHash::of_bytes(b"before");
    let err = store.copy_in(&src, &before, 6).await.unwrap_err();
    assert!(matches!(err, BlobError::HashMismatch { .. }), "{err}");
    assert!(tmp_is_empty(&store));
}

#[test]
fn open_empties_tmp_and_keeps_blobs() {
    let (dir, store) = new_store();
    let tmp = dir.path().join("blobs").join(TMP_DIR);
    std::fs::write(tmp.join("stale.part"), b"x").unwrap();
    std::fs::create_dir(tmp.join("stale-dir")).unwrap();
    std::fs::write(tmp.join("stale-dir").join("f"), b"x").unwrap();
    let kept = BlobHash::of_bytes(b"kept");
    std::fs::write(store.path(&kept), b"kept").unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    assert!(tmp_is_empty(&store));
    assert!(store.contains(&kept));
}

#[tokio::test]
async fn streams_64_mib_in_chunks() {
    const LEN: u64 = 64 * 1024 * 1024;
    let (_dir, store) = new_store();
    let (mut hasher, chunk) = (Sha256::new(), vec![0x5Au8; CHUNK]);
    (0..LEN / CHUNK as u64).for_each(|_| hasher.update(&chunk));
    let hash = BlobHash::from_hasher(hasher);
    let inner = futures::io::repeat(0x5A).take(LEN);
    let mut reader = MaxRead { inner, max: 0 };
    let path = store.receive(&hash, LEN, &mut reader).await.unwrap();
    assert!(reader.max <= CHUNK, "asked for {} bytes at once", reader.max);
    assert_eq!(hash_file(&path).await.unwrap(), (hash, LEN));
    assert_eq!(send_file(&path, &mut futures::io::sink()).await.unwrap(), LEN);
}
