"""How fast sdplay answers from the command line: --help, argument errors, and the main command end to end.

Each case runs as a fresh process (as a user types it), a few times after one warm-up (warm page cache);
prints the median wall and CPU seconds, the target, and one JSON row per case. `--imports` adds the top of
`python -X importtime` for the main command: where its start-up time goes.

Usage: python benchmarks/startup.py [--runs 5] [--python .venv/bin/python] [--imports] [--main-only]
                                   [--main-sh CHECKOUT]   (also time CHECKOUT/scripts/main.sh "red heart", set up)
Run it on an otherwise idle machine; on a loaded one, CPU seconds are the steadier figure.
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

# (name, arguments after `sdplay`, target wall seconds on 2 idle cores, expected exit status)
CASES = [
    ("help", ["--help"], 0.5, 0),
    ("generate --help", ["generate", "--help"], 0.5, 0),
    ("bad size", ["generate", "red heart", "--size", "65x64"], 0.5, 2),
    ("unknown model", ["generate", "red heart", "--model", "no-such-model"], 0.5, 2),
    ("main: generate red heart", ["generate", "red heart", "--device", "cpu", "--seed", "0"], 2.0, 0),
]


def run_once(python: str, args: list[str], out: str) -> tuple[float, float, int]:
    """Wall and CPU seconds (user + system, children included) of one `sdplay ...` process."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    out_args = ["--out", out] if args[0] == "generate" and "--help" not in args else []
    return timed([python, "-m", "sdplay.cli.main", *args, *out_args], env)


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.returncode


def import_profile(python: str, out: str, top: int = 15) -> list[tuple[str, float]]:
    """The slowest top-level packages imported by the main command, by their own import time (seconds)."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [python, "-X", "importtime", "-m", "sdplay.cli.main", "generate", "red heart", "--device", "cpu",
           "--out", out]  # fmt: skip
    stderr = subprocess.run(cmd, env=env, capture_output=True, text=True).stderr
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
    parser.add_argument("--main-only", action="store_true", help="time only the main command")
    parser.add_argument("--main-sh", type=Path, default=None, metavar="CHECKOUT", help="also time its scripts/main.sh")
    args = parser.parse_args()
    cases = CASES[-1:] if args.main_only else CASES
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.2f}, {args.python}")
    with tempfile.TemporaryDirectory() as out:
        if args.main_sh is not None:
            cases = [*cases, ("scripts/main.sh red heart", None, 2.0, 0)]
        for name, cli_args, target, status in cases:
            if cli_args is None:  # the README's command itself, on a checkout that is set up
                env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
                cmd = [str(args.main_sh / "scripts" / "main.sh"), "red heart", "--seed", "0", "--out", out]
                once = lambda cmd=cmd, env=env: timed(cmd, env)  # noqa: E731
            else:
                once = lambda cli_args=cli_args: run_once(args.python, cli_args, out)  # noqa: E731
            once()  # warm-up: page cache, .pyc files
            runs = [once() for _ in range(args.runs)]
            bad = [rc for *_, rc in runs if rc != status]
            wall = statistics.median(w for w, _, _ in runs)
            cpu = statistics.median(c for _, c, _ in runs)
            verdict = "ok" if wall <= target else "over"
            print(f"{name:<28} wall {wall:6.2f} s  cpu {cpu:6.2f} s  target {target:.1f} s  {verdict}"
                  + (f"  (exit status {bad[0]}, expected {status})" if bad else ""))  # fmt: skip
            row = {"case": name, "wall_median_s": round(wall, 3), "cpu_median_s": round(cpu, 3), "target_s": target,
                   "runs": args.runs, "load_average": round(load, 2), "cpus": os.cpu_count()}  # fmt: skip
            print(json.dumps(row))
        if args.imports:
            print("own import time of the main command, by top-level package (under -X importtime):")
            for package, seconds in import_profile(args.python, out):
                print(f"  {package:<22} {seconds:6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
