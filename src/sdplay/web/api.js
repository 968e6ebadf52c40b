// The server's HTTP API: JSON requests, readable errors, server-sent events over fetch, authorised images.

const KEY_STORE = "sdplay.apiKey";

/** An error the server (or the network) reported, with the field at fault when the server named one. */
export class ApiError extends Error {
  constructor(message, { status = 0, type = "Error", field = null, hint = null } = {}) {
    super(message);
    this.status = status;
    this.type = type;
    this.field = field;
    this.hint = hint;
  }
}

export function apiKey() {
  return localStorage.getItem(KEY_STORE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORE, key);
  else localStorage.removeItem(KEY_STORE);
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

/** Turn an error response into an ApiError; the native API's body is {error: {type, message, field, hint}}. */
async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: fall through to the status line
  }
  const err = body && typeof body.error === "object" ? body.error : null;
  if (err) {
    return new ApiError(err.message || response.statusText, {
      status: response.status, type: err.type, field: err.field, hint: err.hint,
    });
  }
  if (body && typeof body.detail === "string") { // the A1111 API's {error, detail, body, errors}
    return new ApiError(body.detail, { status: response.status, type: String(body.error || "Error") });
  }
  return new ApiError(`The server answered ${response.status} ${response.statusText}.`, { status: response.status });
}

async function send(method, path, body, signal, credentials = "same-origin") {
  const init = {
    method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }), signal, credentials,
  };
  if (body !== undefined) init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(path, init);
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError("Cannot reach the sdplay server. Is `sdplay serve` still running?", { type: "NetworkError" });
  }
  if (!response.ok) throw await errorOf(response);
  if (response.status === 204) return null;
  return response.json();
}

export const get = (path, signal) => send("GET", path, undefined, signal);
export const post = (path, body = {}) => send("POST", path, body);
export const del = (path) => send("DELETE", path);

/** The A1111 API (/sdapi/v1/...), which the page reads for what the native API does not list (LoRAs,
 * embeddings). Without browser credentials: a server with --api-auth answers 401 with a Basic challenge, and
 * that must come back as an error here rather than as the browser's password dialog. */
export const a1111 = {
  get: (path) => send("GET", `/sdapi/v1/${path}`, undefined, undefined, "omit"),
  post: (path, body = {}) => send("POST", `/sdapi/v1/${path}`, body, undefined, "omit"),
};

/** Read a server-sent event stream, calling onEvent(name, data) for each event; resolves when it ends. */
export async function streamEvents(path, onEvent, signal) {
  let response;
  try {
    response = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError("Lost the connection to the server.", { type: "NetworkError" });
  }
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const parsed = parseBlock(block);
      if (parsed) onEvent(parsed.event, parsed.data);
    }
  }
}

function parseBlock(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue; // keep-alive comment
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  if (!data.length) return null;
  try {
    return { event, data: JSON.parse(data.join("\n")) };
  } catch {
    return null;
  }
}

/** Show the image at `url` in `img`: directly, or fetched with the API key when the server needs one. */
export async function loadImage(img, url) {
  if (!apiKey()) {
    img.src = url;
    return;
  }
  const response = await fetch(url, { headers: headers() });
  if (!response.ok) throw await errorOf(response);
  img.src = URL.createObjectURL(await response.blob());
}
