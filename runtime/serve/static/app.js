// edgedet live view: MJPEG stream, stats polling and (with a prompted detector) box/point prompts.
"use strict";
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let token = params.get("token") || "";  // the page's cookie carries it too; kept for the header and the stream URL
// this page's id: the server pins one frozen frame per viewer and shows each viewer its own frame's detections
const viewer = "v" + Math.random().toString(36).slice(2, 12) + Date.now().toString(36);
let frozen = null; // {index, width, height, image}
let drag = null;   // {x0, y0, x1, y1} in frame pixels
let streaming = false; // the stream is showing frames (else the status line says why not)

function setStatus(text, ok) { const s = $("status"); s.textContent = text; s.className = "status " + (ok ? "ok" : "bad"); }
function msg(text) { $("prompt-msg").textContent = text || ""; }

// -- the stream: reconnect when it drops ---------------------------------------------------------
function authQuery() { const t = currentToken(); return t ? "&token=" + encodeURIComponent(t) : ""; }
function currentToken() { return token || $("token").value.trim(); }

function connectStream() {
  const img = $("stream");
  img.onerror = async () => {
    let why = "stream lost, reconnecting…";
    try {  // a full view answers 503: say so instead of retrying silently
      const s = await getJSON("/api/stats");
      if (s.clients >= s.max_viewers) why = `the live view has ${s.clients} viewers, its limit; retrying…`;
    } catch (e) { /* getJSON showed why */ }
    streaming = false; setStatus(why, false); setTimeout(connectStream, 2000);
  };
  img.onload = () => { streaming = true; setStatus("live", true); };
  img.src = "/stream.mjpg?viewer=" + viewer + authQuery() + "&t=" + Date.now();
}

