"""The fast path: fused projections, regional torch.compile with a persistent cache, and CUDA graphs per step."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from sdplay.catalog import Family
from sdplay.devices import DeviceInfo
from sdplay.errors import InvalidRequest
from sdplay.fastgraphs import GraphedForward, SharedPool, cuda_recorder, install

log = logging.getLogger(__name__)

ENV = "SDPLAY_FAST"  # e.g. "compile=none,vae=off": overrides FastConfig fields, for benchmarks and experiments
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class FastConfig:
    """Which accelerations to apply; the defaults are the ones measured to help on an H100 (docs/benchmarks.md)."""

    compile: str = "regional"  # "regional": repeated blocks only; "full": the whole UNet; "none"
    regions: tuple[str, ...] = ("BasicTransformerBlock",)  # classes compiled by "regional"
    dynamic: bool | None = True  # symbolic shapes: a new size or batch reuses the compiled blocks
    backend: str = "inductor"
    graphs: bool = True  # one CUDA graph per input signature of each graphed module
    fuse_qkv: bool = True  # one projection for query, key and value (shared storage, no extra memory)
    vae: str = "off"  # "compile" (regional ResnetBlock2D + graph), "graph", "off": graphs gave no speed, much memory
    vae_channels_last: bool = False  # measured slower on an H100 (GroupNorm and upsampling at full resolution)
    text: str = "graph"  # "graph" or "off" for the text encoders
    host_timesteps: bool = True  # scheduler arithmetic on the host: no device sync per step
    max_graphs: int = 8  # signatures kept per module (least recently used dropped)

    @classmethod
    def parse(cls, text: str | None, base: FastConfig | None = None) -> FastConfig:
        """'compile=none,vae=off,regions=BasicTransformerBlock+ResnetBlock2D' on top of `base`."""
        cfg = base or cls()
        if not text:
            return cfg
        kinds = {f.name: f.type for f in fields(cls)}
        changes: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = part.partition("=")
            name = name.strip().replace("-", "_")
            if name not in kinds:
                raise InvalidRequest(f"Unknown fast-path option {name!r} in {ENV}.", hint=f"Use: {', '.join(kinds)}.")
            changes[name] = _value(kinds[name], value.strip())
        return replace(cfg, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _value(kind: str, value: str) -> Any:
    low = value.lower()
    if "tuple" in kind:
        return tuple(v for v in value.split("+") if v)
    if "bool" in kind:
        if low in ("none", "auto", "") and "None" in kind:
            return None
        return low in ("1", "true", "yes", "on")
    return int(value) if kind == "int" else value


@dataclass
class FastPath:
    """Handles to what the fast path installed on one pipeline (kept as `pipe.sdplay_fast`)."""

    config: FastConfig
    graphed: dict[str, GraphedForward]
    pool: SharedPool

    def prepare_scheduler(self, scheduler: Any) -> Any:
        """Keep a fresh scheduler's timesteps on the host, so its step needs no device sync."""
        if self.config.host_timesteps and "unet" in self.graphed:
            host_timesteps(scheduler)
        return scheduler

    def stats(self) -> dict[str, Any]:
        return {name: g.stats.to_dict() for name, g in self.graphed.items()}

    def reset(self) -> None:
        """Forget every captured graph (call after replacing weights with new tensors)."""
        for g in self.graphed.values():
            g.reset()


def apply_fast_path(pipe: Any, device: DeviceInfo, opts: Any, family: Family) -> str | dict[str, Any]:
    """Apply the fast path where it is supported: on by default on CUDA, off elsewhere unless asked for."""
    if device.kind != "cuda" and opts.fast is not True:
        return f"off (not measured to help on {device.kind})"
    config = FastConfig.parse(os.environ.get(ENV))
    if device.kind != "cuda":
        config = replace(config, graphs=False, host_timesteps=False)
    return accelerate(pipe, device, config, family=family)


def accelerate(
    pipe: Any, device: DeviceInfo, config: FastConfig, recorder: Any = None, family: Family | None = None
) -> dict[str, Any]:
    """Install the fast path on a pipeline already on its device; returns the choices made."""
    import torch

    # 1. Fused query/key/value projections; the VAE's memory layout and dtype.
    choices: dict[str, Any] = {"fused_qkv": fuse_qkv(pipe) if config.fuse_qkv else []}
    layout = torch.channels_last if config.vae_channels_last else torch.contiguous_format
    pipe.vae.to(memory_format=layout)
    choices["vae_dtype"] = str(pipe.vae.dtype).removeprefix("torch.")
    # 2. torch.compile over repeated blocks, cached on disk across restarts.
    if config.compile != "none" or config.vae == "compile":
        choices["compile_cache"] = str(compile_cache_dir())
    choices["compiled"] = compile_modules(pipe, config)
    # 3. CUDA graphs around each module's forward, all drawing on one memory pool.
    pool = SharedPool()
    graphed: dict[str, GraphedForward] = {}
    if config.graphs:
        rec = recorder or cuda_recorder()
        targets = [("unet", pipe.unet)]
        if config.vae != "off":
            targets.append(("vae.decoder", pipe.vae.decoder))
        if config.text == "graph":
            targets += [(n, getattr(pipe, n)) for n in TEXT_ENCODERS if getattr(pipe, n, None) is not None]
        for name, module in targets:
            graphed[name] = install(module, device.id, rec, config.max_graphs, pool)
    choices["cuda_graphs"] = sorted(graphed)
    choices["host_timesteps"] = bool(config.host_timesteps and "unet" in graphed)
    pipe.sdplay_fast = FastPath(config, graphed, pool)
    choices["config"] = config.to_dict()
    return choices


