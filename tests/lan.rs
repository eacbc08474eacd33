//! LAN discovery: a host and a volunteer in two network namespaces joined by a veth pair (mDNS ignores loopback).
//! The volunteer is started with no address and must find the host by mDNS, then render a real frame.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use crate::{blender_e2e::*, common::*};

/// Two network namespaces and the veth pair between them, removed on drop (also used by tests/private.rs).
pub(crate) struct Lan {
    pub(crate) host_ns: String,
    pub(crate) volunteer_ns: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

impl Lan {
    /// Addresses come from 198.18.0.0/15, the range set aside for network tests; they exist only inside the pair.
    pub(crate) fn new() -> Option<Self> {
        // Unique among the tests of this process too (the private farm's test makes one as well).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}x{n}", std::process::id() % 50_000);
        let (h, v) = (format!("bdh{id}"), format!("bdv{id}"));
        let lan = Lan { host_ns: h.clone(), volunteer_ns: v.clone() };
        let (ha, va) = (format!("vh{id}"), format!("vv{id}"));
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &h],
            vec!["netns", "add", &v],
            vec!["link", "add", &ha, "type", "veth", "peer", "name", &va],
            vec!["link", "set", &ha, "netns", &h],
            vec!["link", "set", &va, "netns", &v],
            vec!["-n", &h, "addr", "add", "198.18.7.1/24", "dev", &ha],
            vec!["-n", &v, "addr", "add", "198.18.7.2/24", "dev", &va],
            vec!["-n", &h, "link", "set", &ha, "up", "multicast", "on"],
            vec!["-n", &v, "link", "set", &va, "up", "multicast", "on"],
            vec!["-n", &h, "link", "set", "lo", "up"],
            vec!["-n", &v, "link", "set", "lo", "up"],
            vec!["-n", &h, "route", "add", "224.0.0.0/4", "dev", &ha],
            vec!["-n", &v, "route", "add", "224.0.0.0/4", "dev", &va],
        ];
        for step in steps {
            if !ip(&step) {
                skip(&format!("`ip {}` failed (needs root and iproute2)", step.join(" ")));
                return None;
            }
        }
        Some(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.host_ns]);
        ip(&["netns", "del", &self.volunteer_ns]);
    }
}

#[test]
fn a_volunteer_with_no_address_finds_the_host_by_mdns_over_a_veth_pair() {
    if !blender_available() {
        skip("blender is not installed");
        return;
    }
    let Some(lan) = Lan::new() else { return };
    let dirs = Dirs::new();
    let blend = dirs.jobdir.join("scene.blend");
    make_scene(&blend, 2, "64x48", 2);
    write_job(&dirs.jobdir, "lan", "scene.blend", 1, 2);

    let mut host = Command::new("ip");
    host.args(["netns", "exec", &lan.host_ns, BIN, "host"]).arg(&dirs.jobdir).arg(&dirs.renderdir);
    host.args(["--listen", "198.18.7.1:7463"]).stdout(Stdio::piped());
    let mut host = host.spawn().unwrap();
    let stdout = host.stdout.take().unwrap();
    let _host = Proc(host);
    let join = read_join_line(stdout);
    assert!(join.starts_with("/ip4/198.18.7.1/tcp/7463/p2p/"), "{join}");

    let mut volunteer = Command::new("ip");
    // This volunteer takes the start-per-frame path, so it too is proven against real Blender.
    let args =
        ["netns", "exec", &lan.volunteer_ns, BIN, "join", "--process-per-frame", "--threads", "1", "--cache-dir"];
    volunteer.args(args);
    volunteer.arg(dirs.cache("v")).stdin(Stdio::null());
    let _volunteer = Proc(volunteer.spawn().unwrap());

    let names = frame_names(1, 2, "png");
    wait_until_blocking("frames rendered by the LAN volunteer", Duration::from_secs(180), || {
        files_in(&dirs.renderdir.join("lan")) == names
    });
    let baseline = dirs.root.path().join("baseline");
    render_baseline(&blend, &baseline);
    assert_same_pixels(&baseline, &dirs.renderdir.join("lan"), &names);
}
