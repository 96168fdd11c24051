// Cronium's web console: talks only NATS over WebSocket, as the signed-in user.
//
// The link from `cronium user token NAME --url` carries, in its fragment (never sent to a
// server, never in a log): ws (the WebSocket URL), user, token (a short-lived bearer JWT) and,
// optionally, execution. The fragment is cleared from the address bar at once.
//
// What is stored comes from the query service under the user's own name
// (cronium.query.user.<name>.{history,events}); what comes next from plain subscriptions to
// the user's own subjects (cronium.exec.<name>.<id>.> and cronium.logs.<name>.<id>). The
// server enforces both: another user's executions are neither listed nor readable.
import { jwtAuthenticator, wsconnect } from "@nats-io/nats-core";

const PAGE_BYTES = 1 << 20; // a stored log is read in pages of this size
const ROW = 18; // px per log line (the view is virtualized: only visible lines are in the DOM)
const enc = new TextEncoder();
const dec = new TextDecoder();
const $ = (id) => document.getElementById(id);

const params = new URLSearchParams(location.hash.slice(1));
// a link's ws, user and token come together, or not at all (no link can aim a stored token
// at another server)
const fresh = params.get("token") && params.get("ws") && params.get("user");
const session = fresh
  ? { ws: params.get("ws"), user: params.get("user"), token: params.get("token") }
  : {
      ws: sessionStorage.getItem("cronium.ws"),
      user: sessionStorage.getItem("cronium.user"),
      token: sessionStorage.getItem("cronium.token"),
    };
if (fresh) {
  for (const [k, v] of Object.entries(session)) sessionStorage.setItem(`cronium.${k}`, v);
}
const wanted = params.get("execution");
history.replaceState(
  null,
  "",
  location.pathname + (wanted ? `#execution=${encodeURIComponent(wanted)}` : ""),
);

let nc = null;
let current = null; // the execution being watched

function status(text, kind = "") {
  const el = $("status");
  el.textContent = text;
  el.className = kind;
}

async function ask(query, body) {
  const msg = await nc.request(`cronium.query.user.${session.user}.${query}`, enc.encode(JSON.stringify(body)), {
    timeout: 15000,
  });
  const reply = JSON.parse(dec.decode(msg.data));
  if (!reply.ok) throw new Error(reply.error || "refused");
  return reply.result;
}

function decodeOne(m) {
  const raw = atob(m.data);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return JSON.parse(dec.decode(bytes));
}

// Long work gives the page back every few milliseconds, so it keeps drawing and answering.
const SLICE_MS = 12;
// (after the next frame is drawn: yielding faster can starve drawing, slower wastes time)
const breathe = () => new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));

// ------------------------------------------------------------------ the list

function leave() {
  if (!current) return;
  if (current.view) current.view.dispose();
  for (const sub of current.subs) sub.unsubscribe();
  current = null;
}

// lifecycle events that change what the list says of a run
const STATUSES = new Set([
  "requested", "queued", "started", "succeeded", "failed", "timed_out", "cancelled", "lost",
  "partial", "rejected",
]);
const MAX_ROWS = 200;

function listRow(r) {
  const tr = document.createElement("tr");
  tr.dataset.id = r.execution_id;
  for (const v of [r.requested_at || "", r.execution_id, r.status, r.runtime, r.schedule || r.workflow_id || ""]) {
    const td = document.createElement("td");
    td.textContent = v || "";
    tr.append(td);
  }
  tr.onclick = () => {
    location.hash = `execution=${encodeURIComponent(r.execution_id)}`;
  };
  return tr;
}

async function showList() {
  leave();
  $("list-view").hidden = false;
  $("exec-view").hidden = true;
  // live first, then the history: a run that starts or ends meanwhile is not missed
  const live = nc.subscribe(`cronium.exec.${session.user}.*.*`);
  const mine = { view: null, subs: [live] };
  current = mine;
  const rows = await ask("history", { limit: 50 });
  if (current !== mine) return;
  const body = $("runs");
  const byId = new Map();
  body.replaceChildren();
  for (const r of rows) {
    const tr = listRow(r);
    byId.set(r.execution_id, tr);
    body.append(tr);
  }
  $("empty").hidden = rows.length > 0;
  showStats().catch((err) => status(`charts: ${err.message || err}`, "error"));
  for await (const m of live) {
    if (current !== mine) break;
    let event;
    try {
      event = JSON.parse(dec.decode(m.data));
    } catch {
      continue;
    }
    const kind = String(event.type || "").replace(/^execution\./, "");
    if (!String(event.type).startsWith("execution.") || !STATUSES.has(kind)) continue;
    const tr = byId.get(event.execution_id);
    if (tr) {
      tr.children[2].textContent = kind;
    } else if (kind === "requested") {
      const request = event.request || {};
      const row = listRow({
        requested_at: event.time,
        execution_id: event.execution_id,
        status: kind,
        runtime: request.runtime,
        schedule: request.schedule && request.schedule.name,
        workflow_id: request.workflow && request.workflow.workflow_id,
      });
      byId.set(event.execution_id, row);
      body.prepend(row);
      $("empty").hidden = true;
      while (body.children.length > MAX_ROWS) {
        byId.delete(body.lastElementChild.dataset.id);
        body.lastElementChild.remove();
      }
    }
  }
}

