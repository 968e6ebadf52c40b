"""Process-wide torch settings the fast path relies on, set once at start-up by the edge that owns the process.

`sdplay generate`, `sdplay bench`, `sdplay serve` (and each Ray Serve replica) and the notebook playground call
`configure_torch()` before loading any model; loading a model never changes process-wide state. A program that
uses `sdplay.engine.Engine` directly and wants the compiled fast path calls it once itself. What it sets:

- `torch._dynamo.config.recompile_limit` >= 64 and `accumulated_recompile_limit` >= 1024: a UNet has one block
  shape per level and image size, each its own compiled entry;
- `torch._dynamo.config.suppress_errors = True`: a block that fails to compile runs eagerly (logged), never fails;
- `TORCHINDUCTOR_CACHE_DIR` (unless the user chose one): sdplay's cache folder, so compiled kernels and FX graphs
  survive restarts.

`sdplay train` calls `configure_torch_for_training()` instead: TF32 matmuls and convolutions and cuDNN autotuning
(CUDA; nothing changes elsewhere). Calling `sdplay.training.loop.train` from a program leaves them as they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_DONE: dict[str, Any] = {}


def configure_torch() -> dict[str, Any]:
    """Apply the settings above (once per process); what was set."""
    if _DONE:
        return dict(_DONE)
    import torch
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from sdplay.paths import cache_dir

    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, 64)
    dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 1024)
    dynamo.suppress_errors = True
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not current or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        path = cache_dir() / "compile" / f"torch-{torch.__version__}"
        path.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)  # Inductor reads it at each use
    _DONE.update(
        recompile_limit=dynamo.recompile_limit,
        accumulated_recompile_limit=dynamo.accumulated_recompile_limit,
        suppress_errors=True,
        compile_cache=os.environ["TORCHINDUCTOR_CACHE_DIR"],
    )
    return dict(_DONE)


def configure_torch_for_training() -> None:
    """TF32 matmuls and convolutions and cuDNN autotuning, for training on CUDA (a no-op elsewhere)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


def compile_cache_dir() -> Path:
    """Where Inductor keeps compiled kernels and FX graphs (sdplay's cache once configure_torch ran)."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current:
        return Path(current)
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return Path(default_cache_dir())
