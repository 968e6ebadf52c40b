// LoRAs and embeddings (A1111's "Extra networks"): the server's lists as cards with a filter and Refresh. A LoRA
// card puts `<lora:name:1>` at the caret of the prompt, or takes the LoRA's tag out when the prompt has one; an
// embedding card puts its name at the caret of the prompt box used last (prompt or negative prompt).

import * as api from "./api.js";
import { applyEdit, hasLora, insertAt, loraTag, toggleLora } from "./textedit.js";
import { $, $$, el, notify } from "./ui.js";

const state = { loras: [], embeddings: [], last: null, used: new WeakSet(), editing: false };

const prompt = () => $("#prompt");

/** Wire the panel and read both lists; a server without them leaves the panel empty with a note. */
export async function initNetworks() {
  for (const box of [prompt(), $("#negative_prompt")]) {
    box.addEventListener("focus", () => {
      if (state.editing) return; // a card's edit, not the user's choice of box
      state.last = box;
      state.used.add(box);
    });
  }
  prompt().addEventListener("input", markUsed);
  $("#networks-filter").addEventListener("input", filter);
  $("#networks-refresh").addEventListener("click", () => load(true));
  const tabs = $$("#networks [role=tab]");
  for (const tab of tabs) {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (e) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
      if (!step) return;
      const next = tabs[(tabs.indexOf(tab) + step + tabs.length) % tabs.length];
      selectTab(next);
      next.focus();
    });
  }
  await load(false);
}

function selectTab(chosen) {
  for (const tab of $$("#networks [role=tab]")) {
    const on = tab === chosen;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`#${tab.getAttribute("aria-controls")}`).hidden = !on;
  }
}

// -- the lists ---------------------------------------------------------------------------------------

/** Read the lists (after asking the server to scan its folders again when `refresh`) and show them. */
async function load(refresh) {
  const button = $("#networks-refresh");
  button.disabled = true;
  try {
    if (refresh) {
      await Promise.all([api.a1111.post("refresh-loras"), api.a1111.post("refresh-embeddings").catch(absent)]);
    }
    const [loras, embeddings] = await Promise.all([
      api.a1111.get("loras"),
      api.a1111.get("embeddings").catch(absent),
    ]);
    state.loras = Array.isArray(loras) ? loras : [];
    state.embeddings = embeddingList(embeddings);
    render();
    if (refresh) notify(`${count(state.loras.length, "LoRA")}, ${count(state.embeddings.length, "embedding")}.`);
  } catch (err) {
    notify(`Could not read the LoRA and embedding lists from the server's A1111 API: ${err.message}`, "error", 0);
  } finally {
    button.disabled = false;
  }
}

/** An endpoint this server does not have answers as an empty list. */
function absent(err) {
  if (err.status === 404 || err.status === 405) return null;
  throw err;
}

const count = (n, what) => `${n} ${what}${n === 1 ? "" : "s"}`;

/** A1111's {loaded: {name: {step, sd_checkpoint, sd_checkpoint_name, shape, vectors}}, skipped: {...}} as a
 * list; skipped embeddings (made for another model) are listed too, marked. */
function embeddingList(body) {
  const list = [];
  for (const [group, skipped] of [["loaded", false], ["skipped", true]]) {
    const entries = body && typeof body[group] === "object" && body[group] ? Object.entries(body[group]) : [];
    for (const [name, info] of entries) list.push({ name, ...(info || {}), skipped });
  }
  return list.sort((a, b) => a.skipped - b.skipped || a.name.localeCompare(b.name));
}

