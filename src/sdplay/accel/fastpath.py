"""The fast path: fused projections, regional torch.compile with a persistent cache, and CUDA graphs per step."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from sdplay.accel.fastgraphs import GraphedForward, SharedPool, cuda_recorder, install
from sdplay.accel.runtime import compile_cache_dir
from sdplay.devices import DeviceInfo
from sdplay.errors import InvalidRequest
from sdplay.families import FAMILIES, Family, for_architecture, from_pipeline

log = logging.getLogger(__name__)

ENV = "SDPLAY_FAST"  # e.g. "compile=none,vae=off": overrides FastConfig fields, for benchmarks and experiments
WHERE = f"the fast-path options (--fast-options or ${ENV})"  # where a user wrote them, in error messages
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class FastConfig:
    """Which accelerations to apply; the defaults are the ones measured to help on an H100 (docs/benchmarks.md)."""

    # "aot": the whole UNet compiled ahead of time, one package per input shape saved in the compile cache and loaded
    # by a restart without tracing (sdplay.accel.aotpackages); "aoti": the same as AOTInductor packages
    # (experimental); "full": the whole UNet through torch.compile; "regional": repeated blocks only; "none";
    # "auto": per family
    compile: str = "auto"
    regions: tuple[str, ...] = ("BasicTransformerBlock",)  # classes compiled by "regional"
    # True: symbolic shapes (a new size or batch reuses the compiled code); None: static first, one dynamic
    # recompile when a shape changes (PyTorch's default); False: static, one compile per shape; "auto": see resolve
    dynamic: bool | str | None = "auto"
    backend: str = "inductor"
    autotune: bool = False  # Inductor's max-autotune (GEMM/conv templates benchmarked; results kept in the cache)
    graphs: bool = True  # one CUDA graph per input signature of each graphed module
    fuse_qkv: bool = True  # one projection for query, key and value (shared storage, no extra memory)
    vae: str = "off"  # "compile" (whole decoder), "graph", "compile+graph", "off": graphs gave no speed, much memory
    vae_channels_last: bool = False  # measured slower on an H100 (GroupNorm and upsampling at full resolution)
    # "auto": as loaded (SDXL: float32). SDXL's bfloat16 decode is 26% faster and 2.5 GiB smaller at 1024x1024 but
    # strays 3e-2 from the float32 decode (the exactness target is 1e-2), so it is opt-in: "bfloat16"
    vae_dtype: str = "auto"
    # "graph" or "off" for the text encoders. Off by default: on an H200 a replay of the text encoders' graph hit an
    # illegal memory access in image-to-image and inpainting requests (tests/gpu/probe_img2img.py), for ~7 ms
    text: str = "off"
    host_timesteps: bool = True  # scheduler arithmetic on the host: no device sync per step
    max_graphs: int = 8  # signatures kept per module (least recently used dropped)
    # Opt-in, each trading some exactness for speed (docs/benchmarks.md measures both):
    # float8 (e4m3) linear layers in the UNet's transformer blocks: "static" (scales calibrated once at load,
    # sdplay.accel.fp8), "dynamic" (torchao, every activation measured at every call; "true" means this), "off"
    fp8: str = "off"
    deepcache: int = 0  # reuse the deeper UNet blocks' features: a full step every N steps (0: off)
    experimental: bool = False  # allows compile=aoti on a GPU (its first GPU run crashed the process)

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
                raise InvalidRequest(f"Unknown fast-path option {name!r} in {WHERE}.", hint=f"Use: {', '.join(kinds)}.")
            changes[name] = _value(kinds[name], value.strip())
        if "fp8" in changes:
            changes["fp8"] = FP8_ALIASES.get(changes["fp8"].lower(), changes["fp8"].lower())
        return replace(cfg, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FP8_MODES = ("off", "static", "dynamic")
FP8_ALIASES = {"true": "dynamic", "on": "dynamic", "1": "dynamic", "yes": "dynamic", "false": "off", "0": "off",
               "no": "off", "none": "off"}  # fmt: skip


# What "auto" compiles, measured on an H100 (docs/benchmarks.md): the whole UNet is 27-31% faster for SD 1.x/2.x
# (cold compile 41-49 s, restart 11-15 s); for SDXL 18% faster but 103 s cold and 23 s at every restart, so SDXL
# compiles its transformer blocks only (20 s cold, 14 s restart). "aot" (packages a restart loads in seconds) is
# opt-in until it has run on a GPU: its first H200 run crashed (docs/benchmarks.md, H200).
AUTO_COMPILE = {f.family: f.compile_default for f in FAMILIES}  # per family, in sdplay.families


def resolve(config: FastConfig, family: Family | None) -> FastConfig:
    """Fill in the "auto" choices for a model family (unknown family: regional, symbolic shapes)."""
    compile_mode, dynamic = AUTO_COMPILE.get(family, ("regional", True)) if family else ("regional", True)
    if config.deepcache and config.compile == "auto":  # feature reuse switches blocks: compile them one by one
        compile_mode, dynamic = "regional", True
    elif config.compile != "auto":
        compile_mode, dynamic = config.compile, {"full": None, "aot": False, "aoti": False}.get(config.compile, True)
    return replace(config, compile=compile_mode, dynamic=dynamic if config.dynamic == "auto" else config.dynamic)


def _value(kind: str, value: str) -> Any:
    low = value.lower()
    if "tuple" in kind:
        return tuple(v for v in value.split("+") if v)
    if "bool" in kind:
        if low == "auto" and "str" in kind:
            return "auto"
        if low in ("none", "") and "None" in kind:
            return None
        return low in ("1", "true", "yes", "on")
    return int(value) if kind == "int" else value


@dataclass
class FastPath:
    """Handles to what the fast path installed on one pipeline (kept as `pipe.sdplay_fast`)."""

    config: FastConfig
    graphed: dict[str, GraphedForward]
    pool: SharedPool
    deepcache: Any = None  # sdplay.accel.deepcache.DeepCache when feature reuse is on
    packages: Any = None  # sdplay.accel.aotpackages.PackagedForward when the UNet is compiled ahead of time

    def prepare_scheduler(self, scheduler: Any) -> Any:
        """Keep a fresh scheduler's timesteps on the host, so its step needs no device sync; restart feature reuse."""
        if self.config.host_timesteps and "unet" in self.graphed:
            host_timesteps(scheduler)
        if self.deepcache is not None:
            self.deepcache.reset()
        return scheduler

    def stats(self) -> dict[str, Any]:
        out = {name: g.stats.to_dict() for name, g in self.graphed.items()}
        if self.packages is not None:
            out["aot_packages"] = self.packages.stats.to_dict()
        return out | ({"deepcache": self.deepcache.stats()} if self.deepcache is not None else {})

    def reset(self) -> None:
        """Forget every captured graph (call after replacing weights with new tensors)."""
        for g in self.graphed.values():
            g.reset()
        if self.packages is not None:
            self.packages.reload_weights()


