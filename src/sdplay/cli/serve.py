"""`sdplay serve`: the HTTP server (native job API, OpenAI images API, A1111 API, gallery)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="run the generation server",
        description="Serve the native job API (/api/v1), OpenAI's /v1/images/generations and A1111's /sdapi/v1. "
        "Every option can also be set as SDPLAY_<NAME> (e.g. SDPLAY_API_KEY); flags win.",
    )
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; others need --api-key)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every API")
    p.add_argument("--api-auth", default=None, help="user:pass[,user2:pass2] for HTTP Basic on /sdapi/v1 (as A1111)")
    p.add_argument("--models-preload", type=_csv, default=None, help="comma-separated models to load at start")
    p.add_argument(
        "--device", type=_csv, default=None, dest="devices", help="device(s), one worker each: auto, cpu, cuda:0,cuda:1"
    )
    p.add_argument(
        "--output-dir", type=Path, default=None, help="where images are written (default ~/.sdplay/server/outputs)"
    )
    p.add_argument(
        "--gallery-db", type=Path, default=None, help="SQLite gallery (default ~/.sdplay/server/gallery.sqlite3)"
    )
    p.add_argument(
        "--input-dir", type=Path, default=None, help="uploaded images, ComfyUI API (default ~/.sdplay/server/inputs)"
    )
    p.add_argument("--default-model", default=None, help="model used when a request names none")
    p.add_argument("--max-queue", type=int, default=None, help="queued jobs before 429 (default 64)")
    p.add_argument("--max-batch", type=int, default=None, help="images per cross-request batch (default 4; 1 = off)")
    p.add_argument("--batch-window-ms", type=float, default=None, help="wait for batch partners (default 50; 0 = off)")
    p.add_argument(
        "--cors-origin", action="append", default=None, dest="cors_origins", help="allowed CORS origin (repeatable)"
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        dest="allowed_hosts",
        help="another Host name this server answers without an API key (repeatable; '*' = any)",
    )
    p.add_argument("--public-url", default=None, help="base of absolute URLs in answers (default: the bound address)")
    p.add_argument("--max-request-s", type=float, default=None, help="time limit of one request (0 = device default)")
    p.add_argument(
        "--max-work", type=int, default=None, help="width*height*steps*images per request (0 = from device speed)"
    )
    p.add_argument("--max-pixels", type=int, default=None, help="width*height per image (0 = device default)")
    p.add_argument(
        "--random-weights",
        action="store_const",
        const=True,
        default=None,
        help="build models with random weights (no downloads)",
    )
    g = p.add_argument_group("loading and memory (as for `sdplay generate`)")
    on = {"action": "store_const", "const": True, "default": None}
    g.add_argument("--no-fast", **on, help="turn the compiled fast path off")
    g.add_argument("--fast-options", default=None, metavar="OPTS", help="fast-path options such as deepcache=3")
    g.add_argument("--attention-slicing", **on, help="less memory, a little slower")
    g.add_argument("--vae-slicing", **on, help="decode one image at a time")
    g.add_argument("--vae-tiling", **on, help="decode large images in tiles")
    g.add_argument("--cpu-offload", **on, help="keep idle components in host memory")
    g.add_argument("--no-safety-checker", action="store_const", const=False, default=None, dest="safety_checker",
                   help="skip the models' safety checkers")  # fmt: skip
    p.add_argument(
        "--lora-dir", default=None, help="LoRA .safetensors folder (default: Lora/ under sdplay's model folder)"
    )
    p.add_argument("--embeddings-dir", default=None, help="textual-inversion folder (default: embeddings/ there)")
    p.add_argument("--vae-dir", default=None, help="VAE files and folders (default: VAE/ there)")
    p.add_argument("--ckpt-dir", default=None, help="more models: checkpoints and diffusers folders (default: "
                   "Stable-diffusion/ there), listed by name")  # fmt: skip
    p.add_argument("--vae", default=None, metavar="FILE", help="VAE of requests that name none (default: the model's)")
    p.add_argument(
        "--allow-pickle",
        action="store_const",
        const=True,
        default=None,
        help="read pickled embeddings and VAEs (.pt/.ckpt/.bin), with torch.load(weights_only=True)",
    )
    from sdplay.server.scaleout.cli import add_arguments

    add_arguments(p)  # --ray and its options
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace):
    """The server settings: defaults, then SDPLAY_* variables, then the flags given (the Ray server uses them too)."""
    from sdplay.server.settings import Settings

    overrides = {name: getattr(args, name) for name in _FLAGS}
    for name in ("cors_origins", "allowed_hosts"):
        if overrides[name] is not None:
            overrides[name] = tuple(overrides[name])
    return Settings.from_env(**overrides).check()  # InvalidRequest -> exit status 2


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)

    from sdplay.server.scaleout.cli import run_ray, wants_ray

    if wants_ray(args):
        return run_ray(args, settings)
    import uvicorn

    from sdplay.accel.runtime import configure_torch
    from sdplay.server.app import create_app

    configure_torch()  # process-wide torch settings, once, before any engine loads a model
    app = create_app(settings)
    print(f"sdplay serving on http://{settings.host}:{settings.port}  (API docs: /docs, guide: docs/api.md)")
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info" if logging.getLogger().isEnabledFor(logging.INFO) else "warning",
        timeout_graceful_shutdown=5,
    )
    return 0


_FLAGS = ("host", "port", "api_key", "api_auth", "models_preload", "devices", "output_dir", "gallery_db", "input_dir",
          "default_model", "max_queue", "max_batch", "batch_window_ms", "cors_origins", "random_weights",
          "allowed_hosts", "public_url", "max_request_s", "max_work", "max_pixels",
          "no_fast", "fast_options", "attention_slicing", "vae_slicing", "vae_tiling", "cpu_offload",
          "safety_checker", "lora_dir", "embeddings_dir", "vae_dir", "vae", "allow_pickle", "ckpt_dir")  # fmt: skip
