"""ComfyUI's HTTP and WebSocket API (`/prompt`, `/ws`, `/history`, `/view`, ...), also under `/api/...`.

A thin dialect: workflow graphs are validated (comfy.graph), planned into sdplay jobs (comfy.plan) and
followed (comfy.runtime); the jobs run on the same queue, workers, limits and gallery as every other API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import sys
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response

from sdplay import __version__
from sdplay.errors import InvalidRequest, SdplayError
from sdplay.server.auth import require_a1111_auth
from sdplay.server.comfy import files, graph, nodes, plan
from sdplay.server.comfy.executors import EXECUTORS
from sdplay.server.comfy.runtime import ComfyPrompt, ComfyState, new_prompt_id
from sdplay.server.deps import get_service
from sdplay.server.errors import QueueFull, Unauthorized
from sdplay.server.schemas_comfy import PROMPT_BODY, PromptAccepted, PromptStatus, QueueView, Uploaded, comfy_responses
from sdplay.server.service import Service

router = APIRouter(tags=["comfyui"], dependencies=[Depends(require_a1111_auth)], responses=comfy_responses())
sockets = APIRouter(tags=["comfyui"])

MAX_PROMPT_ID = 200  # handlers that read the prompt table are async: it lives on the event loop
EMPTY = {200: {"description": "Done (empty body, as ComfyUI answers)", "content": {}}}
IMAGES = {200: {"content": {media: {} for media in ("image/png", "image/jpeg", "image/webp")}}}


def get_state(request: Request) -> ComfyState:
    return request.app.state.comfy


def _choices(service: Service) -> nodes.Choices:
    s = service.settings
    return nodes.Choices(
        checkpoints=[m.name for m in service.usable_models()],
        samplers=list(service.catalog.samplers),
        loras=_lora_names(service),
        inputs=files.input_names(s),
        max_steps=s.max_steps,
        max_side=s.max_side,
        max_images=s.max_images,
    )


def _lora_names(service: Service) -> list[str]:
    """The LoRA files of the engine's LoRA folder, as ComfyUI names them (with the suffix)."""
    try:
        return [f"{f.name}.safetensors" for f in service.loras()]
    except OSError:
        return []


def _resolver(service: Service):
    """Checkpoint names as users type them: aliases, and file names with an extension."""

    def resolve(cls: str, name: str, value: Any) -> Any:
        if name == "lora_name" and isinstance(value, str):
            file = value.removesuffix(".safetensors") + ".safetensors"
            return file if file in _lora_names(service) else None
        if name != "ckpt_name" or not isinstance(value, str):
            return None
        stem = value.rsplit("/", 1)[-1]
        for ext in (".safetensors", ".ckpt", ".pt"):
            stem = stem.removesuffix(ext)
        info = service.catalog.find_model(stem)
        return info.name if info is not None and service.usable(info) else None

    return resolve


def _context(service: Service) -> plan.Context:
    def open_input(name: str) -> bytes:
        try:
            return files.read_input(service.settings, name)
        except files.FileRefused as exc:
            raise InvalidRequest(exc.args[0], field="image") from exc

    return plan.Context(list(service.catalog.samplers), service.plan, open_input, service.find_embedding)


def _refused(err: dict[str, Any], node_errors: dict[str, Any] | None = None, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": err, "node_errors": node_errors or {}}, status_code=status)


def _sdplay_error(exc: SdplayError) -> JSONResponse:
    body = {"error": graph.error(type(exc).__name__, str(exc), exc.hint or ""), "node_errors": {}}
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFull) else {}
    return JSONResponse(body, status_code=exc.status, headers=headers)


