//! Relays and hole punching between two homes, each behind its own Linux NAT router, with a public relay between
//! them. Everything lives in network namespaces the test makes (198.18.0.0/15 "internet", 10.x homes):
//!
//! ```text
//!   home A: host 10.1.0.2 ── 10.1.0.1 router A 198.18.100.2 ──┐
//!                                                              ├─ internet (the relay, 198.18.100.1 / 198.18.101.1)
//!   home B: volunteer 10.2.0.2 ── 10.2.0.1 router B 198.18.101.2 ─┘
//! ```
//!
//! The routers masquerade and drop (not reject) unsolicited inbound packets, as home routers do; TCP hole punching
//! needs the drop. Router B can be made a symmetric NAT (`--random-fully`: a new public port per destination), which
//! no hole punch gets through.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{blender_e2e::*, common::*};

const LIMIT: Duration = Duration::from_secs(240);

fn run(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The namespaces and links of the two homes and the internet, removed on drop.
struct Homes {
    internet: String,
    router_a: String,
    router_b: String,
    home_a: String,
    home_b: String,
}

impl Homes {
    /// `symmetric_b`: router B gives every destination its own public port, so hole punching cannot work.
    fn new(symmetric_b: bool) -> Option<Self> {
        if !run("iptables", &["--version"]) {
            skip("iptables is not installed");
            return None;
        }
        // Unique per test: tests in one binary share the pid.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = format!("{}{}", std::process::id() % 10_000, NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
        let homes = Homes {
            internet: format!("bdi{id}"),
            router_a: format!("bdra{id}"),
            router_b: format!("bdrb{id}"),
            home_a: format!("bdha{id}"),
            home_b: format!("bdhb{id}"),
        };
        for ns in homes.all() {
            if !run("ip", &["netns", "add", ns]) {
                skip(&format!("`ip netns add {ns}` failed (needs root and iproute2)"));
                return None;
            }
            homes.ns(ns, &["ip", "link", "set", "lo", "up"]);
        }
        let (i, ra, rb, ha, hb) = (&homes.internet, &homes.router_a, &homes.router_b, &homes.home_a, &homes.home_b);
        // (namespace, its interface, its address, peer namespace, peer interface, peer address)
        let links = [
            (i, format!("wa{id}"), "198.18.100.1/24", ra, format!("wa{id}r"), "198.18.100.2/24"),
            (i, format!("wb{id}"), "198.18.101.1/24", rb, format!("wb{id}r"), "198.18.101.2/24"),
            (ra, format!("la{id}"), "10.1.0.1/24", ha, format!("la{id}h"), "10.1.0.2/24"),
            (rb, format!("lb{id}"), "10.2.0.1/24", hb, format!("lb{id}h"), "10.2.0.2/24"),
        ];
        for (ns1, if1, addr1, ns2, if2, addr2) in &links {
            assert!(run("ip", &["link", "add", if1, "type", "veth", "peer", "name", if2]), "veth {if1}");
            for (ns, ifname, addr) in [(ns1, if1, addr1), (ns2, if2, addr2)] {
                assert!(run("ip", &["link", "set", ifname, "netns", ns]));
                homes.ns(ns, &["ip", "addr", "add", addr, "dev", ifname]);
                homes.ns(ns, &["ip", "link", "set", ifname, "up"]);
            }
        }
        homes.ns(ha, &["ip", "route", "add", "default", "via", "10.1.0.1"]);
        homes.ns(hb, &["ip", "route", "add", "default", "via", "10.2.0.1"]);
        homes.ns(ra, &["ip", "route", "add", "default", "via", "198.18.100.1"]);
        homes.ns(rb, &["ip", "route", "add", "default", "via", "198.18.101.1"]);
        // The internet forwards between the routers and translates nothing.
        homes.ns(i, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        for (router, wan, lan, symmetric) in [
            (ra, format!("wa{id}r"), format!("la{id}"), false),
            (rb, format!("wb{id}r"), format!("lb{id}"), symmetric_b),
        ] {
            homes.ns(router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            let mut masquerade = vec!["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", &wan, "-j", "MASQUERADE"];
            if symmetric {
                masquerade.push("--random-fully");
            }
            homes.ns(router, &masquerade);
            let established = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"];
            homes.ns(router, &["iptables", "-A", "FORWARD", "-i", &lan, "-o", &wan, "-j", "ACCEPT"]);
            homes.ns(router, &[&["iptables", "-A", "FORWARD", "-i", &wan][..], &established].concat());
            homes.ns(router, &["iptables", "-A", "FORWARD", "-j", "DROP"]);
            homes.ns(router, &[&["iptables", "-A", "INPUT", "-i", &wan][..], &established].concat());
            homes.ns(router, &["iptables", "-A", "INPUT", "-i", &wan, "-j", "DROP"]);
        }
        Some(homes)
    }

    fn all(&self) -> [&String; 5] {
        [&self.internet, &self.router_a, &self.router_b, &self.home_a, &self.home_b]
    }

    /// Runs a command in namespace `ns`, which must succeed.
    fn ns(&self, ns: &str, args: &[&str]) {
        let ok = run("ip", &[&["netns", "exec", ns][..], args].concat());
        assert!(ok, "in {ns}: {} failed", args.join(" "));
    }

    /// A `blenderdist` command in namespace `ns`, its stderr in `log`.
    fn blenderdist(&self, ns: &str, args: &[&str], log: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, BIN]).args(args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(std::fs::File::create(log).unwrap());
        cmd
    }
}

impl Drop for Homes {
    fn drop(&mut self) {
        // Deleting a namespace deletes its ends of the veth pairs, and with them the other ends.
        for ns in self.all() {
            run("ip", &["netns", "del", ns]);
        }
    }
}

/// Reads a child's stdout until a line containing `marker`, returns what follows it, and drains the rest.
fn read_after(stdout: std::process::ChildStdout, marker: &str) -> String {
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        if let Some((_, rest)) = line.split_once(marker) {
            let rest = rest.trim().to_string();
            std::thread::spawn(move || for _ in lines {});
            return rest;
        }
    }
    panic!("the program ended without printing {marker:?}");
}

fn log_has(log: &Path, words: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|text| text.contains(words))
}

