// Entry point: pages by URL hash (#generate, #gallery, #device), the API-key prompt, start-up errors.

import * as api from "./api.js";
import { hideDevice, showDevice } from "./device.js";
import { initGallery, showGallery } from "./gallery.js";
import { initGenerate, reuseSettings } from "./generate.js";
import { initNetworks } from "./networks.js";
import { $, $$, initViewer, notify } from "./ui.js";

const PAGES = ["generate", "gallery", "device"];

function route() {
  const name = PAGES.includes(location.hash.slice(1)) ? location.hash.slice(1) : "generate";
  for (const page of PAGES) $(`#page-${page}`).hidden = page !== name;
  for (const link of $$("nav a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (name === "gallery") showGallery();
  if (name === "device") showDevice();
  else hideDevice();
}

function askForKey(message) {
  const banner = $("#auth");
  $("#auth-message").textContent = message;
  banner.hidden = false;
  $("#api-key").focus();
}

function initAuth() {
  $("#auth").addEventListener("submit", (e) => {
    e.preventDefault();
    api.setApiKey($("#api-key").value.trim());
    location.reload();
  });
}

async function start() {
  initViewer();
  initAuth();
  initGallery((request, seed) => {
    reuseSettings(request, seed);
    location.hash = "#generate";
    notify("Settings copied into the form.");
  });
  window.addEventListener("hashchange", route);
  route();
  try {
    await initGenerate();
    document.body.dataset.ready = "1";
    await initNetworks();
    document.body.dataset.networks = "1";
  } catch (err) {
    if (err.status === 401) askForKey(`${err.message} ${err.hint || ""}`);
    else notify(`Could not load models from the server: ${err.message}`, "error", 0);
  }
}

start();
