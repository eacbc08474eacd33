//! The per-job log `JOBDIR/NAME.log` that an owner reads to see what happened to a job.

use std::{io::Write, path::Path};

use tracing::warn;

/// Appends one timestamped line to `JOBDIR/NAME.log`. Failing to log never stops the farm, so errors are only
/// reported in the host's own log.
pub fn append(jobdir: &Path, name: &str, line: &str) {
    let path = jobdir.join(format!("{name}.log"));
    let stamp = humantime_now();
    let result = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{stamp} {line}"));
    if let Err(e) = result {
        warn!("cannot write {}: {e}", path.display());
    }
}

/// Seconds since the Unix epoch in UTC, as `YYYY-MM-DD HH:MM:SS`, without pulling in a date crate.
fn humantime_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_784), (2026, 11, 27));
    }
}
