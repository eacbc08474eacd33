//! Dispatch latency: an in-process host and one idle, connected fake volunteer. Ten times (five with --quick) a new
//! one-frame job with its own small .blend is written; the latency is from the job file's rename to the volunteer's
//! renderer being called for it, so it includes noticing the file, hashing the .blend, the offer, the claim, the
//! grant and the .blend fetch. Between jobs the volunteer finishes the previous frame and idles for a varying
//! 0.3–1.2 s, so the jobs do not line up with the host's 0.5 s tick or 3 s offer timer. Goal: ≤ 0.5 s for the
//! median and for the worst; the goal is also the baseline of the ratio.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::common::{self, note, row, Farm, Opts, Stamped};

const GOAL: Duration = Duration::from_millis(500);

pub async fn run(opts: &Opts) -> anyhow::Result<()> {
    let repeats: usize = if opts.quick { 5 } else { 10 };
    let dir = opts.temp_dir("dispatch")?;
    let mut farm = Farm::start_host(dir.path(), dir.path()).await?;
    let renderer = Arc::new(Stamped::fake(Duration::ZERO));
    farm.add_volunteer(renderer.clone())?;
    farm.wait_connected(Duration::from_secs(2)).await?;

    let mut latencies = Vec::with_capacity(repeats);
    for i in 0..repeats {
        let blend = format!("d{i}.blend");
        common::write_fake_blend(&farm.jobdir.join(&blend), 16 * 1024, 100 + i as u64)?;
        let job = format!("d{i}");
        common::write_job(&farm.jobdir, &job, &blend, 1, 1)?;
        let t0 = Instant::now();
        let limit = Duration::from_secs(30);
        common::wait_for("the first render", limit, Duration::from_millis(1), || renderer.starts().len() > i).await?;
        let latency = renderer.starts()[i] - t0;
        eprintln!("   job {job}: first render {:.1} ms after the job file", latency.as_secs_f64() * 1000.0);
        latencies.push(latency);
        common::wait_for("the frame file", limit, Duration::from_millis(5), || farm.frames_in(&job) == 1).await?;
        tokio::time::sleep(Duration::from_millis(300 + (i as u64 * 317) % 900)).await;
    }

    let mut sorted = latencies.clone();
    sorted.sort();
    let median =
        if repeats % 2 == 1 { sorted[repeats / 2] } else { (sorted[repeats / 2 - 1] + sorted[repeats / 2]) / 2 };
    let max = *sorted.last().unwrap_or(&Duration::ZERO);
    for (what, value) in [("median", median), ("max", max)] {
        row(
            &format!("Dispatch latency, {what} of {repeats} (job file → first render)"),
            &ms(value),
            &format!("goal {}", ms(GOAL)),
            &format!("{:.3}", value.as_secs_f64() / GOAL.as_secs_f64()),
            &format!("≤ {}", ms(GOAL)),
            common::yes_no(value <= GOAL),
        );
    }
    let all: Vec<String> = latencies.iter().map(|l| format!("{:.0}", l.as_secs_f64() * 1000.0)).collect();
    note(&format!("Dispatch latencies in ms, in order: {}.", all.join(", ")));
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}
