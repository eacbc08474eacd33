//! A whole .blend file (plain, gzip or zstd) as a volunteer reads the owner's files: `read_version`,
//! `absolute_paths`, and `rewrite_paths` into a copy. The file goes through a scratch folder in memory
//! (/dev/shm when there is one), since these functions read paths.
//!
//! After a rewrite that maps every absolute path to one new path, the copy must hold no other absolute path.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use blenderdist::blendfile::{absolute_paths, read_version, rewrite_paths};
use libfuzzer_sys::fuzz_target;

/// Where the input and the copy go: one folder per fuzzing process.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        let dir = base.join(format!("blenderdist-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch folder");
        dir
    })
}

const NEW: &str = "/fuzz/new.png";

fuzz_target!(|data: &[u8]| {
    let input = scratch().join("in.blend");
    let output = scratch().join("out.blend");
    std::fs::write(&input, data).expect("scratch is writable");
    let _ = read_version(&input);
    let _ = absolute_paths(&input);
    if rewrite_paths(&input, &output, &|_| Some(NEW.to_string())).is_ok() {
        let left = absolute_paths(&output).expect("a rewritten file reads");
        assert!(left.iter().all(|p| p == NEW), "{left:?}");
        let _ = std::fs::remove_file(&output);
    }
});