// ------------------------------------------------------------------ charts

const COLORS = { succeeded: "#3aa55d", failed: "#d9534f", timed_out: "#e8903c", cancelled: "#c9a227" };

function svg(tag, attrs, text) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

async function showStats() {
  const since = new Date(Date.now() - 24 * 3600 * 1000).toISOString();
  const stats = await ask("stats", { since });
  // runs per hour, stacked by status
  const hours = new Map();
  for (const r of stats.runs_per_hour) {
    const h = hours.get(r.hour) || {};
    h[r.status] = (h[r.status] || 0) + Number(r.runs);
    hours.set(r.hour, h);
  }
  const chart = $("runs-chart");
  chart.replaceChildren();
  const entries = [...hours.entries()];
  const most = Math.max(1, ...entries.map(([, h]) => Object.values(h).reduce((a, b) => a + b, 0)));
  const W = 24, H = 120;
  chart.setAttribute("viewBox", `0 0 ${Math.max(1, entries.length) * (W + 4) + 4} ${H + 20}`);
  entries.forEach(([hour, h], i) => {
    let y = H;
    for (const [status, n] of Object.entries(h)) {
      const height = (n / most) * H;
      y -= height;
      const rect = svg("rect", { x: 4 + i * (W + 4), y, width: W, height, fill: COLORS[status] || "#8a94a6" });
      rect.append(svg("title", {}, `${hour} ${status}: ${n}`));
      chart.append(rect);
    }
    chart.append(svg("text", { x: 4 + i * (W + 4), y: H + 14, "font-size": 9 }, String(hour).slice(11, 13)));
  });
  // run time per event
  const table = $("durations");
  table.replaceChildren();
  for (const r of stats.durations_by_event) {
    const tr = document.createElement("tr");
    for (const v of [`${r.event_ref || "(ad hoc)"} [${r.runtime}]`, r.runs, Math.round(r.p50_ms), Math.round(r.p95_ms)]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    table.append(tr);
  }
}

// ------------------------------------------------------------------ an execution

// The log of one execution, virtualized: only the lines on screen are in the DOM. Lines are
// kept per stream too, so showing stdout or stderr alone costs nothing at a million lines.
// Until the stored log has been read (page after page), live chunks are held back, then added
// in order: a running execution shows every line from its first, each once.
const MAX_PX = 8_000_000; // taller than this, the spacer is scaled (browsers cap element height)

class LogView {
  constructor(el) {
    this.el = el;
    this.all = []; // {stream, text}
    this.streams = { stdout: [], stderr: [] };
    this.next = new Map(); // attempt/stream -> the sequence number of the next unseen line
    this.held = []; // live chunks that came while the stored log was being read
    this.loading = true;
    this.filter = "all";
    this.follow = true;
    this.spacer = document.createElement("div");
    this.window = document.createElement("div");
    this.window.className = "window";
    el.replaceChildren(this.spacer, this.window);
    el.onscroll = () => {
      this.follow = el.scrollTop + el.clientHeight >= el.scrollHeight - ROW;
      this.schedule();
    };
    this.pending = false;
  }
  visible() {
    return this.filter === "all" ? this.all : this.streams[this.filter] || [];
  }
  live(chunk) {
    if (this.loading) this.held.push(chunk);
    else this.add(chunk);
  }
  loaded() {
    // in the order they came: one publisher's chunks arrive in order, and the sequence
    // numbers count each stream apart (sorting by them would interleave stdout and stderr)
    this.loading = false;
    const held = this.held;
    this.held = [];
    for (const chunk of held) this.add(chunk);
    this.schedule();
  }
  note(text) {
    // a line of the console's own (a part of the log it could not load), never the script's
    const line = { stream: "note", text };
    this.all.push(line);
    this.schedule();
  }
  dispose() {
    this.disposed = true;
    this.held = [];
  }
  add(chunk) {
    const key = `${chunk.attempt}/${chunk.stream}`;
    const next = this.next.get(key) || 0;
    const skip = Math.max(0, next - chunk.first_seq); // lines seen already (stored and live)
    if (skip >= chunk.lines.length) return;
    const mine = this.streams[chunk.stream] || (this.streams[chunk.stream] = []);
    for (let i = skip; i < chunk.lines.length; i++) {
      const line = { stream: chunk.stream, text: chunk.lines[i] };
      this.all.push(line);
      mine.push(line);
    }
    this.next.set(key, chunk.first_seq + chunk.lines.length);
    this.schedule();
  }
  show(filter) {
    this.filter = filter;
    this.follow = true;
    this.render();
  }
  schedule() {
    if (this.pending || this.disposed) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.render();
    });
  }
  render() {
    if (this.disposed) return;
    const lines = this.visible();
    const total = lines.length;
    const height = Math.min(total * ROW, MAX_PX);
    this.spacer.style.height = `${height}px`;
    if (this.follow) this.el.scrollTop = this.el.scrollHeight;
    const top = this.el.scrollTop;
    const screen = this.el.clientHeight;
    let first, last, offset;
    if (height < MAX_PX) {
      first = Math.max(0, Math.floor(top / ROW) - 20); // a margin above and below
      last = Math.min(total, Math.ceil((top + screen) / ROW) + 20);
      offset = first * ROW;
    } else {
      // scaled: the scroll position is a fraction of the log; the window is placed so that,
      // at the bottom, the last line is the screen's last (and it never outgrows the spacer)
      const fraction = Math.min(1, top / Math.max(1, height - screen));
      const at = fraction * Math.max(0, total - screen / ROW);
      first = Math.floor(at);
      offset = top - (at - first) * ROW;
      last = Math.min(total, first + Math.ceil((height - offset) / ROW), first + Math.ceil(screen / ROW) + 1);
    }
    this.window.style.transform = `translateY(${offset}px)`;
    this.window.style.maxHeight = `${Math.max(0, height - offset)}px`;
    const nodes = [];
    for (let i = first; i < last; i++) {
      const div = document.createElement("div");
      div.className = `line ${lines[i].stream}`;
      div.dataset.n = i + 1; // shown by the stylesheet, never copied with the text
      div.textContent = lines[i].text;
      nodes.push(div);
    }
    this.window.replaceChildren(...nodes);
    $("line-count").textContent = `${total.toLocaleString()} lines`;
  }
}