/// Starts `blenderdist relay` on the internet (its key in `state`, so a restart keeps its id) and returns it with
/// the address it prints for owners.
fn spawn_relay(homes: &Homes, state: &Path, extra: &[&str], log: &Path) -> (Proc, String) {
    let mut args = vec!["relay", "--listen", "198.18.100.1:7464", "--state-dir", state.to_str().unwrap()];
    args.extend(extra);
    let mut relay = homes.blenderdist(&homes.internet, &args, log).spawn().unwrap();
    let relay_out = relay.stdout.take().unwrap();
    let relay = Proc(relay);
    let relay_addr = read_after(relay_out, "--relay ");
    assert!(relay_addr.starts_with("/ip4/198.18.100.1/tcp/7464/p2p/"), "{relay_addr}");
    (relay, relay_addr)
}

/// A volunteer in home B joining `join`, its log in `log`.
fn spawn_volunteer(homes: &Homes, join: &str, cache: &Path, blender: Option<&Path>, log: &Path) -> Proc {
    let mut args = vec!["join", join, "--no-mdns", "--threads", "1", "--cache-dir", cache.to_str().unwrap()];
    if let Some(blender) = blender {
        args.extend(["--blender", blender.to_str().unwrap()]);
    }
    Proc(homes.blenderdist(&homes.home_b, &args, log).spawn().unwrap())
}

/// A farm across the two homes: the relay on the internet, the host in home A, the volunteer in home B.
struct Farm {
    relay: Proc,
    _host: Proc,
    _volunteer: Proc,
    dirs: Dirs,
    host_log: PathBuf,
    volunteer_log: PathBuf,
    ready: String,
    join: String,
}

