//! blenderdist's benchmarks: one binary (`harness = false`), one subcommand per benchmark. `scripts/bench.sh` builds
//! it once with the release binary, runs it and turns its result rows into the table in docs/BENCHMARKS.md.
//!
//! ```text
//! farm [overhead|scaling|dispatch|blob|memory|project|stalls|pnet|distribution]... [--quick] [--bin PATH] [--tmp DIR]
//!      [--volunteers N] [--frames N] [--frame-ms N] [--peers N] [--verify F]
//! ```
//!
//! No name runs all nine. The size options replace a benchmark's default sizes where it takes them (scaling:
//! volunteers, frames, frame-ms; memory: peers, frames; stalls: volunteers, frame-ms; distribution: volunteers). Results go to stdout as
//! tab-separated lines, `ROW` (benchmark, measured, baseline, ratio, goal, met?), `NOTE` (a sentence for the report)
//! and `CPU` (seconds of CPU used by processes the benchmark started but nobody waited for, which the script adds to
//! the benchmark's own); progress goes to stderr. Every figure with a baseline measures that baseline in the same
//! invocation. Every load is bounded in count and time, runs over loopback only, and
//! stops by itself; a benchmark that cannot finish fails with a message instead of hanging.
//!
//! Layout: `common` holds the shared helpers (options, temp folders, result rows, an in-process farm), `procs` the
//! handling of the processes started (the release binary, Blender); one file per benchmark holds its method,
//! described at its top.

#[path = "farm/blob.rs"]
mod blob;
#[path = "farm/common.rs"]
mod common;
#[path = "farm/dispatch.rs"]
mod dispatch;
#[path = "farm/distribution.rs"]
mod distribution;
#[path = "farm/loopdisk.rs"]
mod loopdisk;
#[path = "farm/memory.rs"]
mod memory;
#[path = "farm/overhead.rs"]
mod overhead;
#[path = "farm/pnet.rs"]
mod pnet;
#[path = "farm/procs.rs"]
mod procs;
#[path = "farm/project.rs"]
mod project;
#[path = "farm/scaling.rs"]
mod scaling;
#[path = "farm/stalls.rs"]
mod stalls;

use std::process::ExitCode;

use common::Opts;

const ALL: [&str; 9] =
    ["overhead", "scaling", "dispatch", "blob", "memory", "project", "stalls", "pnet", "distribution"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("swarm-volunteer") {
        common::init_tracing();
        return match distribution::volunteer(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("farm swarm-volunteer: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let opts = match Opts::parse(std::env::args().skip(1)) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!(
                "farm: {e}\nusage: farm [{}]... [--quick] [--bin PATH] [--tmp DIR] [--volunteers N] [--frames N] \
                 [--frame-ms N] [--peers N] [--verify F]",
                ALL.join("|")
            );
            return ExitCode::from(2);
        }
    };
    common::init_tracing();
    let names: Vec<String> =
        if opts.names.is_empty() { ALL.iter().map(|s| s.to_string()).collect() } else { opts.names.clone() };
    let mut failed = false;
    for name in &names {
        eprintln!("== {name}{}", if opts.quick { " (quick)" } else { "" });
        let result = match name.as_str() {
            "overhead" => overhead::run(&opts),
            "scaling" => common::block_on(scaling::run(&opts)),
            "dispatch" => common::block_on(dispatch::run(&opts)),
            "blob" => common::block_on(blob::run(&opts)),
            "memory" => common::block_on(memory::run(&opts)),
            "project" => project::run(&opts),
            "stalls" => common::block_on(stalls::run(&opts)),
            "pnet" => common::block_on(pnet::run(&opts)),
            "distribution" => common::block_on(distribution::run(&opts)),
            other => Err(anyhow::anyhow!("unknown benchmark {other:?}; known: {}", ALL.join(", "))),
        };
        // CPU seconds of processes this benchmark stopped without anyone waiting for them (see procs::Proc).
        let ticks = procs::UNWAITED_CPU_TICKS.swap(0, std::sync::atomic::Ordering::Relaxed);
        println!("CPU\t{:.2}", ticks as f64 / procs::clock_ticks_per_second());
        if let Err(e) = result {
            eprintln!("farm: {name} failed: {e:#}");
            common::row(name, "FAILED", "-", "-", "-", "no");
            common::note(&format!("{name} failed: {e:#}"));
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
