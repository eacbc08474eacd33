//! `host --upnp` against a real UPnP router: Debian's miniupnpd in a network namespace.
//!
//! The lab: three namespaces made by the test. `home` (the host, 198.18.21.2) sits behind `router` (LAN
//! 198.18.21.1, WAN 198.18.22.1), which runs miniupnpd and masquerades home's traffic out to `outside`
//! (198.18.22.2: the volunteer, and a tiny STUN responder). `outside` has no route to home's network and the router
//! forwards nothing inbound unless miniupnpd opened it, so a volunteer outside reaches the host only through the
//! mapping. miniupnpd 2.3.1 refuses a private external address unless it learns it by STUN, hence the responder.
//! All traffic stays inside these namespaces (SSDP included).

use std::{
    io::BufRead,
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use blenderdist::net::upnp::is_public;

use crate::{blender_e2e::*, common::*};

const HOME: &str = "198.18.21.2";
const ROUTER_WAN: &str = "198.18.22.1";
const OUTSIDE: &str = "198.18.22.2";

/// The router's firewall, in place of miniupnpd's broken nft_init.sh: the table and chains miniupnpd fills (its
/// nftables defaults: table `filter` of family inet; chains `miniupnpd`, `prerouting_miniupnpd`,
/// `postrouting_miniupnpd`), a forward policy that drops what no mapping allows, and masquerade for the LAN.
const ROUTER_NFT: &str = r#"
table inet filter {
    chain forward {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "rlan" oifname "rwan" accept
        jump miniupnpd
    }
    chain miniupnpd {
    }
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        jump prerouting_miniupnpd
    }
    chain postrouting {
        type nat hook postrouting priority 100; policy accept;
        jump postrouting_miniupnpd
        oifname "rwan" ip saddr 198.18.21.0/24 masquerade
    }
    chain prerouting_miniupnpd {
    }
    chain postrouting_miniupnpd {
    }
}
"#;

/// A STUN binding responder (RFC 5389): answers each Binding Request with a Binding Success carrying the
/// requester's address as XOR-MAPPED-ADDRESS. miniupnpd asks it for the router's external address.
const STUN_PY: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 3478))
print("stun ready", flush=True)
COOKIE = 0x2112A442
while True:
    data, (ip, port) = s.recvfrom(2048)
    if len(data) < 20 or data[0:2] != b"\x00\x01" or data[4:8] != struct.pack("!I", COOKIE):
        continue
    xip = struct.unpack("!I", socket.inet_aton(ip))[0] ^ COOKIE
    attr = struct.pack("!HHBBHI", 0x0020, 8, 0, 1, port ^ (COOKIE >> 16), xip)
    s.sendto(struct.pack("!HH", 0x0101, len(attr)) + data[4:20] + attr, (ip, port))
"#;

/// The router's UPnP daemon: only the LAN may ask, only for its own address, only for unprivileged ports.
fn miniupnpd_conf(dir: &Path) -> String {
    format!(
        "ext_ifname=rwan\nlistening_ip=rlan\nhttp_port=0\nenable_natpmp=no\nenable_upnp=yes\n\
         ext_perform_stun=yes\next_stun_host={OUTSIDE}\next_stun_port=3478\nsecure_mode=yes\nipv6_disable=yes\n\
         uuid=3df47863-6189-4ee1-9b16-bac4e287ec92\nlease_file={}\n\
         allow 1024-65535 198.18.21.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
        dir.join("leases").display()
    )
}

/// The three namespaces with their links, firewall, STUN responder and miniupnpd; all removed on drop.
struct Lab {
    home: String,
    router: String,
    outside: String,
    dir: tempfile::TempDir,
    daemons: Vec<Proc>,
}

fn run(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).stdin(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn installed(program: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success())
}

impl Lab {
    fn new() -> Option<Self> {
        Self::build(true)
    }

    /// The lab with `router` a plain NAT router: no UPnP daemon answers.
    fn without_upnp() -> Option<Self> {
        Self::build(false)
    }