/// Starts the relay (with `relay_args`), the host behind router A with `--relay`, and a volunteer behind router B
/// that joins with the host's join line. `blender`: the volunteer's Blender; the job renders `frames` frames.
fn start_farm(homes: &Homes, relay_args: &[&str], blender: Option<&Path>, frames: u32) -> Farm {
    let dirs = Dirs::new();
    let logs = dirs.root.path();
    let (relay, relay_addr) = spawn_relay(homes, &logs.join("relay-state"), relay_args, &logs.join("relay.log"));

    let blend = dirs.jobdir.join("scene.blend");
    if blender.is_none() {
        make_scene(&blend, frames, "64x48", 2);
    } else {
        std::fs::write(&blend, b"BLENDER-v304 not a real scene").unwrap();
    }
    write_job(&dirs.jobdir, "far", "scene.blend", 1, frames);
    let host_log = logs.join("host.log");
    let (jobdir, renderdir) = (dirs.jobdir.to_str().unwrap(), dirs.renderdir.to_str().unwrap());
    let args = ["host", jobdir, renderdir, "--listen", "10.1.0.2:7463", "--no-mdns", "--relay", &relay_addr];
    let mut host = homes.blenderdist(&homes.home_a, &args, &host_log).spawn().unwrap();
    let host_out = host.stdout.take().unwrap();
    let host = Proc(host);
    // The ready line, then the join line.
    let (ready, join) = {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(host_out).lines();
        let ready = lines.next().and_then(Result::ok).unwrap_or_default();
        let join = lines.next().and_then(Result::ok).unwrap_or_default();
        std::thread::spawn(move || for _ in lines {});
        (ready, join.trim().trim_start_matches("blenderdist join ").to_string())
    };

    let volunteer_log = logs.join("volunteer.log");
    let volunteer = spawn_volunteer(homes, &join, &dirs.cache("v"), blender, &volunteer_log);
    Farm { relay, _host: host, _volunteer: volunteer, dirs, host_log, volunteer_log, ready, join }
}

