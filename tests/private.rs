//! Private farms (`host --private`, `--swarm-key`): the host and the strangers run as processes on loopback, the
//! member volunteer in process with the fake renderer. Strangers must get nothing and be told why.

use std::{
    io::BufRead as _,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use blenderdist::{
    net::SwarmKey,
    protocol::BlobHash,
    worker::{self, fake::FakeRenderer, WorkerConfig},
};

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(90);
const NO_KEY: &str =
    "the host refused the connection: this farm is private; ask its owner for the join line with --swarm-key";
const OTHER_KEY: &str = "the host refused the connection: its farm has another key than the one given with --swarm-key";
const NOT_PRIVATE: &str = "the host did not take the private handshake: its farm is not private";

/// A private host's join line, split into its address and its key.
fn split_join_line(line: &str) -> (String, String) {
    let (addr, key) = line.split_once(" --swarm-key ").unwrap_or_else(|| panic!("no --swarm-key in {line:?}"));
    assert_eq!(key.len(), 64, "{line}");
    (addr.to_string(), key.to_string())
}

/// A `join` process whose log lines (default level) are collected as they come.
struct Volunteer {
    _proc: Proc,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Volunteer {
    fn spawn(dir: &Path, name: &str, addr: &str, extra: &[&str]) -> Self {
        // One stand-in per volunteer: rewriting a script another process is running fails ("text file busy").
        let own = dir.join(name);
        std::fs::create_dir_all(&own).unwrap();
        let blender = fake_blender(&own);
        let mut child = Command::new(BIN)
            .args(["join", addr, "--no-mdns", "--name", name])
            .arg("--cache-dir")
            .arg(dir.join(format!("cache-{name}")))
            .arg("--blender")
            .arg(blender)
            .args(extra)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let name = name.to_string();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{name}] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Self { _proc: Proc(child), lines }
    }

    fn count(&self, words: &str) -> usize {
        self.lines.lock().unwrap().iter().filter(|l| l.contains(words)).count()
    }

    fn wait_for(&self, words: &str) {
        wait_until_blocking(&format!("{words:?} on the volunteer's stderr"), LIMIT, || self.count(words) > 0);
    }
}

/// Blobs a volunteer's cache holds (the .blend files it was served).
fn cached_blobs(cache: &Path) -> Vec<String> {
    files_in(&cache.join("blobs")).into_iter().filter(|n| n.len() == 64).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_get_nothing_from_a_private_farm_and_are_told_why_while_a_member_renders() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"a private scene").unwrap();
    let blend_name = BlobHash::of_bytes(b"a private scene").to_hex();
    write_job(&dirs.jobdir, "secret", "scene.blend", 1, 6);
    let (_host, line) = spawn_host(&dirs.jobdir, &dirs.renderdir, &["--private"]);
    let (addr, key) = split_join_line(&line);

    let strangers = dirs.root.path().join("strangers");
    std::fs::create_dir_all(&strangers).unwrap();
    let keyless = Volunteer::spawn(&strangers, "keyless", &addr, &[]);
    // The wrong key comes in an IPFS swarm.key file, the other form `--swarm-key-file` reads.
    let wrong_file = strangers.join("wrong.key");
    std::fs::write(&wrong_file, SwarmKey::generate().to_key_file()).unwrap();
    let wrong = Volunteer::spawn(&strangers, "wrong", &addr, &["--swarm-key-file", wrong_file.to_str().unwrap()]);
    keyless.wait_for(NO_KEY);
    wrong.wait_for(OTHER_KEY);

    // A member renders every frame while the strangers keep knocking.
    let (stop, shutdown) = shutdown_switch();
    let config = WorkerConfig {
        cache_dir: dirs.cache("member"),
        bootstrap: vec![addr.parse().unwrap()],
        mdns: false,
        renderers: 1,
        updater: None,
        caps: None,
        patience: Default::default(),
        swarm_key: Some(SwarmKey::parse(&key).unwrap()),
    };
    let _member = worker::start(config, FakeRenderer::new(Duration::from_millis(20)), shutdown).unwrap();
    let out = dirs.renderdir.join("secret");
    wait_until("the member's 6 frames", LIMIT, || files_in(&out) == frame_names(1, 6, "png")).await;
    for f in 1..=6 {
        assert_eq!(std::fs::read(out.join(format!("{f:04}.png"))).unwrap(), FakeRenderer::content(&blend_name, f));
    }
    let log = std::fs::read_to_string(dirs.jobdir.join("secret.log")).unwrap();
    assert_eq!(log.matches(" done by ").count(), 6, "{log}");
    assert!(!log.contains("keyless") && !log.contains("wrong"), "a stranger took part: {log}");

    // The strangers were served nothing (no .blend, no build), never joined, and were told once each, not at every
    // retry (they kept retrying all along).
    for (stranger, name) in [(&keyless, "keyless"), (&wrong, "wrong")] {
        assert_eq!(cached_blobs(&strangers.join(format!("cache-{name}"))), Vec::<String>::new(), "{name}");
        assert_eq!(stranger.count("joined host"), 0, "{name}");
        assert_eq!(stranger.count("the host refused the connection"), 1, "{name}");
    }
    assert!(cached_blobs(&dirs.cache("member")).contains(&blend_name));
    drop(stop);
}

