// Editing the prompt boxes as A1111's UI does: Ctrl+Up / Ctrl+Down change the emphasis of the selection (or of
// the word under the caret), and extra-network tags go in at the caret. The edits are pure functions of
// (text, selection) -> {text, start, end}; applyEdit puts one into a textarea, keeping the undo history.
// The file is not called prompt….js: the server keeps paths starting with /prompt for the ComfyUI API.

export const ATTENTION_STEP = 0.1; // (word:1.1) -> (word:1.2)
export const EXTRA_STEP = 0.05; // <lora:name:1> -> <lora:name:1.05>
const DELIMITERS = ".,\\/!?%^*;:{}=`~() \t\r\n"; // what ends "the word under the caret"
const NUMBER = /^[+-]?(?:\d+\.?\d*|\.\d+)$/;

/** Whether text[i] is escaped by an odd number of backslashes (`\(` is a literal parenthesis). */
function escaped(text, i) {
  let n = 0;
  while (i - n > 0 && text[i - n - 1] === "\\") n += 1;
  return n % 2 === 1;
}

/** [open, close]: the indices of the innermost unmatched `open` before `at` and its `close` after it, or null. */
function enclosing(text, at, open, close) {
  const scan = (from, to, step, inward, outward) => {
    let depth = 0;
    for (let i = from; i !== to; i += step) {
      const c = text[i];
      if ((c !== inward && c !== outward) || escaped(text, i)) continue;
      if (c === inward) depth += 1;
      else if (depth === 0) return i;
      else depth -= 1;
    }
    return -1;
  };
  const left = scan(at - 1, -1, -1, close, open);
  if (left < 0) return null;
  const right = scan(at, text.length, 1, open, close);
  return right < 0 ? null : [left, right];
}

/** The weight of a group `open + text[start:end] + ":" + number + close`: {from, to, value} of the number. */
function weightOf(text, start, end, open, close) {
  if (start < 1 || text[start - 1] !== open || escaped(text, start - 1) || text[end] !== ":") return null;
  const to = text.indexOf(close, end + 1);
  if (to < 0) return null;
  const raw = text.slice(end + 1, to).trim();
  return NUMBER.test(raw) ? { from: end + 1, to, value: Number(raw) } : null;
}

/** What Ctrl+Up/Down acts on with no selection: the text of the `<tag:…:w>` or `(text:w)` around the caret,
 * else the word under it. [start, end], or null when there is nothing there. */
function caretTarget(text, at) {
  for (const [open, close] of [["<", ">"], ["(", ")"]]) {
    const group = enclosing(text, at, open, close);
    if (!group) continue;
    const colon = text.lastIndexOf(":", group[1]);
    if (colon > group[0] && weightOf(text, group[0] + 1, colon, open, close)) return [group[0] + 1, colon];
    if (open === "<") return null; // inside a tag without a multiplier: nothing to change
  }
  let start = at;
  let end = at;
  while (start > 0 && !DELIMITERS.includes(text[start - 1])) start -= 1;
  while (end < text.length && !DELIMITERS.includes(text[end])) end += 1;
  return start < end ? [start, end] : null;
}

/** A weight as A1111 writes it: 12 significant digits, and at least one decimal ("1.0", "0.9", "1.15"). */
export function formatWeight(value) {
  const rounded = Number(value.toPrecision(12)) || 0; // `|| 0`: no "-0"
  return Number.isInteger(rounded) ? rounded.toFixed(1) : String(rounded);
}

/**
 * Ctrl+Up (`up`) or Ctrl+Down on text with the selection [start, end):
 * - the text of a `(text:w)` group: w ± 0.1, and at 1.0 the parentheses and weight go;
 * - the name part of an extra-network tag `<lora:name:w>`: w ± 0.05 (the tag stays at 1.0);
 * - any other text: wrapped as `(text:1.1)` or `(text:0.9)`;
 * - no selection: the group or tag around the caret, else the word under it.
 * Returns {text, start, end} with the selection still on the same text, or null when nothing changes.
 */
export function editAttention(text, start, end, up) {
  const target = start === end ? caretTarget(text, start) : [start, end];
  if (!target) return null;
  let [s, e] = target;
  const tag = weightOf(text, s, e, "<", ">");
  if (tag) return reweigh(text, s, e, tag, up ? EXTRA_STEP : -EXTRA_STEP, false);
  if (text[s - 1] === "<") return null; // part of a tag that is not its multiplier: leave the tag whole
  const group = weightOf(text, s, e, "(", ")");
  if (group) return reweigh(text, s, e, group, up ? ATTENTION_STEP : -ATTENTION_STEP, true);
  while (s < e && /\s/.test(text[s])) s += 1;
  while (e > s && /\s/.test(text[e - 1])) e -= 1;
  if (s === e) return null;
  const weight = formatWeight(1 + (up ? ATTENTION_STEP : -ATTENTION_STEP));
  return { text: `${text.slice(0, s)}(${text.slice(s, e)}:${weight})${text.slice(e)}`, start: s + 1, end: e + 1 };
}