def apply_fast_path(pipe: Any, device: DeviceInfo, opts: Any, family: Family) -> str | dict[str, Any]:
    """Apply the fast path where it is supported: on by default on CUDA, off elsewhere unless asked for."""
    if device.kind != "cuda" and opts.fast is not True:
        return f"off (not measured to help on {device.kind})"
    config = FastConfig.parse(opts.fast_options)  # $SDPLAY_FAST is read by the CLI and the server, into opts
    if device.kind != "cuda":  # nothing compiled unless asked for: Inductor on a CPU is minutes per model
        config = replace(config, graphs=False, host_timesteps=False,
                         compile="none" if config.compile == "auto" else config.compile)  # fmt: skip
    return accelerate(pipe, device, config, family=family)


def accelerate(
    pipe: Any, device: DeviceInfo, config: FastConfig, recorder: Any = None, family: Family | None = None
) -> dict[str, Any]:
    """Install the fast path on a pipeline already on its device; returns the choices made."""
    import torch

    config = resolve(config, family)
    _check(config, device)
    # 1. Fused query/key/value projections, float8 linear layers if asked for; the VAE's memory layout and dtype.
    choices: dict[str, Any] = {"fused_qkv": fuse_qkv(pipe) if config.fuse_qkv else []}
    if config.fp8 == "dynamic":
        choices["fp8_linear_layers"] = quantize_fp8(pipe.unet)
    elif config.fp8 == "static":
        from sdplay.accel import fp8

        choices["fp8_linear_layers"] = fp8.install(pipe, for_architecture(family) if family else from_pipeline(pipe))
    layout = torch.channels_last if config.vae_channels_last else torch.contiguous_format
    pipe.vae.to(memory_format=layout)
    if config.vae_dtype != "auto":
        pipe.vae.to(dtype=getattr(torch, config.vae_dtype))
    choices["vae_dtype"] = str(pipe.vae.dtype).removeprefix("torch.")
    # 2. torch.compile over repeated blocks, cached on disk across restarts.
    if config.compile != "none" or "compile" in config.vae:
        choices["compile_cache"] = str(compile_cache_dir())
    choices["compiled"] = compile_modules(pipe, config)
    # 3. CUDA graphs around each module's forward, all drawing on one memory pool.
    pool = SharedPool()
    graphed: dict[str, GraphedForward] = {}
    if config.graphs:
        rec = recorder or cuda_recorder()
        targets = [("unet", pipe.unet)]
        if "graph" in config.vae:
            targets.append(("vae.decoder", pipe.vae.decoder))
        if config.text == "graph":
            targets += [(n, getattr(pipe, n)) for n in TEXT_ENCODERS if getattr(pipe, n, None) is not None]
        for name, module in targets:
            graphed[name] = install(module, device.id, rec, config.max_graphs, pool)
    choices["cuda_graphs"] = sorted(graphed)
    choices["host_timesteps"] = bool(config.host_timesteps and "unet" in graphed)
    # 4. Feature reuse across steps (opt-in), keyed into the UNet's graphs by phase.
    reuse = None
    if config.deepcache:
        from sdplay.accel import deepcache

        reuse = deepcache.install(pipe.unet, config.deepcache)
        choices["deepcache_interval"] = config.deepcache
    packages = pipe.unet.__dict__.get("forward") if config.compile in PACKAGED else None
    pipe.sdplay_fast = FastPath(config, graphed, pool, reuse, getattr(packages, "fn", packages))
    choices["config"] = config.to_dict()
    return choices