# -- prompts ---------------------------------------------------------------------------------
@router.post(
    "/prompt",
    summary="Queue a workflow (API format)",
    response_model=PromptAccepted,
    openapi_extra={"requestBody": PROMPT_BODY},
)
async def post_prompt(request: Request) -> JSONResponse:
    """`{"prompt": {...}, "client_id", "prompt_id", "front", "number", "extra_data"}`; any Content-Type."""
    service, state = get_service(request), get_state(request)
    try:
        body = _strict_json(await request.body())
    except (ValueError, UnicodeError, RecursionError) as exc:
        return _refused(graph.error("invalid_prompt", f"The body is not JSON: {exc}.", 'Send {"prompt": {...}}.'))
    if not isinstance(body, dict) or "prompt" not in body:
        return _refused(graph.error("no_prompt", "No prompt provided", "No prompt provided"))
    prompt_id = body.get("prompt_id") or new_prompt_id()
    if not isinstance(prompt_id, str) or len(prompt_id) > MAX_PROMPT_ID or state.known(prompt_id):
        return _refused(
            graph.error(
                "invalid_prompt",
                "prompt_id must be a new string of at most 200 characters.",
                "Leave it out to get a fresh one.",
            )
        )
    try:
        checked = graph.check(body["prompt"], nodes.table(_choices(service)), _resolver(service))
        planned = await asyncio.to_thread(plan.make_plan, body["prompt"], checked, _context(service), EXECUTORS)
    except graph.PromptRefused as exc:
        return JSONResponse(exc.body(), status_code=400)
    extra = body.get("extra_data") if isinstance(body.get("extra_data"), dict) else {}
    extra = {k: v for k, v in extra.items() if not str(k).startswith("api_key")}
    client_id = body.get("client_id") if isinstance(body.get("client_id"), str) else None
    if client_id:
        extra["client_id"] = client_id
    number = _number(body, state)
    p = ComfyPrompt(prompt_id, number, body["prompt"], extra, checked.outputs, planned, client_id=client_id)
    try:
        _submit(service, p)
    except SdplayError as exc:
        return _sdplay_error(exc)
    state.add(p, service)
    return JSONResponse({"prompt_id": p.id, "number": number, "node_errors": checked.node_errors})


def _strict_json(data: bytes) -> Any:
    """JSON whatever the Content-Type (SillyTavern posts text/plain): no NaN/Infinity, valid Unicode only."""

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    value = json.loads(data, parse_constant=constant)
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # a lone surrogate raises UnicodeEncodeError
    return value


def _number(body: dict[str, Any], state: ComfyState) -> float:
    given = body.get("number")
    number = state.next_number(bool(body.get("front")))
    if isinstance(given, (int, float)) and not isinstance(given, bool):
        return given
    return number


def _png_text(p: ComfyPrompt) -> dict[str, str]:
    """ComfyUI's PNG chunks: the prompt, and each extra_pnginfo entry (the editor's `workflow`)."""
    text = {"prompt": json.dumps(p.graph)}
    pnginfo = p.extra_data.get("extra_pnginfo")
    if isinstance(pnginfo, dict):
        text |= {str(k): json.dumps(v) for k, v in pnginfo.items()}
    return text


def _submit(service: Service, p: ComfyPrompt) -> None:
    """One job per sampler; if one cannot be queued, the ones already queued are cancelled."""
    text = _png_text(p)
    try:
        for sampling in p.plan.samplings:
            job_id, _ = service.submit(sampling.job, "comfyui", png_text=text)
            p.jobs.append(job_id)
    except SdplayError:
        for job_id in p.jobs:
            service.cancel(job_id)
        raise


@router.get("/prompt", summary="Queue status", response_model=PromptStatus)
async def get_prompt(request: Request) -> dict[str, Any]:
    return get_state(request).status()["status"]


@router.get("/queue", summary="Running and pending prompts", response_model=QueueView)
async def get_queue(request: Request) -> dict[str, Any]:
    state = get_state(request)
    return {
        "queue_running": [p.queue_item() for p in state.running()],
        "queue_pending": [p.queue_item() for p in state.pending()],
    }


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


@router.post("/queue", summary="Clear the queue or delete pending prompts", response_class=Response, responses=EMPTY)
async def post_queue(request: Request) -> Response:
    """`{"clear": true}` or `{"delete": [prompt_id, ...]}`: pending prompts are removed, never run."""
    service, state, body = get_service(request), get_state(request), await _json_body(request)
    doomed = state.pending() if body.get("clear") else []
    wanted = body.get("delete") if isinstance(body.get("delete"), list) else []
    doomed += [p for p in state.pending() if p.id in wanted and p not in doomed]
    for p in doomed:
        p.deleted = True
        state.cancel(p, service)
    return Response(status_code=200)


@router.post("/interrupt", summary="Stop the running prompt(s)", response_class=Response, responses=EMPTY)
async def interrupt(request: Request) -> Response:
    """Stops running prompts at their next step; `{"prompt_id": ...}` stops only that one."""
    service, state, body = get_service(request), get_state(request), await _json_body(request)
    target = body.get("prompt_id")
    for p in state.running():
        if target in (None, p.id):
            state.cancel(p, service)
    return Response(status_code=200)


@router.get("/history", summary="Finished prompts")
async def get_history(
    request: Request, max_items: int | None = Query(None, ge=0), offset: int = Query(-1)
) -> dict[str, Any]:
    items = list(get_state(request).history.items())
    if offset < 0 and max_items is not None:
        offset = len(items) - max_items
    items = items[max(0, offset) :]
    return dict(items[:max_items] if max_items is not None else items)


