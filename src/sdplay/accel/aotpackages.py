"""Ahead-of-time compiled modules: one package per input signature, compiled once, loaded in seconds.

A restart with `torch.compile` re-traces the whole UNet with Dynamo before its cached kernels can run (tens of
seconds for SDXL). A package is the compiled forward itself, saved once per input signature; two kinds:

- "dynamo" (`compile=aot`): PyTorch's precompile (`torch.compile(...).aot_compile`) of the module class's forward,
  the module passed as its first argument: the traced bytecode, its guards and Inductor's kernels in one file, so a
  restart skips tracing and compiling. Only portable guards are kept (global state, tensor shapes, dtypes and
  strides); what they no longer check about the module is in the folder's key instead.
- "inductor" (`compile=aoti`): an AOTInductor package (kernels and a C++ wrapper, no Python at all).

Packages hold no weights: the model's own tensors are read at each call (dynamo) or handed over at load
(inductor, `user_managed`), so no memory is copied and the files stay small. They live in sdplay's compile cache,
keyed by everything that changes the compiled code (architecture, dtype, memory layout, attention processors,
torch/diffusers versions, GPU) and by the input signature (shapes, dtypes, strides, scalar values).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT = 2  # bump when the way packages are made changes
PREFIX = "m."  # the exported wrapper holds the model as its submodule `m`
# The weights stay out of the package: the live model's tensors are handed over at load time. Inductor would inline
# tiny 1-D tensors (a UNet's 4-element conv_out.bias) into the code; keep them as constants so they are handed over.
# The C++ wrapper only launches kernels, and sdplay replays CUDA graphs of it: build it unoptimised (faster compile).
INDUCTOR_CONFIGS = {"aot_inductor.package_constants_in_so": False, "always_keep_tensor_constants": True,
                    "aot_inductor.compile_wrapper_opt_level": "O0"}  # fmt: skip


@dataclass
class PackageStats:
    """What the packaged forward did: packages compiled and loaded, calls that ran the fallback, and why."""

    compiled: int = 0
    loaded: int = 0
    fallback_calls: int = 0
    compile_s: list[float] = field(default_factory=list)
    load_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"compiled": self.compiled, "loaded": self.loaded, "fallback_calls": self.fallback_calls,
                "compile_s": list(self.compile_s), "load_s": list(self.load_s),
                "failures": list(self.failures)}  # fmt: skip


class PackagedForward:
    """Calls `module`'s forward through AOTInductor packages; a new input signature costs one compile, once ever.

    `fallback` runs a signature whose package could not be made (any error is logged and kept in
    `stats.failures`); by default the module's own forward. `compile_options` go to Inductor with the package
    settings (e.g. {"max_autotune": True}). `compiler` and `loader` make and open package files (AOTInductor's
    by default).
    """

    def __init__(self, module: Any, folder: Path, device: Any, fallback: Callable | None = None,
                 compile_options: dict[str, Any] | None = None, compiler: Callable | None = None,
                 loader: Callable | None = None, suffix: str = ".pt2"):  # fmt: skip
        self.module, self.folder, self.device, self.suffix = module, Path(folder), device, suffix
        self.compiler, self.loader = compiler or compile_package, loader or load_package
        self.forward = module.forward  # the module's own forward, before anything wraps it
        self.fallback = fallback or self.forward
        self.compile_options = dict(compile_options or {})
        self.models: dict[Any, Any] = {}
        self.failed: set[Any] = set()
        self.stats = PackageStats()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = input_key(args, kwargs, self.device)
        if key is None or key in self.failed:
            self.stats.fallback_calls += 1
            return self.fallback(*args, **kwargs)
        args, kwargs = to_device((args, kwargs), self.device)
        model = self.models.get(key) or self._load_or_compile(key, args, kwargs)
        if model is None:
            self.stats.fallback_calls += 1
            return self.fallback(*args, **kwargs)
        return model(*args, **kwargs)

    def package_path(self, key: Any) -> Path:
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:24]
        return self.folder / f"{digest}{self.suffix}"

    def _load_or_compile(self, key: Any, args: tuple, kwargs: dict) -> Any:
        path = self.package_path(key)
        try:
            if not path.is_file():
                start = time.perf_counter()
                self.compiler(self.forward, self.module, args, kwargs, self.device, path, self.compile_options)
                self.stats.compile_s.append(time.perf_counter() - start)
                self.stats.compiled += 1
            start = time.perf_counter()
            model = self.loader(path, self.module, self.device)
            self.stats.load_s.append(time.perf_counter() - start)
            self.stats.loaded += 1
        except Exception as exc:  # any failure: this signature runs the fallback from now on
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
            log.warning("Ahead-of-time compilation failed, using the fallback for this input shape: %s", reason)
            self.stats.failures.append(reason)
            self.failed.add(key)
            return None
        self.models[key] = model
        return model

    def reload_weights(self) -> None:
        """Hand the module's current tensors to every loaded package (after weights were replaced)."""
        for model in self.models.values():
            if hasattr(model, "load_constants"):
                _load_constants(model, self.module)


