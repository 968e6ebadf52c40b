"""AUTOMATIC1111-compatible API (/sdapi/v1), as clients of A1111 1.9+ call it."""

from __future__ import annotations

import binascii
import json
import sys
import threading
import time
from typing import Any

from fastapi import APIRouter, Body, Depends, Request

from sdplay import __version__
from sdplay.errors import InvalidRequest, ModelNotAvailable
from sdplay.samplers import SCHEDULE_TYPES, a1111_samplers, a1111_split
from sdplay.server.auth import require_a1111_auth
from sdplay.server.blocking import wait_or_cancel
from sdplay.server.deps import get_service
from sdplay.server.jobs import Job, JobStatus
from sdplay.server.schemas_a1111 import (
    Img2ImgRequest,
    MemoryResponse,
    PNGInfoRequest,
    PNGInfoResponse,
    ProgressResponse,
    ProgressState,
    SamplerItem,
    SchedulerItem,
    ScriptsList,
    SDModelItem,
    Txt2ImgRequest,
    Txt2ImgResponse,
)
from sdplay.server.schemas_errors import A1111Error, error_responses
from sdplay.server.service import Service
from sdplay.server.storage import b64, encode_file

router = APIRouter(
    prefix="/sdapi/v1",
    tags=["a1111"],
    dependencies=[Depends(require_a1111_auth)],
    responses=error_responses(A1111Error),
)

MAX_OPTIONS = 200


class A1111State:
    """The options A1111 clients read and write (kept in memory); `sd_model_checkpoint` picks the model."""

    def __init__(self) -> None:
        self.options: dict[str, Any] = {"samples_format": "png", "sd_checkpoint_hash": None, "sd_vae": "Automatic"}
        self.lock = threading.Lock()


def get_state(request: Request) -> A1111State:
    return request.app.state.a1111


def checkpoint_name(title: str | None) -> str | None:
    """'sd-v1-4.safetensors [abc123]' -> 'sd-v1-4' (A1111 titles carry an extension and a hash)."""
    if not title:
        return None
    name = title.split(" [")[0].strip()
    for ext in (".safetensors", ".ckpt"):
        name = name.removesuffix(ext)
    return name


@router.post("/txt2img", response_model=Txt2ImgResponse)
async def txt2img(
    body: Txt2ImgRequest,
    request: Request,
    service: Service = Depends(get_service),
    state: A1111State = Depends(get_state),
) -> Txt2ImgResponse:
    """Generate and wait (hires fix with enable_hr); `info` is a JSON string with seed, all_seeds, infotexts, ..."""
    return await _generate(body, body.model_dump(), request, service, state)


@router.post("/img2img", response_model=Txt2ImgResponse)
async def img2img(
    body: Img2ImgRequest,
    request: Request,
    service: Service = Depends(get_service),
    state: A1111State = Depends(get_state),
) -> Txt2ImgResponse:
    """Image-to-image from init_images[0]; with a mask, inpainting (mask_blur, inpainting_fill, inpaint_full_res,
    inpaint_full_res_padding, inpainting_mask_invert, resize_mode as A1111 has them)."""
    return await _generate(body, body.echoed(), request, service, state)


async def _generate(
    body: Txt2ImgRequest, echoed: dict, request: Request, service: Service, state: A1111State
) -> Txt2ImgResponse:
    model = checkpoint_name(_checkpoint_override(body.override_settings))
    model = model or checkpoint_name(state.options.get("sd_model_checkpoint"))
    job_id, _ = service.submit(body.to_request(model, state.options), "a1111")
    job = service.get(job_id)
    assert job is not None
    await wait_or_cancel(service, job, request)
    if job.status is JobStatus.FAILED and job.error is not None:
        raise job.error
    out = job.output
    images = [b64(encode_file(p)) for p in out.files] if out and body.send_images else []
    return Txt2ImgResponse(images=images, parameters=echoed, info=json.dumps(_info(job, body)))


