// FlexAvatar browser client: one page = one WebSocket = one stream (runtime/web.py; protocol in docs/WEB.md).
//
// The page drives an avatar with 135-float expression codes (layout: spec section 10) and an orbit camera
// (cam2world + normalised intrinsics, flexrt.model.camera conventions) and draws the JPEG frames it gets back,
// latest wins: while a frame is still decoding, a newer one replaces the one waiting and the waiting one is dropped.
"use strict";

// ---------------------------------------------------------------------------------------------------------------
// conventions: mirror runtime/sequences.py and flexrt.model.camera (tests/test_web_browser.py checks them against
// the Python code)
// ---------------------------------------------------------------------------------------------------------------

const EXPRESSION_DIM = 135;
// exp 0:100, eyes 100:112 (two 6D rotations), eyelids 112:114, neck 114:120, jaw 120:126, head 126:132, t 132:135
const SLOT = { eyeLeft: 100, eyeRight: 106, eyelids: 112, neck: 114, jaw: 120, head: 126, translation: 132 };
const ROTATION_6D_SLOTS = [100, 106, 114, 120, 126];
const DEFAULT_FOCAL_NORMALIZED = 1500 / 512; // model/camera.py: fx = fy = 1500 px at 512 x 512
const DEG = Math.PI / 180;

function rotX(a) { const c = Math.cos(a), s = Math.sin(a); return [[1, 0, 0], [0, c, -s], [0, s, c]]; }
function rotY(a) { const c = Math.cos(a), s = Math.sin(a); return [[c, 0, s], [0, 1, 0], [-s, 0, c]]; }
function matmul3(a, b) {
  return a.map((row) => [0, 1, 2].map((j) => row[0] * b[0][j] + row[1] * b[1][j] + row[2] * b[2][j]));
}
// The 6D rotation code: the first two ROWS of the rotation matrix (runtime/sequences.py's jaw: [1,0,0, 0,c,-s]).
function rotation6d(R) { return [R[0][0], R[0][1], R[0][2], R[1][0], R[1][1], R[1][2]]; }

function neutralExpression() {
  const code = new Array(EXPRESSION_DIM).fill(0);
  for (const start of ROTATION_6D_SLOTS) code.splice(start, 6, 1, 0, 0, 0, 1, 0);
  return code;
}

// Named controls -> expression code [135]. Angles in degrees. Positive gaze / head yaw turn toward the subject's
// left (+x of FLAME), positive gaze-up / head pitch look up (a rotation about x by minus the angle), jaw opens
// with a positive rotation about x (as the synthetic sequence), blink sets both eyelid values.
function expressionFromControls(v) {
  const code = neutralExpression();
  (v.exp || []).forEach((x, i) => { code[i] = x; });
  const eye = rotation6d(matmul3(rotY((v.gazeX || 0) * DEG), rotX(-(v.gazeY || 0) * DEG)));
  code.splice(SLOT.eyeLeft, 6, ...eye);
  code.splice(SLOT.eyeRight, 6, ...eye);
  code[SLOT.eyelids] = code[SLOT.eyelids + 1] = v.blink || 0;
  code.splice(SLOT.jaw, 6, ...rotation6d(rotX((v.jaw || 0) * DEG)));
  code.splice(SLOT.head, 6, ...rotation6d(matmul3(rotY((v.headYaw || 0) * DEG), rotX(-(v.headPitch || 0) * DEG))));
  return code;
}

function sub3(a, b) { return [a[0] - b[0], a[1] - b[1], a[2] - b[2]]; }
function cross3(a, b) { return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]; }
function normalize3(a) { const n = Math.hypot(a[0], a[1], a[2]); return [a[0] / n, a[1] / n, a[2] / n]; }

// model/camera.py look_at_cam2world: OpenCV cam2world [4,4] (row-major, 16 numbers) of a camera at `eye`
// looking at `target`, with `up` at the top of the image.
function lookAtCam2world(eye, target = [0, 0, 0], up = [0, 1, 0]) {
  const forward = normalize3(sub3(target, eye));
  let down = [-up[0], -up[1], -up[2]];
  const right = normalize3(cross3(down, forward));
  down = cross3(forward, right);
  return [right[0], down[0], forward[0], eye[0],
          right[1], down[1], forward[1], eye[1],
          right[2], down[2], forward[2], eye[2],
          0, 0, 0, 1];
}