    fn build(upnp: bool) -> Option<Self> {
        for program in ["ip", "nft", "miniupnpd", "python3"] {
            if !installed(program) {
                skip(&format!("{program} is not installed (scripts/install-deps.sh installs it)"));
                return None;
            }
        }
        static RUN: AtomicU32 = AtomicU32::new(0);
        let id = format!("{}x{}", std::process::id() % 50_000, RUN.fetch_add(1, Ordering::Relaxed));
        let mut lab = Lab {
            home: format!("bduh{id}"),
            router: format!("bdur{id}"),
            outside: format!("bduo{id}"),
            dir: tempfile::tempdir().unwrap(),
            daemons: Vec::new(),
        };
        let (h, r, o) = (lab.home.clone(), lab.router.clone(), lab.outside.clone());
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &h],
            vec!["netns", "add", &r],
            vec!["netns", "add", &o],
            // Made inside their namespaces, so the names never meet another test's in the root namespace.
            vec!["link", "add", "lan0", "netns", &h, "type", "veth", "peer", "name", "rlan", "netns", &r],
            vec!["link", "add", "rwan", "netns", &r, "type", "veth", "peer", "name", "out0", "netns", &o],
            vec!["-n", &h, "addr", "add", "198.18.21.2/24", "dev", "lan0"],
            vec!["-n", &r, "addr", "add", "198.18.21.1/24", "dev", "rlan"],
            vec!["-n", &r, "addr", "add", "198.18.22.1/24", "dev", "rwan"],
            vec!["-n", &o, "addr", "add", "198.18.22.2/24", "dev", "out0"],
            vec!["-n", &h, "link", "set", "lan0", "up"],
            vec!["-n", &r, "link", "set", "rlan", "up"],
            vec!["-n", &r, "link", "set", "rwan", "up"],
            vec!["-n", &o, "link", "set", "out0", "up"],
            vec!["-n", &h, "link", "set", "lo", "up"],
            vec!["-n", &r, "link", "set", "lo", "up"],
            vec!["-n", &o, "link", "set", "lo", "up"],
            vec!["-n", &h, "route", "add", "default", "via", "198.18.21.1"],
        ];
        for step in steps {
            if run("ip", &step).is_none() {
                skip(&format!("`ip {}` failed (needs root and iproute2)", step.join(" ")));
                return None;
            }
        }
        assert!(run("ip", &["netns", "exec", &r, "sysctl", "-qw", "net.ipv4.ip_forward=1"]).is_some());
        let nft = lab.dir.path().join("router.nft");
        std::fs::write(&nft, ROUTER_NFT).unwrap();
        let nft = nft.to_str().unwrap();
        assert!(run("ip", &["netns", "exec", &r, "nft", "-f", nft]).is_some(), "the router's nft rules failed");
        if !upnp {
            return Some(lab);
        }

        let stun = lab.dir.path().join("stun.py");
        std::fs::write(&stun, STUN_PY).unwrap();
        let log = lab.dir.path().join("stun.log");
        lab.daemon(&o, &["python3", stun.to_str().unwrap(), OUTSIDE], &log);
        wait_for_line(&log, "stun ready", "the STUN responder");

        let conf = lab.dir.path().join("miniupnpd.conf");
        std::fs::write(&conf, miniupnpd_conf(lab.dir.path())).unwrap();
        let pid = lab.dir.path().join("miniupnpd.pid");
        let args = ["miniupnpd", "-d", "-f", conf.to_str().unwrap(), "-P", pid.to_str().unwrap()];
        let log = lab.dir.path().join("miniupnpd.log");
        lab.daemon(&r, &args, &log);
        // It learns its external address by STUN, then opens its HTTP (SOAP) port: ready for clients.
        wait_for_line(&log, "HTTP listening on port", "miniupnpd");
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(log_text.contains("Port forwarding is now enabled"), "miniupnpd will not forward:\n{log_text}");
        Some(lab)
    }

    /// Starts `args` in namespace `ns`, its output in `log`; killed when the lab is dropped.
    fn daemon(&mut self, ns: &str, args: &[&str], log: &Path) {
        let out = std::fs::File::create(log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        self.daemons.push(Proc(child));
    }

    /// The router's port forwards, as miniupnpd wrote them into nftables.
    fn forwards(&self) -> String {
        let args = ["netns", "exec", &self.router, "nft", "list", "chain", "inet", "filter", "prerouting_miniupnpd"];
        run("ip", &args).unwrap_or_default()
    }

    /// Starts `blenderdist host` in `home` with `extra` flags; returns it and its stdout up to the join line.
    fn spawn_host(&self, dirs: &Dirs, extra: &[&str]) -> (Proc, Vec<String>) {
        let mut host = Command::new("ip");
        host.args(["netns", "exec", &self.home, BIN, "host"]).arg(&dirs.jobdir).arg(&dirs.renderdir);
        host.args(["--no-mdns", "--listen", "0.0.0.0:7463"]).args(extra).stdout(Stdio::piped());
        let mut child = host.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let proc = Proc(child);
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut head = Vec::new();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            let done = line.trim().starts_with("blenderdist join ");
            head.push(line);
            if done {
                std::thread::spawn(move || for _ in lines {});
                return (proc, head);
            }
        }
        panic!("the host ended without printing its join line; it printed:\n{}", head.join("\n"));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first: a deleted namespace name does not stop what runs inside it.
        self.daemons.clear();
        for ns in [&self.home, &self.router, &self.outside] {
            run("ip", &["netns", "del", ns]);
        }
    }
}

