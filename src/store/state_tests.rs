//! Tests of the host's durable state.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::*;

fn record(blend: &[u8], first: u32, last: u32) -> JobRecord {
    let blend = BlobHash::of_bytes(blend);
    JobRecord { blend, first, last }
}

fn open_temp() -> (tempfile::TempDir, PathBuf, StateStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state").join("host.redb");
    let store = StateStore::open(&path).unwrap();
    (dir, path, store)
}

#[test]
fn roundtrip_and_reopen() {
    let (_dir, path, store) = open_temp();
    assert!(store.jobs().unwrap().is_empty());
    assert_eq!(store.job("a").unwrap(), None);
    store.put_job("b", &record(b"b", 1, 10)).unwrap();
    store.put_job("a", &record(b"a", 5, 6)).unwrap();
    assert_eq!(store.job("a").unwrap(), Some(record(b"a", 5, 6)));
    let names: Vec<_> = store.jobs().unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["a", "b"]);
    for f in [7, 3, 9, 3] {
        store.mark_done("b", f).unwrap();
    }
    assert_eq!(store.done_frames("b").unwrap(), [3, 7, 9]);
    assert!(store.done_frames("a").unwrap().is_empty());
    // A job whose name is a prefix of another's does not see its frames.
    store.put_job("b2", &record(b"b", 1, 10)).unwrap();
    store.mark_done("b2", 1).unwrap();
    assert_eq!(store.done_frames("b").unwrap(), [3, 7, 9]);
    let err = store.mark_done("nope", 1).unwrap_err();
    assert!(matches!(err, StateError::UnknownJob { .. }), "{err}");
    // Everything is still there after a reopen.
    drop(store);
    let store = StateStore::open(&path).unwrap();
    assert_eq!(store.job("a").unwrap(), Some(record(b"a", 5, 6)));
    assert_eq!(store.done_frames("b").unwrap(), [3, 7, 9]);
}

#[test]
fn new_blend_clears_done_frames_same_blend_keeps_them() {
    let (_dir, _path, store) = open_temp();
    store.put_job("j", &record(b"v1", 1, 10)).unwrap();
    store.mark_done("j", 2).unwrap();
    store.mark_done("j", 9).unwrap();
    // Same blend, narrower range: frames kept, even the one now outside the range.
    store.put_job("j", &record(b"v1", 1, 5)).unwrap();
    assert_eq!(store.done_frames("j").unwrap(), [2, 9]);
    store.put_job("j", &record(b"v2", 1, 5)).unwrap();
    assert!(store.done_frames("j").unwrap().is_empty());
    assert_eq!(store.job("j").unwrap(), Some(record(b"v2", 1, 5)));
}

#[test]
fn remove_job_drops_record_and_frames() {
    let (_dir, _path, store) = open_temp();
    store.put_job("j", &record(b"x", 1, 3)).unwrap();
    store.put_job("k", &record(b"x", 1, 3)).unwrap();
    store.mark_done("j", 1).unwrap();
    store.mark_done("k", 1).unwrap();
    store.remove_job("j").unwrap();
    store.remove_job("never-existed").unwrap();
    assert_eq!(store.job("j").unwrap(), None);
    assert!(store.done_frames("j").unwrap().is_empty());
    assert_eq!(store.done_frames("k").unwrap(), [1]);
    // Recreating the job with the same blend starts from nothing.
    store.put_job("j", &record(b"x", 1, 3)).unwrap();
    assert!(store.done_frames("j").unwrap().is_empty());
}

#[test]
fn corrupt_file_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.redb");
    std::fs::write(&path, vec![0xA5u8; 64 * 1024]).unwrap();
    let err = StateStore::open(&path).err().expect("junk must not open");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    // And the file was not replaced.
    assert_eq!(std::fs::read(&path).unwrap(), vec![0xA5u8; 64 * 1024]);

    // A real state file damaged past its header: the integrity check on open refuses it instead of panicking.
    let path = dir.path().join("damaged.redb");
    let store = StateStore::open(&path).unwrap();
    for j in 0..20 {
        store.put_job(&format!("job{j}"), &record(b"x", 0, 9)).unwrap();
        store.mark_done(&format!("job{j}"), 3).unwrap();
    }
    drop(store);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4096..].iter_mut().for_each(|b| *b ^= 0x5A);
    std::fs::write(&path, bytes).unwrap();
    let err = StateStore::open(&path).err().expect("damaged file must not open");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
}

