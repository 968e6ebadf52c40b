"""Cancellation inside a step: a check that runs before every UNet block and every VAE decoder block.

The caller of a generation installs a check for its thread (`with checking(fn):`); `fn` raises Cancelled (or
TimeLimitExceeded) when the work must stop. `guard(pipe)` puts forward pre-hooks on the down, mid and up blocks
of the UNet and of the VAE decoder, so a stop takes effect within a fraction of a step (one block), not at the
end of the step or of a long decode. Without a check installed the hooks do nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

_local = threading.local()
_HOOKED = "_sdplay_cancel_hooks"


@contextlib.contextmanager
def checking(check: Callable[[], None]) -> Iterator[None]:
    """Run `check` before each guarded block on this thread while the context is open."""
    previous = getattr(_local, "check", None)
    _local.check = check
    try:
        yield
    finally:
        _local.check = previous


def check_now() -> None:
    """Call this thread's check, if one is installed (it raises to stop the work)."""
    check = getattr(_local, "check", None)
    if check is not None:
        check()


def _pre_hook(_module: Any, _args: Any) -> None:
    check_now()


def blocks_of(pipe: Any) -> list[Any]:
    """The modules that get a check: UNet down/mid/up blocks and VAE decoder mid/up blocks."""
    found = []
    unet, vae = getattr(pipe, "unet", None), getattr(pipe, "vae", None)
    decoder = getattr(vae, "decoder", None)
    for owner in (unet, decoder):
        if owner is None:
            continue
        for name in ("down_blocks", "up_blocks"):
            found.extend(getattr(owner, name, None) or [])
        if getattr(owner, "mid_block", None) is not None:
            found.append(owner.mid_block)
    return found


def guard(pipe: Any) -> int:
    """Install the block checks once per pipeline; returns the number of guarded blocks (0 when skipped).

    Skipped where the fast path compiled or graph-captured the UNet: no Python runs inside a captured graph, and
    its steps are short, so the check between steps suffices there."""
    fast = getattr(pipe, "sdplay_fast", None)
    if fast is not None and (fast.graphed or fast.config.compile != "none"):
        return 0
    if getattr(pipe, _HOOKED, None) is not None:
        return len(getattr(pipe, _HOOKED))
    handles = [block.register_forward_pre_hook(_pre_hook) for block in blocks_of(pipe)]
    setattr(pipe, _HOOKED, handles)
    return len(handles)