function setOutcome(text) {
  $("outcome").textContent = text;
  $("outcome").className = `outcome ${text.replace(" ", "-")}`;
}

function timelineAdd(event) {
  if (event.type === "log.chunk") return;
  const li = document.createElement("li");
  li.textContent = `${event.time.slice(11, 23)}  ${event.type}`;
  if (event.error) li.textContent += `: ${event.error.message}`;
  $("timeline").append(li);
  const terminal = /^execution\.(succeeded|failed|timed_out|cancelled|lost|partial|rejected)$/.exec(event.type);
  if (terminal) {
    setOutcome(terminal[1]);
    $("cancel").disabled = true;
  }
}

// Every stored message of one execution ("exec" or "logs"), page after page of 1 MiB: the next
// page is asked for while this one is handed to `each`, a few milliseconds at a time. A page
// that fails is asked for again (three times), then the error is thrown with what was read.
async function readStored(id, kind, mine, each) {
  const page = async (after) => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await ask("events", { execution_id: id, kind, after, max_bytes: PAGE_BYTES });
      } catch (err) {
        if (attempt >= 3 || current !== mine) throw err;
        await new Promise((resolve) => setTimeout(resolve, 500 * attempt));
      }
    }
  };
  let after = 0;
  let next = page(after);
  for (let n = 0; n < 100000; n++) {
    const part = await next;
    if (current !== mine) return false;
    const more = !part.complete;
    if (more && part.last <= after) throw new Error(`the query service made no progress after ${after}`);
    if (more) {
      after = part.last;
      next = page(after);
      next.catch(() => {}); // handled when awaited (or dropped when the view is left)
    }
    let began = performance.now();
    for (const m of part.messages) {
      each(decodeOne(m));
      if (performance.now() - began > SLICE_MS) {
        await breathe();
        if (current !== mine) return false;
        began = performance.now();
      }
    }
    if (!more) return true;
    if (kind === "logs") status(`loading the log: ${mine.view.all.length.toLocaleString()} lines…`);
  }
  return true;
}

