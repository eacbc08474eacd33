// The dashboard page: renders each snapshot the host sends on /api/events, without reloading.
//
// Everything in a snapshot comes from the farm (volunteers choose their names, Blender writes the error texts), so
// it is only ever put in the page as text (createElement, textContent), never parsed as markup.
"use strict";

const STATE_NAMES = { p: "pending", r: "rendering", d: "done", f: "failed" };

let current = null; // the last snapshot
const jobCards = new Map(); // job name → its card's elements, kept between snapshots
let recentKey = "";

// ---- helpers ----

function $(id) {
  return document.getElementById(id);
}

/** An element with a class and children (strings become text nodes). */
function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

/** A label and a bold value, e.g. "ETA <b>12 min</b>". */
function fact(label, value) {
  return el("span", null, label + " ", el("b", null, value));
}

function path(...parts) {
  return "/" + parts.map((p) => encodeURIComponent(String(p))).join("/");
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + " s";
  if (s < 600) return s % 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s / 60} min`;
  const m = Math.round(s / 60);
  if (m < 60) return m + " min";
  const h = Math.floor(m / 60);
  if (h < 24) return m % 60 ? `${h} h ${m % 60} min` : `${h} h`;
  const d = Math.floor(h / 24);
  return h % 24 ? `${d} d ${h % 24} h` : `${d} d`;
}

function ago(unixSeconds) {
  const s = Date.now() / 1000 - unixSeconds;
  if (s < 45) return "just now";
  // To the minute: an age needs no seconds.
  return (s < 3600 ? Math.max(1, Math.round(s / 60)) + " min" : duration(s)) + " ago";
}

/** Peer ids all start alike (12D3KooW…): their tail tells them apart. */
function shortId(id) {
  return id.length > 12 ? "…" + id.slice(-8) : id;
}

// ---- jobs ----

function renderJobs(snapshot) {
  const box = $("jobs");
  const jobs = snapshot.status.jobs;
  const grids = new Map(snapshot.frames.map((g) => [g.job, g]));
  const roots = jobs.map((job) => {
    let card = jobCards.get(job.name);
    if (!card) {
      card = makeJobCard(job.name);
      jobCards.set(job.name, card);
    }
    fillJobCard(card, job, grids.get(job.name));
    return card.root;
  });
  const names = new Set(jobs.map((j) => j.name));
  for (const name of [...jobCards.keys()]) if (!names.has(name)) jobCards.delete(name);
  if (roots.length === 0) roots.push(el("p", "empty", "No jobs yet."));
  // Moving a card would reset its grid's scroll position: only when the list changed.
  const same = roots.length === box.children.length && roots.every((r, i) => box.children[i] === r);
  if (!same) box.replaceChildren(...roots);
}

function makeJobCard(name) {
  const card = {
    root: el("article", "job"),
    name,
    state: el("span", "state"),
    title: el("h3", null, name),
    blend: el("span", "job-blend"),
    bar: el("div", "bar"),
    facts: el("div", "job-facts"),
    error: el("p", "job-error"),
    grid: el("div", "grid"),
    cells: [],
    states: "",
    gridInfo: null,
  };
  card.grid.addEventListener("click", (e) => {
    const i = e.target.dataset ? Number(e.target.dataset.i) : NaN;
    if (!isNaN(i) && card.states[i] === "d" && card.gridInfo) {
      openFrame(card.name, card.gridInfo.first + i * card.gridInfo.per_cell);
    }
  });
  card.root.append(el("div", "job-head", card.title, card.state, card.blend), card.bar, card.facts, card.error, card.grid);
  return card;
}

function fillJobCard(card, job, grid) {
  card.state.textContent = job.state;
  card.state.className = "state " + job.state;
  card.blend.textContent = job.blend;
  const total = Math.max(job.frames_total, 1);
  const segments = [
    ["done", job.frames_done],
    ["rendering", job.frames_rendering],
    ["failed", job.frames_failed],
  ].map(([cls, n]) => {
    const part = el("div", cls);
    part.style.width = (100 * n) / total + "%";
    return part;
  });
  card.bar.replaceChildren(...segments);
  const pct = job.frames_total ? Math.floor((100 * job.frames_done) / job.frames_total) : 0;
  const facts = [fact("frames", `${job.frames_done} / ${job.frames_total} (${pct}%)`)];
  if (job.frames_rendering) facts.push(fact("rendering", String(job.frames_rendering)));
  if (job.frames_failed) facts.push(fact("failed", String(job.frames_failed)));
  facts.push(fact("avg frame", duration(job.avg_frame_seconds)));
  if (job.state !== "done") facts.push(fact("ETA", duration(job.eta_seconds)));
  facts.push(fact("priority", String(job.priority)));
  card.facts.replaceChildren(...facts);
  // A job without frames (an invalid job file) has only its error to show.
  card.bar.hidden = card.facts.hidden = job.frames_total === 0;
  card.error.textContent = job.error || "";
  card.error.hidden = !job.error;
  fillGrid(card, job, grid);
}

/** Updates the cells that changed; rebuilds the grid only when its shape did. */
function fillGrid(card, job, grid) {
  const states = grid ? grid.states : "";
  const shape = grid ? `${grid.first}/${grid.per_cell}/${states.length}` : "";
  const last = grid ? grid.first + Math.max(job.frames_total, 1) - 1 : 0;
  const label = (i) => {
    const from = grid.first + i * grid.per_cell;
    const to = Math.min(from + grid.per_cell - 1, last);
    const frames = to > from ? `frames ${from}–${to}` : `frame ${from}`;
    return `${frames}: ${STATE_NAMES[states[i]] || "unknown"}`;
  };
  if (!card.gridInfo || card.gridInfo.shape !== shape) {
    card.cells = [];
    for (let i = 0; i < states.length; i++) {
      const cell = el("div", "cell " + states[i]);
      cell.dataset.i = String(i);
      cell.title = label(i);
      card.cells.push(cell);
    }
    card.grid.replaceChildren(...card.cells);
    card.grid.classList.toggle("small", states.length > 400);
  } else {
    for (let i = 0; i < states.length; i++) {
      if (states[i] !== card.states[i]) {
        card.cells[i].className = "cell " + states[i];
        card.cells[i].title = label(i);
      }
    }
  }
  card.states = states;
  card.gridInfo = grid ? { shape, first: grid.first, per_cell: grid.per_cell } : null;
  card.grid.hidden = states.length === 0;
}

// ---- latest frames ----

function renderRecent(snapshot) {
  const key = snapshot.recent.map((f) => `${f.job}/${f.file}/${f.at}/${f.by}`).join("\n");
  const box = $("recent");
  if (key === recentKey) {
    // Same frames: only the "ago" texts move on.
    box.querySelectorAll("[data-at]").forEach((n) => (n.textContent = ago(Number(n.dataset.at))));
    return;
  }
  recentKey = key;
  box.replaceChildren();
  for (const f of snapshot.recent) {
    const img = el("img");
    img.loading = "lazy";
    img.alt = `${f.job} frame ${f.frame}`;
    img.src = path("thumbs", f.job, f.file) + "?v=" + encodeURIComponent(f.at);
    const when = el("span", null, ago(f.at));
    when.dataset.at = String(f.at);
    const figure = el(
      "figure",
      "thumb",
      img,
      el("figcaption", null, el("span", null, el("b", null, f.job), ` · frame ${f.frame}`), el("span", null, "by " + f.by), when),
    );
    figure.addEventListener("click", () => showFrame(f.job, f.frame, f.file));
    box.append(figure);
  }
  if (snapshot.recent.length === 0) box.append(el("p", "empty", "No finished frames yet."));
}

// ---- volunteers ----

function renderPeers(snapshot) {
  const rows = snapshot.status.peers.map((p) => {
    const id = el("code", null, shortId(p.id));
    id.title = p.id;
    const now = p.rendering.map((r) => `${r.job} #${r.frame}`).join(", ") || "—";
    return el(
      "tr",
      null,
      el("td", null, p.name || "—"),
      el("td", null, id),
      el("td", null, p.blender || "—"),
      el("td", "num", String(p.frames_done)),
      el("td", "num", duration(p.avg_frame_seconds)),
      el("td", null, now),
    );
  });
  $("peers").replaceChildren(...rows);
  $("no-peers").hidden = rows.length > 0;
}