def _checkpoint_override(overrides: dict[str, Any] | None) -> str | None:
    """override_settings.sd_model_checkpoint: a title string, or nothing."""
    value = (overrides or {}).get("sd_model_checkpoint")
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(
            f"override_settings.sd_model_checkpoint must be a checkpoint title (text), got {type(value).__name__}.",
            field="override_settings.sd_model_checkpoint",
            hint='Use a title from GET /sdapi/v1/sd-models, e.g. "sdplay-emoji".',
        )
    return value


def _info(job: Job, body: Txt2ImgRequest) -> dict[str, Any]:
    """The `info` A1111 returns (Processed.js()), for this job; interrupted jobs have no images."""
    out = job.output
    req = out.request if out else job.request
    seeds = out.seeds if out else []
    sampler, schedule = a1111_split(req.sampler or "")
    n = len(seeds)
    meta = out.metadata if out else {}
    return {
        "prompt": req.prompt, "all_prompts": [req.prompt] * n,
        "negative_prompt": req.negative_prompt, "all_negative_prompts": [req.negative_prompt] * n,
        "seed": seeds[0] if seeds else body.seed, "all_seeds": seeds,
        "subseed": body.subseed, "all_subseeds": [body.subseed] * n, "subseed_strength": body.subseed_strength,
        "width": req.width, "height": req.height, "sampler_name": sampler, "scheduler": schedule,
        "cfg_scale": req.guidance, "steps": req.steps, "batch_size": body.batch_size,
        "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": req.model, "sd_model_hash": None,
        "sd_vae_name": meta.get("vae"), "sd_vae_hash": meta.get("vae_hash"),
        "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": req.strength if req.strength is not None else (req.hires.strength if req.hires else None),
        "extra_generation_params": {"Schedule type": schedule}, "index_of_first_image": 0,
        "infotexts": out.infotexts if out else [], "styles": body.styles or [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created_at)),
        "clip_skip": req.clip_skip or 1, "is_using_inpainting_conditioning": req.task == "inpaint",
        "version": f"sdplay {__version__}",
        "interrupted": job.status is JobStatus.CANCELLED,
    }  # fmt: skip


@router.get("/progress", response_model=ProgressResponse)
def progress(skip_current_image: bool = False, service: Service = Depends(get_service)) -> ProgressResponse:
    """The running job's progress, ETA and live preview (base64 PNG), like A1111's shared state."""
    active = service.active()
    running = sorted(service.running(), key=lambda j: j.started_at or 0)
    if not active:
        return ProgressResponse(progress=0.0, eta_relative=0.0, state=ProgressState())
    job = running[0] if running else None
    if job is None:
        return ProgressResponse(progress=0.0, eta_relative=0.0, state=ProgressState(job_count=len(active)))
    state = ProgressState(
        interrupted=job.cancel_requested, job=f"task({job.id})", job_count=len(active),
        job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(job.created_at)),
        sampling_step=job.step, sampling_steps=job.total_steps,
    )  # fmt: skip
    image = b64(job.preview_png) if job.preview_png and not skip_current_image else None
    return ProgressResponse(progress=job.progress, eta_relative=job.eta_s or 0.0, state=state, current_image=image)


@router.post("/interrupt")
def interrupt(service: Service = Depends(get_service)) -> dict:
    """Stop the running job(s) at their next step; queued jobs still run (as in A1111)."""
    for job in service.running():
        service.cancel(job.id)
    return {}


@router.post("/skip")
def skip(service: Service = Depends(get_service)) -> dict:
    """Like /interrupt: sdplay runs each request as one unit, so skipping it stops it."""
    return interrupt(service)


@router.get("/options")
def get_options(service: Service = Depends(get_service), state: A1111State = Depends(get_state)) -> dict[str, Any]:
    with state.lock:
        options = dict(state.options)
    if not options.get("sd_model_checkpoint"):
        try:
            options["sd_model_checkpoint"] = service.default_model()
        except ModelNotAvailable:
            options["sd_model_checkpoint"] = None
    return options


