// Small DOM helpers shared by the pages: element building, field errors, notices, the full-size viewer.

import { loadImage } from "./api.js";

/** el("div", {class: "x", onclick: f}, "text", child) -> a new element. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

/** Clear every field error and the general error of a form. */
export function clearErrors(form) {
  for (const node of $$(".field", form)) {
    node.classList.remove("invalid");
    const slot = $(".error", node);
    if (slot) slot.textContent = "";
  }
  for (const input of $$("[aria-invalid]", form)) input.removeAttribute("aria-invalid");
  const general = $(".form-error", form);
  if (general) {
    general.textContent = "";
    general.hidden = true;
  }
}

/** Show `err` next to the field it names (data-fields lists the names a field block answers to), else at the top. */
export function showError(form, err) {
  const text = err.hint && !err.message.includes(err.hint) ? `${err.message} ${err.hint}` : err.message;
  const name = err.field ? String(err.field).split(".")[0] : null;
  const block = name ? $(`.field[data-fields~="${CSS.escape(name)}"]`, form) : null;
  if (block && !block.hidden) {
    block.classList.add("invalid");
    $(".error", block).textContent = forField(err.message, name) || text;
    const input = $(`[name="${CSS.escape(name)}"]`, block) || $("input, select, textarea", block);
    if (input) {
      input.setAttribute("aria-invalid", "true");
      input.focus({ preventScroll: false });
    }
    return;
  }
  const general = $(".form-error", form);
  general.textContent = name ? `${name}: ${text}` : text;
  general.hidden = false;
}

/** The part of a schema error about one field: "Invalid request: steps: Input should be ... ; x: ..." -> "Input should be ...". */
function forField(message, name) {
  const match = /^Invalid request: (.*?)\.?( Fix the field.*)?$/s.exec(message);
  if (!match) return null;
  const part = match[1].split("; ").find((p) => p.startsWith(`${name}: `));
  return part ? `${part.slice(name.length + 2)}.` : null;
}

/** A short message in the notice area (kind: "info" or "error"); it fades after `ms` unless ms is 0. */
export function notify(text, kind = "info", ms = 4000) {
  const area = $("#notices");
  const note = el("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
  area.append(note);
  if (ms) setTimeout(() => note.remove(), ms);
  return note;
}

export function formatSeconds(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

export function formatDate(unix) {
  return new Date(unix * 1000).toLocaleString();
}

/** The generation parameters of an image as label/value pairs, in A1111's order. */
export function parameterRows(p) {
  const rows = [
    ["Prompt", p.prompt],
    ["Negative prompt", p.negative_prompt],
    ["Model", p.model],
    ["Seed", p.seed],
    ["Size", p.width && p.height ? `${p.width}×${p.height}` : ""],
    ["Steps", p.steps],
    ["Sampler", p.sampler],
    ["Guidance (CFG)", p.guidance],
    ["Time", p.time],
    ["Created", p.created],
  ];
  return rows.filter(([, value]) => value !== undefined && value !== null && value !== "");
}

// -- the full-size viewer -----------------------------------------------------------------------

const viewer = { items: [], index: 0, actions: [] };

/** Open the viewer on items[index]; item = {url, name, params}; actions = [{label, run(item), danger}]. */
export function openViewer(items, index, actions = []) {
  Object.assign(viewer, { items, index, actions });
  const dialog = $("#viewer");
  showViewerItem();
  if (!dialog.open) dialog.showModal();
}

function showViewerItem() {
  const item = viewer.items[viewer.index];
  const img = $("#viewer-img");
  const download = $("#viewer-download");
  img.alt = `Seed ${item.params.seed}`;
  download.setAttribute("download", item.name);
  img.onload = () => {
    download.href = img.src;
    img.classList.toggle("pixelated", img.naturalWidth < 256);
  };
  loadImage(img, item.url).catch((err) => notify(err.message, "error"));
  const table = $("#viewer-params");
  table.replaceChildren(...parameterRows(item.params).map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
  $("#viewer-count").textContent = viewer.items.length > 1 ? `${viewer.index + 1} / ${viewer.items.length}` : "";
  $("#viewer-prev").hidden = $("#viewer-next").hidden = viewer.items.length < 2;
  const box = $("#viewer-actions");
  box.replaceChildren(
    ...viewer.actions.map((a) =>
      el("button", { type: "button", class: a.danger ? "danger" : "", onclick: () => runAction(a, item) }, a.label),
    ),
  );
}

async function runAction(action, item) {
  const close = await action.run(item);
  if (close !== false) $("#viewer").close();
}

function step(delta) {
  if (viewer.items.length < 2) return;
  viewer.index = (viewer.index + delta + viewer.items.length) % viewer.items.length;
  showViewerItem();
}

export function initViewer() {
  const dialog = $("#viewer");
  $("#viewer-close").addEventListener("click", () => dialog.close());
  $("#viewer-prev").addEventListener("click", () => step(-1));
  $("#viewer-next").addEventListener("click", () => step(1));
  dialog.addEventListener("click", (e) => {
    if (e.target === dialog) dialog.close(); // a click on the backdrop
  });
  dialog.addEventListener("keydown", (e) => {
    if (e.key === "ArrowLeft") step(-1);
    if (e.key === "ArrowRight") step(1);
  });
}
