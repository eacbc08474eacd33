//! The command line as users and scripts see it: words, errors that name what is wrong, and a stable identity.

use std::process::{Command, Stdio};

use crate::common::*;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).args(args).stdin(Stdio::null()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn help_names_both_commands() {
    let (ok, text) = run(&["--help"]);
    assert!(ok && text.contains("host") && text.contains("join"), "{text}");
    let (ok, text) = run(&["join", "--help"]);
    assert!(ok && text.contains("--no-mdns") && text.contains("--cache-dir") && text.contains("--threads"), "{text}");
}

#[test]
fn a_missing_job_folder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-jobs");
    let (ok, text) = run(&["host", &missing.to_string_lossy(), &dir.path().join("r").to_string_lossy(), "--no-mdns"]);
    assert!(!ok, "{text}");
    assert!(text.contains("no-such-jobs"), "{text}");
}

#[test]
fn bad_addresses_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().to_string_lossy().into_owned();
    let (ok, text) = run(&["join", "box:notaport", "--no-mdns", "--cache-dir", &cache, "--blender", "/bin/true"]);
    assert!(!ok && text.contains("\"box:notaport\""), "{text}");
    let (ok, text) = run(&["join", "--no-mdns", "--cache-dir", &cache, "--blender", "/bin/true"]);
    assert!(!ok && text.contains("--no-mdns"), "{text}");
    let jobs = dir.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    let (ok, text) = run(&["host", &jobs.to_string_lossy(), &cache, "--listen", "nowhere:x", "--no-mdns"]);
    assert!(!ok && text.contains("\"nowhere:x\""), "{text}");
}

#[test]
fn a_missing_blender_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().to_string_lossy().into_owned();
    let (ok, text) = run(&["join", "127.0.0.1:1", "--no-mdns", "--cache-dir", &cache, "--blender", "/no/blender"]);
    assert!(!ok && text.contains("/no/blender"), "{text}");
}

#[test]
fn the_host_prints_a_join_line_and_keeps_its_peer_id_across_restarts() {
    let dirs = Dirs::new();
    let (first, addr1) = spawn_host(&dirs.jobdir, &dirs.renderdir, &[]);
    drop(first);
    let (_second, addr2) = spawn_host(&dirs.jobdir, &dirs.renderdir, &[]);
    let id = |a: &str| a.rsplit_once("/p2p/").map(|(_, id)| id.to_string()).unwrap();
    assert!(addr1.starts_with("/ip4/127.0.0.1/tcp/"), "{addr1}");
    assert_eq!(id(&addr1), id(&addr2));
    assert!(dirs.renderdir.join(".blenderdist").join("node.key").exists());
}

#[test]
fn a_port_in_use_is_named() {
    let dirs = Dirs::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (ok, text) = run(&[
        "host",
        &dirs.jobdir.to_string_lossy(),
        &dirs.renderdir.to_string_lossy(),
        "--no-mdns",
        "--listen",
        &addr,
    ]);
    assert!(!ok, "{text}");
    assert!(text.contains(&addr.replace("127.0.0.1:", "/ip4/127.0.0.1/tcp/")) && text.contains("in use"), "{text}");
}

#[test]
fn job_names_that_could_escape_the_render_folder_are_ignored() {
    let dirs = Dirs::new();
    std::fs::write(dirs.jobdir.join("scene.blend"), b"x").unwrap();
    for bad in ["..job", "...job", ".blenderdist.job", ".blenderdist-tmp.job"] {
        std::fs::write(dirs.jobdir.join(bad), "scene.blend\n1\n1\n").unwrap();
    }
    // A good job beside them, written after the host started: once it is accepted, the bad ones have been scanned
    // (at start, and again for this one).
    let (_host, _addr) = spawn_host(&dirs.jobdir, &dirs.renderdir, &[]);
    write_job(&dirs.jobdir, "good", "scene.blend", 1, 1);
    let log = dirs.jobdir.join("good.log");
    wait_until_blocking("the good job", std::time::Duration::from_secs(60), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("accepted"))
    });
    let mut left: Vec<String> = files_in(dirs.root.path());
    left.retain(|n| n != "jobs" && n != "renders");
    assert!(left.is_empty(), "something was written next to the render folder: {left:?}");
    let mut inside = files_in(&dirs.renderdir);
    inside.retain(|n| n != ".blenderdist" && n != ".blenderdist-tmp");
    assert!(inside.is_empty(), "a bad job name made a folder: {inside:?}");
}

