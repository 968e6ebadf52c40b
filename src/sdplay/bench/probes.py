"""Measurements: synchronised timers, per-module phase hooks, an isolated UNet step, memory, matmul ceiling."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from sdplay.devices import DeviceInfo, synchronize

PHASE_MODULES = {"text_encoder": "text", "text_encoder_2": "text", "unet": "unet", "vae.decoder": "vae"}


def timed(device: DeviceInfo, fn: Callable[[], Any]) -> float:
    """Wall seconds of one call, with the device idle before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def summary(values: list[float]) -> dict[str, Any]:
    """Median, min, max and every value."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": list(values)}


class PhaseHooks:
    """Times every call of the text encoders, the UNet and the VAE decoder (device events on CUDA)."""

    def __init__(self, pipe: Any, device: DeviceInfo):
        self.device, self.handles, self.open = device, [], {}
        self.calls: dict[str, list[Any]] = {}
        for path, phase in PHASE_MODULES.items():
            module = _get(pipe, path)
            if module is not None:
                self.handles.append(module.register_forward_pre_hook(self._pre(phase)))
                self.handles.append(module.register_forward_hook(self._post(phase)))

    def _mark(self) -> Any:
        if self.device.kind == "cuda":
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        synchronize(self.device)
        return time.perf_counter()

    def _pre(self, phase: str) -> Callable:
        def hook(_module, _args):
            self.open[phase] = self._mark()

        return hook

    def _post(self, phase: str) -> Callable:
        def hook(_module, _args, _out):
            self.calls.setdefault(phase, []).append((self.open.pop(phase), self._mark()))

        return hook

    def seconds(self) -> dict[str, list[float]]:
        """Seconds of each call, per phase."""
        synchronize(self.device)
        out = {}
        for phase, pairs in self.calls.items():
            if self.device.kind == "cuda":
                out[phase] = [a.elapsed_time(b) / 1000 for a, b in pairs]
            else:
                out[phase] = [b - a for a, b in pairs]
        return out

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _get(pipe: Any, path: str) -> Any:
    obj = pipe
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj


def unet_inputs(pipe: Any, batch: int, width: int, height: int, host_timestep: bool) -> tuple[tuple, dict]:
    """Fresh random UNet inputs of one step: latents, a timestep, text states and (SDXL) added conditions."""
    import torch

    with torch.inference_mode():  # inference tensors, as in generation (others would recompile compiled blocks)
        return _unet_inputs(pipe, batch, width, height, host_timestep)


def _unet_inputs(pipe: Any, batch: int, width: int, height: int, host_timestep: bool) -> tuple[tuple, dict]:
    import torch

    unet = pipe.unet
    dev, dtype, cfg = unet.device, unet.dtype, unet.config
    sample = torch.randn(batch, cfg.in_channels, height // 8, width // 8, device=dev, dtype=dtype)  # as pipelines
    t = torch.tensor(499) if host_timestep else torch.tensor(499, device=dev)
    states = torch.randn(batch, 77, cfg.cross_attention_dim, device=dev, dtype=dtype)
    kwargs: dict[str, Any] = {"encoder_hidden_states": states, "return_dict": False}
    if cfg.addition_embed_type == "text_time":
        n_text = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, n_text, device=dev, dtype=dtype),
            "time_ids": torch.tensor([[height, width, 0, 0, height, width]] * batch, device=dev, dtype=dtype),
        }
    return (sample, t), kwargs


def unet_step_seconds(pipe: Any, device: DeviceInfo, batch: int, width: int, height: int, iters: int,
                      host_timestep: bool) -> dict[str, Any]:  # fmt: skip
    """Seconds of one UNet forward on `batch` latents (2 per guided image): warmed up, median of `iters`."""
    import torch

    args, kwargs = unet_inputs(pipe, batch, width, height, host_timestep)
    times = []
    with torch.inference_mode():
        for _ in range(3):
            pipe.unet(*args, **kwargs)
        for _ in range(iters):
            times.append(timed(device, lambda: pipe.unet(*args, **kwargs)))
    return summary(times)


def weight_bytes(pipe: Any) -> int:
    """Bytes of every parameter and buffer of the pipeline's modules, each storage counted once."""
    import torch

    seen: dict[int, int] = {}
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            for t in [*module.parameters(), *module.buffers()]:
                for inner in _plain_tensors(t):
                    storage = inner.untyped_storage()
                    seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _plain_tensors(t: Any) -> list[Any]:
    """The plain tensors holding `t`'s data (a quantized weight is a wrapper around data and scales)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if not is_traceable_wrapper_subclass(t):
        return [t]
    names, _ = t.__tensor_flatten__()
    return [leaf for name in names for leaf in _plain_tensors(getattr(t, name))]


def graph_pool_bytes(pipe: Any) -> int | None:
    """Bytes the pipeline's CUDA graphs hold in their private memory pool (0 without graphs)."""
    fast = getattr(pipe, "sdplay_fast", None)
    if fast is None or fast.pool.handle is None:
        return 0
    import torch

    try:
        pool = tuple(fast.pool.handle)
        segments = torch.cuda.memory_snapshot()
        return sum(s["total_size"] for s in segments if tuple(s.get("segment_pool_id", ())) == pool)
    except (TypeError, KeyError, RuntimeError):  # snapshot layout differs between torch versions
        return None


def matmul_tflops(device: DeviceInfo, dtype: str, n: int = 8192, iters: int = 10) -> float | None:
    """Achieved dense matmul rate on random data: the practical ceiling for MFU."""
    if device.kind != "cuda":
        return None
    import torch

    a = torch.randn(n, n, device=device.id, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device.id, dtype=getattr(torch, dtype))
    for _ in range(3):
        a @ b
    seconds = timed(device, lambda: [a @ b for _ in range(iters)])
    return 2 * n**3 * iters / seconds / 1e12