impl Farm {
    fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("--- host\n{}\n--- volunteer\n{}", read(&self.host_log), read(&self.volunteer_log))
    }

    fn wait_for_frames(&self, frames: u32) {
        let names = frame_names(1, frames, "png");
        let dir = self.dirs.renderdir.join("far");
        let start = std::time::Instant::now();
        while files_in(&dir) != names {
            assert!(start.elapsed() < LIMIT, "no frames after {LIMIT:?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn a_volunteer_reaches_a_host_behind_nat_through_a_relay_and_hole_punching_then_renders() {
    if skip_without_blender() {
        return;
    }
    let Some(homes) = Homes::new(false) else { return };
    let farm = start_farm(&homes, &[], None, 2);
    assert!(farm.ready.contains("reachable through relay /ip4/198.18.100.1/tcp/7464/p2p/"), "{}", farm.ready);
    assert!(farm.ready.ends_with("only. On each volunteer machine run:"), "{}", farm.ready);
    assert!(farm.join.starts_with("/ip4/198.18.100.1/tcp/7464/p2p/"), "{}", farm.join);
    assert!(farm.join.contains("/p2p-circuit/p2p/"), "{}", farm.join);

    farm.wait_for_frames(2);
    let upgraded = "connection upgraded to a direct one by hole punching";
    assert!(log_has(&farm.volunteer_log, upgraded), "the volunteer did not hole punch\n{}", farm.logs());
    // The owner sees the direct connection too (either side may be the one that closes the relayed one first).
    assert!(log_has(&farm.host_log, upgraded), "{}", farm.logs());
    // The relay (an AutoNAT server) cannot dial the public address router A showed it: nothing confirms it.
    assert!(!log_has(&farm.host_log, "confirmed by AutoNAT"), "{}", farm.logs());
    let baseline = farm.dirs.root.path().join("baseline");
    render_baseline(&farm.dirs.jobdir.join("scene.blend"), &baseline);
    assert_same_pixels(&baseline, &farm.dirs.renderdir.join("far"), &frame_names(1, 2, "png"));
}

#[test]
fn behind_a_symmetric_nat_a_volunteer_says_the_relay_carries_no_data_instead_of_hanging() {
    let Some(homes) = Homes::new(true) else { return };
    let dirs = Dirs::new();
    let blender = fake_blender(dirs.root.path());
    let farm = start_farm(&homes, &[], Some(&blender), 1);
    let start = std::time::Instant::now();
    while !log_has(&farm.volunteer_log, "which carries no data") {
        assert!(start.elapsed() < LIMIT, "the volunteer never said why it cannot work\n{}", farm.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(log_has(&farm.volunteer_log, "hole punching failed"), "{}", farm.logs());
    assert!(!log_has(&farm.volunteer_log, "upgraded to a direct one"), "{}", farm.logs());
    // It took no frame it could not fetch.
    assert!(!log_has(&farm.host_log, "joined (Blender"), "{}", farm.logs());
    // The relay ends the circuit after 120 s (libp2p's limit); the volunteer comes back through the relay and tries
    // hole punching again, as it said it would.
    let attempts = || {
        let text = std::fs::read_to_string(&farm.volunteer_log).unwrap_or_default();
        text.matches("reached this owner through a relay").count()
    };
    wait_until_blocking("a second attempt after the circuit ended", LIMIT, || attempts() >= 2);
}

#[test]
fn behind_a_symmetric_nat_frames_pass_through_a_relay_whose_operator_allowed_data() {
    if skip_without_blender() {
        return;
    }
    let Some(homes) = Homes::new(true) else { return };
    let farm = start_farm(&homes, &["--data-limit", "64"], None, 2);
    farm.wait_for_frames(2);
    assert!(log_has(&farm.volunteer_log, "which carries data (up to 64 MiB per circuit)"), "{}", farm.logs());
    assert!(!log_has(&farm.volunteer_log, "upgraded to a direct one"), "{}", farm.logs());
}

#[test]
fn after_the_relay_restarts_the_host_reserves_again_and_new_volunteers_get_through() {
    if skip_without_blender() {
        return;
    }
    let Some(homes) = Homes::new(false) else { return };
    let mut farm = start_farm(&homes, &[], None, 1);
    farm.wait_for_frames(1);
    let logs = farm.dirs.root.path().to_path_buf();
    // The same key and address: the host's join line stays valid.
    drop(std::mem::replace(&mut farm.relay, Proc(Command::new("true").spawn().unwrap())));
    let lost = "lost the reservation on relay";
    wait_until_blocking("the host to notice the relay is gone", LIMIT, || log_has(&farm.host_log, lost));
    let (relay, _) = spawn_relay(&homes, &logs.join("relay-state"), &[], &logs.join("relay2.log"));
    farm.relay = relay;
    let reserved = |text: &str| text.matches("reserved a slot on relay").count();
    wait_until_blocking("a new reservation", LIMIT, || {
        reserved(&std::fs::read_to_string(&farm.host_log).unwrap_or_default()) >= 2
    });
    let log = logs.join("volunteer2.log");
    let _second = spawn_volunteer(&homes, &farm.join, &farm.dirs.cache("v2"), None, &log);
    let start = std::time::Instant::now();
    while !log_has(&log, "joined host") {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(start.elapsed() < LIMIT, "the second volunteer did not get through\n{}\n{text}", farm.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(log_has(&log, "connection upgraded to a direct one by hole punching"), "{}", farm.logs());
}

/// Waits for a line of `log` containing `marker` and returns what follows it on that line.
fn wait_for_log_line(log: &Path, marker: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(marker)) {
            return line.split_once(marker).map(|(_, rest)| rest.trim().to_string()).unwrap_or_default();
        }
        assert!(start.elapsed() < LIMIT, "no {marker:?} in {}:\n{text}", log.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// On loopback, no root needed: a volunteer started with `--relay` relays for an owner, whose join line then goes
/// through it, and another volunteer gets to the owner that way.
#[test]
fn a_volunteer_started_with_relay_relays_for_an_owner() {
    let dirs = Dirs::new();
    let blender = fake_blender(dirs.root.path());
    let relay_log = dirs.root.path().join("relaying-volunteer.log");
    let cache = dirs.cache("relaying");
    let mut relaying = Command::new(BIN);
    // It volunteers for a host that is not there; what matters is the relay it runs beside.
    relaying.args(["join", "127.0.0.1:1", "--no-mdns", "--relay", "--relay-listen", "127.0.0.1:0", "--blender"]);
    relaying.arg(&blender).arg("--cache-dir").arg(&cache);
    relaying.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&relay_log).unwrap());
    let _relaying = Proc(relaying.spawn().unwrap());
    let relay_addr = wait_for_log_line(&relay_log, "owners behind a home router can use --relay ");
    assert!(relay_addr.starts_with("/ip4/127.0.0.1/tcp/"), "{relay_addr}");

    let host_log = dirs.root.path().join("host.log");
    let mut host = Command::new(BIN);
    host.arg("host").arg(&dirs.jobdir).arg(&dirs.renderdir).args(["--listen", "127.0.0.1:0", "--no-mdns"]);
    host.args(["--relay", &relay_addr]).stdout(Stdio::piped()).stderr(std::fs::File::create(&host_log).unwrap());
    let mut host = host.spawn().unwrap();
    let host_out = host.stdout.take().unwrap();
    let _host = Proc(host);
    let join = read_join_line(host_out);
    assert_eq!(join, format!("{relay_addr}/p2p-circuit/p2p/{}", join.rsplit('/').next().unwrap()));

    let log = dirs.root.path().join("volunteer.log");
    let mut volunteer = Command::new(BIN);
    volunteer.args(["join", &join, "--no-mdns", "--blender"]).arg(&blender).arg("--cache-dir").arg(dirs.cache("v"));
    volunteer.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
    let _volunteer = Proc(volunteer.spawn().unwrap());
    wait_for_log_line(&log, "reached this owner through a relay");
    wait_for_log_line(&log, "joined host");
    // The relay also dialled back the address it saw the owner use (AutoNAT v2): on loopback, it gets through.
    let confirmed = wait_for_log_line(&host_log, "reachable directly at /ip4/127.0.0.1/tcp/");
    assert!(confirmed.contains("confirmed by AutoNAT"), "{confirmed}");
}

/// A private farm's relay admits members only: a relayed connection skips pnet, so the relay itself must hold the
/// farm's key. The owner reserves a slot on it, a member gets through it to the owner, and a stranger given the same
/// relayed address cannot even reach the relay and is told the farm is private. On loopback, no root needed.
#[test]
fn a_private_farms_relay_admits_members_only() {
    let key = "5a".repeat(32);
    let dirs = Dirs::new();
    let blender = fake_blender(dirs.root.path());
    let relay_log = dirs.root.path().join("relaying-volunteer.log");
    let mut relaying = Command::new(BIN);
    relaying.args(["join", "127.0.0.1:1", "--no-mdns", "--relay", "--relay-listen", "127.0.0.1:0", "--blender"]);
    relaying.arg(&blender).arg("--cache-dir").arg(dirs.cache("relaying")).args(["--swarm-key", &key]);
    relaying.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&relay_log).unwrap());
    let _relaying = Proc(relaying.spawn().unwrap());
    let relay_addr = wait_for_log_line(&relay_log, "owners behind a home router can use --relay ");

    let mut host = Command::new(BIN);
    host.arg("host").arg(&dirs.jobdir).arg(&dirs.renderdir).args(["--listen", "127.0.0.1:0", "--no-mdns"]);
    host.args(["--relay", &relay_addr, "--swarm-key", &key]).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut host = host.spawn().unwrap();
    let host_out = host.stdout.take().unwrap();
    let _host = Proc(host);
    let line = read_join_line(host_out);
    let (join, given) = line.split_once(" --swarm-key ").expect("a private host's join line carries its key");
    assert_eq!(given, key);
    assert!(join.starts_with(&format!("{relay_addr}/p2p-circuit/p2p/")), "{join}");

    let volunteer = |name: &str, key: Option<&str>| {
        let log = dirs.root.path().join(format!("{name}.log"));
        let mut cmd = Command::new(BIN);
        cmd.args(["join", join, "--no-mdns", "--blender"]).arg(&blender).arg("--cache-dir").arg(dirs.cache(name));
        if let Some(key) = key {
            cmd.args(["--swarm-key", key]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
        (Proc(cmd.spawn().unwrap()), log)
    };
    let (_member, member_log) = volunteer("member", Some(&key));
    wait_for_log_line(&member_log, "joined host");
    let (_stranger, stranger_log) = volunteer("stranger", None);
    wait_for_log_line(&stranger_log, "this farm is private");
    let text = std::fs::read_to_string(&stranger_log).unwrap_or_default();
    assert!(!text.contains("joined host") && !text.contains("reached this owner"), "{text}");
}