// The orbit camera: default_camera(distance, yaw_deg) of model/camera.py, lifted by `pitchDeg` (up = +y).
function orbitCamera(yawDeg, pitchDeg, distance) {
  const yaw = yawDeg * DEG, pitch = pitchDeg * DEG;
  const eye = [distance * Math.sin(yaw) * Math.cos(pitch), distance * Math.sin(pitch),
               distance * Math.cos(yaw) * Math.cos(pitch)];
  const f = DEFAULT_FOCAL_NORMALIZED;
  return { cam2world: lookAtCam2world(eye), intrinsics: [f, 0, 0.5, 0, f, 0.5, 0, 0, 1] };
}

// ---------------------------------------------------------------------------------------------------------------
// the binary frame message (runtime/web.py FRAME_HEADER, little endian)
// ---------------------------------------------------------------------------------------------------------------

const FRAME_MAGIC = "FXF1";
const ENCODING_TYPES = { 2: "image/jpeg", 3: "image/png" };

function parseFrameHeader(buffer) {
  const v = new DataView(buffer);
  const magic = String.fromCharCode(v.getUint8(0), v.getUint8(1), v.getUint8(2), v.getUint8(3));
  if (magic !== FRAME_MAGIC) throw new Error(`not a frame message (starts with ${JSON.stringify(magic)})`);
  return {
    headerSize: v.getUint16(4, true), encoding: v.getUint8(6), batchSize: v.getUint8(7),
    sequence: Number(v.getBigUint64(8, true)), clientTimestampUs: Number(v.getBigInt64(16, true)),
    width: v.getUint16(24, true), height: v.getUint16(26, true),
    queueUs: v.getUint32(28, true), decodeUs: v.getUint32(32, true), renderUs: v.getUint32(36, true),
    encodeUs: v.getUint32(40, true), serverUs: v.getUint32(44, true),
    received: Number(v.getBigUint64(48, true)), rendered: Number(v.getBigUint64(56, true)),
    dropped: Number(v.getBigUint64(64, true)),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// page state
// ---------------------------------------------------------------------------------------------------------------

const SLIDERS = [
  { key: "jaw", label: "jaw open", min: 0, max: 30, step: 0.5, unit: "°" },
  { key: "gazeX", label: "eye gaze left/right", min: -30, max: 30, step: 0.5, unit: "°" },
  { key: "gazeY", label: "eye gaze up/down", min: -30, max: 30, step: 0.5, unit: "°" },
  { key: "blink", label: "blink (eyelids)", min: 0, max: 1, step: 0.01, unit: "" },
  { key: "headYaw", label: "head yaw", min: -45, max: 45, step: 0.5, unit: "°" },
  { key: "headPitch", label: "head pitch", min: -30, max: 30, step: 0.5, unit: "°" },
  ...[0, 1, 2, 3, 4].map((k) => ({ key: `exp${k}`, label: `expression ${k}`, min: -3, max: 3, step: 0.05, unit: "" })),
];

const $ = (id) => document.getElementById(id);
const state = {
  ws: null, connected: false, server: null, nextId: 1, calls: new Map(),
  streaming: false, started: false, sendTimer: null, nextSequence: 0, streamStart: 0,
  sequences: { synthetic: null }, controls: {},
  camera: { yaw: 0, pitch: 0, distance: 1 },
  decoding: false, waiting: null,
  framesDrawn: 0, framesReceived: 0, droppedPage: 0, notSent: 0, lastHeader: null,
  drawTimes: [], latencies: [], serverTimes: [], errors: [],
  // reconnection: attempts since the last hello, its timer, a stream to start again, streams started again
  reconnectAttempt: 0, reconnectTimer: null, resumeStream: false, reconnects: 0,
};

function showError(code, message) {
  state.errors.push({ code, message });
  $("error-code").textContent = code;
  $("error-message").textContent = message;
  $("error").hidden = false;
}
function clearError() { $("error").hidden = true; }
function setStatus(text, ok) {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + (ok ? "ok" : "bad");
}

// ---------------------------------------------------------------------------------------------------------------
// connection
// ---------------------------------------------------------------------------------------------------------------

function token() {
  return $("token").value || new URLSearchParams(location.search).get("token") || "";
}

// Reconnection (docs/SCALEOUT.md). Behind a load balancer the page's server is one replica of several; when the
// connection drops (the replica died: 1006, or went away: 1001) the page opens a new one after these delays, and a
// stream that was running starts again (same avatar, size and camera) once the new connection says hello.
// Connections the server refused (1008: token, rate) or closed normally (1000) are not reopened.
const RECONNECT_DELAYS_MS = [250, 500, 1000, 2000];
const NO_RECONNECT_CODES = [1000, 1008];

function connect() {
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = null;
  if (state.ws) state.ws.close();
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  setStatus("connecting…", false);
  ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token: token() })); // ignored when no token is needed
  ws.onmessage = (event) => {
    if (typeof event.data === "string") onMessage(JSON.parse(event.data));
    else onFrame(event.data);
  };
  ws.onclose = (event) => {
    if (state.ws !== ws) return;
    const wasStreaming = state.streaming;
    state.connected = false;
    stopSending();
    state.streaming = state.started = false;
    updateButtons();
    const why = `disconnected (${event.code}${event.reason ? ": " + event.reason : ""})`;
    for (const { reject } of state.calls.values()) reject({ code: "UNAVAILABLE", message: "connection closed" });
    state.calls.clear();
    if (NO_RECONNECT_CODES.includes(event.code)) { state.resumeStream = false; setStatus(why, false); return; }
    state.resumeStream = state.resumeStream || wasStreaming;
    const delay = RECONNECT_DELAYS_MS[Math.min(state.reconnectAttempt, RECONNECT_DELAYS_MS.length - 1)];
    state.reconnectAttempt++;
    setStatus(`${why}; reconnecting in ${delay} ms…`, false);
    state.reconnectTimer = setTimeout(connect, delay);
  };
}

