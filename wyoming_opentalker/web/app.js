// The status page: figures from `status`, polled; try-it calls to the API's own endpoints.
// Every URL is relative, so the page works at / and under Home Assistant's ingress prefix.
"use strict";

const TOKEN_KEY = "opentalker-api-key";
const POLL_MS = 2000;
const PCM_RATE = 24000; // /v1/audio/speech with response_format "pcm": 16-bit mono, 24 kHz
const $ = (id) => document.getElementById(id);

let voicesShown = "";
let pollTimer = null;
let pollRound = 0; // only the newest poll schedules the next one

// --- talking to the server

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  const key = sessionStorage.getItem(TOKEN_KEY);
  if (key) headers.Authorization = "Bearer " + key;
  return headers;
}

async function call(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = authHeaders(opts.headers);
  const response = await fetch(path, opts);
  if (response.status === 401) askForKey(sessionStorage.getItem(TOKEN_KEY) !== null);
  return response;
}

async function errorText(response) {
  try {
    const body = await response.json();
    const code = body.error.code ? ` (${body.error.code})` : "";
    return `${body.error.message}${code}`;
  } catch (_err) {
    return `HTTP ${response.status}`;
  }
}

function askForKey(refused) {
  stopPolling();
  $("token-form").hidden = false;
  $("token-error").textContent = refused ? "That key was refused." : "";
  $("summary").textContent = "Waiting for the API key.";
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  $("token-form").hidden = true;
  poll();
});

// --- status

function stopPolling() {
  if (pollTimer !== null) clearTimeout(pollTimer);
  pollTimer = null;
}

async function poll() {
  stopPolling();
  const round = ++pollRound;
  try {
    const response = await call("status");
    if (response.status === 401) return;
    if (!response.ok) throw new Error(await errorText(response));
    render(await response.json());
    document.body.dataset.loaded = "true";
  } catch (err) {
    $("summary").textContent = `Cannot reach the server: ${err.message}`;
  } finally {
    if (round === pollRound && $("token-form").hidden) pollTimer = setTimeout(poll, POLL_MS);
  }
}

function render(status) {
  const gpu = status.device.gpu;
  const where = gpu ? `${gpu.name} (${status.device.name})` : "CPU";
  $("summary").textContent =
    `version ${status.version} · ${where} · up ${duration(status.uptime_seconds)}`;
  renderEngines(status.services);
  renderMemory(status);
  renderRecent(status.recent);
  renderVoices(status.services.tts);
  document.querySelector("main").hidden = false; // nothing is shown before the first figures
}

const KIND = { asr: "Speech to text", tts: "Text to speech" };

function renderEngines(services) {
  const box = $("engines");
  box.replaceChildren();
  for (const [kind, s] of Object.entries(services)) {
    const card = el("div", { class: "card engine", "data-kind": kind });
    card.append(el("h3", {}, KIND[kind] || kind));
    const rows = [
      ["engine", s.engine],
      ["model", s.model],
      ["device", s.device],
      ["precision", s.precision],
      ["quantisation", s.quantization],
      ["weights", bytes(s.weights_bytes)],
      ["requests served", String(s.requests_served)],
      ["requests failed", String(s.requests_failed)],
    ];
    if (kind === "asr") rows.push(["languages", String(s.languages.length)]);
    if (kind === "tts") rows.push(["voices", s.voices.map((v) => v.name).join(", ")]);
    const list = el("dl");
    for (const [name, value] of rows) list.append(el("dt", {}, name), el("dd", {}, value));
    card.append(list);
    box.append(card);
  }
}

