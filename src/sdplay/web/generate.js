// The Generate page: the form, submitting a job, following its events, and the results grid.

import * as api from "./api.js";
import { imageFields, imageSize, initImageIn, useImage } from "./imagein.js";
import { initPromptEditing } from "./textedit.js";
import { $, clearErrors, el, formatSeconds, notify, openViewer, showError } from "./ui.js";

const RANDOM = -1;
const KEEP_GROUPS = 12; // result groups kept on the page (older ones are in the gallery)

const state = { models: [], job: null, lastSeed: null, controller: null };

const form = () => $("#gen-form");
// Whether the server can run a model: its `usable` flag where the server sends one, else whether the weights are here.
const ready = (m) => m.usable ?? m.available;
const field = (name) => form().elements.namedItem(name);

// -- set-up ---------------------------------------------------------------------------------------

/** Fill the model and sampler pickers from the server and wire the form. */
export async function initGenerate() {
  const f = form();
  f.addEventListener("submit", (e) => {
    e.preventDefault();
    generate();
  });
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter" && !$("#page-generate").hidden) {
      e.preventDefault();
      generate();
    }
  });
  $("#cancel").addEventListener("click", cancel);
  $("#seed-random").addEventListener("click", () => setSeed(RANDOM));
  $("#seed-reuse").addEventListener("click", () => state.lastSeed !== null && setSeed(state.lastSeed));
  field("model").addEventListener("change", () => applyModelDefaults());
  field("size").addEventListener("change", showCustomSize);
  f.addEventListener("input", (e) => clearFieldError(e.target));
  initImageIn();
  initPromptEditing([field("prompt"), field("negative_prompt")]);
  await loadCatalog();
}

async function loadCatalog() {
  const [models, samplers, system] = await Promise.all([
    api.get("/api/v1/models"),
    api.get("/api/v1/samplers"),
    api.get("/api/v1/system").catch(() => null),
  ]);
  state.models = models.models;
  const picker = field("model");
  picker.replaceChildren(
    ...state.models.map((m) =>
      el("option", { value: m.name }, `${m.name}${ready(m) ? "" : " (weights not here)"}`),
    ),
  );
  picker.value = models.default || (state.models.find(ready) || state.models[0] || {}).name || "";
  field("sampler").replaceChildren(...samplers.samplers.map((s) => el("option", { value: s }, s)));
  if (system) {
    field("n_images").max = system.limits.max_images;
    field("steps").max = system.limits.max_steps;
  }
  applyModelDefaults();
}

function currentModel() {
  return state.models.find((m) => m.name === field("model").value);
}

/** Put the chosen model's defaults in the form: size presets (native first), steps, guidance, sampler. */
function applyModelDefaults() {
  const model = currentModel();
  if (!model) return;
  const sizes = model.sizes.length ? model.sizes : [[model.native_size, model.native_size]];
  field("size").replaceChildren(
    ...sizes.map(([w, h], i) => el("option", { value: `${w}x${h}` }, `${w}×${h}${i === 0 ? " (native)" : ""}`)),
    el("option", { value: "custom" }, "Custom…"),
  );
  field("size").value = `${sizes[0][0]}x${sizes[0][1]}`;
  field("width").value = sizes[0][0];
  field("height").value = sizes[0][1];
  field("steps").value = model.default_steps;
  field("guidance").value = model.default_guidance;
  field("sampler").value = model.default_sampler;
  showCustomSize();
  const note = $("#model-note");
  note.textContent = ready(model) ? model.description : `${model.description} Not on this machine: ${model.how_to_get}`;
}

function showCustomSize() {
  $("#custom-size").hidden = field("size").value !== "custom";
}

function setSeed(value) {
  field("seed").value = value;
  clearFieldError(field("seed"));
}

function clearFieldError(input) {
  const block = input && input.closest && input.closest(".field");
  if (block && block.classList.contains("invalid")) {
    block.classList.remove("invalid");
    block.querySelector(".error").textContent = "";
    input.removeAttribute("aria-invalid");
  }
}

// -- the request ----------------------------------------------------------------------------------

function number(name) {
  const raw = String(field(name).value).trim();
  return raw === "" ? null : Number(raw);
}

