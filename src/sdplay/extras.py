"""Optional parts of sdplay (the extras of pyproject.toml), and the one command that installs a missing one."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sdplay.errors import MissingExtra

CORE_MODULES = ("torch", "diffusers", "transformers", "safetensors", "huggingface_hub", "accelerate", "torchsde",
                "PIL", "numpy", "tqdm", "psutil")  # fmt: skip
SERVER_MODULES = ("fastapi", "uvicorn", "starlette", "pydantic", "prometheus_client", "h11", "multipart",
                  "python_multipart", "websockets")  # fmt: skip
# Top-level module -> the extra that brings it (None: a core dependency).
EXTRA_OF_MODULE = {
    **dict.fromkeys(SERVER_MODULES, "server"),
    **dict.fromkeys(("ipywidgets", "nbclient", "nbformat", "ipykernel"), "ui"),
    "ray": "ray",
    "emoji": "train",
    "pynvml": "nvidia",
    **dict.fromkeys(CORE_MODULES, None),
}
# What a command needs beyond the core, for modules the table above does not know.
EXTRA_OF_COMMAND = {"serve": "server", "train": "train"}


def checkout() -> Path | None:
    """The source checkout sdplay runs from (an editable install), if it is one."""
    root = Path(__file__).resolve().parents[2]
    project = root / "pyproject.toml"
    return root if project.is_file() and 'name = "sdplay"' in project.read_text(errors="replace") else None


def install_command(extra: str | None = None) -> str:
    """The pip command that installs sdplay (with `extra`) into the Python running now, from the checkout."""
    python = _short(Path(sys.executable))
    root = checkout()
    if root is None:
        return f'{python} -m pip install "sdplay{f"[{extra}]" if extra else ""}"'
    where = "." if root == Path.cwd().resolve() else _short(root)
    return f'{python} -m pip install -e "{where}{f"[{extra}]" if extra else ""}"'


def _short(path: Path) -> str:
    """A path relative to the working folder where it lies below it, else absolute."""
    try:
        return os.path.relpath(path, Path.cwd()) if path.is_relative_to(Path.cwd()) else str(path)
    except ValueError:
        return str(path)


def missing_extra(exc: ImportError, command: str | None = None) -> MissingExtra | None:
    """A teaching error for an import that failed because an optional part is not installed; None if unknown."""
    module = (exc.name or "").split(".")[0]
    if not module or module == "sdplay":
        return None
    known = module in EXTRA_OF_MODULE
    extra = EXTRA_OF_MODULE[module] if known else EXTRA_OF_COMMAND.get(command or "")
    what = f"`sdplay {command}`" if command else "this"
    if extra is not None:
        return MissingExtra(
            f"{what} needs sdplay's {extra!r} extra ({module} is not installed).",
            hint=f"Install it with: {install_command(extra)}",
        )
    if known:
        return MissingExtra(
            f"sdplay's libraries are not all installed ({module} is missing).",
            hint="Run scripts/setup.sh in the checkout, or: " + install_command(),
        )
    return None
