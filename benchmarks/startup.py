"""How fast sdplay answers from the command line: --help, argument errors, and the main command end to end.

Each case runs as a fresh process (as a user types it), a few times after one warm-up (warm page cache, .pyc files
written); prints the median wall and CPU seconds (user + system), the target, and one JSON row per case. The floor
is PyTorch's own import (`python -c "import torch"`, with and without the interpreter's teardown). `--phases` adds
the main command's own timings (model load, text encoding, denoising, decoding) and `--imports` the top of
`python -X importtime` for it: where its start-up goes. `--full` also times the full diffusers pipeline
(SDPLAY_LIGHT=0) for comparison.

Usage: python benchmarks/startup.py [--runs 5] [--python .venv/bin/python] [--imports] [--phases] [--full]
                                   [--main-only] [--main-sh CHECKOUT]   (CHECKOUT/scripts/main.sh "red heart", set up)
Run it on an otherwise idle machine; on a loaded one, CPU seconds are the steadier figure (both are printed, with
the load average before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAIN = ["generate", "red heart", "--device", "cpu", "--seed", "0"]

# (name, arguments after `sdplay`, target wall seconds on 2 idle cores, expected exit status)
CASES = [
    ("help", ["--help"], 0.5, 0),
    ("generate --help", ["generate", "--help"], 0.5, 0),
    ("bad size", ["generate", "red heart", "--size", "65x64"], 0.5, 2),
    ("unknown model", ["generate", "red heart", "--model", "no-such-model"], 0.5, 2),
    ("main: generate red heart", MAIN, 2.0, 0),
]
FLOOR = [
    ("floor: import torch", "import torch", None),
    ("floor: import torch, no teardown", "import os, torch; os._exit(0)", None),
]


def environment(**more: str) -> dict[str, str]:
    """The user's environment, offline, with this checkout's sources, and .pyc files written as a user's are."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return env | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")} | more


def sdplay(python: str, args: list[str], out: str) -> list[str]:
    out_args = ["--out", out] if args[0] == "generate" and "--help" not in args else []
    return [python, "-m", "sdplay.cli.main", *args, *out_args]


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall and CPU seconds (user + system, children included) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.returncode


def measure(name: str, cmd: list[str], env: dict[str, str], runs: int, target: float | None, status: int = 0) -> dict:
    timed(cmd, env)  # warm-up: page cache, .pyc files
    results = [timed(cmd, env) for _ in range(runs)]
    bad = [rc for *_, rc in results if rc != status]
    wall = statistics.median(w for w, _, _ in results)
    cpu = statistics.median(c for _, c, _ in results)
    verdict = "" if target is None else f"  target {target:.1f} s  {'ok' if wall <= target else 'over'}"
    print(f"{name:<34} wall {wall:6.2f} s  cpu {cpu:6.2f} s  (min wall {min(w for w, _, _ in results):.2f} s)"
          + verdict + (f"  (exit status {bad[0]}, expected {status})" if bad else ""))  # fmt: skip
    return {"case": name, "wall_median_s": round(wall, 3), "cpu_median_s": round(cpu, 3), "target_s": target,
            "runs": runs}  # fmt: skip


def phases(python: str, out: str) -> dict[str, float]:
    """The main command's own timings (its --json record): model load, text encoding, denoising, decoding."""
    done = subprocess.run(sdplay(python, [*MAIN, "--json"], out), env=environment(), capture_output=True, text=True)
    return json.loads(done.stdout)["timings"]


def import_profile(python: str, out: str, top: int = 15) -> list[tuple[str, float]]:
    """The slowest top-level packages imported by the main command, by their own import time (seconds)."""
    cmd = [python, "-X", "importtime", *sdplay(python, MAIN, out)[1:]]
    stderr = subprocess.run(cmd, env=environment(), capture_output=True, text=True).stderr
    totals: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, _cumulative, name = line.split(":", 1)[1].split("|")
        package = name.strip().split(".")[0]
        totals[package] = totals.get(package, 0.0) + int(own) / 1e6
    return sorted(totals.items(), key=lambda kv: -kv[1])[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--python", default=sys.executable, help="the interpreter to time (default: this one)")
    parser.add_argument("--imports", action="store_true", help="also show where the main command's imports go")
    parser.add_argument("--phases", action="store_true", help="also show the main command's own phase timings")
    parser.add_argument("--full", action="store_true", help="also time the full pipeline (SDPLAY_LIGHT=0)")
    parser.add_argument("--main-only", action="store_true", help="time only the floor and the main command")
    parser.add_argument("--main-sh", type=Path, default=None, metavar="CHECKOUT", help="also time its scripts/main.sh")
    args = parser.parse_args()
    cases = CASES[-1:] if args.main_only else CASES
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, {args.python}")
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for name, code, target in FLOOR:
            rows.append(measure(name, [args.python, "-c", code], environment(), args.runs, target))
        for name, cli_args, target, status in cases:
            rows.append(measure(name, sdplay(args.python, cli_args, out), environment(), args.runs, target, status))
        if args.full:
            env = environment(SDPLAY_LIGHT="0")
            rows.append(measure("main, full pipeline", sdplay(args.python, MAIN, out), env, args.runs, None))
        if args.main_sh is not None:  # the README's command itself, on a checkout that is set up
            env = {k: v for k, v in environment().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
            cmd = [str(args.main_sh / "scripts" / "main.sh"), "red heart", "--seed", "0", "--out", out]
            rows.append(measure('scripts/main.sh "red heart"', cmd, env, args.runs, 2.0))
        if args.phases:
            t = phases(args.python, out)
            print(f"main command's own phases: load {t['load']:.2f} s, text {t['text_encoding']:.2f} s, "
                  f"denoise {t['denoising']:.2f} s (20 steps), decode {t['decoding']:.2f} s")  # fmt: skip
        if args.imports:
            print("own import time of the main command, by top-level package (under -X importtime, which inflates):")
            for package, seconds in import_profile(args.python, out):
                print(f"  {package:<22} {seconds:6.2f} s")
    load = round(os.getloadavg()[0], 2)
    for row in rows:
        print(json.dumps(row | {"load_average_after": load, "cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
