"""The CLI as a shell user meets it: exit codes, messages, no tracebacks for user errors."""

import json
import subprocess
import sys


def sdplay(*args, check=False):
    return subprocess.run([sys.executable, "-m", "sdplay.cli.main", *args], capture_output=True, text=True, check=check)


def test_generate_writes_pngs_and_prints_paths(tiny_models, tmp_path):
    out = tmp_path / "out"
    res = sdplay("generate", "red heart", "--model", str(tiny_models["sd1"]), "-n", "2", "--size", "64x64",
                 "--steps", "2", "--seed", "5", "--out", str(out), check=True)  # fmt: skip
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2
    assert all(str(p) in res.stdout for p in pngs)
    assert "(seed 5)" in res.stdout and "(seed 6)" in res.stdout
    assert "Traceback" not in res.stderr


def test_generate_json(tiny_models, tmp_path):
    res = sdplay("generate", "x", "--model", str(tiny_models["sd2"]), "--size", "64", "--steps", "1",
                 "--seed", "1", "--out", str(tmp_path), "--json", check=True)  # fmt: skip
    data = json.loads(res.stdout)
    assert data["seeds"] == [1] and data["metadata"]["family"] == "sd2"


def test_fast_options_reach_the_fast_path_and_bad_ones_are_refused(tiny_models, tmp_path):
    base = ["generate", "x", "--model", str(tiny_models["sd1"]), "--steps", "4", "--seed", "1", "--out", str(tmp_path)]
    res = sdplay(*base, "--json", "--fast-options", "deepcache=2", check=True)
    fast = json.loads(res.stdout)["metadata"]["optimisation"]["fast_path"]
    assert fast["deepcache_interval"] == 2 and fast["config"]["compile"] == "none"
    res = sdplay(*base, "--fast-options", "turbo=1")
    assert res.returncode == 2 and "Unknown fast-path option" in res.stderr and "Traceback" not in res.stderr


def test_user_errors_exit_2_without_traceback(tiny_models, tmp_path):
    model = str(tiny_models["sd1"])
    cases = [
        (["--size", "100x64"], "multiple of 8"),
        (["--steps", "0"], "steps must be between"),
        (["--guidance", "nan"], "guidance must be"),
        (["--sampler", "Eular"], "Choose one of"),
        (["-n", "99"], "n_images must be between"),
        (["--device", "cuda:7"], "Available: cpu"),
        (["--out", "/proc/sdplay-cannot-write"], "Cannot write"),
    ]
    for extra, words in cases:
        res = sdplay("generate", "x", "--model", model, "--steps", "1", *extra)
        assert res.returncode == 2, (extra, res.stderr)
        assert words in res.stderr and "Traceback" not in res.stderr, (extra, res.stderr)
    res = sdplay("generate", "x", "--model", "nope-model")
    assert res.returncode == 2 and "sd-v1-4" in res.stderr


def test_models_and_devices_commands():
    models = json.loads(sdplay("models", "--json", check=True).stdout)
    names = [m["name"] for m in models["models"]]
    assert names[:4] == ["sdplay-emoji", "sd-v1-4", "sd-v2-1", "sdxl-base-1.0"]
    assert "DPM++ 2M Karras" in models["samplers"]
    tree = sdplay("devices", check=True).stdout
    assert tree.startswith("Platform #0:") and "[cpu]" in tree
    devices = json.loads(sdplay("devices", "--json", check=True).stdout)
    assert devices[-1]["kind"] == "cpu"


def test_embedded_model_says_once_when_it_knows_no_word_of_the_prompt(tmp_path):
    base = ["--steps", "1", "--seed", "1", "--out", str(tmp_path)]
    res = sdplay("generate", "quantum chromodynamics", *base, check=True)  # the default model: sdplay-emoji
    assert res.stdout.count("sdplay-emoji knows emoji names; none of the words of this prompt") == 1
    res = sdplay("generate", "a cat", *base, check=True)
    assert "vocabulary" not in res.stdout
