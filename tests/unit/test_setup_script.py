"""scripts/setup.sh on a Python that refuses system-wide installs (PEP 668), as Debian's and Ubuntu's do.

The Python under test is this interpreter's own installation seen through a new prefix whose stdlib folder
carries the standard EXTERNALLY-MANAGED marker: `pip install` with it fails exactly as on Debian. The script
must build its own virtualenv from it and install sdplay there. SDPLAY_SETUP_NO_DEPS=1 leaves PyTorch and the
libraries out, which keeps this to seconds and off the network except for pip's build backend (setuptools).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VERSION = f"python{sys.version_info.major}.{sys.version_info.minor}"
MARKER = "[externally-managed]\nError=This Python is managed by the system package manager (a test stand-in).\n"

pytestmark = pytest.mark.skipif(sys.platform == "win32" or shutil.which("bash") is None, reason="a bash script")


@pytest.fixture(scope="module")
def managed_python(tmp_path_factory) -> Path:
    """bin/pythonX.Y, a copy of the base interpreter, over symlinks to its stdlib plus the PEP 668 marker."""
    root = tmp_path_factory.mktemp("system-python")
    base_exe = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    stdlib = Path(sysconfig.get_paths(vars={"installed_base": sys.base_prefix, "base": sys.base_prefix})["stdlib"])
    (root / "bin").mkdir()
    exe = root / "bin" / VERSION
    shutil.copy2(base_exe, exe)  # a copy: Python finds its prefix from where the binary lies
    lib = root / "lib" / VERSION
    lib.mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name not in ("site-packages", "dist-packages", "EXTERNALLY-MANAGED"):
            (lib / entry.name).symlink_to(entry)
    for shared in Path(sys.base_prefix, "lib").glob("libpython*.so*"):  # a --enable-shared build's libpython
        (root / "lib" / shared.name).symlink_to(shared)
    (lib / "EXTERNALLY-MANAGED").write_text(MARKER)
    (lib / "site-packages").mkdir()  # empty: nothing is installed system-wide
    pip = importlib.util.find_spec("pip")
    if pip is not None and pip.submodule_search_locations:  # pip alone, to show that it refuses (PYTHONPATH)
        (root / "pip-only").mkdir()
        (root / "pip-only" / "pip").symlink_to(Path(next(iter(pip.submodule_search_locations))))
    return exe


def _checkout(tmp_path: Path) -> Path:
    """The files a fresh clone brings that set-up reads."""
    dest = tmp_path / "sdplay"
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "scripts", dest / "scripts")
    shutil.copytree(REPO / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


# A shell outside any virtualenv, with nothing of this test run's Python on its paths.
CLEAN = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}


def _run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=CLEAN | env, capture_output=True, text=True, timeout=600)


def _setup(checkout: Path, python: Path, venv: Path) -> subprocess.CompletedProcess:
    env = {"PYTHON": str(python), "SDPLAY_VENV": str(venv), "SDPLAY_SETUP_NO_DEPS": "1"}
    return _run(["bash", "scripts/setup.sh"], checkout, **env)


def test_the_stand_in_refuses_system_wide_installs(managed_python):
    pip_only = managed_python.parent.parent / "pip-only"
    if not pip_only.is_dir():
        pytest.skip("no pip to try with")
    cmd = [str(managed_python), "-m", "pip", "install", "--dry-run", "sdplay"]
    done = _run(cmd, managed_python.parent, PYTHONPATH=str(pip_only))
    assert done.returncode != 0
    assert "externally-managed-environment" in done.stdout + done.stderr


def test_setup_builds_its_own_virtualenv_on_an_externally_managed_python(managed_python, tmp_path):
    checkout, venv = _checkout(tmp_path), tmp_path / "venv"
    done = _setup(checkout, managed_python, venv)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == f"{venv}/bin/python"
    assert "setup: creating the virtualenv" in done.stderr and "externally-managed" not in done.stderr
    config = (venv / "pyvenv.cfg").read_text()
    assert f"home = {managed_python.parent}" in config  # built from the managed Python, not another one
    site = managed_python.parent.parent / "lib" / VERSION / "site-packages"
    assert list(site.iterdir()) == []  # nothing was installed into it
    where = _run([str(venv / "bin" / "python"), "-c", "import sdplay; print(sdplay.__file__)"], tmp_path)
    assert where.stdout.strip() == str(checkout / "src" / "sdplay" / "__init__.py")  # editable, from the checkout
    helped = _run([str(venv / "bin" / "sdplay"), "--help"], tmp_path)
    assert helped.returncode == 0 and "generate" in helped.stdout  # the CLI starts without any library

    started = time.perf_counter()
    again = _setup(checkout, managed_python, venv)
    assert again.returncode == 0 and again.stderr == "" and again.stdout == done.stdout.splitlines()[-1] + "\n"
    assert time.perf_counter() - started < 5  # nothing to do: no Python, no pip started

    served = _run([str(venv / "bin" / "sdplay"), "serve"], checkout)
    assert served.returncode == 1 and "Traceback" not in served.stderr
    assert "needs sdplay's 'server' extra" in served.stderr
    assert f'{venv}/bin/python -m pip install -e ".[server]"' in served.stderr
