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

/// Collects a child's stderr lines as they come, echoing them for failing tests.
fn collect_lines(stderr: std::process::ChildStderr, name: &str) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let name = name.to_string();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{name}] {line}");
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// A `join` process whose log lines (default level) are collected as they come.
struct Volunteer {
    _proc: Proc,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Volunteer {
    /// A volunteer with a stand-in Blender that never renders, dialling `addr` only (no mDNS).
    fn spawn(dir: &Path, name: &str, addr: &str, extra: &[&str]) -> Self {
        // One stand-in per volunteer: rewriting a script another process is running fails ("text file busy").
        let own = dir.join(name);
        std::fs::create_dir_all(&own).unwrap();
        let blender = fake_blender(&own);
        let mut args = vec![addr, "--no-mdns", "--blender", blender.to_str().unwrap()];
        args.extend_from_slice(extra);
        Self::spawn_in(None, dir, name, &args)
    }

    /// `blenderdist join ARGS` in network namespace `ns` (or here), its cache in `dir`.
    fn spawn_in(ns: Option<&str>, dir: &Path, name: &str, args: &[&str]) -> Self {
        let mut command = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .args(["join", "--name", name])
            .arg("--cache-dir")
            .arg(dir.join(format!("cache-{name}")))
            .args(args)
            .stdin(Stdio::null())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = collect_lines(child.stderr.take().unwrap(), name);
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
    let mut host = Command::new(BIN)
        .arg("host")
        .args([&dirs.jobdir, &dirs.renderdir])
        .args(["--listen", "127.0.0.1:0", "--no-mdns", "--private"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let host_log = collect_lines(host.stderr.take().unwrap(), "host");
    let stdout = host.stdout.take().unwrap();
    let _host = Proc(host);
    let (addr, key) = split_join_line(&read_join_line(stdout));

    let strangers = dirs.root.path().join("strangers");
    std::fs::create_dir_all(&strangers).unwrap();
    // At debug level (-v), so the test sees them retry; the default level must say it once.
    let keyless = Volunteer::spawn(&strangers, "keyless", &addr, &["-v"]);
    // The wrong key comes in an IPFS swarm.key file, the other form `--swarm-key-file` reads.
    let wrong_file = strangers.join("wrong.key");
    std::fs::write(&wrong_file, SwarmKey::generate().to_key_file()).unwrap();
    let wrong = Volunteer::spawn(&strangers, "wrong", &addr, &["-v", "--swarm-key-file", wrong_file.to_str().unwrap()]);
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

    // The strangers were served nothing (no .blend, no build), never joined, and were told once each at the default
    // level, not at every retry: they kept retrying, and said it again only at debug level.
    for (stranger, name) in [(&keyless, "keyless"), (&wrong, "wrong")] {
        wait_until_blocking("two retries", LIMIT, || stranger.count("the host refused the connection") >= 3);
        assert_eq!(cached_blobs(&strangers.join(format!("cache-{name}"))), Vec::<String>::new(), "{name}");
        assert_eq!(stranger.count("joined host"), 0, "{name}");
        let warned = stranger.lines.lock().unwrap().iter().filter(|l| l.contains("WARN")).cloned().collect::<Vec<_>>();
        assert_eq!(warned.len(), 1, "{name}: {warned:#?}");
        assert!(warned[0].contains("the host refused the connection"), "{name}: {warned:#?}");
    }
    assert!(cached_blobs(&dirs.cache("member")).contains(&blend_name));

    // The host noted the refusals at info level, not one line each (at most one a minute): the strangers were refused
    // at least six times between them.
    let noted = |l: &String| l.contains("connection(s) from nodes without this private farm's key");
    let notes = host_log.lock().unwrap().iter().filter(|l| noted(l)).count();
    assert!((1..6).contains(&notes), "{notes} notes: {:#?}", host_log.lock().unwrap());

    // `status` is a connection like any other: it needs the key.
    let (ok, text) = run(&["status", &addr, "--swarm-key", &key, "--json"]);
    assert!(ok, "{text}");
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

/// On a LAN, mDNS still finds everyone: a member finds the private host and renders a real frame, a stranger finds
/// it too but is refused, says so once and leaves it alone instead of redialling at every announcement.
#[test]
fn on_a_lan_a_member_renders_by_mdns_and_a_stranger_is_refused_once() {
    use crate::{blender_e2e::*, lan::Lan};
    if !blender_available() {
        skip("blender is not installed");
        return;
    }
    let Some(lan) = Lan::new() else { return };
    let dirs = Dirs::new();
    let blend = dirs.jobdir.join("scene.blend");
    make_scene(&blend, 1, "64x48", 2);
    write_job(&dirs.jobdir, "lan", "scene.blend", 1, 1);

    let mut host = Command::new("ip");
    host.args(["netns", "exec", &lan.host_ns, BIN, "host"]).arg(&dirs.jobdir).arg(&dirs.renderdir);
    host.args(["--listen", "198.18.7.1:7463", "--private"]).stdout(Stdio::piped());
    let mut host = host.spawn().unwrap();
    let stdout = host.stdout.take().unwrap();
    let _host = Proc(host);
    let (join, key) = split_join_line(&read_join_line(stdout));
    let host_id = join.rsplit('/').next().unwrap().to_string();

    let root = dirs.root.path();
    let stranger_blender = root.join("stranger");
    std::fs::create_dir_all(&stranger_blender).unwrap();
    let stranger_blender = fake_blender(&stranger_blender);
    let ns = Some(lan.volunteer_ns.as_str());
    let stranger = Volunteer::spawn_in(ns, root, "stranger", &["--blender", stranger_blender.to_str().unwrap()]);
    let member = Volunteer::spawn_in(ns, root, "member", &["--threads", "1", "--swarm-key", &key]);
    stranger.wait_for("peer found on the LAN: the host refused the connection: this farm is private");

    let names = frame_names(1, 1, "png");
    wait_until_blocking("the member's frame", Duration::from_secs(180), || {
        files_in(&dirs.renderdir.join("lan")) == names
    });
    let baseline = root.join("baseline");
    render_baseline(&blend, &baseline);
    assert_same_pixels(&baseline, &dirs.renderdir.join("lan"), &names);
    assert!(member.count("joined host") > 0);
    assert_eq!(stranger.count("joined host"), 0);
    // Said once per peer: the member volunteer listens too (to share files) and refuses the stranger in its turn.
    let lines = stranger.lines.lock().unwrap().clone();
    let refusals: Vec<&String> = lines.iter().filter(|l| l.contains("refused the connection")).collect();
    assert_eq!(refusals.iter().filter(|l| l.contains(&host_id)).count(), 1, "{refusals:?}");
    assert!(refusals.len() <= 2, "{refusals:?}");
    assert_eq!(cached_blobs(&root.join("cache-stranger")), Vec::<String>::new());
}
