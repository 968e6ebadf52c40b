// The Gallery page: search the server's stored images, view them, reuse their settings, delete them.

import * as api from "./api.js";
import { useImage } from "./imagein.js";
import { $, clearErrors, el, formatDate, formatSeconds, notify, openViewer, showError } from "./ui.js";

const PAGE = 48;
const state = { items: [], total: 0, query: {}, onReuse: null, seq: 0, cards: new Map() };

/** Wire the search form; `onReuse(request, seed)` fills the Generate form and shows it. */
export function initGallery(onReuse) {
  state.onReuse = onReuse;
  $("#gallery-form").addEventListener("submit", (e) => {
    e.preventDefault();
    search();
  });
  $("#gallery-more").addEventListener("click", () => load(state.items.length));
}

/** Called whenever the page is shown: refresh the model filter and the first page of results. */
export async function showGallery() {
  try {
    const models = await api.get("/api/v1/models");
    const picker = $("#gallery-model");
    const chosen = picker.value;
    picker.replaceChildren(el("option", { value: "" }, "All models"),
      ...models.models.map((m) => el("option", { value: m.name }, m.name)));
    picker.value = chosen;
  } catch (err) {
    notify(err.message, "error");
  }
  await search();
}

function search() {
  const f = $("#gallery-form");
  state.query = { q: f.elements.q.value.trim(), model: f.elements.model.value };
  return load(0);
}

async function load(offset) {
  const f = $("#gallery-form");
  clearErrors(f);
  const params = new URLSearchParams({ limit: PAGE, offset });
  for (const [key, value] of Object.entries(state.query)) if (value) params.set(key, value);
  const seq = ++state.seq;
  let page;
  try {
    page = await api.get(`/api/v1/gallery?${params}`);
  } catch (err) {
    if (seq === state.seq) showError(f, err);
    return;
  }
  if (seq !== state.seq) return; // a newer search was started meanwhile
  state.items = offset ? [...state.items, ...page.items] : page.items;
  state.total = page.total;
  render();
}

function render() {
  const grid = $("#gallery-grid");
  const cards = new Map(state.items.map((item) => [item.id, state.cards.get(item.id) || card(item)]));
  state.cards = cards; // the same element for the same image, so re-rendering keeps a half-confirmed delete
  grid.replaceChildren(...cards.values());
  const shown = state.items.length;
  $("#gallery-count").textContent = state.total
    ? `${state.total} image${state.total === 1 ? "" : "s"}${shown < state.total ? `, showing ${shown}` : ""}`
    : "No images yet: generate some, or change the search.";
  $("#gallery-more").hidden = shown >= state.total;
}

function params(item) {
  return { prompt: item.prompt, negative_prompt: item.negative_prompt, model: item.model, seed: item.seed,
    width: item.width, height: item.height, steps: item.steps, sampler: item.sampler, guidance: item.guidance,
    time: item.timings && item.timings.total ? formatSeconds(item.timings.total) : "",
    created: formatDate(item.created_at) };
}

function viewerItems() {
  return state.items.map((item) => ({ url: item.url, name: `sdplay-${item.id}-${item.seed}.png`, params: params(item),
    item }));
}

const actions = [
  { label: "Reuse settings", run: (v) => reuse(v.item) },
  { label: "Send to img2img", run: (v) => sendToImg2Img(v.url) },
  { label: "Delete", danger: true, run: (v) => remove(v.item) },
];

function card(item) {
  const img = el("img", { alt: item.prompt || `Seed ${item.seed}`, loading: "lazy", width: item.width,
    height: item.height, class: item.width && item.width < 256 ? "pixelated" : null });
  api.loadImage(img, item.url).catch(() => img.classList.add("missing"));
  const del = el("button", { type: "button", class: "small danger", title: "Delete this image" }, "Delete");
  del.addEventListener("click", () => confirmDelete(del, item));
  return el("figure", { class: "card gallery-item", dataset: { id: item.id, seed: item.seed } },
    el("button", { type: "button", class: "thumb", title: "Open full size",
      onclick: () => openViewer(viewerItems(), state.items.indexOf(item), actions) }, img),
    el("figcaption", {},
      el("span", { class: "prompt", title: item.prompt }, item.prompt || "(empty prompt)"),
      el("span", { class: "muted" }, `${item.model} · seed ${item.seed}`),
      el("span", { class: "actions" },
        el("button", { type: "button", class: "small", onclick: () => reuse(item) }, "Reuse"), del)));
}

async function sendToImg2Img(url) {
  location.hash = "#generate";
  await useImage(url).catch((err) => notify(err.message, "error"));
  $("#image-panel").open = true;
}

function reuse(item) {
  state.onReuse({ ...item.request, prompt: item.prompt, negative_prompt: item.negative_prompt }, item.seed);
}

/** Two clicks delete: the first asks, the second (within 4 s) deletes. */
function confirmDelete(button, item) {
  if (button.dataset.armed) {
    remove(item);
    return;
  }
  button.dataset.armed = "1";
  button.textContent = "Confirm delete";
  setTimeout(() => {
    delete button.dataset.armed;
    button.textContent = "Delete";
  }, 4000);
}

async function remove(item) {
  try {
    await api.del(`/api/v1/gallery/${item.id}`);
  } catch (err) {
    notify(err.message, "error");
    return false;
  }
  state.items = state.items.filter((other) => other.id !== item.id);
  state.total -= 1;
  render();
  notify("Deleted.");
  return true;
}