// ---- errors ----

function renderErrors(snapshot) {
  const items = snapshot.errors.map((e) => {
    const head = el("div", "error-head", el("b", null, e.job));
    if (e.frame !== null && e.frame !== undefined) head.append(` · frame ${e.frame}`);
    if (e.by) head.append(" · " + e.by);
    head.append(" · " + ago(e.at));
    return el("div", "error", head, el("pre", null, e.text));
  });
  $("errors").replaceChildren(...items);
  if (items.length === 0) $("errors").append(el("p", "empty", "No errors."));
}

// ---- header ----

function renderSummary(snapshot) {
  const jobs = snapshot.status.jobs;
  const done = jobs.reduce((n, j) => n + j.frames_done, 0);
  const total = jobs.reduce((n, j) => n + j.frames_total, 0);
  const rendering = jobs.reduce((n, j) => n + j.frames_rendering, 0);
  $("summary").replaceChildren(
    fact("jobs", String(jobs.length)),
    fact("volunteers", String(snapshot.status.peers.length)),
    fact("frames", `${done} / ${total}`),
    fact("rendering", String(rendering)),
  );
}

function render(snapshot) {
  current = snapshot;
  renderSummary(snapshot);
  renderJobs(snapshot);
  renderRecent(snapshot);
  renderPeers(snapshot);
  renderErrors(snapshot);
}

