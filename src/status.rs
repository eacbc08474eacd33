//! `blenderdist status`: ask a running host over the mesh what its farm is doing, and print it for people (tables
//! with progress bars, drawn by comfy-table; `--watch` redraws them in place like `top`) or for scripts (`--json`,
//! the [`StatusReport`] schema in docs/PROTOCOL.md).

use std::{
    io::{IsTerminal as _, Write as _},
    time::Duration,
};

use anyhow::Context as _;
use comfy_table::{presets, Attribute, Cell, CellAlignment, Color, ContentArrangement, Table};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

use crate::{
    net::{self, Client, NetConfig, NetEvent},
    protocol::{JobReport, JobState, PeerReport, StatusReport, WorkRequest, WorkResponse},
};

/// How long a host may take to be reached and to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

/// A connection to one host, kept open so `--watch` asks again without a new handshake each time.
struct Session {
    addr: Multiaddr,
    client: Client,
    events: mpsc::Receiver<NetEvent>,
    host: Option<PeerId>,
}

impl Session {
    /// Connects with a throwaway identity: it claims nothing, so the host never counts it as a volunteer.
    fn open(addr: Multiaddr, swarm_key: Option<net::SwarmKey>) -> anyhow::Result<Self> {
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let max_peers = crate::protocol::DEFAULT_MAX_PEERS;
        let config = NetConfig {
            keypair,
            swarm_key,
            is_host: false,
            listen: vec![],
            bootstrap: vec![addr.clone()],
            mdns: false,
            max_peers,
        };
        let (client, events) = net::spawn(config)?;
        Ok(Session { addr, client, events, host: None })
    }

    /// Takes one network event; remembers the host when it identifies itself, forgets it when it goes.
    fn on_event(&mut self, event: Option<NetEvent>) -> anyhow::Result<()> {
        match event {
            Some(NetEvent::HostFound(peer)) => self.host = Some(peer),
            Some(NetEvent::PeerGone(peer)) if self.host == Some(peer) => self.host = None,
            Some(NetEvent::Incompatible { theirs, host: true, .. }) => anyhow::bail!(
                "the host speaks {theirs}, this program {}; use the same version of blenderdist",
                crate::protocol::IDENTIFY_PROTOCOL
            ),
            Some(_) => {}
            None => anyhow::bail!("the network stopped"),
        }
        Ok(())
    }

    /// Waits for the host (the network layer redials it), asks for its status, and gives up after [`ANSWER_WITHIN`].
    async fn ask(&mut self) -> anyhow::Result<StatusReport> {
        let addr = self.addr.clone();
        let ask = async {
            let host = loop {
                if let Some(host) = self.host {
                    break host;
                }
                let event = self.events.recv().await;
                self.on_event(event)?;
            };
            match self.client.request(host, WorkRequest::Status).await? {
                WorkResponse::Status(report) => Ok(report),
                WorkResponse::Refused { reason } => anyhow::bail!("the host refused: {reason}"),
                other => anyhow::bail!("the host answered {other:?}; is it an older blenderdist?"),
            }
        };
        tokio::time::timeout(ANSWER_WITHIN, ask)
            .await
            .with_context(|| format!("no blenderdist host answered at {addr} within {} s", ANSWER_WITHIN.as_secs()))?
    }
}

/// Asks the host at `addr` (of a private farm when `swarm_key` is given) for its status once.
pub async fn fetch(addr: Multiaddr, swarm_key: Option<net::SwarmKey>) -> anyhow::Result<StatusReport> {
    Session::open(addr, swarm_key)?.ask().await
}

