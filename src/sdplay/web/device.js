// The Device page: live utilisation and memory charts from /api/v1/telemetry, and the server's state.

import * as api from "./api.js";
import { $, el, formatSeconds } from "./ui.js";

const WINDOW_S = 120; // seconds of history on the charts, at most
const MIN_SPAN_S = 30; // the charts' time axis grows from this as samples come in
const POLL_MS = 1000;
const state = { series: new Map(), since: null, timer: null, visible: false, error: null };

export function showDevice() {
  state.visible = true;
  if (!state.timer) tick();
}

export function hideDevice() {
  state.visible = false;
}

async function tick() {
  state.timer = null;
  if (!state.visible) return;
  await Promise.all([pollTelemetry(), pollSystem()]);
  render();
  state.timer = setTimeout(tick, POLL_MS);
}

async function pollTelemetry() {
  try {
    const since = state.since === null ? "" : `?since=${state.since}`;
    const view = await api.get(`/api/v1/telemetry${since}`);
    state.error = null;
    const oldest = Date.now() / 1000 - WINDOW_S;
    for (const d of view.devices) {
      const known = state.series.get(d.device) || { device: d.device, source: d.source, samples: [] };
      const after = known.samples.length ? known.samples.at(-1).timestamp : -Infinity;
      known.source = d.source;
      known.error = d.error;
      known.samples = [...known.samples, ...d.samples.filter((s) => s.timestamp > after)]
        .filter((s) => s.timestamp >= oldest);
      state.series.set(d.device, known);
    }
    // the next poll asks for what came after the least recent of the devices' last samples
    const lasts = [...state.series.values()].filter((s) => s.samples.length).map((s) => s.samples.at(-1).timestamp);
    if (lasts.length) state.since = Math.min(...lasts);
  } catch (err) {
    state.error = err.message;
  }
}

async function pollSystem() {
  try {
    const s = await api.get("/api/v1/system");
    $("#system-info").replaceChildren(
      ...[["Version", s.version], ["Up", formatSeconds(s.uptime_s)], ["Workers", s.workers.join(", ")],
        ["Queue", `${s.queue_depth} waiting, ${s.running} running`],
        ["Limits", `${s.limits.max_images} images, ${s.limits.max_steps} steps, ${s.limits.max_side} px`],
        ["Batching", `up to ${s.batching.max_batch} images, ${s.batching.window_ms} ms window`]]
        .map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, v))),
    );
  } catch (err) {
    state.error = err.message;
  }
}

function render() {
  $("#device-error").textContent = state.error || "";
  $("#device-error").hidden = !state.error;
  const box = $("#device-cards");
  for (const series of state.series.values()) {
    let card = box.querySelector(`[data-device="${CSS.escape(series.device)}"]`);
    if (!card) {
      card = deviceCard(series);
      box.append(card);
    }
    updateCard(card, series);
  }
}

function deviceCard(series) {
  const chart = (kind, title) =>
    el("div", { class: "chart" },
      el("div", { class: "chart-head" }, el("span", {}, title), el("span", { class: "value", dataset: { value: kind } })),
      el("canvas", { dataset: { chart: kind }, height: 90, role: "img", "aria-label": `${title} of ${series.device}` }));
  return el("article", { class: "panel device-card", dataset: { device: series.device } },
    el("h3", {}, series.device, " ", el("span", { class: "muted source" })),
    el("p", { class: "error device-error" }),
    chart("util", "Utilisation"), chart("memory", "Memory"),
    el("p", { class: "muted extra" }));
}

function updateCard(card, series) {
  card.querySelector(".source").textContent = series.source ? `(${series.source})` : "";
  card.querySelector(".device-error").textContent = series.error || "";
  const last = series.samples.at(-1) || {};
  const total = last.memory_total_mib;
  card.querySelector('[data-value="util"]').textContent = fmt(last.utilization, "%");
  card.querySelector('[data-value="memory"]').textContent =
    last.memory_used_mib == null ? "–" : `${gib(last.memory_used_mib)}${total ? ` / ${gib(total)}` : ""} GiB`;
  const extra = [last.power_w != null && `${last.power_w.toFixed(0)} W`,
    last.temperature_c != null && `${last.temperature_c.toFixed(0)} °C`].filter(Boolean);
  card.querySelector(".extra").textContent = extra.join(" · ");
  draw(card.querySelector('[data-chart="util"]'), series.samples, "utilization", 100, "100 %");
  const peak = Math.max(...series.samples.map((s) => s.memory_total_mib || s.memory_used_mib || 0), 1);
  draw(card.querySelector('[data-chart="memory"]'), series.samples, "memory_used_mib", peak, `${gib(peak)} GiB`);
}

const fmt = (v, unit) => (v === null || v === undefined ? "–" : `${v.toFixed(0)} ${unit}`);
const gib = (mib) => (mib / 1024).toFixed(1);

/** A line chart of samples[key] over the last WINDOW_S seconds, 0..max (labelled), on a canvas sized to its box. */
function draw(canvas, samples, key, max, label) {
  const ratio = window.devicePixelRatio || 1;
  const w = Math.max(1, canvas.clientWidth);
  const h = Math.max(1, canvas.clientHeight);
  canvas.width = w * ratio;
  canvas.height = h * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  const css = getComputedStyle(document.documentElement);
  ctx.strokeStyle = css.getPropertyValue("--line").trim();
  ctx.lineWidth = 1;
  for (const f of [0.25, 0.5, 0.75]) {
    ctx.beginPath();
    ctx.moveTo(0, Math.round(h * f) + 0.5);
    ctx.lineTo(w, Math.round(h * f) + 0.5);
    ctx.stroke();
  }
  ctx.fillStyle = css.getPropertyValue("--muted").trim();
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillText(label, 4, 11);
  const now = Date.now() / 1000;
  const first = samples.length ? samples[0].timestamp : now;
  const span = Math.min(WINDOW_S, Math.max(MIN_SPAN_S, Math.ceil((now - first) / 10) * 10));
  ctx.fillText(span >= 60 ? `−${(span / 60).toFixed(span % 60 ? 1 : 0)} min` : `−${span} s`, 4, h - 4);
  const points = samples.filter((s) => s[key] !== null && s[key] !== undefined)
    .map((s) => [w * (1 - (now - s.timestamp) / span), h - 2 - (h - 4) * Math.min(1, s[key] / max)]);
  if (!points.length) return;
  ctx.beginPath();
  points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
  ctx.strokeStyle = css.getPropertyValue("--accent").trim();
  ctx.lineWidth = 2;
  ctx.stroke();
  ctx.lineTo(points.at(-1)[0], h);
  ctx.lineTo(points[0][0], h);
  ctx.closePath();
  ctx.fillStyle = css.getPropertyValue("--accent-soft").trim();
  ctx.fill();
}