@router.post("/options")
def set_options(
    body: dict[str, Any] = Body(...), service: Service = Depends(get_service), state: A1111State = Depends(get_state)
) -> None:
    """Set options; `sd_model_checkpoint` switches the model used by later txt2img calls."""
    if "sd_model_checkpoint" in body:
        name = checkpoint_name(str(body["sd_model_checkpoint"]))
        info = service.catalog.find_model(name or "")
        if info is None or not service.usable(info):
            titles = ", ".join(m.name for m in service.usable_models())
            raise ModelNotAvailable(
                f"model {body['sd_model_checkpoint']!r} not found", hint=f"Choose one of: {titles}."
            )
        body = {**body, "sd_model_checkpoint": info.name}
    if "sd_vae" in body:  # an unknown VAE is refused now, listing the close names
        if not isinstance(body["sd_vae"], str):
            raise InvalidRequest("sd_vae must be text.", field="sd_vae", hint="Use a name from GET /sdapi/v1/sd-vae.")
        service.check_vae(body["sd_vae"])
    with state.lock:
        if len(state.options.keys() | body.keys()) > MAX_OPTIONS or any(len(k) > 100 for k in body):
            raise InvalidRequest(f"At most {MAX_OPTIONS} options with names up to 100 characters are kept.")
        state.options.update(body)


@router.get("/sd-models", response_model=list[SDModelItem])
def sd_models(service: Service = Depends(get_service)) -> list[SDModelItem]:
    return [SDModelItem(title=m.name, model_name=m.name, filename=m.name) for m in service.usable_models()]


@router.get("/samplers", response_model=list[SamplerItem])
def samplers(service: Service = Depends(get_service)) -> list[SamplerItem]:
    return [SamplerItem(**item) for item in a1111_samplers(service.catalog.samplers)]


@router.get("/schedulers", response_model=list[SchedulerItem])
def schedulers() -> list[SchedulerItem]:
    return [SchedulerItem(name=name, label=label) for name, label in SCHEDULE_TYPES]


@router.get("/scripts", response_model=ScriptsList)
def scripts() -> ScriptsList:
    return ScriptsList()


@router.post("/png-info", response_model=PNGInfoResponse)
def png_info(body: PNGInfoRequest) -> PNGInfoResponse:
    """The generation parameters stored in a PNG (A1111 `parameters` text and sdplay's JSON)."""
    from sdplay.images import read_png_info

    data = body.image.strip()
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = binascii.a2b_base64(data)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise InvalidRequest(
            "image is not valid base64.", field="image", hint="Send the PNG file base64-encoded."
        ) from exc
    if not raw:
        raise InvalidRequest("image is empty.", field="image", hint="Send a PNG file, base64-encoded.")
    info = read_png_info(raw)  # chunks only, bounded: InvalidRequest (400) or ImageTooLarge (413)
    text = info.get("parameters") or ""
    fields = dict(info.get("fields") or {})
    params = {"Prompt": fields.pop("prompt", ""), "Negative prompt": fields.pop("negative_prompt", ""), **fields}
    if "Size" in params and "x" in str(params["Size"]):
        params["Size-1"], params["Size-2"] = str(params.pop("Size")).split("x", 1)
    items = {"sdplay": info["sdplay"]} if info.get("sdplay") else {}
    return PNGInfoResponse(info=text, items=items, parameters=params if text else {})


@router.get("/memory", response_model=MemoryResponse)
def memory() -> MemoryResponse:
    """System RAM, and CUDA memory when a CUDA device is in use."""
    import psutil

    vm = psutil.virtual_memory()
    ram = {"free": vm.available, "used": vm.total - vm.available, "total": vm.total}
    cuda: dict[str, Any] = {"error": "CUDA is not in use on this server."}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        active = {"current": torch.cuda.memory_allocated(), "peak": torch.cuda.max_memory_allocated()}
        cuda = {"system": {"free": free, "used": total - free, "total": total}, "active": active}
    return MemoryResponse(ram=ram, cuda=cuda)


@router.get("/sd-vae")
def sd_vae(service: Service = Depends(get_service)) -> list[dict[str, str]]:
    """The VAE folder's files and diffusers folders, by the names sd_vae takes ("Automatic"/"None" besides)."""
    return [{"model_name": v.name, "filename": str(v.path)} for v in service.vaes()]