/// `status --watch`: asks every `every` and redraws the tables in place (on the terminal's alternate screen, as `top`
/// does) until `stop` resolves. A host that stops answering is shown as such under its last report, and is asked
/// again; only a host never reached at the start is an error. When stdout is not a terminal each report follows the
/// last; with `json`, each report is one line of JSON (a stream for scripts).
pub async fn watch(
    addr: Multiaddr,
    swarm_key: Option<net::SwarmKey>,
    every: Duration,
    json: bool,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut session = Session::open(addr.clone(), swarm_key)?;
    let mut last = session.ask().await?;
    let mut screen = Screen::new(!json && std::io::stdout().is_terminal(), !json)?;
    let mut problem: Option<String> = None;
    tokio::pin!(stop);
    loop {
        let frame = if json {
            serde_json::to_string(&last).context("cannot encode the status as JSON")?
        } else {
            let mut frame =
                format!("blenderdist status {addr}   {}   every {} s, Ctrl-C quits\n\n", clock(), every.as_secs_f64());
            frame.push_str(&to_text(&last));
            if let Some(problem) = &problem {
                frame.push_str(&format!("\n(the report above is the last answer) {problem}\n"));
            }
            frame
        };
        screen.draw(&frame)?;
        let sleep = tokio::time::sleep(every);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut stop => return screen.close(),
                _ = &mut sleep => break,
                event = session.events.recv() => session.on_event(event)?,
            }
        }
        tokio::select! {
            _ = &mut stop => return screen.close(),
            answer = session.ask() => match answer {
                Ok(report) => {
                    last = report;
                    problem = None;
                }
                Err(e) => problem = Some(format!("{e:#}")),
            },
        }
    }
}

/// The wall-clock time of day (UTC) as `HH:MM:SS`, for the watch header.
fn clock() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("{:02}:{:02}:{:02} UTC", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

/// Where `--watch` draws: the alternate screen of a terminal, redrawn from the top each time, or a plain stream.
struct Screen {
    tty: bool,
    /// A blank line between reports on a plain stream of tables (not between JSON lines).
    gap: bool,
    drawn: bool,
}

impl Screen {
    fn new(tty: bool, gap: bool) -> anyhow::Result<Self> {
        if tty {
            crossterm::execute!(std::io::stdout(), crossterm::terminal::EnterAlternateScreen, crossterm::cursor::Hide)
                .context("cannot draw on this terminal")?;
        }
        Ok(Screen { tty, gap: gap && !tty, drawn: false })
    }

    fn draw(&mut self, frame: &str) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        if self.tty {
            use crossterm::{cursor::MoveTo, terminal::Clear, terminal::ClearType};
            crossterm::queue!(out, MoveTo(0, 0), Clear(ClearType::All))?;
        } else if self.gap && self.drawn {
            writeln!(out)?;
        }
        self.drawn = true;
        writeln!(out, "{}", frame.trim_end())?;
        out.flush()?;
        Ok(())
    }

    fn close(&mut self) -> anyhow::Result<()> {
        if std::mem::take(&mut self.tty) {
            crossterm::execute!(std::io::stdout(), crossterm::cursor::Show, crossterm::terminal::LeaveAlternateScreen)?;
        }
        Ok(())
    }
}

impl Drop for Screen {
    /// Gives the terminal back even when `watch` ends with an error.
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// The report as `status --json` prints it.
pub fn to_json(report: &StatusReport) -> anyhow::Result<String> {
    serde_json::to_string_pretty(report).context("cannot encode the status as JSON")
}

/// The report as two tables for people: the jobs, each with a progress bar, state, frame counts, average frame time
/// and ETA (and, below the table, why a job was rejected or failed); then the volunteers. Colours and the terminal's
/// width are used only when stdout is a terminal.
pub fn to_text(report: &StatusReport) -> String {
    let mut out = String::new();
    if report.jobs.is_empty() {
        out.push_str("no jobs\n");
    } else {
        out.push_str(&jobs_table(&report.jobs).to_string());
        out.push('\n');
        for job in report.jobs.iter().filter(|j| j.error.is_some()) {
            let error = job.error.as_deref().unwrap_or_default().replace(['\n', '\r'], " ");
            out.push_str(&format!("{}: {error}\n", job.name));
        }
    }
    out.push('\n');
    if report.peers.is_empty() {
        out.push_str("no volunteers\n");
    } else {
        out.push_str(&peers_table(&report.peers).to_string());
        out.push('\n');
    }
    for ban in &report.banned {
        let (name, reason) = (crate::protocol::one_line(&ban.name, 64), crate::protocol::one_line(&ban.reason, 512));
        out.push_str(&format!("banned: {name} (…{}): {reason}\n", short_id(&ban.id)));
    }
    out
}

fn new_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::UTF8_FULL_CONDENSED.with_rounded_corners())
        .set_content_arrangement(arrangement())
        .set_header(header.iter().map(|h| Cell::new(h).add_attribute(Attribute::Bold)));
    table
}

