// Images in: an init image (dropped, chosen, or sent from a result or the gallery), a mask painted over it with a
// brush (size, eraser, invert, clear), denoising strength, canvas extension for outpainting, and the hires fix.

import * as api from "./api.js";
import { $, notify } from "./ui.js";

const state = { dataUrl: null, width: 0, height: 0, drawing: false, last: null, painted: false };

const canvas = () => $("#mask-canvas");

/** Wire the image panel of the form. */
export function initImageIn() {
  const drop = $("#init-drop");
  $("#init-file").addEventListener("change", (e) => e.target.files[0] && readFile(e.target.files[0]));
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) readFile(file);
  });
  $("#init-remove").addEventListener("click", removeImage);
  $("#mask-clear").addEventListener("click", clearMask);
  $("#mask-invert").addEventListener("click", invertMask);
  $("#strength").addEventListener("input", () => ($("#strength-value").textContent = $("#strength").value));
  $("#hires").addEventListener("change", () => ($("#hires-options").hidden = !$("#hires").checked));
  const c = canvas();
  c.addEventListener("pointerdown", (e) => {
    state.drawing = true;
    state.last = point(e);
    c.setPointerCapture(e.pointerId);
    stroke(state.last, state.last);
  });
  c.addEventListener("pointermove", (e) => {
    if (!state.drawing) return;
    const p = point(e);
    stroke(state.last, p);
    state.last = p;
  });
  const stop = () => (state.drawing = false);
  c.addEventListener("pointerup", stop);
  c.addEventListener("pointercancel", stop);
}

function readFile(file) {
  if (!["image/png", "image/jpeg", "image/webp"].includes(file.type)) {
    notify("Choose a PNG, JPEG or WebP image.", "error");
    return;
  }
  const reader = new FileReader();
  reader.onload = () => setImage(reader.result);
  reader.readAsDataURL(file);
}

/** Use an image (a data: URL or a server URL) as the init image. */
export async function useImage(url) {
  if (url.startsWith("data:")) return setImage(url);
  const img = new Image();
  await api.loadImage(img, url);
  await img.decode();
  const c = document.createElement("canvas");
  [c.width, c.height] = [img.naturalWidth, img.naturalHeight];
  c.getContext("2d").drawImage(img, 0, 0);
  setImage(c.toDataURL("image/png"));
  notify("Image set as the init image: paint a mask to inpaint, or set the strength.");
}

async function setImage(dataUrl) {
  const img = $("#init-preview");
  img.src = dataUrl;
  await img.decode();
  state.dataUrl = dataUrl;
  [state.width, state.height] = [img.naturalWidth, img.naturalHeight];
  const c = canvas();
  [c.width, c.height] = [state.width, state.height];
  clearMask();
  $("#init-editor").hidden = false;
  $("#init-size").textContent = `${state.width}×${state.height}`;
}

function removeImage() {
  state.dataUrl = null;
  $("#init-editor").hidden = true;
  $("#init-file").value = "";
}

function point(e) {
  const c = canvas();
  const box = c.getBoundingClientRect();
  return { x: ((e.clientX - box.left) / box.width) * c.width, y: ((e.clientY - box.top) / box.height) * c.height };
}

function stroke(a, b) {
  const ctx = canvas().getContext("2d");
  const scale = canvas().width / canvas().getBoundingClientRect().width;
  ctx.globalCompositeOperation = $("#mask-eraser").checked ? "destination-out" : "source-over";
  ctx.strokeStyle = ctx.fillStyle = "#fff";
  ctx.lineCap = "round";
  ctx.lineWidth = Number($("#brush-size").value) * scale;
  ctx.beginPath();
  ctx.moveTo(a.x, a.y);
  ctx.lineTo(b.x, b.y);
  ctx.stroke();
  state.painted = true;
}

function clearMask() {
  canvas().getContext("2d").clearRect(0, 0, canvas().width, canvas().height);
  state.painted = false;
}

function invertMask() {
  const ctx = canvas().getContext("2d");
  const data = ctx.getImageData(0, 0, canvas().width, canvas().height);
  for (let i = 0; i < data.data.length; i += 4) {
    data.data[i] = data.data[i + 1] = data.data[i + 2] = 255;
    data.data[i + 3] = 255 - data.data[i + 3];
  }
  ctx.putImageData(data, 0, 0);
  state.painted = true;
}

/** The mask as a PNG data URL: white where painted, black elsewhere; null if nothing is painted. */
function maskDataUrl() {
  const ctx = canvas().getContext("2d");
  const { data } = ctx.getImageData(0, 0, canvas().width, canvas().height);
  if (!state.painted || !data.some((v, i) => i % 4 === 3 && v > 0)) return null;
  const out = document.createElement("canvas");
  [out.width, out.height] = [canvas().width, canvas().height];
  const o = out.getContext("2d");
  o.fillStyle = "#000";
  o.fillRect(0, 0, out.width, out.height);
  o.drawImage(canvas(), 0, 0);
  return out.toDataURL("image/png");
}

const int = (id) => Math.max(0, Math.round(Number($(id).value) || 0));

/** The job fields of the image panel (merged into the job body). */
export function imageFields() {
  const fields = {};
  if ($("#hires").checked && !state.dataUrl) {
    fields.hires = { scale: Number($("#hires-scale").value) || 2, strength: Number($("#hires-strength").value) };
  }
  if (!state.dataUrl) return fields;
  fields.init_image = state.dataUrl;
  fields.strength = Number($("#strength").value);
  const mask = maskDataUrl();
  if (mask) {
    fields.mask = mask;
    fields.mask_blur = int("#mask-blur");
  }
  const outpaint = { left: int("#out-left"), right: int("#out-right"), top: int("#out-top"), bottom: int("#out-bottom") };
  if (Object.values(outpaint).some((v) => v > 0)) fields.outpaint = outpaint;
  return fields;
}

/** The working size for an init image: its own (multiples of 8), extended by outpainting. */
export function imageSize() {
  if (!state.dataUrl) return null;
  const w = state.width + int("#out-left") + int("#out-right");
  const h = state.height + int("#out-top") + int("#out-bottom");
  return [Math.max(8, Math.floor(w / 8) * 8), Math.max(8, Math.floor(h / 8) * 8)];
}