#[test]
fn undecodable_record_is_an_error_naming_the_job() {
    let (_dir, path, store) = open_temp();
    let txn = store.db.begin_write().unwrap();
    txn.open_table(JOBS).unwrap().insert("bad", &b"\xff\x00"[..]).unwrap();
    txn.commit().unwrap();
    let err = store.job("bad").unwrap_err();
    assert!(matches!(err, StateError::Record { ref job, .. } if job == "bad"), "{err}");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    assert!(store.jobs().is_err());
    // put_job repairs it.
    store.put_job("bad", &record(b"x", 1, 2)).unwrap();
    assert_eq!(store.job("bad").unwrap(), Some(record(b"x", 1, 2)));
}

#[test]
fn hundred_thousand_done_frames() {
    let (_dir, path, store) = open_temp();
    store.put_job("big", &record(b"x", 0, 99_999)).unwrap();
    store.put_job("other", &record(b"x", 0, 9)).unwrap();
    store.mark_done("other", 5).unwrap();
    // A sample of real, fsync'ed calls for the per-commit cost ...
    let start = Instant::now();
    (99_000..100_000).rev().for_each(|f| store.mark_done("big", f).unwrap());
    eprintln!("mark_done: {:?} per commit", start.elapsed() / 1000);
    // ... and the other 99k frames in one transaction, stored exactly as mark_done stores them.
    let txn = store.db.begin_write().unwrap();
    let mut done = txn.open_table(DONE).unwrap();
    (0..99_000).for_each(|f| drop(done.insert(("big", f), ()).unwrap()));
    drop(done);
    txn.commit().unwrap();
    let start = Instant::now();
    assert_eq!(store.done_frames("big").unwrap(), (0..100_000).collect::<Vec<_>>());
    eprintln!("done_frames of 100k: {:?}", start.elapsed());
    drop(store);
    let start = Instant::now();
    let store = StateStore::open(&path).unwrap();
    eprintln!("reopen with integrity check: {:?}", start.elapsed());
    let start = Instant::now();
    store.put_job("big", &record(b"y", 0, 99_999)).unwrap();
    eprintln!("clearing 100k frames: {:?}", start.elapsed());
    assert!(store.done_frames("big").unwrap().is_empty());
    assert_eq!(store.done_frames("other").unwrap(), [5]);
}

#[test]
#[ignore = "100k fsync'ed commits: 40-90 s on a virtual disk"]
fn hundred_thousand_mark_done_calls() {
    let (_dir, _path, store) = open_temp();
    store.put_job("big", &record(b"x", 0, 99_999)).unwrap();
    let start = Instant::now();
    (0..100_000).for_each(|f| store.mark_done("big", f).unwrap());
    eprintln!("100k mark_done: {:?}", start.elapsed());
    assert_eq!(store.done_frames("big").unwrap().len(), 100_000);
}

/// Set to the state file path when the test binary is re-run as the child of `survives_sigkill`.
const CHILD_ENV: &str = "BLENDERDIST_STATE_SIGKILL_CHILD";
const CHILD_READY: &str = "bd-state-child-ready";