function send(message) { state.ws.send(JSON.stringify(message)); }

function call(method, request) {
  const id = state.nextId++;
  return new Promise((resolve, reject) => {
    state.calls.set(id, { resolve, reject });
    send({ type: "call", id, method, request });
  });
}

function callSpecial(message) { // parse_sequence: answered like a call
  const id = state.nextId++;
  return new Promise((resolve, reject) => {
    state.calls.set(id, { resolve, reject });
    send({ ...message, id });
  });
}

function onMessage(msg) {
  if (msg.type === "hello") {
    state.connected = true;
    state.server = msg.server;
    $("auth").hidden = true;
    setStatus("connected", true);
    $("server-info").textContent = `flexrt ${msg.server.version} · ${msg.server.engine_description || ""} · ` +
      `rasterizer ${msg.server.rasterizer_backend}`;
    state.reconnectAttempt = 0;
    updateButtons();
    if (state.resumeStream) { state.reconnects++; startStream(true); } // the avatar list still holds its choice
    refreshAvatars();
  } else if (msg.type === "result" || (msg.type === "error" && msg.id != null)) {
    const pending = state.calls.get(msg.id);
    if (!pending) return;
    state.calls.delete(msg.id);
    if (msg.type === "result") pending.resolve(msg.response);
    else pending.reject(msg);
  } else if (msg.type === "error") {
    showError(msg.code, msg.message);
    if (msg.code === "UNAUTHENTICATED") $("auth").hidden = false;
    if (msg.stream && msg.code === "UNAVAILABLE") state.resumeStream = true; // server going away: resume elsewhere
    if (msg.stream) endStream();
  } else if (msg.type === "started") {
    if (!state.streaming) { send({ type: "end" }); return; } // stopped before the server opened it
    state.started = true;
    $("canvas").width = msg.width;
    $("canvas").height = msg.height;
    startSending();
  } else if (msg.type === "ended") {
    endStream();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// avatars and sequences
// ---------------------------------------------------------------------------------------------------------------

async function refreshAvatars(select) {
  try {
    const page = await call("ListAvatars", { page_size: 1000 });
    const list = $("avatars");
    const keep = select || list.value;
    list.replaceChildren();
    for (const a of page.avatars || []) {
      const option = document.createElement("option");
      option.value = a.avatar_id;
      option.textContent = `${a.name || a.avatar_id.slice(0, 8)} (${a.source})`;
      list.appendChild(option);
    }
    if (keep && [...list.options].some((o) => o.value === keep)) list.value = keep;
    updateButtons();
  } catch (err) { showError(err.code, err.message); }
}

function readAsBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function createAvatar() {
  const file = $("photo").files[0];
  if (!file) { showError("INVALID_ARGUMENT", "choose a photo first (a square head crop, PNG or JPEG)"); return; }
  $("create").disabled = true;
  $("create-status").textContent = "creating…";
  try {
    const avatar = await call("CreateAvatar", { image: await readAsBase64(file), name: $("avatar-name").value });
    $("create-status").textContent = `created ${avatar.avatar_id}`;
    clearError();
    await refreshAvatars(avatar.avatar_id);
  } catch (err) {
    $("create-status").textContent = "failed";
    showError(err.code, err.message);
  } finally { $("create").disabled = false; }
}

async function loadSynthetic() {
  const response = await fetch("/synthetic.json");
  state.sequences.synthetic = (await response.json()).expression_codes;
}

async function uploadSequence() {
  const file = $("sequence-file").files[0];
  if (!file) return;
  try {
    const seq = await callSpecial({ type: "parse_sequence", name: file.name, npz_base64: await readAsBase64(file) });
    state.sequences[file.name] = seq.expression_codes;
    if (![...$("sequence").options].some((o) => o.value === file.name)) {
      const option = document.createElement("option");
      option.value = file.name;
      option.textContent = `${file.name} (${seq.expression_codes.length} frames)`;
      $("sequence").appendChild(option);
    }
    $("sequence").value = file.name;
    $("mode-sequence").checked = true;
    clearError();
  } catch (err) { showError(err.code, err.message); }
}

// ---------------------------------------------------------------------------------------------------------------
// the stream
// ---------------------------------------------------------------------------------------------------------------

function currentCamera() { return orbitCamera(state.camera.yaw, state.camera.pitch, state.camera.distance); }

function currentExpression() {
  if ($("mode-sequence").checked) {
    const codes = state.sequences[$("sequence").value];
    if (codes && codes.length) {
      const index = Math.floor((performance.now() - state.streamStart) / 1000 * 30) % codes.length; // 30 fps
      return codes[index];
    }
  }
  const v = { exp: [] };
  for (const s of SLIDERS) {
    const value = Number($(`slider-${s.key}`).value);
    if (s.key.startsWith("exp")) v.exp[Number(s.key.slice(3))] = value;
    else v[s.key] = value;
  }
  return expressionFromControls(v);
}

// resume: the same stream again on a new connection (after a reconnect): counters and sequence numbers go on.
function startStream(resume = false) {
  const avatarId = $("avatars").value;
  state.resumeStream = false;
  if (!avatarId) { showError("FAILED_PRECONDITION", "create or choose an avatar first"); return; }
  const size = Number($("size").value);
  clearError();
  state.streaming = true;
  state.started = false;
  if (!resume) {
    state.nextSequence = 0;
    Object.assign(state, { framesDrawn: 0, framesReceived: 0, droppedPage: 0, notSent: 0, drawTimes: [],
                           latencies: [], serverTimes: [] });
  }
  send({ type: "start", config: { avatar_id: avatarId, width: size, height: size, encoding: "JPEG",
                                  quality: Number($("quality").value), camera: currentCamera() } });
  updateButtons();
}

function startSending() {
  stopSending();
  state.streamStart = performance.now();
  state.sendTimer = setInterval(sendFrame, 1000 / Number($("fps").value));
}

function stopSending() {
  if (state.sendTimer !== null) clearInterval(state.sendTimer);
  state.sendTimer = null;
}

function sendFrame() {
  if (!state.started || state.ws.readyState !== WebSocket.OPEN) return;
  if (state.ws.bufferedAmount > 65536) { state.notSent++; return; } // the socket is behind: skip, never pile up
  send({ type: "frame", sequence: state.nextSequence++, client_timestamp_us: Math.round(performance.now() * 1000),
         expression: currentExpression(), camera: currentCamera() });
}

function stopStream() {
  stopSending();
  state.resumeStream = false;
  if (state.started) send({ type: "end" });
  else endStream();
}

function endStream() {
  stopSending();
  state.streaming = state.started = false;
  updateButtons();
}

function onFrame(buffer) {
  let header;
  try { header = parseFrameHeader(buffer); } catch (err) { showError("INTERNAL", err.message); return; }
  state.framesReceived++;
  const item = { header, buffer };
  if (state.decoding) { // latest wins in the page too: the newest frame waits, an older waiting one is dropped
    if (state.waiting) state.droppedPage++;
    state.waiting = item;
    return;
  }
  draw(item);
}

async function draw({ header, buffer }) {
  state.decoding = true;
  try {
    const blob = new Blob([new Uint8Array(buffer, header.headerSize)], { type: ENCODING_TYPES[header.encoding] });
    const bitmap = await createImageBitmap(blob);
    const canvas = $("canvas");
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    const now = performance.now();
    state.framesDrawn++;
    state.lastHeader = header;
    state.drawTimes.push(now);
    state.latencies.push(now - header.clientTimestampUs / 1000);
    state.serverTimes.push(header.serverUs / 1000);
    for (const list of [state.latencies, state.serverTimes]) if (list.length > 60) list.shift();
    while (state.drawTimes.length && state.drawTimes[0] < now - 1000) state.drawTimes.shift();
  } catch (err) {
    showError("INTERNAL", `could not decode frame ${header.sequence}: ${err.message}`);
  } finally {
    state.decoding = false;
    if (state.waiting) { const next = state.waiting; state.waiting = null; draw(next); }
  }
}

function median(values) {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function updateStats() {
  $("stat-fps").textContent = state.drawTimes.length.toString();
  const latency = median(state.latencies), server = median(state.serverTimes);
  $("stat-latency").textContent = Number.isFinite(latency) ? `${latency.toFixed(1)} ms` : "-";
  $("stat-server").textContent = Number.isFinite(server) ? `${server.toFixed(1)} ms` : "-";
  $("stat-frames").textContent = state.framesDrawn.toString();
  $("stat-dropped-server").textContent = state.lastHeader ? state.lastHeader.dropped.toString() : "0";
  $("stat-dropped-page").textContent = state.droppedPage.toString();
  $("stat-not-sent").textContent = state.notSent.toString();
  $("stat-batch").textContent = state.lastHeader ? state.lastHeader.batchSize.toString() : "-";
  const c = state.camera;
  $("camera-readout").textContent = `yaw ${c.yaw.toFixed(0)}°, pitch ${c.pitch.toFixed(0)}°, ` +
    `distance ${c.distance.toFixed(2)}`;
}

function updateButtons() {
  $("start").disabled = !state.connected || state.streaming || !$("avatars").value;
  $("stop").disabled = !state.streaming;
  $("create").disabled = !state.connected;
}

// ---------------------------------------------------------------------------------------------------------------
// controls
// ---------------------------------------------------------------------------------------------------------------

function buildSliders() {
  const box = $("sliders");
  for (const s of SLIDERS) {
    const row = document.createElement("div");
    row.className = "slider";
    const label = document.createElement("label");
    label.textContent = s.label;
    label.htmlFor = `slider-${s.key}`;
    const input = document.createElement("input");
    Object.assign(input, { type: "range", id: `slider-${s.key}`, min: s.min, max: s.max, step: s.step, value: 0 });
    const output = document.createElement("output");
    const show = () => { output.textContent = `${Number(input.value)}${s.unit}`; };
    input.addEventListener("input", () => { show(); $("mode-sliders").checked = true; });
    show();
    row.append(label, input, output);
    box.appendChild(row);
  }
}

function resetSliders() {
  for (const s of SLIDERS) {
    const input = $(`slider-${s.key}`);
    input.value = 0;
    input.dispatchEvent(new Event("input"));
  }
}

function setupOrbit() {
  const canvas = $("canvas");
  let drag = null;
  canvas.addEventListener("pointerdown", (e) => {
    drag = { x: e.clientX, y: e.clientY, yaw: state.camera.yaw, pitch: state.camera.pitch };
    canvas.setPointerCapture(e.pointerId);
    canvas.classList.add("dragging");
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!drag) return;
    state.camera.yaw = Math.max(-90, Math.min(90, drag.yaw - (e.clientX - drag.x) * 0.4));
    state.camera.pitch = Math.max(-60, Math.min(60, drag.pitch + (e.clientY - drag.y) * 0.4));
  });
  const end = () => { drag = null; canvas.classList.remove("dragging"); };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    state.camera.distance = Math.max(0.5, Math.min(3, state.camera.distance * Math.exp(e.deltaY * 0.001)));
  }, { passive: false });
}

function init() {
  buildSliders();
  setupOrbit();
  $("connect").addEventListener("click", connect);
  $("refresh").addEventListener("click", () => refreshAvatars());
  $("create").addEventListener("click", createAvatar);
  $("start").addEventListener("click", () => startStream());
  $("stop").addEventListener("click", stopStream);
  $("avatars").addEventListener("change", updateButtons);
  $("sequence-file").addEventListener("change", uploadSequence);
  $("reset-sliders").addEventListener("click", resetSliders);
  $("reset-camera").addEventListener("click", () => { state.camera = { yaw: 0, pitch: 0, distance: 1 }; });
  $("error-dismiss").addEventListener("click", clearError);
  setInterval(updateStats, 250);
  loadSynthetic().catch((err) => showError("UNAVAILABLE", `could not load the synthetic sequence: ${err.message}`));
  updateButtons();
  connect();
}

// for tests and the console
window.flexavatar = { state, expressionFromControls, neutralExpression, rotation6d, rotX, rotY, matmul3,
                      lookAtCam2world, orbitCamera, parseFrameHeader, currentExpression };
init();
