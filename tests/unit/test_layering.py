"""The core stands alone: importing it loads no web, UI or CLI framework, and does no work at import."""

import subprocess
import sys

EDGE = ("fastapi", "uvicorn", "starlette", "ipywidgets", "typer", "click", "sdplay.server", "sdplay.cli")
CORE = ("sdplay", "sdplay.engine", "sdplay.run", "sdplay.loading", "sdplay.optimize", "sdplay.images",
        "sdplay.devices", "sdplay.samplers", "sdplay.catalog", "sdplay.prompts", "sdplay.checkpoints")  # fmt: skip


def test_core_imports_no_edge_framework():
    code = (
        f"import sys\nfor m in {CORE!r}: __import__(m)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {EDGE!r} or m.startswith({EDGE!r})]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"core imported edge modules: {out}"


def test_importing_sdplay_loads_no_torch():
    code = "import sys, sdplay; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