/// Waits (bounded) for `needle` in the log file of a daemon the lab started.
fn wait_for_line(log: &Path, needle: &str, what: &str) {
    let seen = || std::fs::read_to_string(log).is_ok_and(|text| text.contains(needle));
    let start = std::time::Instant::now();
    while !seen() {
        if start.elapsed() > Duration::from_secs(30) {
            panic!("{what} did not start: {}", std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The join address in a ready banner's first `blenderdist join` line.
fn join_addr(head: &[String]) -> String {
    let line = head.iter().find_map(|l| l.trim().strip_prefix("blenderdist join "));
    line.expect("a join line").to_string()
}

/// Stops a host as Ctrl-C or a service manager would, and waits (bounded) for it to exit.
fn terminate(host: &mut Proc) {
    let pid = host.0.id().to_string();
    assert!(run("kill", &["-TERM", &pid]).is_some());
    wait_until_blocking("the host to stop after SIGTERM", Duration::from_secs(30), || {
        host.0.try_wait().ok().flatten().is_some()
    });
}

#[test]
fn a_volunteer_outside_renders_for_a_host_behind_a_upnp_router_through_the_mapped_port() {
    if skip_without_blender() {
        return;
    }
    let Some(lab) = Lab::new() else { return };
    // The lab on its own, by the reference client: the router answers and knows its external address.
    if installed("upnpc") {
        let status = run("ip", &["netns", "exec", &lab.home, "upnpc", "-i", "-s"]).unwrap_or_default();
        assert!(status.contains(&format!("ExternalIPAddress = {ROUTER_WAN}")), "upnpc -s in home:\n{status}");
    }
    // And the volunteer's side cannot reach home's address at all.
    assert!(run("ip", &["-n", &lab.outside, "route", "get", HOME]).is_none(), "outside has a route to home");

    let dirs = Dirs::new();
    let blend = dirs.jobdir.join("scene.blend");
    make_scene(&blend, 2, "64x48", 2);
    write_job(&dirs.jobdir, "upnp", "scene.blend", 1, 2);
    let (mut host, head) = lab.spawn_host(&dirs, &["--upnp", "--upnp-allow-private"]);
    let banner = head.join("\n");
    assert!(banner.contains(&format!("port mapped by UPnP: /ip4/{ROUTER_WAN}/tcp/")), "{banner}");
    let join = join_addr(&head);
    assert!(join.starts_with(&format!("/ip4/{ROUTER_WAN}/tcp/")), "the first join line is not the mapping: {join}");
    let forwards = lab.forwards();
    assert!(forwards.contains(&format!("dnat ip to {HOME}:7463")), "no forward on the router:\n{forwards}");

    let mut volunteer = Command::new("ip");
    volunteer.args(["netns", "exec", &lab.outside, BIN, "join", &join, "--no-mdns", "--threads", "1"]);
    volunteer.arg("--cache-dir").arg(dirs.cache("v")).stdin(Stdio::null());
    let _volunteer = Proc(volunteer.spawn().unwrap());
    let names = frame_names(1, 2, "png");
    wait_until_blocking("frames rendered by the volunteer outside", Duration::from_secs(180), || {
        files_in(&dirs.renderdir.join("upnp")) == names
    });
    let baseline = dirs.root.path().join("baseline");
    render_baseline(&blend, &baseline);
    assert_same_pixels(&baseline, &dirs.renderdir.join("upnp"), &names);

    // The mapping goes with the host.
    terminate(&mut host);
    let forwards = lab.forwards();
    assert!(!forwards.contains("dnat"), "the mapping outlived the host:\n{forwards}");
}

#[test]
fn a_private_external_address_is_refused_without_upnp_allow_private() {
    let Some(lab) = Lab::new() else { return };
    let dirs = Dirs::new();
    let (_host, head) = lab.spawn_host(&dirs, &["--upnp"]);
    let banner = head.join("\n");
    let why = format!("no port mapped by UPnP: the UPnP gateway's external address {ROUTER_WAN} is private");
    assert!(banner.contains(&why), "{banner}");
    assert!(banner.contains("pass --upnp-allow-private to map anyway"), "{banner}");
    // The host still serves its own network, and asked the router for nothing.
    assert!(join_addr(&head).starts_with(&format!("/ip4/{HOME}/tcp/7463/p2p/")), "{banner}");
    let forwards = lab.forwards();
    assert!(!forwards.contains("dnat"), "a mapping was made:\n{forwards}");
}

#[test]
fn a_router_without_upnp_is_reported_and_the_host_serves_its_own_network() {
    let Some(lab) = Lab::without_upnp() else { return };
    let dirs = Dirs::new();
    let (_host, head) = lab.spawn_host(&dirs, &["--upnp"]);
    let banner = head.join("\n");
    assert!(banner.contains("no port mapped by UPnP: no UPnP gateway answered within 10 s"), "{banner}");
    assert!(join_addr(&head).starts_with(&format!("/ip4/{HOME}/tcp/7463/p2p/")), "{banner}");
}

#[test]
fn the_mapping_is_renewed_before_its_lease_ends() {
    let Some(lab) = Lab::new() else { return };
    let dirs = Dirs::new();
    let (_host, head) = lab.spawn_host(&dirs, &["--upnp", "--upnp-allow-private", "--upnp-lease", "4"]);
    assert!(join_addr(&head).starts_with(&format!("/ip4/{ROUTER_WAN}/tcp/7463/p2p/")), "{}", head.join("\n"));
    // miniupnpd logs every AddPortMapping it grants: the first one and then a renewal every half lease.
    let adds = || {
        let log = std::fs::read_to_string(lab.dir.path().join("miniupnpd.log")).unwrap_or_default();
        log.lines().filter(|l| l.contains("AddPortMapping") && l.contains("leaseduration=4")).count()
    };
    // Four renewals: twice the lease has passed, and miniupnpd removes a mapping as soon as its lease ends.
    wait_until_blocking("four renewals of the mapping", Duration::from_secs(60), || adds() >= 5);
    let forwards = lab.forwards();
    assert!(forwards.contains(&format!("dnat ip to {HOME}:7463")), "the renewed mapping is gone:\n{forwards}");
}

#[test]
fn only_addresses_the_internet_can_reach_count_as_public() {
    let public = ["8.8.8.8", "1.1.1.1", "81.2.69.160", "2a00:1450:4001:80b::200e"];
    let private = [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "100.64.0.1",
        "127.0.0.1",
        "169.254.1.1",
        "198.18.22.1",
        "192.0.2.1",
        "0.0.0.0",
        "255.255.255.255",
        "240.0.0.1",
        "fd00::1",
        "fe80::1",
        "::1",
        "2001:db8::1",
    ];
    for ip in public {
        assert!(is_public(ip.parse().unwrap()), "{ip} should count as public");
    }
    for ip in private {
        assert!(!is_public(ip.parse().unwrap()), "{ip} should count as private");
    }
}
