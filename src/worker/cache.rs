//! The volunteer's blob cache size limit (`join --cache-size`): least recently used blobs go first.
//!
//! A blob's modification time is its last use: a fetch that needs it (or finds it already cached) touches it.
//! Blobs of the job being fetched, and blobs still being fetched, are never evicted. Layouts hold hard links to
//! blobs, so an evicted blob's space returns once its layouts are pruned (the newest 8 are kept).

use std::{collections::HashSet, path::Path, time::SystemTime};

use tracing::info;

use crate::protocol::BlobHash;

/// Marks blobs as used now. Blocking.
pub fn touch(dir: &Path, blobs: &[BlobHash]) {
    let now = SystemTime::now();
    for hash in blobs {
        if let Ok(file) = std::fs::File::options().write(true).open(dir.join(hash.to_hex())) {
            let _ = file.set_modified(now);
        }
    }
}

/// Removes the least recently used blobs of `dir` until they take at most `limit` bytes, never one in `keep`.
/// Returns the bytes freed. Blocking.
pub fn evict(dir: &Path, limit: u64, keep: &HashSet<BlobHash>) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut blobs: Vec<(SystemTime, u64, std::path::PathBuf, BlobHash)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let hash = BlobHash::from_hex(&e.file_name().to_string_lossy())?;
            let meta = e.metadata().ok().filter(|m| m.is_file())?;
            Some((meta.modified().ok()?, meta.len(), e.path(), hash))
        })
        .collect();
    let mut total: u64 = blobs.iter().map(|b| b.1).sum();
    blobs.sort_by_key(|b| b.0);
    let mut freed = 0;
    for (_, size, path, hash) in blobs {
        if total <= limit {
            break;
        }
        if keep.contains(&hash) || std::fs::remove_file(&path).is_err() {
            continue;
        }
        total -= size;
        freed += size;
    }
    if freed > 0 {
        info!("cache: evicted {freed} bytes of least recently used files (limit {limit} bytes)");
    }
    freed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn least_recently_used_go_first_and_kept_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let mut hashes = Vec::new();
        for (i, age) in [(0u8, 30u64), (1, 20), (2, 10), (3, 40)] {
            let bytes = vec![i; 100];
            let hash = BlobHash::of_bytes(&bytes);
            let path = dir.path().join(hash.to_hex());
            std::fs::write(&path, &bytes).unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(SystemTime::now() - Duration::from_secs(age)).unwrap();
            hashes.push(hash);
        }
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        // Blob 3 is the oldest but kept; then 0 (30 s) goes, then 1 (20 s).
        let keep: HashSet<BlobHash> = [hashes[3]].into();
        assert_eq!(evict(dir.path(), 200, &keep), 200);
        let left = |h: &BlobHash| dir.path().join(h.to_hex()).exists();
        assert!(!left(&hashes[0]) && !left(&hashes[1]));
        assert!(left(&hashes[2]) && left(&hashes[3]));
        // Touching makes a blob recent: now 3 is newer than 2.
        touch(dir.path(), &[hashes[3]]);
        assert_eq!(evict(dir.path(), 100, &HashSet::new()), 100);
        assert!(!left(&hashes[2]) && left(&hashes[3]));
        assert_eq!(evict(dir.path(), 100, &HashSet::new()), 0);
    }
}