function renderMemory(status) {
  const box = $("memory");
  box.replaceChildren();
  const measured = status.memory;
  const plan = status.plan;
  if (!plan) {
    const rss = measured.rss_bytes !== undefined ? bytes(measured.rss_bytes) : "unknown";
    box.append(
      el("p", { id: "rss" }, `Process memory (RSS): ${rss}, peak ${bytes(measured.peak_rss_bytes)}`),
      el("p", { class: "muted" }, "Running on the CPU: no GPU memory plan."),
    );
    return;
  }
  // The plan against the card: weights and working memory per model, overhead, headroom.
  const total = plan.gpu.total_bytes;
  const parts = [];
  for (const need of plan.needs) {
    parts.push({ cls: `weights ${need.service}`, value: need.weights_bytes,
      label: `${need.service.toUpperCase()} weights` });
    parts.push({ cls: `working ${need.service}`, value: need.working_bytes,
      label: `${need.service.toUpperCase()} working` });
  }
  if (plan.overhead_bytes) parts.push({ cls: "overhead", value: plan.overhead_bytes,
    label: "CUDA context" });
  const unavailable = total - plan.available_bytes;
  if (unavailable > 0) parts.push({ cls: "other", value: unavailable, label: "in use elsewhere" });
  if (plan.headroom_bytes > 0) parts.push({ cls: "headroom", value: plan.headroom_bytes,
    label: "headroom" });
  const svg = svgEl("svg", { id: "memory-bar", viewBox: "0 0 1000 60",
    preserveAspectRatio: "none", role: "img", "aria-label": "GPU memory plan" });
  let x = 0;
  for (const part of parts) {
    const w = (part.value / total) * 1000;
    const rect = svgEl("rect", { x, y: 0, width: Math.max(w, 0), height: 40, class: part.cls });
    rect.append(svgEl("title", {}, `${part.label}: ${bytes(part.value)}`));
    svg.append(rect);
    x += w;
  }
  if (measured.gpu) { // what torch really holds now, as a line across the bar
    const used = (measured.gpu.reserved_bytes / total) * 1000;
    svg.append(svgEl("line", { x1: used, x2: used, y1: 0, y2: 60, class: "measured" }));
  }
  box.append(svg);
  const legend = el("p", { class: "legend" });
  for (const part of parts) {
    legend.append(el("span", { class: `swatch ${part.cls}` }), `${part.label} ${bytes(part.value)} `);
  }
  box.append(legend);
  const fit = plan.fits ? "fits" : "does not fit";
  let text = `Plan: ${bytes(plan.total_bytes)} of ${bytes(plan.available_bytes)} available on ` +
    `${plan.gpu.name} (${bytes(total)}), ${fit}.`;
  if (measured.gpu) {
    text += ` Measured now: ${bytes(measured.gpu.allocated_bytes)} allocated, ` +
      `${bytes(measured.gpu.reserved_bytes)} reserved (line), peak ` +
      `${bytes(measured.gpu.peak_allocated_bytes)}.`;
  }
  box.append(el("p", {}, text));
  if (measured.rss_bytes !== undefined) {
    box.append(el("p", { id: "rss", class: "muted" }, `Process memory (RSS): ${bytes(measured.rss_bytes)}`));
  }
}

function latency(row) {
  if (row.kind === "tts") return row.first_audio;
  return row.speech_end_to_transcript ?? row.stop_to_transcript;
}

function renderRecent(rows) {
  const body = $("recent-table").querySelector("tbody");
  body.replaceChildren();
  $("recent-empty").hidden = rows.length > 0;
  for (const row of rows) {
    const tts = row.kind === "tts";
    const cells = [
      new Date(Date.now() - row.ago * 1000).toLocaleTimeString(),
      tts ? "TTS" : "ASR",
      row.via,
      tts ? `${row.characters} characters`
        : (row.audio_seconds || !row.error ? `${row.audio_seconds.toFixed(2)} s audio` : "–"),
      tts ? "" : seconds(row.speech_end_to_transcript),
      tts ? "" : seconds(row.stop_to_transcript),
      tts ? seconds(row.first_audio) : "",
      tts && row.real_time_factor !== null ? row.real_time_factor.toFixed(2) : "",
      row.error ? `error: ${row.error}` : (tts ? `${row.audio_seconds.toFixed(2)} s audio` : "ok"),
    ];
    const tr = el("tr", { class: row.error ? "failed" : "", "data-kind": row.kind });
    for (const cell of cells) tr.append(el("td", {}, cell));
    body.append(tr);
  }
  drawPlot(rows.slice().reverse());
}

function drawPlot(rows) {
  const svg = $("plot");
  svg.replaceChildren();
  svg.parentElement.classList.toggle("empty", rows.length === 0);
  const values = rows.map((row) => latency(row) || 0);
  const top = Math.max(0.1, ...values);
  const step = 600 / Math.max(rows.length, 20);
  rows.forEach((row, i) => {
    const h = Math.max((values[i] / top) * 110, row.error ? 12 : 0); // a failure stays visible
    const rect = svgEl("rect", { x: i * step + 1, y: 110 - h, width: Math.max(step - 2, 1),
      height: Math.max(h, 1), class: row.error ? "failed" : row.kind });
    rect.append(svgEl("title", {}, `${row.kind.toUpperCase()} ${seconds(latency(row)) || "–"}`));
    svg.append(rect);
  });
  svg.append(svgEl("line", { x1: 0, x2: 600, y1: 110, y2: 110, class: "axis" }));
  // Text in a stretched SVG would be stretched too: the scale is plain HTML.
  $("plot-top").textContent = `${top.toFixed(2)} s`;
}

function renderVoices(tts) {
  const form = $("tts-form");
  form.hidden = !tts;
  if (!tts) return;
  const names = tts.voices.map((v) => v.name).join(",");
  if (names === voicesShown) return; // keep the user's choice between polls
  voicesShown = names;
  const select = $("tts-voice");
  select.replaceChildren();
  for (const voice of tts.voices) {
    const option = el("option", { value: voice.name }, `${voice.name} (${voice.languages.join(", ")})`);
    if (voice.name === tts.default_voice) option.selected = true;
    select.append(option);
  }
}

// --- try it: text to speech, played as it streams in