VAE_MODES = ("off", "graph", "compile", "compile+graph")
COMPILE_MODES = ("auto", "aot", "aoti", "full", "regional", "none")
PACKAGED = {"aot": "dynamo", "aoti": "inductor"}  # compile mode: kind of ahead-of-time package
DTYPES = ("auto", "float16", "bfloat16", "float32")


def _check(config: FastConfig, device: DeviceInfo) -> None:
    """Refuse combinations that cannot work, saying what to change."""
    if config.vae not in VAE_MODES:
        raise InvalidRequest(
            f"Unknown VAE mode {config.vae!r} in {WHERE}.", hint=f"Use one of: {', '.join(VAE_MODES)}."
        )
    if config.vae_dtype not in DTYPES:
        raise InvalidRequest(f"Unknown VAE dtype {config.vae_dtype!r} in {WHERE}.", hint=f"Use: {', '.join(DTYPES)}.")
    if config.deepcache < 0:
        raise InvalidRequest(f"deepcache={config.deepcache} is negative.", hint="Use 0 (off) or a step interval 2-5.")
    if config.deepcache and config.compile in ("full", *PACKAGED):
        raise InvalidRequest(f"deepcache cannot be combined with compile={config.compile}.",
                             hint="Use compile=regional or none.")  # fmt: skip
    if config.compile not in COMPILE_MODES:
        raise InvalidRequest(f"Unknown compile mode {config.compile!r}.", hint=f"Use {', '.join(COMPILE_MODES)}.")
    if config.compile == "aoti" and device.kind == "cuda" and not config.experimental:
        raise InvalidRequest("compile=aoti is experimental: its first GPU run crashed the process "
                             "(docs/benchmarks.md, H200).", hint="Use compile=aot or full, or add experimental=true "
                             "to try it anyway.")  # fmt: skip
    if config.fp8 not in FP8_MODES:
        raise InvalidRequest(
            f"Unknown float8 mode fp8={config.fp8!r} in {WHERE}.", hint=f"Use: {', '.join(FP8_MODES)}."
        )
    if config.fp8 != "off":
        _check_fp8(device, config.fp8)