@router.get("/history/{prompt_id}", summary="One finished prompt")
async def get_history_item(prompt_id: str, request: Request) -> dict[str, Any]:
    entry = get_state(request).history.get(prompt_id)
    return {prompt_id: entry} if entry is not None else {}


@router.post("/history", summary="Clear the history or delete entries", response_class=Response, responses=EMPTY)
async def post_history(request: Request) -> Response:
    state, body = get_state(request), await _json_body(request)
    if body.get("clear"):
        state.history.clear()
    for prompt_id in body.get("delete") if isinstance(body.get("delete"), list) else []:
        state.history.pop(str(prompt_id), None)
    return Response(status_code=200)


# -- files -----------------------------------------------------------------------------------
@router.get("/view", summary="An output, temp or input image", response_class=Response, responses=IMAGES)
def view(
    request: Request,
    filename: str = Query(..., max_length=255),
    type: str = Query("output", max_length=16),
    subfolder: str = Query("", max_length=255),
    preview: str | None = Query(None, max_length=32),
    channel: str | None = Query(None, max_length=8),
) -> Response:
    """Never a path outside the server's output and input folders."""
    try:
        path = files.find(get_service(request).settings, type, subfolder, filename)
        data, media = files.render(path, preview, channel)
    except files.FileRefused as exc:
        return _file_refused(exc)
    return Response(data, media_type=media, headers={"Content-Disposition": f'filename="{path.name}"'})


@router.post("/upload/image", summary="Upload an input image (multipart)", response_model=Uploaded)
async def upload_image(
    request: Request,
    image: UploadFile = File(..., description="The image (PNG, JPEG or WebP)."),
    overwrite: str = Form("", max_length=8, description='"true" or "1" replaces a file of the same name.'),
    subfolder: str = Form("", max_length=255),
    type: str = Form("input", max_length=16, description="input or temp"),
) -> JSONResponse:
    """As ComfyUI: a name already taken becomes 'name (1).png' unless `overwrite`; answers {name, subfolder, type}."""
    fields = {"overwrite": overwrite, "subfolder": subfolder, "type": type}
    return await _upload(request, image, fields, mask=False)


@router.post("/upload/mask", summary="Upload a mask onto an uploaded image (multipart)", response_model=Uploaded)
async def upload_mask(
    request: Request,
    image: UploadFile = File(..., description="The mask: its alpha channel becomes the original's alpha."),
    original_ref: str = Form(..., max_length=1000, description="JSON {filename, subfolder, type} of the original."),
    overwrite: str = Form("", max_length=8),
    subfolder: str = Form("", max_length=255),
    type: str = Form("input", max_length=16),
) -> JSONResponse:
    fields = {"overwrite": overwrite, "subfolder": subfolder, "type": type, "original_ref": original_ref}
    return await _upload(request, image, fields, mask=True)


async def _upload(request: Request, image: UploadFile, fields: dict[str, str], mask: bool) -> JSONResponse:
    settings = get_service(request).settings
    try:
        data = await image.read()
        saved = await asyncio.to_thread(files.store_upload, settings, image.filename or "", data, fields, mask)
    except files.FileRefused as exc:
        return _file_refused(exc)
    return JSONResponse(saved)


def _file_refused(exc: files.FileRefused) -> JSONResponse:
    return _refused(graph.error("invalid_file", exc.args[0]), status=exc.status)


# -- descriptions ----------------------------------------------------------------------------
@router.get("/object_info", summary="Every node class this server runs")
def object_info(request: Request) -> dict[str, Any]:
    return {name: spec.info() for name, spec in nodes.table(_choices(get_service(request))).items()}


@router.get("/object_info/{node_class}", summary="One node class")
def object_info_class(node_class: str, request: Request) -> dict[str, Any]:
    spec = nodes.table(_choices(get_service(request))).get(node_class)
    return {node_class: spec.info()} if spec is not None else {}


@router.get("/embeddings", summary="Textual-inversion embeddings")
def embeddings(request: Request) -> list[str]:
    """The embeddings folder's names (sdplay uses an embedding wherever its name is a word of the prompt)."""
    return _addon_names(get_service(request), "embeddings")


def _addon_names(service: Service, folder: str) -> list[str]:
    """The names of one add-on folder as ComfyUI lists them (LoRAs and VAEs with their suffix)."""
    engine = service.engines[0]
    try:
        if folder == "loras":
            return _lora_names(service)
        if folder == "vae":
            return [v.name for v in service.vaes()]
        return engine.embedding_names()
    except OSError:
        return []