// -- polling ------------------------------------------------------------------------------------------
async function getJSON(url) {
  const r = await fetch(url, {cache: "no-store", headers: {"X-Edgedet-Token": currentToken()}});
  if (r.status === 401) $("token-row").classList.remove("hidden");
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

async function pollStats() {
  try {
    const s = await getJSON("/api/stats");
    $("fps").textContent = s.fps.toFixed(1);
    $("frames").textContent = s.frames;
    $("dropped").textContent = s.dropped;
    $("tracks").textContent = s.tracks_seen;
    $("clients").textContent = s.clients;
    const body = $("latency").tBodies[0]; body.innerHTML = "";
    for (const [stage, v] of Object.entries(s.latency_ms || {})) {
      const tr = body.insertRow(); tr.insertCell().textContent = stage;
      tr.insertCell().textContent = v.p50.toFixed(1); tr.insertCell().textContent = v.p95.toFixed(1);
    }
    const ul = $("counts"); ul.innerHTML = "";
    for (const [name, n] of Object.entries(s.counts || {})) {
      const li = document.createElement("li"); li.innerHTML = "<span></span><b></b>";
      li.firstChild.textContent = name; li.lastChild.textContent = n; ul.appendChild(li);
    }
    if (s.prompts !== null) renderPrompts(s.prompts);
    if (!frozen && streaming) setStatus("live", true);
  } catch (e) {
    setStatus(/token/.test(e.message) ? "this view needs its token: open the start-up URL, or type the token above"
                                      : "server unreachable", false);
  }
}

async function pollDetections() {
  try {
    const d = await getJSON("/api/detections?viewer=" + viewer);  // the frame this page shows (frozen or streamed)
    const lines = (d.detections || []).map((o) => `${o.name} ${o.score.toFixed(2)}  [${o.box_xyxy.map((v) => v.toFixed(0)).join(", ")}]`);
    $("detections").textContent = `frame ${d.frame}${d.frozen ? " (frozen)" : ""}\n` + (lines.join("\n") || "(none)");
  } catch (e) { /* the stats poll reports the connection */ }
}

// -- prompts ------------------------------------------------------------------------------------------
function renderPrompts(names) {
  $("prompt-card").classList.remove("hidden");
  const ul = $("prompt-list");
  const now = names.join("\u0000");
  if (ul.dataset.names === now) return;
  ul.dataset.names = now; ul.innerHTML = "";
  for (const name of names) {
    const li = document.createElement("li"); const span = document.createElement("span"); span.textContent = name;
    const b = document.createElement("button"); b.textContent = "remove"; b.onclick = () => removePrompt(name);
    li.append(span, b); ul.appendChild(li);
  }
}

async function call(method, url, body) {
  const headers = {"X-Edgedet-Token": currentToken()};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(url, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await r.json();
  if (r.status === 401) $("token-row").classList.remove("hidden");
  if (!r.ok) throw new Error(data.error || r.statusText);
  if (data.prompts) renderPrompts(data.prompts);
  return data;
}

async function freeze() {
  // the server pins this frame for this page until the prompt is added or "Back to live"
  const r = await fetch("/api/freeze", {method: "POST", cache: "no-store",
    headers: {"X-Edgedet-Token": currentToken(), "Content-Type": "application/json"}, body: JSON.stringify({viewer})});
  if (r.status === 401) $("token-row").classList.remove("hidden");
  if (!r.ok) { let e = r.statusText; try { e = (await r.json()).error || e; } catch (x) { /* not JSON */ } msg(e); return; }
  msg("");
  const index = parseInt(r.headers.get("X-Frame-Index"), 10);
  const blob = await r.blob();
  const image = await createImageBitmap(blob);
  frozen = {index, width: image.width, height: image.height, image};
  drag = null;
  const c = $("overlay"); c.width = image.width; c.height = image.height; c.classList.remove("hidden");
  $("frame-index").textContent = index; $("frozen-note").classList.remove("hidden");
  $("freeze").classList.add("hidden"); $("resume").classList.remove("hidden");
  setStatus("frozen (frame " + index + ")", true);
  redraw(); pollDetections();
}

function resume(release = true) {
  if (frozen && release) call("POST", "/api/release", {viewer}).catch(() => {});
  frozen = null; drag = null;
  $("overlay").classList.add("hidden"); $("frozen-note").classList.add("hidden");
  $("freeze").classList.remove("hidden"); $("resume").classList.add("hidden");
  $("add-prompt").disabled = true;
}

function redraw() {
  if (!frozen) return;
  const c = $("overlay"), g = c.getContext("2d");
  g.drawImage(frozen.image, 0, 0);
  if (drag) {
    g.lineWidth = Math.max(2, frozen.width / 320); g.strokeStyle = "#36c37a"; g.fillStyle = "rgba(54,195,122,0.15)";
    const w = drag.x1 - drag.x0, h = drag.y1 - drag.y0;
    if (Math.abs(w) < 3 && Math.abs(h) < 3) { g.beginPath(); g.arc(drag.x0, drag.y0, 6, 0, 2 * Math.PI); g.fill(); g.stroke(); }
    else { g.fillRect(drag.x0, drag.y0, w, h); g.strokeRect(drag.x0, drag.y0, w, h); }
  }
}

function framePoint(ev) {
  const r = $("overlay").getBoundingClientRect();
  return [(ev.clientX - r.left) * frozen.width / r.width, (ev.clientY - r.top) * frozen.height / r.height];
}

function onDown(ev) { if (!frozen) return; const [x, y] = framePoint(ev); drag = {x0: x, y0: y, x1: x, y1: y, down: true}; redraw(); }
function onMove(ev) { if (!frozen || !drag || !drag.down) return; const [x, y] = framePoint(ev); drag.x1 = x; drag.y1 = y; redraw(); }
function onUp(ev) { if (!frozen || !drag) return; onMove(ev); drag.down = false; $("add-prompt").disabled = false; redraw(); }

async function addPrompt() {
  if (!frozen || !drag) { msg("freeze a frame and drag a box first"); return; }
  const name = $("prompt-name").value.trim();
  if (!name) { msg("give the prompt a name"); return; }
  const x0 = Math.min(drag.x0, drag.x1), x1 = Math.max(drag.x0, drag.x1), y0 = Math.min(drag.y0, drag.y1), y1 = Math.max(drag.y0, drag.y1);
  const body = {frame: frozen.index, name, viewer};
  if (x1 - x0 < 3 && y1 - y0 < 3) body.point = [x0, y0]; else body.box = [x0, y0, x1, y1];
  try { await call("POST", "/api/prompts", body); msg("added " + name); resume(false); } catch (e) { msg(e.message); }
}

async function removePrompt(name) { try { await call("DELETE", "/api/prompts/" + encodeURIComponent(name)); msg("removed " + name); } catch (e) { msg(e.message); } }
async function savePrompts() { try { const d = await call("POST", "/api/prompts/save", {file: $("prompt-file").value.trim()}); msg("saved " + d.saved); } catch (e) { msg(e.message); } }
async function loadPrompts() { try { await call("POST", "/api/prompts/load", {file: $("prompt-file").value.trim()}); msg("loaded"); } catch (e) { msg(e.message); } }

window.addEventListener("DOMContentLoaded", () => {
  connectStream();
  const c = $("overlay");
  c.addEventListener("mousedown", onDown); c.addEventListener("mousemove", onMove); window.addEventListener("mouseup", onUp);
  $("freeze").onclick = freeze; $("resume").onclick = resume; $("add-prompt").onclick = addPrompt;
  $("save-prompts").onclick = savePrompts; $("load-prompts").onclick = loadPrompts;
  $("token").onchange = () => connectStream();
  window.addEventListener("pagehide", () => { if (frozen) navigator.sendBeacon("/api/release", JSON.stringify({viewer})); });
  pollStats(); pollDetections();
  setInterval(pollStats, 500); setInterval(pollDetections, 500);
});