def _check_fp8(device: DeviceInfo, mode: str) -> None:
    import torch

    if mode == "static" and device.kind == "cpu":  # torch._scaled_mm runs on the CPU too: quality checks, not speed
        return
    if device.kind != "cuda" or torch.cuda.get_device_capability(device.id) < (8, 9):
        raise InvalidRequest(f"fp8={mode} needs an NVIDIA GPU with float8 matrix units (Ada or Hopper); {device.id} "
                             "has none.", hint=f"Remove fp8 from {WHERE}.")  # fmt: skip
    if mode == "static":
        return
    try:
        import torchao  # noqa: F401
    except ImportError as exc:
        hint = "pip install torchao, or use fp8=static."
        raise InvalidRequest("fp8=dynamic needs the torchao package.", hint=hint) from exc


def quantize_fp8(unet: Any) -> dict[str, Any]:
    """Float8 weights and dynamically scaled float8 activations for the transformer blocks' linear layers.

    Scales are per row for bfloat16 models and per tensor for float16 ones (torchao's per-row kernels take bfloat16
    only). Projections that fused QKV made views of a fused weight are skipped (the fused one is quantized instead).
    """
    import torch
    from diffusers.models.attention_processor import Attention
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

    unused = set()
    for name, m in unet.named_modules():
        if isinstance(m, Attention) and getattr(m, "fused_projections", False):
            parts = ("to_q", "to_k", "to_v") if hasattr(m, "to_qkv") else ("to_k", "to_v")
            unused |= {f"{name}.{p}" for p in parts}
    chosen = []

    def wanted(module: Any, fqn: str) -> bool:
        ok = (isinstance(module, torch.nn.Linear) and ".attentions." in f".{fqn}" and fqn not in unused
              and module.in_features % 16 == 0 and module.out_features % 16 == 0)  # fmt: skip
        if ok:
            chosen.append(fqn)
        return ok

    granularity = PerRow() if unet.dtype == torch.bfloat16 else PerTensor()
    config = Float8DynamicActivationFloat8WeightConfig(granularity=granularity, set_inductor_config=False)
    quantize_(unet, config, filter_fn=wanted)
    return {"layers": len(chosen), "scales": "per row" if isinstance(granularity, PerRow) else "per tensor"}


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


def compile_modules(pipe: Any, config: FastConfig) -> list[str]:
    """torch.compile the chosen regions (compilation itself happens lazily, on the first call of each shape)."""
    import torch

    if config.compile == "none" and "compile" not in config.vae:
        return []
    # Recompile limits, eager fallback and the persistent cache are process-wide: sdplay.accel.runtime sets them at
    # start-up (configure_torch), never here.
    kw: dict[str, Any] = {"backend": config.backend, "dynamic": config.dynamic, "fullgraph": True}
    if config.autotune and config.backend == "inductor":  # sdplay captures its own CUDA graphs
        kw["mode"] = "max-autotune-no-cudagraphs"
    done = []
    if config.compile in PACKAGED:
        done.append(_compile_ahead(pipe.unet, config, kw))
    elif config.compile == "full":  # the forward only: module hooks stay outside the compiled code
        pipe.unet.forward = torch.compile(pipe.unet.forward, **(kw | {"fullgraph": False}))
        done.append("unet")
    elif config.compile == "regional":
        n = _compile_regions(pipe.unet, config.regions, kw)
        done.append(f"unet: {n} blocks ({'+'.join(config.regions)})")
    elif config.compile != "none":
        raise InvalidRequest(f"Unknown compile mode {config.compile!r}.", hint="Use regional, full or none.")
    if "compile" in config.vae:  # the whole decoder; fullgraph off so its hooks and checks may break the graph
        pipe.vae.decoder.forward = torch.compile(pipe.vae.decoder.forward, **(kw | {"fullgraph": False}))
        done.append("vae.decoder")
    return done


def _compile_ahead(unet: Any, config: FastConfig, kw: dict[str, Any]) -> str:
    """The whole UNet as ahead-of-time packages; a shape whose package cannot be made runs through torch.compile."""
    import torch

    from sdplay.accel import aotpackages

    fallback = torch.compile(unet.forward, **(kw | {"fullgraph": False, "dynamic": None}))  # compiles only if used
    options = {"max_autotune": True} if config.autotune else {}
    kind = PACKAGED[config.compile]
    aotpackages.install(unet, compile_cache_dir() / "aot", unet.device, fallback, options, kind=kind)
    return f"unet: ahead-of-time packages ({kind})"


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
