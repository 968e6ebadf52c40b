"""DeepCache-style feature reuse: between full UNet steps, recompute only the outermost down and up blocks.

On a full step every block runs and the outputs of the deeper blocks are copied into persistent buffers. On the
steps in between, those blocks return their buffers instead of computing, so only the time embedding, `conv_in`,
the first down block, the last up block and `conv_out` run (Ma et al., "DeepCache", CVPR 2024, skip branch 0).
The buffers are allocated outside any CUDA-graph capture and written by copies, so captured graphs of both kinds of
step keep reading and writing the same memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FULL, CACHED = "full", "cached"


@dataclass
class DeepCache:
    """The step schedule and the cached block outputs of one UNet (one batch at a time, as one worker runs it)."""

    interval: int  # a full step every `interval` steps (1: never reuse)
    step: int = 0
    phase: str = FULL
    buffers: dict[tuple, Any] = field(default_factory=dict)
    full_steps: int = 0
    cached_steps: int = 0
    names: tuple[str, ...] = ()  # the wrapped blocks
    current_key: tuple = ()  # shape and dtype of this step's latents

    def reset(self) -> None:
        """A new generation starts: its first step is always a full one."""
        self.step = 0

    def begin_step(self, key: tuple) -> str:
        """Pick this UNet call's phase; a step can reuse features only if a full step of its shape ran before."""
        reusable = all((name, *key) in self.buffers for name in self.names)
        self.phase = CACHED if self.step % self.interval and reusable else FULL
        self.step += 1
        if self.phase == FULL:
            self.full_steps += 1
        else:
            self.cached_steps += 1
        return self.phase

    def stats(self) -> dict[str, int]:
        return {"interval": self.interval, "full_steps": self.full_steps, "cached_steps": self.cached_steps}


def install(unet: Any, interval: int) -> DeepCache:
    """Wrap the deeper blocks of `unet` (every block except the first down and the last up block)."""
    if interval < 1:
        from sdplay.errors import InvalidRequest

        raise InvalidRequest(f"deepcache={interval} is not a step interval.", hint="Use 2 to 5, or 0 to turn it off.")
    cache = DeepCache(interval)
    blocks = [(f"down.{i}", b) for i, b in enumerate(unet.down_blocks) if i > 0]
    if unet.mid_block is not None:
        blocks.append(("mid", unet.mid_block))
    blocks += [(f"up.{i}", b) for i, b in enumerate(unet.up_blocks) if i < len(unet.up_blocks) - 1]
    cache.names = tuple(name for name, _ in blocks)
    for name, block in blocks:
        block.forward = _cached_forward(cache, name, block.forward)
    graphed = unet.__dict__.get("forward")
    if graphed is not None and hasattr(graphed, "key_extra"):  # a CUDA graph per phase
        graphed.key_extra = lambda: cache.phase
    unet.forward = _step_forward(cache, unet.forward)
    unet.sdplay_deepcache = cache
    return cache


def _shape_key(sample: Any) -> tuple:
    return (tuple(sample.shape), sample.dtype)


def _step_forward(cache: DeepCache, forward: Any) -> Any:
    """Sets the phase before each UNet call (outside any CUDA graph, which is keyed by `cache.phase`)."""

    def run(sample: Any, *args: Any, **kwargs: Any) -> Any:
        cache.current_key = _shape_key(sample)
        cache.begin_step(cache.current_key)
        return forward(sample, *args, **kwargs)

    return run


def _cached_forward(cache: DeepCache, name: str, forward: Any) -> Any:
    from torch.utils import _pytree as pytree

    def run(*args: Any, **kwargs: Any) -> Any:
        key = (name, *cache.current_key)
        if cache.phase == CACHED and key in cache.buffers:
            return pytree.tree_unflatten(*cache.buffers[key])
        out = forward(*args, **kwargs)
        leaves, spec = pytree.tree_flatten(out)
        stored = cache.buffers.get(key)  # the key holds the latents' shape: same key, same output shapes
        if stored is None:
            cache.buffers[key] = ([x.detach().clone() for x in leaves], spec)
        else:
            for buf, x in zip(stored[0], leaves, strict=True):
                buf.copy_(x)
        return out

    return run
