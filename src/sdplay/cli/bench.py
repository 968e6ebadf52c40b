"""`sdplay bench`: sdplay eager and fast against plain diffusers; JSON and a markdown table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sdplay.cli.common import parse_size, quiet_libraries


def register(sub) -> None:
    about = (
        "Time sdplay (eager and fast path) and plain diffusers on the same device and inputs, interleaved: "
        "per phase, end to end, images/s, peak memory, compile time, MFU."
    )
    p = sub.add_parser("bench", help="benchmark sdplay against plain diffusers", description=about)
    p.add_argument("--model", "-m", action="append", help="model to benchmark (repeatable; default sd-v1-4)")
    p.add_argument(
        "--variants",
        default="diffusers,sdplay-eager,sdplay-fast",
        help="comma list of diffusers, diffusers-compile[mode=max-autotune] (the diffusers + torch.compile peer), "
        "sdplay-eager, sdplay-fast[compile=none,vae=off] (fast-path options)",
    )
    p.add_argument("--random-weights", action="store_true", help="full-size architectures with random weights")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--steps", type=int, default=None, help="default: the model's")
    p.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: native)")
    p.add_argument("--runs", type=int, default=5, help="timed runs at batch 1 (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=8, help="throughput batch: largest up to this that fits")
    p.add_argument("--large-runs", type=int, default=2)
    p.add_argument("--unet-iters", type=int, default=30)
    p.add_argument("--check", action="store_true", help="also measure fast-path exactness against eager")
    p.add_argument("--restart", action="store_true", help="also time the first image in a fresh process")
    p.add_argument("--restart-variants", default=None, help="which variants --restart covers (default: no [options])")
    p.add_argument("--json", type=Path, default=None, help="write the full report here")
    p.add_argument("--markdown", type=Path, default=None, help="write the table here")
    p.set_defaults(func=run)


def variant_list(text: str) -> tuple[str, ...]:
    """Split on commas outside brackets (fast-path options inside them keep theirs)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return tuple(v for v in out if v)


def command_line(args: argparse.Namespace) -> str:
    """The bench command that reproduces this run (every option spelled out)."""
    import shlex

    parts = ["sdplay", "bench"]
    for key, value in sorted(vars(args).items()):
        if key in ("func", "command", "verbose") or value in (None, False):
            continue
        flag = "--" + key.replace("_", "-")
        for v in value if isinstance(value, list) else [value]:
            parts += [flag] if v is True else [flag, shlex.quote(str(v))]
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    from sdplay.bench import BenchConfig, run_bench
    from sdplay.bench.report import to_markdown, write

    width, height = parse_size(args.size)
    chosen = variant_list(args.restart_variants) if args.restart_variants else None
    cfg = BenchConfig(models=tuple(args.model or ["sd-v1-4"]), variants=variant_list(args.variants),
                      device=args.device, dtype=args.dtype, steps=args.steps, width=width, height=height,
                      runs=args.runs, warmup=args.warmup, max_batch=args.max_batch, large_runs=args.large_runs,
                      unet_iters=args.unet_iters, random_weights=args.random_weights, check=args.check,
                      restart=args.restart or bool(args.restart_variants), restart_variants=chosen)  # fmt: skip
    command = command_line(args)

    def save(partial: dict) -> None:
        kept = {k: v for k, v in partial.items() if k != "save"}
        write(kept | {"command": command, "partial": True}, args.json, None)

    report = run_bench(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True), save=save)
    report["command"] = command
    write(report, args.json, args.markdown)
    print(to_markdown(report))
    return 0