function render() {
  const loras = state.loras.map((lora) => {
    const alias = lora.alias && lora.alias !== lora.name ? lora.alias : "";
    return card({
      name: lora.name,
      label: `LoRA ${lora.name}`,
      detail: alias,
      search: [lora.name, alias, lora.path],
      title: `${lora.path || lora.name}\nInserts ${loraTag(lora.name)}; a second click removes it.`,
      onclick: (e) => useLora(lora.name, e.currentTarget),
    });
  });
  const embeddings = state.embeddings.map((emb) => {
    const vectors = Number.isFinite(emb.vectors) ? count(emb.vectors, "vector") : "";
    const detail = [vectors, emb.skipped ? "not for this model" : ""].filter(Boolean).join(" · ");
    return card({
      name: emb.name,
      label: `Embedding ${emb.name}`,
      detail,
      search: [emb.name, emb.sd_checkpoint_name],
      title: emb.skipped
        ? `${emb.name} was made for another model (${emb.sd_checkpoint_name || "unknown"}); the server skips it.`
        : `Inserts ${emb.name}${emb.shape ? ` (${emb.shape} wide)` : ""}.`,
      disabled: emb.skipped,
      onclick: (e) => useEmbedding(emb.name, e.currentTarget),
    });
  });
  fill($("#panel-loras"), loras, "No LoRA files on the server. Put .safetensors files in its LoRA folder "
    + "(sdplay serve --lora-dir DIR) and press Refresh.");
  fill($("#panel-embeddings"), embeddings, "No embeddings on the server. Put them in its embeddings folder "
    + "and press Refresh.");
  $("#tab-loras .count").textContent = `(${state.loras.length})`;
  $("#tab-embeddings .count").textContent = `(${state.embeddings.length})`;
  $("#networks-count").textContent = `(${state.loras.length + state.embeddings.length})`;
  markUsed();
  filter();
}

function card({ name, label, detail, search, title, disabled = false, onclick }) {
  return el("button", {
    type: "button", class: "network-card", "aria-label": label, title, disabled,
    dataset: { name, search: search.filter(Boolean).join("\n").toLowerCase() }, onclick,
  }, el("span", { class: "name" }, name), detail ? el("span", { class: "detail muted" }, detail) : null);
}

function fill(panel, cards, emptyText) {
  $(".network-cards", panel).replaceChildren(...cards);
  const empty = $(".empty", panel);
  empty.dataset.none = emptyText;
  empty.textContent = emptyText;
  empty.hidden = cards.length > 0;
}

/** Show the cards whose name (or alias, path) contains the filter text, in both panels. */
function filter() {
  const text = $("#networks-filter").value.trim().toLowerCase();
  for (const panel of $$("#networks .network-panel")) {
    const cards = $$(".network-card", panel);
    let shown = 0;
    for (const c of cards) {
      c.hidden = Boolean(text) && !c.dataset.search.includes(text);
      shown += c.hidden ? 0 : 1;
    }
    const empty = $(".empty", panel);
    empty.textContent = cards.length ? `Nothing matches “${text}”.` : empty.dataset.none;
    empty.hidden = shown > 0;
  }
}

/** A LoRA card is pressed while the prompt has the LoRA's tag. */
function markUsed() {
  const text = prompt().value;
  for (const c of $$("#panel-loras .network-card")) c.setAttribute("aria-pressed", String(hasLora(text, c.dataset.name)));
}

// -- into the prompt ---------------------------------------------------------------------------------

/** Where a click inserts in `box`: its caret once it has been used, else the end of its text. */
function caret(box) {
  return state.used.has(box) ? box.selectionEnd : box.value.length;
}

/** Edit a prompt box from a card without taking the focus away from the card. */
function editFrom(button, box, edit) {
  state.editing = true;
  try {
    applyEdit(box, edit);
  } finally {
    state.editing = false;
  }
  state.used.add(box);
  button.focus({ preventScroll: true });
}

function useLora(name, button) {
  // LoRA tags work in the positive prompt only (the negative prompt would read them as words), as in A1111
  const box = prompt();
  editFrom(button, box, toggleLora(box.value, name, caret(box)));
}

function useEmbedding(name, button) {
  const box = state.last || prompt();
  editFrom(button, box, insertAt(box.value, caret(box), name));
}
