"""Images per second on Ray Serve with 1..N engine replicas (default: SDXL base 1024x1024, random weights).

Run on the head node of a cluster with N GPUs (see docs/scale-out.md), e.g.

    python benchmarks/ray_scaling.py --replicas 1,2,4,8 --out ray_scaling.jsonl

For each replica count the engine deployment is scaled in place (warm replicas stay), warmed up with one
round of requests, then timed on `--rounds` rounds of `--max-ongoing` requests per replica submitted at once:
images/s = images made / wall time from the first submission to the last result. `--via http` times the
whole server (ingress, job queue, PNG files, gallery) through the native job API instead of the handle.
One JSON row per replica count goes to --out; a table goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--address", default=None, help="Ray cluster (default: `ray start`'s on this machine, else local)")
    p.add_argument("--replicas", default=None, help="counts to try, e.g. 1,2,4,8 (default: 1..number of GPUs)")
    p.add_argument("--model", default="sdxl-base-1.0", help="catalog name or local folder")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--images", type=int, default=1, help="images per request")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of max-ongoing requests per replica")
    p.add_argument("--max-ongoing", type=int, default=2, help="requests each replica holds at once")
    p.add_argument("--gpus-per-replica", type=float, default=None, help="default 1 with GPUs, else 0")
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    p.add_argument("--real-weights", action="store_true", help="load real weights instead of random ones")
    p.add_argument("--via", choices=("handle", "http"), default="handle")
    p.add_argument("--port", type=int, default=8765, help="HTTP port with --via http")
    p.add_argument("--out", type=Path, default=Path("ray_scaling.jsonl"))
    return p.parse_args(argv)


def request_for(args: argparse.Namespace, i: int):
    from sdplay.types import GenerationRequest

    return GenerationRequest(prompt=f"a lighthouse at dusk, study {i}", model=args.model, n_images=args.images,
                             steps=args.steps, width=args.size, height=args.size, seed=i)  # fmt: skip


class HandleRunner:
    """Requests straight to the engine deployment through RayEngineClient (no HTTP, no files)."""

    def __init__(self, args, options):
        from ray import serve

        from sdplay.server.scaleout.client import RayEngineClient
        from sdplay.server.scaleout.options import engine_deployment_options
        from sdplay.server.scaleout.replica import EngineReplica

        engine = serve.deployment(EngineReplica).options(**engine_deployment_options(options))
        handle = serve.run(engine.bind(options), name="sdplay-bench", route_prefix=None)
        self.client = RayEngineClient(handle, options)

    def run(self, request) -> tuple[float, int | None]:
        start = time.perf_counter()
        result = self.client.generate(request)
        return time.perf_counter() - start, result.peak_memory_bytes


class HttpRunner:
    """Requests through the whole server: POST /api/v1/jobs, then poll until done."""

    def __init__(self, args, options):
        import httpx

        from sdplay.server.scaleout.app import deploy
        from sdplay.server.settings import Settings

        settings = Settings(port=args.port, random_weights=not args.real_weights, models_preload=(args.model,),
                            max_steps=max(150, args.steps), max_side=max(2048, args.size))  # fmt: skip
        deploy(settings, options)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=600)

    def run(self, request) -> tuple[float, int | None]:
        body = {k: getattr(request, k) for k in ("prompt", "model", "n_images", "steps", "width", "height", "seed")}
        start = time.perf_counter()
        job = self.http.post("/api/v1/jobs", json=body).json()
        while (view := self.http.get(f"/api/v1/jobs/{job['id']}").json())["status"] not in ("done", "failed"):
            time.sleep(0.05)
        if view["status"] != "done":
            raise RuntimeError(f"job failed: {view['error']}")
        return time.perf_counter() - start, None


def scale_to(args, base, n: int):
    """Deploy (or scale in place) to `n` replicas and return a runner for it."""
    from dataclasses import replace

    options = replace(base, replicas=n)
    return (HttpRunner if args.via == "http" else HandleRunner)(args, options)


def measure(args, runner, n: int) -> dict:
    """Warm up one round, then time `rounds` rounds of requests submitted all at once."""
    per_round = n * args.max_ongoing
    with ThreadPoolExecutor(per_round) as pool:
        list(pool.map(runner.run, [request_for(args, 10_000 + i) for i in range(per_round)]))  # warm-up
        count = per_round * args.rounds
        start = time.perf_counter()
        done = list(pool.map(runner.run, [request_for(args, i) for i in range(count)]))
        wall = time.perf_counter() - start
    ips = count * args.images / wall
    peaks = [p for _, p in done if p is not None]
    return {"replicas": n, "model": args.model, "size": args.size, "steps": args.steps, "via": args.via,
            "requests": count, "images": count * args.images, "wall_s": round(wall, 3), "images_per_s": round(ips, 4),
            "latency_median_s": round(statistics.median(t for t, _ in done), 3),
            "peak_memory_bytes": max(peaks) if peaks else None}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import ray
    from ray import serve

    from sdplay.server.scaleout.options import RayOptions

    args = parse_args(argv)
    ray.init(address=args.address)
    base = RayOptions(num_gpus=args.gpus_per_replica, num_cpus=args.cpus_per_replica, preload=(args.model,),
                      random_weights=not args.real_weights, max_ongoing_requests=args.max_ongoing)  # fmt: skip
    base = base.resolve(ray.cluster_resources())
    counts = [int(c) for c in args.replicas.split(",")] if args.replicas else list(range(1, base.max_replicas + 1))
    rows: list[dict] = []
    print(f"{'replicas':>8} {'images/s':>9} {'median s':>9} {'efficiency':>10}")
    try:
        for n in counts:
            row = measure(args, scale_to(args, base, n), n)
            per_replica = rows[0]["images_per_s"] / rows[0]["replicas"] if rows else row["images_per_s"] / n
            row["efficiency"] = round(row["images_per_s"] / (n * per_replica), 3)  # 1.0 = perfect scaling
            rows.append(row)
            print(f"{n:>8} {row['images_per_s']:>9.3f} {row['latency_median_s']:>9.2f} {row['efficiency']:>10.2f}")
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
