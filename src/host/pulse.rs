//! How late the host's event loop is, measured from inside: with `BLENDERDIST_LOOP_PULSE` set in its environment (the
//! stalls benchmark sets it), the loop takes a pulse every 5 ms before any other event and logs, every 250 ms, the
//! longest it was late for one: the longest time it went without polling its events. Unset, there is no timer.
//!
//! Beside it a bare thread of the same process sleeps 5 ms at a time and records how late it wakes. It runs no code
//! of the host, so its lateness is what the machine alone cost (no free core, a vCPU the hypervisor did not run, the
//! kernel busy); the report gives both, and a loop late while the bare thread was on time is the loop's own doing.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::time::{Instant, Interval, MissedTickBehavior};

/// The environment variable that turns the pulse on.
pub const LOOP_PULSE_ENV: &str = "BLENDERDIST_LOOP_PULSE";
const EVERY: Duration = Duration::from_millis(5);
const REPORT_EVERY: Duration = Duration::from_millis(250);

pub struct Pulse {
    interval: Option<Interval>,
    worst: Duration,
    since: Instant,
    /// The bare thread's worst lateness since the last report, in microseconds (taken and reset by each report).
    bare: Arc<AtomicU64>,
}

impl Pulse {
    pub fn from_env() -> Self {
        let bare = Arc::new(AtomicU64::new(0));
        let interval = std::env::var_os(LOOP_PULSE_ENV).map(|_| {
            start_bare_thread(bare.clone());
            let mut interval = tokio::time::interval(EVERY);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            interval
        });
        Self { interval, worst: Duration::ZERO, since: Instant::now(), bare }
    }

    /// The next pulse's scheduled time, once it is due; never, when the pulse is off.
    pub async fn tick(&mut self) -> Instant {
        match &mut self.interval {
            Some(interval) => interval.tick().await,
            None => std::future::pending().await,
        }
    }

    /// A pulse scheduled for `scheduled` is taken now; every [`REPORT_EVERY`] the worst lateness is logged, the loop's
    /// and the bare thread's over the same time.
    pub fn record(&mut self, scheduled: Instant) {
        let now = Instant::now();
        self.worst = self.worst.max(now.saturating_duration_since(scheduled));
        if now.duration_since(self.since) >= REPORT_EVERY {
            let bare = self.bare.swap(0, Ordering::Relaxed) as f64 / 1000.0;
            let worst = self.worst.as_secs_f64() * 1000.0;
            tracing::info!("loop pulse: longest lateness {worst:.1} ms (a bare thread's: {bare:.1} ms)");
            (self.worst, self.since) = (Duration::ZERO, now);
        }
    }
}

/// The control: a thread that only sleeps [`EVERY`] and keeps its worst oversleep in `worst` (microseconds). It lives
/// as long as the process; the pulse is only on while measuring.
fn start_bare_thread(worst: Arc<AtomicU64>) {
    let spawned = std::thread::Builder::new().name("pulse-control".into()).spawn(move || loop {
        let due = std::time::Instant::now() + EVERY;
        std::thread::sleep(EVERY);
        let late = std::time::Instant::now().saturating_duration_since(due);
        worst.fetch_max(u64::try_from(late.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    });
    if let Err(e) = spawned {
        tracing::warn!("no bare thread to compare the loop pulse with: {e}");
    }
}