def model_key(module: Any, device: Any, extra: dict[str, Any] | None = None) -> str:
    """A digest of everything about `module` that changes its compiled code (not the weights' values)."""
    import torch

    first = next((p for p in module.parameters() if p.dim() == 4), None)
    config = getattr(module, "config", {})
    processors = sorted({type(m.processor).__name__ for m in module.modules() if hasattr(m, "processor")})
    parts = {
        "format": FORMAT,
        "class": type(module).__qualname__,
        "config": {k: v for k, v in dict(config).items() if not k.startswith("_")},
        "params": sorted((n, tuple(p.shape), str(p.dtype)) for n, p in module.named_parameters()),
        "buffers": sorted((n, tuple(b.shape), str(b.dtype)) for n, b in module.named_buffers()),
        "modules": sorted((n, type(m).__qualname__) for n, m in module.named_modules()),  # e.g. float8 layers
        "channels_last": bool(first is not None and first.is_contiguous(memory_format=torch.channels_last)),
        "processors": processors,
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "device": _device_name(device),
        "extra": extra or {},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def input_key(args: tuple, kwargs: dict, device: Any) -> tuple | None:
    """Hashable description of a call's inputs (None when an argument cannot be an exported input)."""
    import torch
    from torch.utils import _pytree as pytree

    leaves, spec = pytree.tree_flatten((args, kwargs))
    key: list[Any] = [str(spec)]
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            if leaf.requires_grad:
                return None
            host_scalar = leaf.device.type == "cpu" and leaf.numel() == 1 and torch.device(device).type != "cpu"
            stride = tuple(leaf.contiguous().stride()) if host_scalar else leaf.stride()
            key.append(("tensor", tuple(leaf.shape), str(leaf.dtype), stride))
        elif leaf is None or isinstance(leaf, (bool, int, float, str)):
            key.append(("value", leaf))
        else:
            return None
    return tuple(key)


def to_device(tree: Any, device: Any) -> Any:
    """Move host tensors (a scheduler's timestep) to `device`; everything else is passed through."""
    import torch
    from torch.utils import _pytree as pytree

    target = torch.device(device)
    if target.type == "cpu":
        return tree
    return pytree.tree_map(
        lambda x: x.to(target, non_blocking=True) if isinstance(x, torch.Tensor) and x.device != target else x, tree
    )


def export(forward: Callable, module: Any, args: tuple, kwargs: dict, device: Any) -> Any:
    """torch.export of `forward` (the module's own) on these inputs; the module's tensors become `m.<name>`."""
    import torch

    with torch.inference_mode(False), torch.no_grad():
        example = _plain_copies(to_device((args, kwargs), device))
        return torch.export.export(_exported_module(module, forward), example[0], example[1], strict=False)


def compile_package(forward: Callable, module: Any, args: tuple, kwargs: dict, device: Any, path: Path,
                    options: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Export `forward` on these inputs and compile it into an AOTInductor package at `path` (no weights in it)."""
    import torch

    program = export(forward, module, args, kwargs, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.pt2")
    configs = INDUCTOR_CONFIGS | dict(options or {})
    with torch.no_grad():
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp), inductor_configs=configs)
    os.replace(tmp, path)  # a complete package or none: concurrent processes may compile the same one
    return path


def precompile(forward: Callable, module: Any, args: tuple, kwargs: dict, device: Any, path: Path,
               options: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Compile the module class's forward ahead of time for these inputs (Dynamo's precompile); save it at `path`."""
    import torch

    function = _class_forward(forward, module)
    opts = {"guard_filter_fn": portable_guards} | dict(options or {})
    with torch._dynamo.config.patch(enable_aot_compile=True), torch.no_grad():  # off by default before torch 2.13
        compiled = torch.compile(function, fullgraph=True, dynamic=False, options=opts)
        result = compiled.aot_compile(((module, *args), kwargs))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    result.save_compiled_function(str(tmp), external_data=_wrapped_functions(function))
    os.replace(tmp, path)  # a complete package or none: concurrent processes may compile the same one
    return path


def load_precompiled(path: Path, module: Any, device: Any) -> Callable:
    """Open a saved precompiled forward; the returned callable runs it on `module` (its current weights)."""
    import torch

    function = type(module).forward
    with open(path, "rb") as f:
        compiled = torch.compiler.load_compiled_function(f, external_data=_wrapped_functions(function))

    def run(*args: Any, **kwargs: Any) -> Any:
        return compiled(module, *args, **kwargs)

    return run


def portable_guards(entries: Any) -> list[bool]:
    """Keep the guards a saved package can check in a new process: global state, shapes, the inputs' tensors."""
    return [e.guard_type in ("GLOBAL_STATE", "SHAPE_ENV") or (e.guard_type == "TENSOR_MATCH" and not e.is_global)
            for e in entries]  # fmt: skip


def _class_forward(forward: Callable, module: Any) -> Callable:
    """The class's forward function that `forward` (the module's own bound forward) calls."""
    function = type(module).forward
    if getattr(forward, "__func__", None) is not function or getattr(forward, "__self__", None) is not module:
        raise TypeError(f"{type(module).__name__}.forward is wrapped on this instance; precompile needs its own")
    return function


def _wrapped_functions(function: Callable) -> dict[str, Any]:
    """The functions a decorated forward wraps (diffusers' LoRA-scale decorator): saved by reference, not by name."""
    out, inner = {}, getattr(function, "__wrapped__", None)
    while inner is not None and len(out) < 8:
        out[f"wrapped-{len(out)}"] = inner
        inner = getattr(inner, "__wrapped__", None)
    return out


def load_package(path: Path, module: Any, device: Any) -> Any:
    """Load a package (single-threaded runner, so CUDA graphs can capture it) and give it the module's weights."""
    import torch

    dev = torch.device(device)
    index = dev.index if dev.type == "cuda" and dev.index is not None else -1
    model = torch._inductor.aoti_load_package(str(path), run_single_threaded=True, device_index=index)
    _load_constants(model, module)
    return model


def _load_constants(model: Any, module: Any) -> None:
    tensors = dict(module.named_parameters(remove_duplicate=False)) | dict(module.named_buffers(remove_duplicate=False))
    wanted = model.get_constant_fqns()
    missing = [name for name in wanted if name.removeprefix(PREFIX) not in tensors]
    if missing:
        raise KeyError(f"the package needs tensors the model lacks: {missing[:3]}")
    baked = set(tensors) - {name.removeprefix(PREFIX) for name in wanted} - unused_tensors(module)
    if baked:  # values compiled into the code would not follow this model's weights: refuse, never run stale ones
        raise RuntimeError(f"the package has weights compiled in: {sorted(baked)[:3]}")
    constants = {name: tensors[name.removeprefix(PREFIX)] for name in wanted}
    model.load_constants(constants, check_full_update=True, user_managed=True)


def unused_tensors(module: Any) -> set[str]:
    """Names of the projections that fused QKV made views of a fused weight (the forward no longer reads them)."""
    out = set()
    for name, m in module.named_modules():
        if getattr(m, "fused_projections", False):
            parts = ("to_q", "to_k", "to_v") if hasattr(m, "to_qkv") else ("to_k", "to_v")
            out |= {f"{name}.{p}.{kind}" for p in parts for kind in ("weight", "bias") if hasattr(m, p)}
    return out


def _plain_copies(tree: Any) -> Any:
    """Ordinary tensors (not inference tensors) of the same values, for export to trace."""
    import torch
    from torch.utils import _pytree as pytree

    return pytree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, tree)


def _exported_module(module: Any, forward: Callable) -> Any:
    """A module holding `module` as `m` whose forward is the module's own (its instance forward is wrapped)."""
    import torch

    class Exported(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = module

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return forward(*args, **kwargs)

    return Exported()


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _device_name(device: Any) -> str:
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} sm{''.join(map(str, torch.cuda.get_device_capability(dev)))}"
    return dev.type


def install(module: Any, folder: Path, device: Any, fallback: Callable | None = None,
            compile_options: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
            kind: str = "dynamo", **seams: Any) -> PackagedForward:  # fmt: skip
    """Route `module.forward` through packages of `kind` ("dynamo" or "inductor") under `folder/<model key>/`."""
    if isinstance(module.__dict__.get("forward"), PackagedForward):
        return module.__dict__["forward"]
    key = model_key(module, device, extra=(extra or {}) | {"options": compile_options or {}, "kind": kind})
    if kind == "dynamo":
        seams = {"compiler": precompile, "loader": load_precompiled, "suffix": ".bin"} | seams
    packaged = PackagedForward(module, Path(folder) / key, device, fallback, compile_options, **seams)
    module.forward = packaged
    return packaged