/// Fit the terminal's width when there is one; a pseudo-terminal of unknown size (0 columns) gets natural widths.
fn arrangement() -> ContentArrangement {
    match crossterm::terminal::size() {
        Ok((columns, _)) if columns >= 40 => ContentArrangement::Dynamic,
        _ => ContentArrangement::Disabled,
    }
}

fn jobs_table(jobs: &[JobReport]) -> Table {
    let mut table = new_table(&["job", "progress", "state", "done", "rendering", "failed", "per frame", "ETA"]);
    for job in jobs {
        let eta = job.eta_seconds.filter(|_| job.state == JobState::Rendering).map(duration);
        table.add_row(vec![
            Cell::new(&job.name),
            Cell::new(format!("{} {:>5.1}%", bar(job), percent(job))),
            Cell::new(state_word(job.state)).fg(state_colour(job.state)),
            Cell::new(format!("{}/{}", job.frames_done, job.frames_total)),
            Cell::new(job.frames_rendering),
            Cell::new(job.frames_failed).fg(if job.frames_failed > 0 { Color::Red } else { Color::Reset }),
            Cell::new(job.avg_frame_seconds.map(duration).unwrap_or_default()),
            Cell::new(eta.unwrap_or_default()),
        ]);
    }
    for column in 3..=7 {
        if let Some(c) = table.column_mut(column) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// A peer id's last 8 characters, not bytes: the host sends any text (a byte offset could split a character).
fn short_id(id: &str) -> String {
    id.chars().skip(id.chars().count().saturating_sub(8)).collect()
}

fn peers_table(peers: &[PeerReport]) -> Table {
    let mut table = new_table(&["volunteer", "peer", "Blender", "done", "per frame", "rendering now"]);
    for peer in peers {
        let id = short_id(&peer.id);
        let now: Vec<String> = peer.rendering.iter().map(|f| format!("{} frame {}", f.job, f.frame)).collect();
        table.add_row(vec![
            Cell::new(&peer.name),
            Cell::new(format!("…{id}")),
            Cell::new(peer.blender.as_deref().unwrap_or("?")),
            Cell::new(peer.frames_done),
            Cell::new(peer.avg_frame_seconds.map(duration).unwrap_or_default()),
            if now.is_empty() { Cell::new("idle").fg(Color::DarkGrey) } else { Cell::new(now.join(", ")) },
        ]);
    }
    for column in [3, 4] {
        if let Some(c) = table.column_mut(column) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

fn state_word(state: JobState) -> &'static str {
    match state {
        JobState::Queued => "queued",
        JobState::Rendering => "rendering",
        JobState::Suspended => "suspended",
        JobState::Done => "done",
        JobState::Failed => "failed",
        JobState::Invalid => "invalid",
    }
}

fn state_colour(state: JobState) -> Color {
    match state {
        JobState::Rendering => Color::Yellow,
        JobState::Done => Color::Green,
        JobState::Failed | JobState::Invalid => Color::Red,
        JobState::Queued | JobState::Suspended => Color::Reset,
    }
}

fn percent(job: &JobReport) -> f64 {
    if job.frames_total == 0 {
        return 0.0;
    }
    100.0 * f64::from(job.frames_done) / f64::from(job.frames_total)
}

/// A 20-cell bar of block characters with eighths at its tip, so 1 % already shows: `██████████▍░░░░░░░░░`.
fn bar(job: &JobReport) -> String {
    const TIPS: [char; 8] = ['░', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let eighths = ((percent(job) / 100.0 * 160.0).round() as usize).min(160);
    let (full, tip) = (eighths / 8, eighths % 8);
    let mut bar = "█".repeat(full);
    if full < 20 {
        bar.push(TIPS[tip]);
        bar.push_str(&"░".repeat(19 - full));
    }
    bar
}

/// Seconds for people: `41.2 s`, `12 min`, `3 h 05 min`.
fn duration(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1} s")
    } else if secs < 3600.0 {
        format!("{:.0} min", secs / 60.0)
    } else {
        let mins = (secs / 60.0).round() as u64;
        format!("{} h {:02} min", mins / 60, mins % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FrameRef, JobReport, PeerReport};

    /// Found by fuzz/fuzz_targets/work_response.rs: a peer id from the host with a multi-byte character 8 bytes from
    /// its end panicked `status` (it was cut at a byte offset).
    #[test]
    fn peer_ids_are_cut_on_characters() {
        let peer = |id: &str| PeerReport {
            id: id.into(),
            name: "bob".into(),
            blender: None,
            frames_done: 0,
            rendering: vec![],
            avg_frame_seconds: None,
        };
        let report = StatusReport {
            jobs: vec![],
            peers: vec![peer("12D3KooWDpJ7YKD\u{feff}kx6nXTN"), peer("é")],
            banned: vec![crate::protocol::BannedPeer {
                id: "é".into(), name: "bob\npc".into(), reason: "x\ny".into()
            }],
        };
        let text = to_text(&report);
        assert!(text.contains("…\u{feff}kx6nXTN") && text.contains("…é"), "{text}");
        assert!(text.contains("banned: bob\\npc (…é): x\\ny"), "{text}");
    }

    #[test]
    fn text_and_json() {
        let report = StatusReport {
            jobs: vec![JobReport {
                name: "shot1".into(),
                state: JobState::Rendering,
                priority: 0,
                frames_total: 250,
                frames_done: 125,
                frames_rendering: 2,
                frames_failed: 1,
                avg_frame_seconds: Some(41.2),
                eta_seconds: Some(5400.0),
                blend: "/jobs/shot1.blend".into(),
                error: None,
            }],
            peers: vec![PeerReport {
                id: "12D3KooWabcdefgh".into(),
                name: "alice-desktop".into(),
                blender: Some("3.4.1".into()),
                frames_done: 7,
                rendering: vec![FrameRef { job: "shot1".into(), frame: 41 }],
                avg_frame_seconds: Some(40.0),
            }],
            banned: vec![],
        };
        let text = to_text(&report);
        let row = |first: &str| text.lines().find(|l| l.contains(first)).unwrap_or_default().to_string();
        let job = row("shot1");
        for cell in ["██████████░░░░░░░░░░  50.0%", "rendering", "125/250", "41.2 s", "1 h 30 min"]
        {
            assert!(job.contains(cell), "{cell:?} not in {job:?}\n{text}");
        }
        let peer = row("alice-desktop");
        for cell in ["…abcdefgh", "3.4.1", " 7 ", "40.0 s", "shot1 frame 41"] {
            assert!(peer.contains(cell), "{cell:?} not in {peer:?}\n{text}");
        }
        let mut idle = report.clone();
        idle.peers[0].rendering.clear();
        idle.jobs[0].state = JobState::Invalid;
        idle.jobs[0].error = Some("line 2:\nfirst frame".into());
        let text = to_text(&idle);
        assert!(text.contains("┆ idle "), "{text}");
        assert!(text.contains("shot1: line 2: first frame"), "{text}");
        assert!(!text.contains("1 h 30 min"), "no ETA for a job that is not rendering: {text}");
        let json: serde_json::Value = serde_json::from_str(&to_json(&report).unwrap()).unwrap();
        assert_eq!(json["jobs"][0]["state"], "rendering");
        assert_eq!(json["jobs"][0]["eta_seconds"], 5400.0);
        assert_eq!(json["peers"][0]["rendering"][0]["frame"], 41);
    }
}
