"""Install the PyTorch build that fits this machine into the running (virtualenv) Python; stdlib only.

Run by scripts/setup.sh before sdplay itself, so that pip never picks a torch on its own. SDPLAY_TORCH chooses:
  auto (default)  an NVIDIA GPU here -> the CUDA build from PyPI; none -> the CPU build
  cpu             the CPU build, from PyTorch's CPU index (download.pytorch.org/whl/cpu)
  cuda            the CUDA build from PyPI (Linux x86_64: CUDA 13)
  anything else   your own pip arguments, e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

TORCH = "torch==2.13.0"  # the version sdplay is tested with
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Measured for torch 2.13.0, Python 3.11, Linux x86_64 (download sizes).
CPU_SIZE = "about 190 MB"
PYPI_LINUX_SIZE = "about 2.7 GB: torch 530 MB plus NVIDIA's CUDA 13 libraries 2.2 GB"


def say(text: str) -> None:
    print(f"setup: {text}", file=sys.stderr, flush=True)


def installed_torch() -> str | None:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def has_nvidia_gpu() -> bool:
    """An NVIDIA driver with at least one GPU (no torch needed to tell)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def reachable(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except Exception:  # DNS, proxy, TLS, HTTP errors: all mean "not usable from here"
        return False


def pypi_is_cuda_build() -> bool:
    """PyPI's torch for Linux x86_64 is the CUDA build; elsewhere (macOS, Windows, ARM) it is not."""
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")


def plan(choice: str) -> tuple[list[str], str]:
    """pip arguments and a sentence saying what they will download."""
    if choice == "cuda":
        return [TORCH], f"the CUDA build of {TORCH} from PyPI ({PYPI_LINUX_SIZE})"
    if choice == "cpu":
        if reachable(f"{CPU_INDEX}/torch/"):
            return [TORCH, "--index-url", CPU_INDEX], f"the CPU build of {TORCH} from {CPU_INDEX} ({CPU_SIZE})"
        if not pypi_is_cuda_build():
            return [TORCH], f"{TORCH} from your package index (the CPU build on this platform, {CPU_SIZE})"
        say(f"PyTorch's CPU index ({CPU_INDEX}) is not reachable from here; using your package index instead.")
        say(
            f"From PyPI, {TORCH} is the CUDA build ({PYPI_LINUX_SIZE}); it runs on the CPU too. A CPU wheel "
            "that your pip configuration offers (find-links, a mirror) is preferred. SDPLAY_TORCH chooses otherwise "
            "(scripts/install_torch.py)."
        )
        return [TORCH], f"{TORCH} from your package index"
    return shlex.split(choice), f"PyTorch as you asked (SDPLAY_TORCH={choice!r})"


def describe_installed() -> str:
    """ "torch 2.13.0+cpu (CPU build)" or "torch 2.13.0 (CUDA 13.0 build, NVIDIA libraries 2.9 GB on disk)"."""
    version = installed_torch()
    nvidia = [d for d in importlib.metadata.distributions() if (d.metadata["Name"] or "").startswith("nvidia-")]
    if not nvidia:
        cpu = "+cpu" in (version or "") or not pypi_is_cuda_build()
        return f"torch {version} (CPU build)" if cpu else f"torch {version}"
    size = sum(f.locate().stat().st_size for d in nvidia for f in d.files or () if f.locate().is_file())
    return f"torch {version} (CUDA build, NVIDIA libraries {size / 1e9:.1f} GB on disk)"


def main() -> int:
    if installed_torch():
        return 0
    choice = os.environ.get("SDPLAY_TORCH", "auto").strip() or "auto"
    if choice == "auto":
        choice = "cuda" if has_nvidia_gpu() and pypi_is_cuda_build() else "cpu"
        say("an NVIDIA GPU is here: PyTorch's CUDA build" if choice == "cuda" else "no NVIDIA GPU: PyTorch's CPU build")
    args, what = plan(choice)
    say(f"installing {what} ...")
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args]
    if subprocess.run(cmd).returncode != 0:
        say(f"installing PyTorch failed: {' '.join(cmd[3:])}. Set SDPLAY_TORCH to pip arguments that work here.")
        return 1
    say(f"installed {describe_installed()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