/** The job body from the form; empty numbers are left out so the model's defaults apply. */
function readForm() {
  let width = null;
  let height = null;
  if (field("size").value === "custom") {
    width = number("width");
    height = number("height");
  } else {
    [width, height] = imageSize() ?? field("size").value.split("x").map(Number);
  }
  const body = {
    prompt: field("prompt").value,
    negative_prompt: field("negative_prompt").value,
    model: field("model").value || null,
    n_images: number("n_images") ?? 1,
    steps: number("steps"),
    guidance: number("guidance"),
    width,
    height,
    seed: number("seed") ?? RANDOM,
    sampler: field("sampler").value || null,
  };
  for (const [key, value] of Object.entries(body)) {
    if (value === null || Number.isNaN(value)) delete body[key];
  }
  return { ...body, ...imageFields() };
}

/** Fill the form from a stored request (a result or a gallery item); `seed` overrides its seed. */
export function reuseSettings(request, seed) {
  if (request.model && state.models.some((m) => m.name === request.model)) {
    field("model").value = request.model;
    applyModelDefaults();
  }
  field("prompt").value = request.prompt ?? "";
  field("negative_prompt").value = request.negative_prompt ?? "";
  if (request.steps) field("steps").value = request.steps;
  if (request.guidance !== null && request.guidance !== undefined) field("guidance").value = request.guidance;
  if (request.sampler) field("sampler").value = request.sampler;
  if (request.width && request.height) {
    const preset = `${request.width}x${request.height}`;
    const known = [...field("size").options].some((o) => o.value === preset);
    field("size").value = known ? preset : "custom";
    field("width").value = request.width;
    field("height").value = request.height;
    showCustomSize();
  }
  setSeed(seed ?? request.seed ?? RANDOM);
  field("prompt").dispatchEvent(new Event("input", { bubbles: true })); // the LoRA cards follow the prompt
  clearErrors(form());
}

// -- running a job --------------------------------------------------------------------------------

async function generate() {
  if (state.job) {
    notify("A job is already running: wait for it or cancel it.");
    return;
  }
  const f = form();
  clearErrors(f);
  const body = readForm();
  setRunning(true);
  showProgress({ text: "Submitting…", fraction: 0 });
  try {
    const job = await api.post("/api/v1/jobs", body);
    state.job = job.id;
    $("#cancel").disabled = false;
    showStatus(job);
    const view = await follow(job.id);
    finished(view, body);
  } catch (err) {
    showError(f, err);
    showProgress({ text: "", fraction: 0 });
  } finally {
    state.job = null;
    setRunning(false);
  }
}

/** Follow the job's event stream until its end; fall back to polling if the stream breaks. */
async function follow(jobId) {
  let last = null;
  state.controller = new AbortController();
  try {
    await api.streamEvents(`/api/v1/jobs/${jobId}/events`, (event, data) => {
      if (event === "progress") showStep(data);
      else if (event === "preview") showPreview(data);
      else if (event === "status") showStatus(data);
      else if (["done", "failed", "cancelled"].includes(event)) last = data;
    }, state.controller.signal);
  } catch (err) {
    if (err.name !== "AbortError") notify(`${err.message} Checking the job's status instead.`, "error");
  }
  while (!last || !["done", "failed", "cancelled"].includes(last.status)) {
    last = await api.get(`/api/v1/jobs/${jobId}`);
    if (!["done", "failed", "cancelled"].includes(last.status)) await new Promise((r) => setTimeout(r, 500));
  }
  return last;
}

async function cancel() {
  if (!state.job) return;
  $("#cancel").disabled = true;
  showProgress({ text: "Cancelling…" });
  try {
    await api.post(`/api/v1/jobs/${state.job}/cancel`);
  } catch (err) {
    notify(err.message, "error");
  }
}

function setRunning(running) {
  const button = $("#generate");
  button.disabled = running;
  button.textContent = running ? "Generating…" : "Generate";
  $("#cancel").disabled = true;
  $("#page-generate").classList.toggle("running", running);
  if (!running) document.title = "sdplay";
}