#[test]
fn a_volunteer_with_a_key_is_told_when_the_farm_is_not_private() {
    let dirs = Dirs::new();
    let (_host, addr) = spawn_host(&dirs.jobdir, &dirs.renderdir, &[]);
    assert!(!addr.contains("--swarm-key"), "{addr}");
    let keyed = Volunteer::spawn(dirs.root.path(), "keyed", &addr, &["--swarm-key", &SwarmKey::generate().to_hex()]);
    keyed.wait_for(NOT_PRIVATE);
    assert_eq!(keyed.count("joined host"), 0);
}

#[test]
fn the_private_hosts_key_is_kept_0600_in_its_state_folder_across_restarts() {
    use std::os::unix::fs::PermissionsExt as _;
    let dirs = Dirs::new();
    let state = dirs.root.path().join("state");
    let state_arg = state.to_str().unwrap();
    let first = {
        let (_host, line) = spawn_host(&dirs.jobdir, &dirs.renderdir, &["--private", "--state-dir", state_arg]);
        split_join_line(&line).1
    };
    let (host, line) = spawn_host(&dirs.jobdir, &dirs.renderdir, &["--private", "--state-dir", state_arg]);
    assert_eq!(split_join_line(&line).1, first, "the key changed across a restart");
    let file = state.join("swarm.key");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(SwarmKey::read_file(&file).unwrap().to_hex(), first);
    drop(host);

    // A given key (several hosts sharing one farm) is the one printed.
    let given = SwarmKey::generate().to_hex();
    let (_host, line) = spawn_host(&dirs.jobdir, &dirs.renderdir, &["--swarm-key", &given]);
    assert_eq!(split_join_line(&line).1, given);
}

/// Runs the program to its end; (success, stderr).
fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).args(args).env_remove("RUST_LOG").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn malformed_swarm_keys_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, text) = run(&["join", "127.0.0.1:1", "--no-mdns", "--swarm-key", "abc123"]);
    assert!(!ok && text.contains("--swarm-key") && text.contains("expected 64 hexadecimal characters"), "{text}");
    let (ok, text) = run(&["host", d, d, "--no-mdns", "--swarm-key", &"x".repeat(64)]);
    assert!(!ok && text.contains("--swarm-key") && text.contains("hexadecimal"), "{text}");
    let junk = dir.path().join("junk.key");
    std::fs::write(&junk, "not a key\n").unwrap();
    for file in [junk.to_str().unwrap(), "/nonexistent/swarm.key"] {
        let (ok, text) = run(&["join", "127.0.0.1:1", "--no-mdns", "--cache-dir", d, "--swarm-key-file", file]);
        assert!(!ok && text.contains("--swarm-key-file") && text.contains(file), "{text}");
    }
    let key = SwarmKey::generate().to_hex();
    let (ok, text) = run(&["join", "127.0.0.1:1", "--swarm-key", &key, "--swarm-key-file", junk.to_str().unwrap()]);
    assert!(!ok && text.contains("cannot be used with"), "{text}");
}