async function showExecution(id) {
  leave();
  $("list-view").hidden = true;
  $("exec-view").hidden = false;
  $("exec-id").textContent = id;
  $("timeline").replaceChildren();
  setOutcome("running");
  $("cancel").disabled = false;
  const view = new LogView($("log"));
  current = { id, view, subs: [], events: [] };
  const mine = current;
  // live first, then what is stored: nothing falls between the two
  const lifecycle = nc.subscribe(`cronium.exec.${session.user}.${id}.>`);
  const logs = nc.subscribe(`cronium.logs.${session.user}.${id}`);
  mine.subs.push(lifecycle, logs);
  const ids = new Set();
  const onEvent = (event) => {
    if (current !== mine || ids.has(event.event_id)) return;
    ids.add(event.event_id);
    mine.events.push(event);
    if ($("outcome").classList.contains("not-found")) {
      // an id not (yet) of this user's: it began after the page opened
      status(`signed in as ${session.user}`);
      setOutcome("running");
      $("cancel").disabled = false;
    }
    timelineAdd(event);
  };
  (async () => {
    for await (const m of logs) view.live(JSON.parse(dec.decode(m.data)));
  })();
  (async () => {
    for await (const m of lifecycle) onEvent(JSON.parse(dec.decode(m.data)));
  })();
  try {
    const stored = [];
    if (!(await readStored(id, "exec", mine, (e) => stored.push(e)))) return;
    if (!stored.length && !mine.events.length) {
      status(`no execution ${id} of yours`, "error");
      setOutcome("not found");
      $("cancel").disabled = true;
      return; // nothing stored: what comes live is shown as it comes
    }
    status(`signed in as ${session.user}`);
    for (const e of stored) onEvent(e);
    // the stored log; live lines meanwhile are held, then added in order
    if (!(await readStored(id, "logs", mine, (chunk) => view.add(chunk)))) return;
    status(`signed in as ${session.user}`);
  } catch (err) {
    if (current !== mine) return;
    view.note(`— the rest of the stored log could not be read: ${err.message || err} —`);
    status(`part of ${id} could not be loaded: ${err.message || err} (reload to try again)`, "error");
  } finally {
    if (current === mine) view.loaded();
  }
}

async function cancel() {
  if (!current) return;
  const id = current.id;
  const first = current.events[0] || {};
  const now = new Date().toISOString();
  const event = {
    type: "execution.cancel_requested",
    event_id: `ev_web${Date.now().toString(36)}${Math.random().toString(36).slice(2, 10)}`,
    schema_version: 1,
    time: now,
    execution_id: id,
    attempt: Math.max(1, ...current.events.map((e) => e.attempt || 1)),
    correlation_id: first.correlation_id || id,
    producer: "cronium-web",
    user: session.user,
    reason: "cancelled from the web console",
  };
  nc.publish(`cronium.exec.${session.user}.${id}.cancel_requested`, enc.encode(JSON.stringify(event)), {
    headers: undefined,
  });
  status(`cancel requested for ${id}`);
}

// ------------------------------------------------------------------ start

async function route() {
  const id = new URLSearchParams(location.hash.slice(1)).get("execution");
  status(`signed in as ${session.user}`);
  try {
    if (id) await showExecution(id);
    else await showList();
  } catch (err) {
    status(String(err.message || err), "error");
  }
}

async function main() {
  if (!session.ws || !session.user || !session.token) {
    status("open the link from `cronium user token NAME --url` to sign in", "error");
    return;
  }
  try {
    nc = await wsconnect({
      servers: session.ws,
      authenticator: jwtAuthenticator(session.token),
      inboxPrefix: `_INBOX_${session.user}`,
      name: `cronium-web-${session.user}`,
    });
  } catch (err) {
    status(`cannot sign in as ${session.user}: ${err.message || err} (the link may have expired)`, "error");
    return;
  }
  status(`signed in as ${session.user}`);
  $("who").textContent = session.user;
  $("back").onclick = () => {
    location.hash = "";
  };
  $("cancel").onclick = cancel;
  for (const f of ["all", "stdout", "stderr"]) {
    $(`show-${f}`).onclick = () => {
      if (!current) return;
      current.view.show(f);
    };
  }
  window.addEventListener("hashchange", route);
  await route();
}

main();