def fuse_qkv(pipe: Any) -> list[str]:
    """Fuse attention projections of the UNet and VAE; the old projections become views of the fused weight."""
    import torch
    from diffusers.models.attention_processor import Attention

    done = []
    for name in ("unet", "vae"):
        model = getattr(pipe, name, None)
        attn = [m for m in model.modules() if isinstance(m, Attention)] if model is not None else []
        if not attn or any(getattr(m, "add_k_proj", None) is not None for m in attn):
            continue
        with torch.no_grad():
            model.fuse_qkv_projections()
            for m in attn:
                _share_fused(m)
        done.append(name)
    return done


def _share_fused(attn: Any) -> None:
    """Point to_q/to_k/to_v at slices of the fused weight, so fusing costs no memory."""
    import torch

    fused, parts = (attn.to_qkv, (attn.to_q, attn.to_k, attn.to_v)) if hasattr(attn, "to_qkv") else (None, ())
    if fused is None and hasattr(attn, "to_kv"):
        fused, parts = attn.to_kv, (attn.to_k, attn.to_v)
    start = 0
    for lin in parts:
        n = lin.weight.shape[0]
        lin.weight = torch.nn.Parameter(fused.weight.data[start : start + n], requires_grad=False)
        if lin.bias is not None and fused.bias is not None:
            lin.bias = torch.nn.Parameter(fused.bias.data[start : start + n], requires_grad=False)
        start += n


def compile_cache_dir() -> Path:
    """Where Inductor keeps compiled kernels and FX graphs between runs (unless TORCHINDUCTOR_CACHE_DIR is set)."""
    import torch
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from sdplay.loading import cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current and os.path.abspath(current) != os.path.abspath(default_cache_dir()):
        return Path(current)  # chosen by the user
    path = cache_dir() / "compile" / f"torch-{torch.__version__}"
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)  # Inductor reads it at each use
    return path


def compile_modules(pipe: Any, config: FastConfig) -> list[str]:
    """torch.compile the chosen regions (compilation itself happens lazily, on the first call of each shape)."""
    import torch

    if config.compile == "none" and config.vae != "compile":
        return []
    # Many block shapes per model (one per UNet level and image size): allow a compiled entry for each.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 1024)
    torch._dynamo.config.suppress_errors = True  # a block that fails to compile runs eagerly (logged), never fails
    kw = {"backend": config.backend, "dynamic": config.dynamic, "fullgraph": True}
    done = []
    if config.compile == "full":  # the forward only: module hooks stay outside the compiled code
        pipe.unet.forward = torch.compile(pipe.unet.forward, **(kw | {"fullgraph": False}))
        done.append("unet")
    elif config.compile == "regional":
        n = _compile_regions(pipe.unet, config.regions, kw)
        done.append(f"unet: {n} blocks ({'+'.join(config.regions)})")
    elif config.compile != "none":
        raise InvalidRequest(f"Unknown compile mode {config.compile!r}.", hint="Use regional, full or none.")
    if config.vae == "compile":
        n = _compile_regions(pipe.vae.decoder, ("ResnetBlock2D",), kw)
        done.append(f"vae.decoder: {n} blocks (ResnetBlock2D)")
    return done


def _compile_regions(model: Any, regions: tuple[str, ...], kw: dict[str, Any]) -> int:
    count = 0
    for module in model.modules():
        if type(module).__name__ in regions:
            module.compile(**kw)
            count += 1
    return count


def host_timesteps(scheduler: Any) -> Any:
    """Make `scheduler.set_timesteps` ignore the device: timesteps stay host tensors, so step arithmetic never syncs."""
    import functools

    original = scheduler.set_timesteps
    if getattr(original, "_sdplay_host", False):
        return scheduler

    @functools.wraps(original)
    def set_timesteps(*args: Any, **kwargs: Any) -> Any:
        if "device" in kwargs:
            kwargs["device"] = "cpu"
        elif len(args) >= 2:
            args = (args[0], "cpu", *args[2:])
        return original(*args, **kwargs)

    set_timesteps._sdplay_host = True  # type: ignore[attr-defined]
    scheduler.set_timesteps = set_timesteps
    return scheduler