MODEL_FOLDERS = ("checkpoints", "loras", "vae", "embeddings", "diffusion_models", "upscale_models")


@router.get("/models", summary="Model folders")
def model_folders() -> list[str]:
    return list(MODEL_FOLDERS)


@router.get("/models/{folder}", summary="Models in one folder", response_model=list[str])
def models_in(folder: str, request: Request) -> Response:
    if folder not in MODEL_FOLDERS:
        message = f"No model folder {folder!r}; folders: {', '.join(MODEL_FOLDERS)}."
        return _refused(graph.error("not_found", message), status=404)
    service = get_service(request)
    if folder == "checkpoints":
        names = [m.name for m in service.usable_models()]
    else:
        names = _addon_names(service, folder) if folder in ("loras", "vae", "embeddings") else []
    return JSONResponse(names)


@router.get("/system_stats", summary="Host and device figures")
def system_stats(request: Request) -> dict[str, Any]:
    import psutil

    service = get_service(request)
    memory = psutil.virtual_memory()
    return {
        "system": {
            "os": os.name,
            "ram_total": memory.total,
            "ram_free": memory.available,
            "comfyui_version": __version__,
            "sdplay_version": __version__,
            "python_version": sys.version,
            "pytorch_version": _torch_version(),
            "embedded_python": False,
            "argv": list(sys.argv),
            "platform": platform.platform(),
        },
        "devices": [_device(d, i) for i, d in enumerate(_devices(service))],
    }


def _torch_version() -> str:
    torch = sys.modules.get("torch")
    return getattr(torch, "__version__", "") if torch is not None else ""


def _devices(service: Service) -> list[str]:
    from sdplay.telemetry.factory import default_device

    return list(dict.fromkeys(default_device() if d == "auto" else d for d in service.settings.devices))


def _device(device: str, index: int) -> dict[str, Any]:
    from sdplay.telemetry.factory import live_figures

    figures = live_figures(device)
    mib = 1024 * 1024
    total = int((figures.get("memory_total_mib") or 0) * mib)
    free = int((figures.get("memory_free_mib") or 0) * mib)
    kind, _, number = device.partition(":")
    return {
        "name": device,
        "type": kind,
        "index": int(number) if number.isdigit() else index,
        "vram_total": total,
        "vram_free": free,
        "torch_vram_total": total,
        "torch_vram_free": free,
        "utilization": figures.get("utilization"),
        "error": figures.get("error"),
    }


@router.post("/free", summary="Unload models and free memory", response_class=Response, responses=EMPTY)
async def free(request: Request) -> Response:
    """`{"unload_models": true}` unloads every model once the running jobs are done (the worker reloads on use)."""
    body = await _json_body(request)
    if body.get("unload_models") or body.get("free_memory"):
        service = get_service(request)
        if not service.running():
            for engine in service.engines:  # every device's engine
                with contextlib.suppress(SdplayError):
                    await asyncio.to_thread(engine.unload, None)
            service.refresh_catalog()
    return Response(status_code=200)


# -- the WebSocket -----------------------------------------------------------------------------
@sockets.websocket("/ws")
async def ws(websocket: WebSocket, clientId: str | None = None) -> None:
    """Messages as ComfyUI sends them: status, execution_start, executing, progress, executed, ... + previews."""
    if not await _ws_allowed(websocket):
        return
    await websocket.accept()
    state: ComfyState = websocket.app.state.comfy
    sid = clientId if clientId and len(clientId) <= MAX_PROMPT_ID else new_prompt_id().replace("-", "")
    client = state.connect(sid, websocket)
    client.send({"type": "status", "data": {**state.status(), "sid": sid}})
    pump = asyncio.create_task(client.pump())
    try:
        while True:
            await websocket.receive_text()  # ComfyUI's clients may send feature flags; nothing to answer
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        state.disconnect(client)
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump


async def _ws_allowed(websocket: WebSocket) -> bool:
    """Same credentials as the HTTP routes; a browser page from another origin is refused (as ComfyUI does)."""
    try:
        await require_a1111_auth(websocket)  # type: ignore[arg-type]
    except Unauthorized:
        await websocket.close(code=1008, reason="Missing or wrong credentials.")
        return False
    origin = websocket.headers.get("origin")
    if origin and not _same_origin(origin, websocket.headers.get("host", ""), websocket.app.state.settings):
        await websocket.close(code=1008, reason="Cross-origin WebSocket refused.")
        return False
    return True


def _same_origin(origin: str, host: str, settings) -> bool:
    if origin in settings.cors_origins:
        return True
    return origin.split("://", 1)[-1].rstrip("/").lower() == host.lower()