// ---- the full-size frame ----

/** A done frame from the grid: its file name from the recent list, else from the host. */
async function openFrame(job, frame) {
  const known = current && current.recent.find((f) => f.job === job && f.frame === frame);
  if (known) return showFrame(job, frame, known.file);
  try {
    const response = await fetch(path("api", "frame", job, frame));
    if (!response.ok) throw new Error((await response.text()).trim());
    const found = await response.json();
    showFrame(job, frame, found.file);
  } catch (e) {
    showFrame(job, frame, null, `Frame ${frame} of ${job}: ${e.message}`);
  }
}

function showFrame(job, frame, file, error) {
  const img = $("lightbox-img");
  $("lightbox-caption").textContent = `${job} · frame ${frame}` + (file ? ` · ${file}` : "");
  $("lightbox-error").hidden = !error;
  $("lightbox-error").textContent = error || "";
  $("lightbox-original").hidden = !file;
  img.hidden = !file;
  img.removeAttribute("src");
  if (file) {
    img.alt = `${job} frame ${frame}`;
    img.src = path("view", job, file);
    $("lightbox-original").href = path("frames", job, file);
  }
  $("lightbox").hidden = false;
}

function closeFrame() {
  $("lightbox").hidden = true;
  $("lightbox-img").removeAttribute("src");
}

// ---- the live stream ----

function setConnection(state, text) {
  const badge = $("connection");
  badge.className = "badge " + state;
  badge.textContent = text;
}

function connect() {
  const source = new EventSource("/api/events");
  source.onopen = () => setConnection("live", "live");
  source.onmessage = (e) => {
    setConnection("live", "live");
    try {
      render(JSON.parse(e.data));
    } catch (err) {
      console.error("cannot show this snapshot", err);
    }
  };
  source.onerror = () => {
    setConnection("down", "disconnected, retrying");
    // The browser retries by itself unless the answer was an error; then start over after a pause.
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
  };
}

document.addEventListener("DOMContentLoaded", () => {
  $("lightbox-close").addEventListener("click", closeFrame);
  $("lightbox").addEventListener("click", (e) => {
    if (e.target === $("lightbox")) closeFrame();
  });
  $("lightbox-img").addEventListener("error", () => {
    if (!$("lightbox-img").getAttribute("src")) return;
    $("lightbox-error").textContent = "This frame cannot be shown in the browser; download the original file.";
    $("lightbox-error").hidden = false;
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") closeFrame();
  });
  // Keep the "ago" texts moving between snapshots.
  setInterval(() => current && renderRecent(current), 30000);
  connect();
});