/// The child half of `survives_sigkill`; passes trivially when run on its own.
#[test]
fn sigkill_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let store = StateStore::open(Path::new(&path)).unwrap();
    store.put_job("j", &record(b"x", 0, 9)).unwrap();
    for f in 0..10 {
        store.mark_done("j", f).unwrap();
    }
    println!("{CHILD_READY}");
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[test]
fn survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.redb");
    // The test's own name without the crate prefix, as libtest filters it.
    let module = module_path!().split_once("::").unwrap().1;
    let test = format!("{module}::sigkill_child");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test.as_str(), "--exact", "--nocapture"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let ready = stdout.lines().map_while(Result::ok).any(|l| l.contains(CHILD_READY));
    child.kill().unwrap(); // SIGKILL on Unix: no destructors, no clean shutdown.
    child.wait().unwrap();
    assert!(ready, "child exited before marking its frames");
    let store = StateStore::open(&path).unwrap();
    assert_eq!(store.job("j").unwrap(), Some(record(b"x", 0, 9)));
    assert_eq!(store.done_frames("j").unwrap(), (0..10).collect::<Vec<_>>());
}

#[test]
fn a_batch_is_one_commit_and_never_marks_a_frame_of_an_old_version() {
    let (_dir, path, store) = open_temp();
    store.put_job("a", &record(b"v1", 1, 10)).unwrap();
    store.put_job("b", &record(b"b", 1, 10)).unwrap();
    let (v1, v2, b) = (BlobHash::of_bytes(b"v1"), BlobHash::of_bytes(b"v2"), BlobHash::of_bytes(b"b"));
    let by = b"peer".to_vec();
    let answers = store.mark_done_batch(&[
        ("a".into(), 1, v1, by.clone()),
        ("b".into(), 4, b, by.clone()),
        ("a".into(), 2, v2, by.clone()),
        ("gone".into(), 1, v1, by.clone()),
        ("a".into(), 3, v1, by),
    ]);
    let ok: Vec<bool> = answers.iter().map(Result::is_ok).collect();
    assert_eq!(ok, [true, true, false, false, true]);
    assert!(matches!(answers[2], Err(StateError::Stale { .. })), "{:?}", answers[2]);
    assert!(matches!(answers[3], Err(StateError::UnknownJob { .. })), "{:?}", answers[3]);
    drop(store);
    let store = StateStore::open(&path).unwrap();
    assert_eq!(store.done_frames("a").unwrap(), [1, 3]);
    assert_eq!(store.done_frames("b").unwrap(), [4]);
}

/// A ban is durable and takes back, in the same commit, every frame the banned volunteer delivered (and only those),
/// across jobs; a removed job leaves no delivery records behind.
#[test]
fn a_ban_undoes_the_banned_volunteers_frames_durably() {
    let (_dir, path, store) = open_temp();
    store.put_job("a", &record(b"a", 1, 10)).unwrap();
    store.put_job("b", &record(b"b", 1, 10)).unwrap();
    let (a, b) = (BlobHash::of_bytes(b"a"), BlobHash::of_bytes(b"b"));
    let (cheat, honest) = (b"cheat".to_vec(), b"honest".to_vec());
    let frames = [
        ("a".to_string(), 1, a, cheat.clone()),
        ("a".to_string(), 2, a, honest.clone()),
        ("b".to_string(), 5, b, cheat.clone()),
        ("a".to_string(), 3, a, cheat.clone()),
    ];
    assert!(store.mark_done_batch(&frames).iter().all(Result::is_ok));
    // Frame 3 rendered again by the honest volunteer: it is no longer the cheat's.
    assert!(store.mark_done_batch(&[("a".into(), 3, a, honest.clone())])[0].is_ok());
    let mut redo = store.ban(&cheat, "failed verification on frame 1 of a").unwrap();
    redo.sort();
    assert_eq!(redo, [("a".to_string(), 1), ("b".to_string(), 5)]);
    drop(store);
    let store = StateStore::open(&path).unwrap();
    assert_eq!(store.done_frames("a").unwrap(), [2, 3]);
    assert_eq!(store.done_frames("b").unwrap(), Vec::<u32>::new());
    assert_eq!(store.banned().unwrap(), [(cheat.clone(), "failed verification on frame 1 of a".to_string())]);
    store.remove_job("a").unwrap();
    assert!(store.ban(&honest, "x").unwrap().is_empty(), "the removed job's deliveries went with it");
}
