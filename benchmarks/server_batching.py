"""Images per second through `sdplay serve` with and without cross-request batching.

Starts the server in-process on a free loopback port, sends `--requests` single-image jobs from
`--clients` concurrent clients (same model, size, steps, sampler; different prompts and seeds), and
measures wall time until all are done. Warm-up first (model load), then one timed round per mode.

    python benchmarks/server_batching.py                         # real engine, sdplay-emoji
    python benchmarks/server_batching.py --random-weights --model sd-v1-4 --size 64 --steps 4
    python benchmarks/server_batching.py --fake                  # the test suite's fake engine
    # MLPerf's text-to-image setting on a GPU: SDXL 1024x1024, 20 steps Euler, 8 concurrent clients
    python benchmarks/server_batching.py --random-weights --model sdxl-base-1.0 --size 1024 --steps 20 \
        --sampler Euler --clients 8 --requests 32 --batches 1,2,4,8 --warmup-requests 16 --json sdxl-load.json

Each client sends its next request as soon as its last one is done (closed loop), so `--clients` is the
concurrency. Warm-up requests run at the same concurrency before timing, so graph captures for the batch
sizes that occur are not timed. Images are written and added to the gallery as in normal serving.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx


def make_engine(fake: bool, random_weights: bool = False):
    """The test suite's fake engine, or a real one set up as `sdplay serve` sets up its engines."""
    if fake:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "server"))
        from fake_engine import FakeEngine

        return FakeEngine(step_delay=0.01)
    from sdplay.accel.runtime import configure_torch
    from sdplay.engine import Engine
    from sdplay.server.settings import Settings

    configure_torch()  # as `sdplay serve` does: the persistent compile cache, recompile limits (it once did not)
    # $SDPLAY_FAST and the other SDPLAY_* load settings, as the server's default_engines reads them
    return Engine(Settings.from_env().load_options(), random_weights=random_weights)


def serve(engine, tmp: Path, batch: bool, max_batch: int, window_ms: float):
    """Run the app under uvicorn in a thread; return (base_url, stop)."""
    import uvicorn

    from sdplay.server.app import create_app
    from sdplay.server.settings import Settings

    settings = Settings.from_env(  # the SDPLAY_* settings, as `sdplay serve` reads them
        output_dir=tmp / "out", gallery_db=tmp / "gallery.sqlite3", max_queue=1024,
        max_batch=max_batch if batch else 1, batch_window_ms=window_ms if batch else 0.0,
    )  # fmt: skip
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engine), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(30)
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


def run_round(url: str, args, tag: str) -> float:
    """Seconds for all requests to finish."""
    if args.api == "openai":  # one blocking call per image, as the OpenAI client makes it
        body = {"model": args.model, "n": 1, "size": f"{args.size}x{args.size}", "response_format": "url",
                "steps": args.steps}  # fmt: skip
        path = "/v1/images/generations"
    else:
        body = {"model": args.model, "steps": args.steps, "width": args.size, "height": args.size, "n_images": 1}
        path = "/api/v1/jobs"
    if args.sampler:
        body["sampler"] = args.sampler

    def one(i: int) -> None:
        with httpx.Client(base_url=url, timeout=3600) as c:
            reply = c.post(path, json={**body, "prompt": f"{tag} emoji {i}", "seed": i})
            if args.api == "openai":
                if reply.status_code != 200:
                    raise RuntimeError(f"request failed: {reply.text[:500]}")
                return
            job = reply.json()
            while (view := c.get(f"/api/v1/jobs/{job['id']}").json())["status"] in ("queued", "running"):
                time.sleep(args.poll_s)
            if view["status"] != "done":
                raise RuntimeError(f"job failed: {view['error']}")

    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(one, range(args.requests)))
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sdplay-emoji")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--batches", default="1,8", help="max batch per mode, comma-separated (1: no batching)")
    p.add_argument("--window-ms", type=float, default=50.0)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--sampler", default=None, help="default: the model's")
    p.add_argument("--warmup-requests", type=int, default=1, help="untimed requests (at --clients concurrency)")
    p.add_argument(
        "--api",
        choices=("openai", "native"),
        default="openai",
        help="openai: blocking POST /v1/images/generations; native: POST /api/v1/jobs, then poll",
    )
    p.add_argument("--poll-s", type=float, default=0.05, help="native API: seconds between status polls")
    p.add_argument("--label", default="", help="a name for this configuration in the rows")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--fake", action="store_true", help="use the test suite's fake engine")
    args = p.parse_args()
    engine = make_engine(args.fake, args.random_weights)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for max_batch in [int(b) for b in args.batches.split(",")]:
            batch = max_batch > 1
            url, stop = serve(engine, Path(tmp) / str(max_batch), batch, max_batch, args.window_ms)
            try:
                warm = min(args.warmup_requests, args.clients)
                run_round(url, argparse.Namespace(**{**vars(args), "requests": args.warmup_requests, "clients": warm}),
                          "warmup")  # fmt: skip
                before = batch_sizes(url)
                times = [run_round(url, args, f"r{r}") for r in range(args.repeats)]
                after = batch_sizes(url)
            finally:
                stop()
            seconds = statistics.median(times)
            row = {"label": args.label, "fast_options": os.environ.get("SDPLAY_FAST", ""), "api": args.api}
            row |= {"batching": batch, "model": args.model, "size": args.size}
            row |= {"steps": args.steps, "sampler": args.sampler, "requests": args.requests, "clients": args.clients}
            row |= {"max_batch": max_batch, "window_ms": args.window_ms if batch else 0}
            row |= {"seconds": round(seconds, 3), "images_per_s": round(args.requests / seconds, 3)}
            row |= {"runs_s": [round(t, 3) for t in times], "mean_batch": _mean_batch(before, after)}
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    if len(rows) > 1:
        print(f"best over first: {max(r['images_per_s'] for r in rows) / rows[0]['images_per_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "versions": _versions()}, indent=1))
    return 0


def batch_sizes(url: str) -> tuple[float, float]:
    """(sum, count) of the server's batch-size histogram."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    values = {}
    for line in text.splitlines():
        for name in ("sdplay_batch_requests_sum", "sdplay_batch_requests_count"):
            if line.startswith(name + " ") or line.startswith(name + "{"):
                values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return values.get("sdplay_batch_requests_sum", 0.0), values.get("sdplay_batch_requests_count", 0.0)


def _mean_batch(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    n = after[1] - before[1]
    return round((after[0] - before[0]) / n, 2) if n else None


def _versions() -> dict:
    from sdplay.engine import versions

    return versions()


if __name__ == "__main__":
    sys.exit(main())
