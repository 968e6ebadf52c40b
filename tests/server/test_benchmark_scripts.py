"""The load benchmark runs end to end against the real server (with the fake engine): both client APIs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.server


@pytest.mark.parametrize("api", ["openai", "native"])
def test_server_batching_benchmark_reports_every_mode(tmp_path, api):
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "server_batching.py"), "--fake", "--api", api, "--requests", "8",
           "--clients", "4", "--batches", "1,4", "--warmup-requests", "4", "--json", str(out)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["max_batch"] for r in rows] == [1, 4] and all(r["api"] == api for r in rows)
    assert rows[0]["mean_batch"] == 1.0 and 1.0 <= rows[1]["mean_batch"] <= 4.0
    assert all(r["images_per_s"] > 0 and r["requests"] == 8 for r in rows)


def test_the_real_engine_gets_the_servers_load_options(monkeypatch):
    """$SDPLAY_FAST reaches the benchmark's engine as it reaches `sdplay serve`'s (it once did not)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("server_batching", ROOT / "benchmarks" / "server_batching.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setenv("SDPLAY_FAST", "deepcache=3")
    assert script.make_engine(fake=False).options.fast_options == "deepcache=3"
    monkeypatch.delenv("SDPLAY_FAST")
    assert script.make_engine(fake=False).options.fast_options in ("", None)


def test_the_real_engine_runs_with_the_servers_torch_settings(tmp_path):
    """The compile cache and recompile limits of `sdplay serve` (without them a warm cache was not found)."""
    code = (
        "import importlib.util, os, sys\n"
        f"spec = importlib.util.spec_from_file_location('sb', {str(ROOT / 'benchmarks' / 'server_batching.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "m.make_engine(fake=False)\n"
        "import torch\n"
        "print(os.environ.get('TORCHINDUCTOR_CACHE_DIR'), torch._dynamo.config.recompile_limit)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"} | {"SDPLAY_CACHE": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    cache, limit = res.stdout.split()[-2:]
    assert cache.startswith(str(tmp_path)) and int(limit) >= 64