function showProgress({ text, fraction, detail }) {
  if (text !== undefined) $("#progress-text").textContent = text;
  if (detail !== undefined) $("#progress-detail").textContent = detail;
  if (fraction !== undefined) {
    $("#progress-bar").value = fraction;
    document.title = state.job ? `(${Math.round(fraction * 100)}%) sdplay` : "sdplay";
  }
}

function showStatus(view) {
  if (view.status === "queued") {
    const ahead = view.position ?? 0;
    showProgress({ text: ahead ? `Queued: ${ahead} job(s) ahead` : "Queued: next to run", fraction: 0, detail: "" });
  } else if (view.status === "running" && !view.step) {
    showProgress({ text: "Loading the model…", detail: "" });
  }
}

function showStep(p) {
  if (!p.total_steps) {
    showProgress({ text: "Loading the model…", detail: "" });
    return;
  }
  const batch = p.batch_count > 1 ? ` · batch ${p.batch_index + 1}/${p.batch_count}` : "";
  const eta = p.eta_s !== null && p.eta_s !== undefined ? ` · ${formatSeconds(p.eta_s)} left` : "";
  showProgress({ text: `Step ${p.step}/${p.total_steps}${batch}`, fraction: p.progress ?? 0, detail: eta.slice(3) });
}

function showPreview(p) {
  const img = $("#preview-img");
  img.src = p.image;
  img.alt = `Preview at step ${p.step}`;
  $("#preview").hidden = false;
}

function finished(view, body) {
  $("#preview").hidden = true;
  if (view.status === "done") {
    const took = view.timings && view.timings.total ? ` in ${formatSeconds(view.timings.total)}` : "";
    showProgress({ text: `Done: ${view.images.length} image(s)${took}`, fraction: 1, detail: "" });
    state.lastSeed = view.images.length ? view.images[0].seed : state.lastSeed;
    $("#seed-reuse").disabled = state.lastSeed === null;
    addResults(view);
  } else if (view.status === "cancelled") {
    showProgress({ text: "Cancelled.", fraction: 0, detail: "" });
  } else {
    const err = view.error || { message: "The job failed.", type: "Error" };
    showProgress({ text: "Failed.", fraction: 0, detail: "" });
    showError(form(), err);
    console.debug("failed job", body, err);
  }
}

// -- results --------------------------------------------------------------------------------------

function imageParams(view, image) {
  const r = view.request;
  return { ...r, seed: image.seed, width: view.width ?? r.width, height: view.height ?? r.height,
    time: view.timings && view.timings.total ? formatSeconds(view.timings.total) : "" };
}

function addResults(view) {
  const items = view.images.map((image) => ({
    url: image.url, name: `sdplay-${image.seed}.png`, params: imageParams(view, image), request: view.request,
  }));
  const actions = [
    { label: "Reuse settings", run: (item) => reuseSettings(item.request, item.params.seed) },
    { label: "Reuse seed", run: (item) => setSeed(item.params.seed) },
    { label: "Send to img2img", run: (item) => useImage(item.url).then(() => ($("#image-panel").open = true)) },
  ];
  const cards = items.map((item, i) => {
    const img = el("img", { alt: `Seed ${item.params.seed}`, loading: "lazy", width: view.width, height: view.height,
      class: view.width < 256 ? "pixelated" : null });
    api.loadImage(img, item.url).catch((err) => notify(err.message, "error"));
    const open = () => openViewer(items, i, actions);
    return el("figure", { class: "card result", dataset: { seed: item.params.seed } },
      el("button", { type: "button", class: "thumb", onclick: open, title: "Open full size" }, img),
      el("figcaption", {}, el("span", { class: "seed" }, `seed ${item.params.seed}`)));
  });
  const r = view.request;
  const summary = `${r.model} · ${view.width}×${view.height} · ${r.steps} steps · ${r.sampler} · CFG ${r.guidance}`;
  const group = el("section", { class: "result-group", dataset: { job: view.id } },
    el("p", { class: "prompt-line" }, el("strong", {}, r.prompt || "(empty prompt)"), " ", el("span", { class: "muted" }, summary)),
    el("div", { class: "grid" }, cards));
  const results = $("#results");
  results.prepend(group);
  $("#results-empty").hidden = true;
  while (results.children.length > KEEP_GROUPS) results.lastElementChild.remove();
}
