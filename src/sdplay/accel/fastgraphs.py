"""Replay CUDA graphs of a module's forward, one per input signature, with an eager fallback."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

SCALARS = (type(None), bool, int, float, str)


@dataclass
class SharedPool:
    """One graph memory pool shared by every graph of a pipeline: they replay one after another, never at once."""

    handle: Any = None


@dataclass
class GraphStats:
    """What a graphed forward did: captures, replays, eager calls and why capture failed."""

    captures: int = 0
    replays: int = 0
    eager_calls: int = 0
    evictions: int = 0
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"captures": self.captures, "replays": self.replays, "eager_calls": self.eager_calls,
                "evictions": self.evictions, "failures": list(self.failures)}  # fmt: skip


def signature(args: tuple, kwargs: dict, device: Any) -> tuple[Any, list[Any]] | None:
    """(hashable key, tensor leaves) of a call, or None when some argument cannot live in a static buffer.

    Tensors on `device` are keyed by shape, dtype and strides; one-element CPU tensors (a scheduler's timestep) are
    allowed and become device buffers filled without a host sync; plain scalars are part of the key.
    """
    import torch
    from torch.utils import _pytree as pytree

    leaves, spec = pytree.tree_flatten((args, kwargs))
    key: list[Any] = [str(spec), torch.is_inference_mode_enabled(), torch.is_grad_enabled()]
    tensors = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            if leaf.device.type == "cpu" and leaf.numel() == 1 and torch.device(device).type != "cpu":
                key.append(("host-scalar", tuple(leaf.shape), leaf.dtype))
            elif leaf.device == torch.device(device) and not leaf.requires_grad:
                key.append(("tensor", tuple(leaf.shape), leaf.dtype, leaf.stride()))
            else:
                return None
            tensors.append(leaf)
        elif isinstance(leaf, SCALARS):
            key.append(("value", leaf))
        else:
            return None
    return tuple(key), tensors


class GraphedForward:
    """Calls `fn` through captured CUDA graphs: a new input signature costs one capture, then replays.

    Outputs are cloned out of the graph's memory, so callers may keep them. Any capture failure marks that signature
    eager for good (the reason is kept in `stats.failures`). `recorder` does the capture: `cuda_recorder` on a GPU.
    """

    def __init__(self, fn: Callable, device: Any, recorder: Callable, name: str = "", max_graphs: int = 8,
                 pool: SharedPool | None = None):  # fmt: skip
        self.fn, self.device, self.recorder, self.name = fn, device, recorder, name
        self.max_graphs = max_graphs
        self.graphs: OrderedDict[Any, _Graph] = OrderedDict()
        self.eager_keys: set[Any] = set()
        self.pool = pool or SharedPool()
        self.stats = GraphStats()
        self.enabled = True
        self.key_extra: Callable[[], Any] | None = None  # state outside the arguments that changes what runs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sig = signature(args, kwargs, self.device) if self.enabled else None
        key, tensors = sig if sig is not None else (None, [])
        if key is not None and self.key_extra is not None:
            key = (key, self.key_extra())
        if key is None or key in self.eager_keys:
            self.stats.eager_calls += 1
            return self.fn(*args, **kwargs)
        graph = self.graphs.get(key)
        if graph is None:
            graph = self._capture(key, args, kwargs, tensors)
            if graph is None:
                self.stats.eager_calls += 1
                return self.fn(*args, **kwargs)
        self.graphs.move_to_end(key)
        graph.load(tensors)
        graph.replay()
        self.stats.replays += 1
        return graph.output()

    def _capture(self, key: Any, args: tuple, kwargs: dict, tensors: list[Any]) -> _Graph | None:
        from torch.utils import _pytree as pytree

        statics = [_static_copy(t, self.device) for t in tensors]
        leaves, spec = pytree.tree_flatten((args, kwargs))
        it = iter(statics)
        rebuilt = [next(it) if _is_tensor(leaf) else leaf for leaf in leaves]
        s_args, s_kwargs = pytree.tree_unflatten(rebuilt, spec)
        try:
            replay, outputs, self.pool.handle = self.recorder(lambda: self.fn(*s_args, **s_kwargs), self.pool.handle)
        except Exception as exc:  # any capture error means: this signature runs eagerly
            reason = f"{self.name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.warning("CUDA graph capture failed, running eagerly: %s", reason)
            self.stats.failures.append(reason)
            self.eager_keys.add(key)
            return None
        self.stats.captures += 1
        graph = _Graph(statics, replay, outputs)
        self.graphs[key] = graph
        while len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
            self.stats.evictions += 1
        return graph

    def reset(self) -> None:
        """Drop every graph (for example after weights were replaced by new tensors)."""
        self.graphs.clear()
        self.eager_keys.clear()


def _is_tensor(x: Any) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def _static_copy(t: Any, device: Any) -> Any:
    """A buffer the graph reads: a clone on the device (host scalars move to the device)."""
    if t.device.type == "cpu" and t.device != _device(device):
        return t.to(device)
    return t.clone()


def _device(device: Any) -> Any:
    import torch

    return torch.device(device)


class _Graph:
    """Static input buffers, a replay function and the static outputs of one captured signature."""

    def __init__(self, statics: list[Any], replay: Callable[[], None], outputs: Any):
        self.statics, self.replay, self.outputs = statics, replay, outputs

    def load(self, tensors: list[Any]) -> None:
        """Copy new inputs into the static buffers without waiting for the device."""
        for static, new in zip(self.statics, tensors, strict=True):
            if new.device != static.device:
                static.fill_(new.item())  # a host scalar: a fill kernel, no copy from pageable memory
            elif new.data_ptr() != static.data_ptr():
                static.copy_(new)

    def output(self) -> Any:
        from torch.utils import _pytree as pytree

        return pytree.tree_map(lambda x: x.clone() if _is_tensor(x) else x, self.outputs)


def cuda_recorder(warmup: int = 2) -> Callable:
    """A recorder that warms `run` up on a side stream, then captures it into a CUDA graph sharing `pool`."""

    def record(run: Callable[[], Any], pool: Any) -> tuple[Callable[[], None], Any, Any]:
        import torch

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                outputs = run()
        except Exception:
            torch.cuda.synchronize()
            raise
        return graph.replay, outputs, graph.pool()

    return record


def eager_recorder(run: Callable[[], Any], pool: Any) -> tuple[Callable[[], None], Any, Any]:
    """A recorder without a GPU: 'replay' reruns the function into the same output buffers (graph semantics)."""
    from torch.utils import _pytree as pytree

    outputs = run()

    def replay() -> None:
        fresh = pytree.tree_leaves(run())
        for old, new in zip(pytree.tree_leaves(outputs), fresh, strict=True):
            if _is_tensor(old):
                old.copy_(new)

    return replay, outputs, pool


def install(
    module: Any, device: Any, recorder: Callable, max_graphs: int = 8, pool: SharedPool | None = None
) -> GraphedForward:
    """Route `module.forward` through a GraphedForward (module hooks still run around it)."""
    if isinstance(module.__dict__.get("forward"), GraphedForward):
        return module.__dict__["forward"]
    graphed = GraphedForward(module.forward, device, recorder, type(module).__name__, max_graphs, pool)
    module.forward = graphed
    return graphed


def uninstall(module: Any) -> None:
    """Give `module` its own forward back."""
    if isinstance(module.__dict__.get("forward"), GraphedForward):
        del module.forward
