"""Fast answers: argument mistakes are told before torch is imported, and the set-up's torch choice says what
it downloads. The timings themselves are measured by benchmarks/startup.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import sys
from sdplay.cli.main import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit:  # argparse: --help, unknown flags
    status = exit.code
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "numpy", "PIL", "psutil") if m in sys.modules)
print("imported:", ",".join(heavy) or "none", "status:", status)
"""


def _cli(*args: str, timeout: float = 300, **more: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(Path.home())}
    env |= more
    return subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "red heart", "--size", "65x64"], "width must be a multiple of 8"),
        (["generate", "red heart", "--steps", "0"], "steps must be between 1 and 150"),
        (["generate", "red heart", "--model", "no-such-model"], "Unknown model 'no-such-model'"),
        (["generate", "red heart", "--sampler", "Eular"], "Unknown sampler 'Eular'"),
        (["monitor", "-m", "nope"], "Unknown metric 'nope'"),
    ],
)
def test_argument_errors_do_not_import_the_libraries(args, message):
    done = _cli(*args)
    assert message in done.stderr and "Traceback" not in done.stderr
    assert done.stdout.strip() == "imported: none status: 2"


@pytest.mark.parametrize(
    "args", [["--help"], ["generate", "--help"], ["serve", "--help"], ["generate", "red heart", "-x"]]
)
def test_help_imports_no_library(args):
    done = _cli(*args)
    if args[-1] == "-x":
        assert "unrecognized arguments: -x" in done.stderr and done.stdout.strip() == "imported: none status: 2"
        return
    assert done.stdout.startswith("usage: sdplay") and done.stdout.strip().endswith("imported: none status: 0")


def _install_torch():
    spec = importlib.util.spec_from_file_location("install_torch", REPO / "scripts" / "install_torch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torch_plan_prefers_the_cpu_index_and_says_what_the_fallback_downloads(monkeypatch, capsys):
    it = _install_torch()
    monkeypatch.setattr(it, "reachable", lambda url, timeout=5.0: True)
    args, what = it.plan("cpu")
    assert args == [it.TORCH, "--index-url", "https://download.pytorch.org/whl/cpu"] and "CPU build" in what

    monkeypatch.setattr(it, "reachable", lambda url, timeout=5.0: False)
    monkeypatch.setattr(it, "pypi_is_cuda_build", lambda: True)
    args, what = it.plan("cpu")
    assert args == [it.TORCH] and "package index" in what
    told = capsys.readouterr().err
    assert "not reachable" in told and "CUDA build" in told and "2.7 GB" in told and "SDPLAY_TORCH" in told

    assert it.plan("cuda")[0] == [it.TORCH]
    own = "torch==2.13.0 --index-url https://example.org/whl/cu126"
    assert it.plan(own)[0] == ["torch==2.13.0", "--index-url", "https://example.org/whl/cu126"]


def test_a_load_error_comes_alone_without_a_progress_bar(tmp_path):
    done = _cli("generate", "red heart", "--model", "sd14", "--device", "cpu", timeout=900, HF_HOME=str(tmp_path))
    assert done.stderr.startswith("error: The weights of sd-v1-4") and "generating" not in done.stderr
    assert "hf download CompVis/stable-diffusion-v1-4" in done.stderr and "huggingface-cli" not in done.stderr


def test_a_missing_extra_is_named_with_the_command_that_installs_it(monkeypatch):
    from sdplay.extras import missing_extra

    monkeypatch.chdir(REPO)
    ray = missing_extra(ModuleNotFoundError("No module named 'ray'", name="ray"), "serve --ray")
    assert "`sdplay serve --ray` needs sdplay's 'ray' extra (ray is not installed)." in str(ray)
    assert ray.hint.endswith('-m pip install -e ".[ray]"')
    core = missing_extra(ModuleNotFoundError("No module named 'torch'", name="torch"), "generate")
    assert "torch is missing" in str(core) and "scripts/setup.sh" in core.hint
    by_command = missing_extra(ModuleNotFoundError("No module named 'anyio'", name="anyio"), "serve")
    assert "'server' extra" in str(by_command)
    assert missing_extra(ModuleNotFoundError("No module named 'foo'", name="foo"), "models") is None


def test_openmp_threads_sleep_unless_a_one_shot_generate_finds_the_cpus_free(monkeypatch):
    from sdplay.cli import common

    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):  # recorded, so whatever the test sets is undone after it
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.setattr(common, "_cpus_free", lambda: True)
    common.openmp_waiting("serve")
    assert common.os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in common.os.environ
    monkeypatch.delenv("OMP_WAIT_POLICY")
    common.openmp_waiting("generate")
    assert common.os.environ["GOMP_SPINCOUNT"] == "1000" and "OMP_WAIT_POLICY" not in common.os.environ
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setattr(common, "_cpus_free", lambda: False)
    common.openmp_waiting("generate")
    assert common.os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice stays
    common.openmp_waiting("generate")
    assert common.os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in common.os.environ


def test_the_program_ends_at_once_after_a_light_run_with_all_its_output(tmp_path):
    """`python -m sdplay.cli.main` (the `sdplay` program) skips the interpreter's teardown after a light run: the
    exit status and every line of output still arrive, and the image is complete."""
    import json

    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(Path.home())}
    args = ["generate", "red heart", "--device", "cpu", "--steps", "2", "--seed", "5", "--json", "--out", str(tmp_path)]
    done = subprocess.run([sys.executable, "-m", "sdplay.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["seeds"] == [5] and Path(record["paths"][0]).stat().st_size > 1000
    from PIL import Image

    with Image.open(record["paths"][0]) as image:
        image.load()
        assert image.size == (64, 64) and "parameters" in image.text
    bad = subprocess.run([sys.executable, "-m", "sdplay.cli.main", "generate", "x", "--steps", "0"],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and "steps must be between" in bad.stderr
