"""Images per second through `sdplay serve` with and without cross-request batching.

Starts the server in-process on a free loopback port, sends `--requests` single-image jobs from
`--clients` concurrent clients (same model, size, steps, sampler; different prompts and seeds), and
measures wall time until all are done. Warm-up first (model load), then one timed round per mode.

    python benchmarks/server_batching.py                         # real engine, sdplay-emoji
    python benchmarks/server_batching.py --random-weights --model sd-v1-4 --size 64 --steps 4
    python benchmarks/server_batching.py --fake                  # the test suite's fake engine
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx


def serve(engine, tmp: Path, batch: bool, max_batch: int, window_ms: float):
    """Run the app under uvicorn in a thread; return (base_url, stop)."""
    import uvicorn

    from sdplay.server.app import create_app
    from sdplay.server.settings import Settings

    settings = Settings(
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
    body = {"model": args.model, "steps": args.steps, "width": args.size, "height": args.size, "n_images": 1}

    def one(i: int) -> None:
        with httpx.Client(base_url=url, timeout=3600) as c:
            job = c.post("/api/v1/jobs", json={**body, "prompt": f"{tag} emoji {i}", "seed": i}).json()
            while (view := c.get(f"/api/v1/jobs/{job['id']}").json())["status"] in ("queued", "running"):
                time.sleep(0.02)
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
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--window-ms", type=float, default=50.0)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--fake", action="store_true", help="use the test suite's fake engine")
    args = p.parse_args()
    if args.fake:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "server"))
        from fake_engine import FakeEngine

        engine = FakeEngine(step_delay=0.01)
    else:
        from sdplay.engine import Engine

        engine = Engine(random_weights=args.random_weights)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (False, True):
            url, stop = serve(engine, Path(tmp) / str(batch), batch, args.max_batch, args.window_ms)
            try:
                run_round(url, argparse.Namespace(**{**vars(args), "requests": 1, "clients": 1}), "warmup")
                times = [run_round(url, args, f"r{r}") for r in range(args.repeats)]
            finally:
                stop()
            seconds = statistics.median(times)
            row = {"batching": batch, "model": args.model, "size": args.size, "steps": args.steps}
            row |= {"requests": args.requests, "clients": args.clients, "max_batch": args.max_batch if batch else 1}
            row |= {"seconds": round(seconds, 3), "images_per_s": round(args.requests / seconds, 3)}
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    print(f"speed-up from batching: {rows[1]['images_per_s'] / rows[0]['images_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