@router.post("/refresh-vae")
def refresh_vae(service: Service = Depends(get_service)) -> None:
    service.refresh_vaes()


@router.get("/upscalers")
def upscalers() -> list[dict[str, Any]]:
    """The pixel upscalers the hires fix offers (Pillow filters; no upscaling networks are installed)."""
    from sdplay.hires import PIXEL_UPSCALERS

    return [{"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4.0 if n != "None" else 1.0}
            for n in PIXEL_UPSCALERS]  # fmt: skip


@router.get("/latent-upscale-modes")
def latent_upscale_modes() -> list[dict[str, str]]:
    """The latent upscalers of the hires fix, under A1111's names."""
    from sdplay.hires import LATENT_UPSCALERS

    return [{"name": n} for n in LATENT_UPSCALERS]


@router.get("/prompt-styles")
def prompt_styles() -> list:
    return []


@router.get("/loras")
def loras(service: Service = Depends(get_service)) -> list:
    """The LoRA folder's files as A1111 lists them (name, alias, path, metadata)."""
    found = service.loras()
    return [{"name": f.name, "alias": f.alias, "path": str(f.path), "metadata": f.metadata} for f in found]


@router.post("/refresh-loras")
def refresh_loras(service: Service = Depends(get_service)) -> None:
    service.refresh_loras()


@router.get("/embeddings")
def embeddings(service: Service = Depends(get_service), state: A1111State = Depends(get_state)) -> dict[str, Any]:
    """The embeddings folder for the current model: those that fit its text encoders are "loaded", the others (and
    files that cannot be read) "skipped", as A1111 lists them."""
    model = checkpoint_name(state.options.get("sd_model_checkpoint"))
    try:
        model = model or service.default_model()
    except ModelNotAvailable:
        model = None
    return service.embeddings(model)


@router.post("/refresh-embeddings")
def refresh_embeddings(service: Service = Depends(get_service)) -> None:
    service.refresh_embeddings()


# -- endpoints A1111 clients call when they connect ------------------------------------------------------------


@router.get("/cmd-flags")
def cmd_flags(request: Request) -> dict[str, Any]:
    """A1111's command-line flags as this server has them (clients check `api`, `listen`, `port`, `nowebui`);
    no secret is ever included."""
    from sdplay.server.settings import is_loopback

    s = request.app.state.settings
    return {
        "api": True, "nowebui": False, "listen": not is_loopback(s.host), "port": s.port, "server_name": s.host,
        "api_auth": None, "api_log": False, "cors_allow_origins": ",".join(s.cors_origins) or None,
        "device_id": None, "ckpt": s.default_model, "ckpt_dir": None, "lora_dir": None, "embeddings_dir": None,
        "hypernetwork_dir": None, "medvram": False, "lowvram": False, "xformers": False, "no_half": False,
        "skip_torch_cuda_test": True, "disable_safe_unpickle": False, "hide_ui_dir_config": True,
        "freeze_settings": False, "enable_insecure_extension_access": False, "gradio_auth": None,
    }  # fmt: skip


@router.get("/face-restorers")
def face_restorers() -> list:
    return []


@router.get("/hypernetworks")
def hypernetworks() -> list:
    return []


@router.get("/realesrgan-models")
def realesrgan_models() -> list:
    return []


@router.post("/refresh-checkpoints")
def refresh_checkpoints(service: Service = Depends(get_service)) -> None:
    """Re-read the checkpoints folder and the model list (they are refreshed after every job as well)."""
    service.refresh_checkpoints()


@router.post("/unload-checkpoint")
def unload_checkpoint() -> dict:
    """Accepted: the worker owns the loaded models and frees the least recently used as needed."""
    return {}


@router.post("/reload-checkpoint")
def reload_checkpoint() -> dict:
    """Accepted: models load on first use by the worker."""
    return {}


internal = APIRouter(prefix="/internal", tags=["a1111"], responses=error_responses(A1111Error))


@internal.get("/ping")
def ping() -> dict:
    """A1111's liveness probe."""
    return {}