$("tts-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = $("tts-speak");
  button.disabled = true;
  $("tts-error").textContent = "";
  $("tts-first-audio").textContent = "–";
  setDuration(null);
  try {
    await speak($("tts-text").value, $("tts-voice").value);
  } catch (err) {
    $("tts-error").textContent = err.message;
  } finally {
    button.disabled = false;
    poll();
  }
});

async function speak(text, voice) {
  const started = performance.now();
  const response = await call("v1/audio/speech", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model: "tts-1", input: text, voice, response_format: "pcm" }),
  });
  if (!response.ok) throw new Error(await errorText(response));
  const context = new AudioContext({ sampleRate: PCM_RATE });
  try { await context.resume(); } catch (_err) { /* played once the page may make sound */ }
  const reader = response.body.getReader();
  const pieces = [];
  let carry = null; // a sample split between two network chunks
  let samples = 0;
  let when = context.currentTime + 0.05;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    let data = value;
    if (carry) {
      data = new Uint8Array(carry.length + value.length);
      data.set(carry);
      data.set(value, carry.length);
    }
    const whole = data.length - (data.length % 2);
    carry = whole < data.length ? data.slice(whole) : null;
    if (!whole) continue;
    const pcm = new Int16Array(data.slice(0, whole).buffer);
    if (samples === 0) $("tts-first-audio").textContent = `${((performance.now() - started) / 1000).toFixed(2)} s`;
    const buffer = context.createBuffer(1, pcm.length, PCM_RATE);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) channel[i] = pcm[i] / 32768;
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(context.destination);
    when = Math.max(when, context.currentTime);
    source.start(when);
    when += buffer.duration;
    samples += pcm.length;
    pieces.push(pcm);
    setDuration(samples / PCM_RATE);
  }
  setDuration(samples / PCM_RATE, true);
  $("tts-audio").src = URL.createObjectURL(wavBlob(pieces, samples));
}

function setDuration(value, done) {
  const out = $("tts-duration");
  out.textContent = value === null ? "–" : `${value.toFixed(2)} s`;
  out.dataset.seconds = value === null ? "" : String(value);
  out.dataset.done = done ? "true" : "false";
}

function wavBlob(pieces, samples) {
  const header = new DataView(new ArrayBuffer(44));
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) header.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF"); header.setUint32(4, 36 + samples * 2, true); text(8, "WAVE");
  text(12, "fmt "); header.setUint32(16, 16, true); header.setUint16(20, 1, true);
  header.setUint16(22, 1, true); header.setUint32(24, PCM_RATE, true);
  header.setUint32(28, PCM_RATE * 2, true); header.setUint16(32, 2, true);
  header.setUint16(34, 16, true); text(36, "data"); header.setUint32(40, samples * 2, true);
  return new Blob([header, ...pieces], { type: "audio/wav" });
}

// --- try it: speech to text from a file or the microphone

$("asr-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("asr-file").files[0];
  if (!file) { $("asr-error").textContent = "Choose an audio file first."; return; }
  await transcribe(file, file.name);
});

async function transcribe(blob, name) {
  const button = $("asr-send");
  button.disabled = true;
  $("asr-error").textContent = "";
  $("asr-transcript").textContent = "…";
  try {
    const form = new FormData();
    form.append("file", blob, name);
    form.append("model", "whisper-1");
    form.append("response_format", "json");
    const response = await call("v1/audio/transcriptions", { method: "POST", body: form });
    if (!response.ok) throw new Error(await errorText(response));
    $("asr-transcript").textContent = (await response.json()).text;
  } catch (err) {
    $("asr-transcript").textContent = "";
    $("asr-error").textContent = err.message;
  } finally {
    button.disabled = false;
    poll();
  }
}

let recorder = null;
$("asr-record").addEventListener("click", async () => {
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    $("asr-record-note").hidden = false;
    return;
  }
  if (recorder) { recorder.stop(); return; }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = () => {
      stream.getTracks().forEach((t) => t.stop());
      const type = recorder.mimeType || "audio/webm";
      recorder = null;
      $("asr-record").textContent = "Record";
      transcribe(new Blob(chunks, { type }), type.includes("ogg") ? "recording.ogg" : "recording.webm");
    };
    recorder.start();
    $("asr-record").textContent = "Stop";
  } catch (err) {
    $("asr-error").textContent = `The microphone is not available: ${err.message}`;
  }
});

// --- small helpers

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== "") node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function bytes(n) {
  if (n === undefined || n === null) return "–";
  if (n >= 1024 ** 3) return `${(n / 1024 ** 3).toFixed(2)} GiB`;
  return `${(n / 1024 ** 2).toFixed(0)} MiB`;
}

function seconds(s) {
  return s === null || s === undefined ? "" : `${s.toFixed(3)} s`;
}

function duration(s) {
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

if (!navigator.mediaDevices) $("asr-record-note").hidden = false;
poll();
