//! How late the host's event loop is, measured from inside: with `BLENDERDIST_LOOP_PULSE` set in its environment (the
//! stalls benchmark sets it), the loop takes a pulse every 5 ms before any other event and logs, every 250 ms, the
//! longest it was late for one: the longest time it went without polling its events. Unset, there is no timer.

use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

/// The environment variable that turns the pulse on.
pub const LOOP_PULSE_ENV: &str = "BLENDERDIST_LOOP_PULSE";
const EVERY: Duration = Duration::from_millis(5);
const REPORT_EVERY: Duration = Duration::from_millis(250);

pub struct Pulse {
    interval: Option<Interval>,
    worst: Duration,
    since: Instant,
}

impl Pulse {
    pub fn from_env() -> Self {
        let interval = std::env::var_os(LOOP_PULSE_ENV).map(|_| {
            let mut interval = tokio::time::interval(EVERY);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            interval
        });
        Self { interval, worst: Duration::ZERO, since: Instant::now() }
    }

    /// The next pulse's scheduled time, once it is due; never, when the pulse is off.
    pub async fn tick(&mut self) -> Instant {
        match &mut self.interval {
            Some(interval) => interval.tick().await,
            None => std::future::pending().await,
        }
    }

    /// A pulse scheduled for `scheduled` is taken now; every [`REPORT_EVERY`] the worst lateness is logged.
    pub fn record(&mut self, scheduled: Instant) {
        let now = Instant::now();
        self.worst = self.worst.max(now.saturating_duration_since(scheduled));
        if now.duration_since(self.since) >= REPORT_EVERY {
            tracing::info!("loop pulse: longest lateness {:.1} ms", self.worst.as_secs_f64() * 1000.0);
            (self.worst, self.since) = (Duration::ZERO, now);
        }
    }
}