function reweigh(text, s, e, found, delta, dropAtOne) {
  const weight = formatWeight(found.value + delta);
  if (dropAtOne && weight === "1.0") {
    return { text: text.slice(0, s - 1) + text.slice(s, e) + text.slice(found.to + 1), start: s - 1, end: e - 1 };
  }
  return { text: text.slice(0, found.from) + weight + text.slice(found.to), start: s, end: e };
}

// -- extra-network tags and names --------------------------------------------------------------------

const escapeRegExp = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
const loraTags = (name) => new RegExp(`<lora:${escapeRegExp(name)}(?::[^>]*)?>`, "g");

/** The tag a LoRA card inserts (A1111's default multiplier is 1). */
export const loraTag = (name) => `<lora:${name}:1>`;

/** Whether the text names the LoRA in a `<lora:name…>` tag, with any multiplier. */
export const hasLora = (text, name) => loraTags(name).test(text);

/** `snippet` inserted at `at`, with a space on either side where it would touch other text; the caret after it. */
export function insertAt(text, at, snippet) {
  const before = text.slice(0, at);
  const after = text.slice(at);
  const head = `${before}${before && !/\s$/.test(before) ? " " : ""}${snippet}`;
  const tail = after && !/^\s/.test(after) ? ` ${after}` : after;
  return { text: head + tail, start: head.length, end: head.length };
}

/** Every `<lora:name…>` tag removed with the blank before it (or after it, at the start of a line). */
export function removeLora(text, name) {
  let out = text;
  let caret = text.length;
  for (const match of [...text.matchAll(loraTags(name))].reverse()) {
    let s = match.index;
    let e = s + match[0].length;
    if (s > 0 && /[ \t]/.test(out[s - 1])) while (s > 0 && /[ \t]/.test(out[s - 1])) s -= 1;
    else while (e < out.length && /[ \t]/.test(out[e])) e += 1;
    out = out.slice(0, s) + out.slice(e);
    caret = s;
  }
  return { text: out, start: caret, end: caret };
}

/** A LoRA card's click: remove the LoRA's tags when the text has one (as A1111 does), else insert its tag at `at`. */
export function toggleLora(text, name, at) {
  return hasLora(text, name) ? removeLora(text, name) : insertAt(text, at, loraTag(name));
}

// -- textareas ---------------------------------------------------------------------------------------

/** Put an edit into a textarea: only the changed span is replaced, through the browser's editing command
 * where it has one (so Ctrl+Z undoes it); then the edit's selection. An `input` event follows either way. */
export function applyEdit(box, edit) {
  const old = box.value;
  if (edit.text !== old) {
    let head = 0;
    while (head < old.length && head < edit.text.length && old[head] === edit.text[head]) head += 1;
    let tail = 0;
    const room = Math.min(old.length, edit.text.length) - head;
    while (tail < room && old[old.length - 1 - tail] === edit.text[edit.text.length - 1 - tail]) tail += 1;
    const insert = edit.text.slice(head, edit.text.length - tail);
    box.focus({ preventScroll: true });
    box.setSelectionRange(head, old.length - tail);
    let done = false;
    try {
      done = document.execCommand(insert ? "insertText" : "delete", false, insert);
    } catch {
      done = false;
    }
    if (!done || box.value !== edit.text) {
      box.value = edit.text;
      box.dispatchEvent(new Event("input", { bubbles: true }));
    }
  }
  box.setSelectionRange(edit.start, edit.end);
}

/** Ctrl+Up / Ctrl+Down (⌘ on a Mac) in a prompt box. */
function onKeydown(event) {
  if (!(event.ctrlKey || event.metaKey) || event.altKey || event.shiftKey) return;
  if (event.key !== "ArrowUp" && event.key !== "ArrowDown") return;
  event.preventDefault();
  const box = event.currentTarget;
  const edit = editAttention(box.value, box.selectionStart, box.selectionEnd, event.key === "ArrowUp");
  if (edit) applyEdit(box, edit);
}

/** Wire Ctrl+Up / Ctrl+Down into the given textareas. */
export function initPromptEditing(boxes) {
  for (const box of boxes) box.addEventListener("keydown", onKeydown);
}
