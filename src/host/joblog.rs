//! The per-job log `JOBDIR/NAME.log` that an owner reads to see what happened to a job.
//!
//! Appending is file I/O, so the host's event loop never does it: [`JobLog::append`] stamps the line and hands it to
//! a writer thread of its own, which appends lines in the order they were given: every line waiting when it wakes,
//! one open and one write per run of lines for the same job (with hundreds of volunteers, many frames a second).
//! Failing to log never stops the farm; errors are reported in the host's own log.

use std::{io::Write, path::PathBuf, sync::mpsc};

use tracing::warn;

/// A handle on the writer thread; cheap to clone. The thread ends, having written every line, when the last handle
/// is dropped.
#[derive(Clone)]
pub struct JobLog {
    lines: mpsc::Sender<(String, String)>,
}

impl JobLog {
    /// Starts the writer thread for logs in `jobdir`.
    pub fn start(jobdir: PathBuf) -> Self {
        let (lines, queue) = mpsc::channel::<(String, String)>();
        std::thread::Builder::new()
            .name("blenderdist-joblog".into())
            .spawn(move || {
                while let Ok(first) = queue.recv() {
                    let waiting: Vec<(String, String)> = std::iter::once(first).chain(queue.try_iter()).collect();
                    for run in waiting.chunk_by(|a, b| a.0 == b.0) {
                        let text: String = run.iter().map(|(_, line)| format!("{line}\n")).collect();
                        write_lines(&jobdir, &run[0].0, &text);
                    }
                }
            })
            .map_err(|e| warn!("cannot start the job log writer: {e}"))
            .ok();
        Self { lines }
    }

    /// Appends one timestamped line to `JOBDIR/NAME.log`, without waiting for the disk.
    pub fn append(&self, name: &str, line: &str) {
        let _ = self.lines.send((name.to_string(), format!("{} {line}", humantime_now())));
    }
}

/// Appends `text` (whole lines) to `JOBDIR/NAME.log` in one write.
fn write_lines(jobdir: &std::path::Path, name: &str, text: &str) {
    let path = jobdir.join(format!("{name}.log"));
    let result = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
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
    fn lines_are_written_in_order_off_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let log = super::JobLog::start(dir.path().to_path_buf());
        for i in 0..100 {
            log.append("shot", &format!("line {i}"));
        }
        drop(log);
        let path = dir.path().join("shot.log");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let lines = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 100 || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let numbers: Vec<&str> = lines.lines().map(|l| l.rsplit(' ').next().unwrap_or_default()).collect();
        let want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        assert_eq!(numbers, want);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_784), (2026, 11, 27));
    }
}