#[test]
fn a_cycles_device_blender_does_not_offer_stops_join_with_the_list() {
    if !blender_available() {
        skip("blender is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().to_string_lossy().into_owned();
    // This machine has no GPU, so Blender offers only the CPU.
    let (ok, text) = run(&["join", "127.0.0.1:1", "--no-mdns", "--cache-dir", &cache, "--device", "CUDA"]);
    assert!(!ok, "{text}");
    assert!(text.contains("does not offer the Cycles device CUDA") && text.contains("it offers: CPU"), "{text}");
    let (ok, text) = run(&["join", "127.0.0.1:1", "--no-mdns", "--cache-dir", &cache, "--device", "TPU"]);
    assert!(!ok && text.contains("TPU"), "{text}");
}

/// A volunteer given an address where nothing listens says so, with the reason and when it tries again, at the
/// default log level: a friend who mistyped the address must not wait in silence.
#[test]
fn join_says_why_it_cannot_reach_the_host() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let blender = fake_blender(dir.path());
    let cache = dir.path().join("cache");
    let mut child = Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_blenderdist"))
            .args(["join", "127.0.0.1:1", "--no-mdns", "--name", "carol"])
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--blender")
            .arg(&blender)
            .env_remove("RUST_LOG")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    while let Ok(line) = lines.recv_timeout(std::time::Duration::from_secs(30)) {
        seen.push(line.clone());
        if line.contains("cannot reach /ip4/127.0.0.1/tcp/1: connection refused; retrying in") {
            assert!(seen.iter().any(|l| l.contains("dialling /ip4/127.0.0.1/tcp/1")), "{seen:#?}");
            return;
        }
    }
    panic!("join did not say why it cannot reach the host within 30 s: {seen:#?}");
}

/// scripts/install.sh puts the program, man pages and completions where man-db and the shells look, all generated
/// from the program's own options, and they work: `man` renders a page, bash completes an option.
#[test]
fn the_install_script_installs_completions_and_man_pages() {
    let prefix = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{root}/scripts/install.sh"))
        .args(["--prefix", prefix.path().to_str().unwrap(), "--bin", env!("CARGO_BIN_EXE_blenderdist")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let share = prefix.path().join("share");
    assert!(prefix.path().join("bin/blenderdist").is_file());
    for page in ["blenderdist", "blenderdist-host", "blenderdist-join", "blenderdist-status"] {
        assert!(share.join(format!("man/man1/{page}.1")).is_file(), "{page}.1 installed");
    }
    for file in ["zsh/site-functions/_blenderdist", "fish/vendor_completions.d/blenderdist.fish"] {
        assert!(share.join(file).is_file(), "{file} installed");
    }

    let page = Command::new("man")
        .args(["-P", "cat", "blenderdist-join"])
        .env("MANPATH", share.join("man"))
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(page.contains("--renderers") && page.contains("--name"), "man blenderdist-join: {page}");

    let bash = share.join("bash-completion/completions/blenderdist");
    let script = format!(
        "source {}; COMP_WORDS=(blenderdist status --wa); COMP_CWORD=2; COMP_LINE='blenderdist status --wa'; \
         COMP_POINT=${{#COMP_LINE}}; _blenderdist blenderdist --wa status; echo \"${{COMPREPLY[@]}}\"",
        bash.display()
    );
    let words = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&words.stdout).trim(), "--watch", "bash completes `status --wa`");
}
