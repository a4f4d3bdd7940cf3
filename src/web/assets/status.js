// The status page: logs in through the Clacks gateway (/rpc), then polls /status.json
// once a second and redraws its tables. Names come from clients: always set as text.
"use strict";

const POLL_MS = 1000;
let previous = null; // the last sample, for rates
let timer = null;

const $ = (id) => document.getElementById(id);

function show(loggedIn) {
  $("login").hidden = loggedIn;
  $("status").hidden = !loggedIn;
  $("logout").hidden = !loggedIn;
}

async function rpc(method, params) {
  const r = await fetch("/rpc", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    credentials: "same-origin",
    body: JSON.stringify({ method, params, id: method }),
  });
  return r;
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  return td;
}

function fill(tableId, rows, makeRow) {
  const body = $(tableId).tBodies[0];
  const fresh = document.createDocumentFragment();
  for (const row of rows) fresh.appendChild(makeRow(row));
  body.replaceChildren(fresh);
}

function tr(cells, attrs) {
  const row = document.createElement("tr");
  for (const [k, v] of Object.entries(attrs || {})) row.setAttribute(k, v);
  for (const c of cells) row.appendChild(c);
  return row;
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function duration(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds / 3600) % 24;
  const m = Math.floor(seconds / 60) % 60, s = seconds % 60;
  return (d ? d + "d " : "") + (d || h ? h + "h " : "") + (d || h || m ? m + "m " : "") + s + "s";
}

function card(label, value) {
  const div = document.createElement("div");
  div.className = "card";
  const l = document.createElement("div");
  l.className = "label";
  l.textContent = label;
  const v = document.createElement("div");
  v.className = "value";
  v.textContent = value;
  div.append(l, v);
  return div;
}

function render(s) {
  const now = Date.now() / 1000;
  const b = s.broker;
  $("who").textContent = "Logged in as " + s.user;
  $("broker").replaceChildren(
    card("Version", b.version),
    card("Uptime", duration(now - b.started)),
    card("Memory (RSS)", bytes(b.rss_bytes)),
    card("Queued", bytes(b.queued_bytes) + (b.queued_limit_bytes ? " of " + bytes(b.queued_limit_bytes) : "")),
    card("Connections", b.connections),
    card("Store", b.store),
  );
  // Maps, not objects: a queue may be called "__proto__".
  const rates = new Map();
  const dt = previous ? now - previous.at : 0;
  for (const q of s.queues) {
    const before = previous && previous.queues.get(q.name);
    rates.set(q.name, before && dt > 0
      ? [(q.enqueued - before.enqueued) / dt, (q.dequeued - before.dequeued) / dt]
      : [0, 0]);
  }
  fill("queues", s.queues, (q) => tr([
    cell(q.name, "name"), cell(q.depth, "num depth"), cell(bytes(q.bytes), "num"),
    cell(q.unacked, "num"), cell(q.consumers, "num"),
    cell(Math.max(0, rates.get(q.name)[0]).toFixed(1), "num"),
    cell(Math.max(0, rates.get(q.name)[1]).toFixed(1), "num"),
    cell(q.durable ? "yes" : "no"),
  ], { "data-queue": q.name }));
  fill("exchanges", s.exchanges, (e) => tr([
    cell(e.name || "(default)"), cell(e.type), cell(e.durable ? "yes" : "no"),
    cell(e.bindings.map((x) => x.queue + " \u2190 " + x.key).join(", ")),
  ], { "data-exchange": e.name }));
  fill("connections", s.connections, (c) => tr([
    cell(c.user), cell(c.address), cell(c.tls ? "yes" : "no"), cell(c.sessions, "num"),
    cell(duration(now - c.since)),
  ]));
  fill("links", s.links, (l) => tr([
    cell(l.name), cell(l.url), cell(l.state, l.state), cell(l.error, "error"),
  ], { "data-link": l.name }));
  fill("routes", s.routes, (r) => tr([
    cell(r.name), cell(r.link), cell(r.direction), cell(r.source), cell(r.dest),
    cell(r.forwarded, "num"), cell(r.error, "error"),
  ]));
  fill("nodes", s.nodes, (n) => tr([
    cell(n.node), cell(n.load === null ? "" : n.load.toFixed(2), "num"),
    cell(n.latency === null ? "" : n.latency.toFixed(3), "num"), cell(n.workers, "num"),
    cell(n.received ? duration(now - n.received) + " ago" : ""),
  ], { "data-node": n.node }));
  const sample = { at: now, queues: new Map() };
  for (const q of s.queues) sample.queues.set(q.name, q);
  previous = sample;
  $("updated").textContent = new Date().toLocaleTimeString();
}

async function poll() {
  clearTimeout(timer);
  let again = true;
  try {
    const r = await fetch("/status.json", { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401 || r.status === 403) {
      again = false;
      show(false);
      if (r.status === 403) $("login-error").textContent = "That user is not an admin of this broker.";
    } else if (r.ok) {
      show(true);
      render(await r.json());
    }
  } catch (e) {
    $("updated").textContent = "broker unreachable, retrying";
  } finally {
    // Whatever went wrong in one round, the page keeps following the broker.
    if (again) timer = setTimeout(poll, POLL_MS);
  }
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  $("submit").disabled = true;
  try {
    const r = await rpc("login", [$("user").value, $("password").value]);
    if (r.ok) {
      $("password").value = "";
      previous = null;
      await poll();
    } else if (r.status === 401) {
      $("login-error").textContent = "Login failed: wrong user or password.";
    } else {
      const reply = await r.json().catch(() => ({}));
      $("login-error").textContent = "Login failed: " + (reply.error || r.statusText);
    }
  } finally {
    $("submit").disabled = false;
  }
});

$("logout").addEventListener("click", async () => {
  clearTimeout(timer);
  await rpc("logout", []);
  $("who").textContent = "";
  show(false);
});

poll();
