//! Running a program the owner asked for (a `notify` command, ffmpeg, a short Blender query) without trusting it to
//! end: in a process group of its own, with a time limit at which the whole group is killed, and with only the first
//! bytes of its output kept, made printable for the job log.

use std::{
    io,
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use tokio::{io::AsyncReadExt, process::Command};
use tokio_util::sync::CancellationToken;

/// How long output is still read after a program exited: a process it left running may hold its pipes open.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// What a program run by [`run_limited`] did.
pub struct Ran {
    /// None: it was killed at the time limit.
    pub status: Option<ExitStatus>,
    pub stdout: Captured,
    pub stderr: Captured,
    pub took: Duration,
}

/// The first bytes of an output stream.
#[derive(Default)]
pub struct Captured {
    pub bytes: Vec<u8>,
    /// Bytes read past the bound and thrown away.
    pub dropped: u64,
    /// The stream was still open [`OUTPUT_GRACE`] after the program ended.
    pub held_open: bool,
}

/// Runs `cmd` in a process group of its own, reading the first `max` bytes of stdout and stderr each. At `limit`
/// the whole group is killed (the leader not yet reaped, so its id cannot have been reused for another group).
pub async fn run_limited(mut cmd: Command, limit: Duration, max: usize) -> io::Result<Ran> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let ended = CancellationToken::new();
    let wait = async {
        let status = match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => Some(status),
            Err(_) => {
                if let Some(group) = child.id() {
                    kill_group(group).await;
                }
                let _ = child.start_kill();
                let _ = child.wait().await;
                None
            }
        };
        ended.cancel();
        status
    };
    let (status, stdout, stderr) = tokio::join!(wait, capture(stdout, max, &ended), capture(stderr, max, &ended));
    let status = status.transpose()?;
    Ok(Ran { status, stdout, stderr, took: start.elapsed() })
}

/// Reads `pipe` to its end, or until [`OUTPUT_GRACE`] after `ended`, keeping the first `max` bytes.
async fn capture(pipe: Option<impl tokio::io::AsyncRead + Unpin>, max: usize, ended: &CancellationToken) -> Captured {
    let mut got = Captured::default();
    let Some(mut pipe) = pipe else { return got };
    let stop = async {
        ended.cancelled().await;
        tokio::time::sleep(OUTPUT_GRACE).await;
    };
    tokio::pin!(stop);
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            read = pipe.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let keep = n.min(max.saturating_sub(got.bytes.len()));
                    got.bytes.extend_from_slice(&buf[..keep]);
                    got.dropped += (n - keep) as u64;
                }
            },
            _ = &mut stop => {
                got.held_open = true;
                break;
            }
        }
    }
    got
}

/// Kills every process of group `group` with the shell's own `kill` (no libc binding needed for one signal).
async fn kill_group(group: u32) {
    let mut kill = Command::new("sh");
    kill.args(["-c", "kill -s KILL -- \"-$1\"", "sh", &group.to_string()]).stdin(Stdio::null());
    if let Err(e) = kill.status().await {
        tracing::warn!("cannot kill process group {group}: {e}");
    }
}

/// `exit status 3` or `killed by signal 9`, for the job log.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// Output as the job log can show it: one line per line, control characters (escape sequences, bells, carriage
/// returns) replaced by `?` so a program cannot forge log lines or garble a terminal, blank lines dropped.
pub fn printable_lines(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let clean = |line: &str| -> String {
        let line = line.strip_suffix('\r').unwrap_or(line);
        line.chars()
            .map(|c| match c {
                '\t' => ' ',
                c if c.is_control() => '?',
                c => c,
            })
            .collect()
    };
    text.split('\n').map(clean).map(|l| l.trim_end().to_string()).filter(|l| !l.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_lines_are_printable() {
        let got = printable_lines(b"one\r\n\n two\t3 \x1b[31mred\x07\nbad \xff byte\n\n");
        assert_eq!(got, ["one", " two 3 ?[31mred?", "bad \u{fffd} byte"]);
        assert!(printable_lines(b"\n\r\n").is_empty());
    }
}
