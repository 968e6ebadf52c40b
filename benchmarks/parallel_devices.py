"""Images per second through `sdplay serve` on one device, then on several at once (one engine per device).

Starts the server in-process on a free loopback port with one engine per device of `--devices`, first with the
first device only, then with all of them, sends `--requests` single-image jobs from concurrent clients, and
measures wall time until all are done (after an untimed warm-up that loads the model on every device).

    python benchmarks/parallel_devices.py --fake                              # the test suite's fake engines
    python benchmarks/parallel_devices.py --devices cuda:0,cuda:1 --random-weights --model sd-v1-4 --size 512
    python benchmarks/parallel_devices.py --devices cpu,cpu --model sdplay-emoji --steps 8

On a CPU two engines share the same cores, so only the fake engines (which sleep per step, as a device would
compute) show what two devices give; on GPUs the real engines do.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_batching import batch_sizes


def serve(engines: list, devices: tuple[str, ...], tmp: Path):
    """Run the app with these engines (one worker each) under uvicorn in a thread; return (base_url, stop)."""
    import socket
    import threading

    import uvicorn

    from sdplay.server.app import create_app
    from sdplay.server.settings import Settings

    settings = Settings(output_dir=tmp / "out", gallery_db=tmp / "gallery.sqlite3", max_queue=1024, max_batch=1,
                        batch_window_ms=0.0, devices=devices)  # fmt: skip
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engines), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(30)
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


def run_round(url: str, args, requests: int, clients: int, tag: str) -> float:
    body = {"model": args.model, "steps": args.steps, "width": args.size, "height": args.size, "n_images": 1}

    def one(i: int) -> None:
        with httpx.Client(base_url=url, timeout=3600) as c:
            job = c.post("/api/v1/jobs", json={**body, "prompt": f"{tag} {i}", "seed": i}).json()
            while (view := c.get(f"/api/v1/jobs/{job['id']}").json())["status"] in ("queued", "running"):
                time.sleep(0.02)
            if view["status"] != "done":
                raise RuntimeError(f"job failed: {view['error']}")

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    return time.perf_counter() - start


def make_engines(args, devices: tuple[str, ...]) -> list:
    if args.fake:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "server"))
        from fake_engine import FakeEngine

        return [FakeEngine(step_delay=args.step_delay, device=d) for d in devices]
    from sdplay.accel.runtime import configure_torch
    from sdplay.engine import Engine

    configure_torch()
    return [Engine(device=d, random_weights=args.random_weights, max_models=1) for d in devices]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="cpu,cpu", help="comma-separated devices, one engine each")
    p.add_argument("--model", default="sdplay-emoji")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--requests", type=int, default=16, help="jobs per round")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--fake", action="store_true", help="the test suite's fake engines (sleep per step)")
    p.add_argument("--step-delay", type=float, default=0.02, help="--fake: seconds per step")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args()
    devices = tuple(d.strip() for d in args.devices.split(",") if d.strip())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in sorted({1, len(devices)}):
            used = devices[:count]
            url, stop = serve(make_engines(args, used), used, Path(tmp) / str(count))
            try:
                run_round(url, args, 2 * count, 2 * count, "warmup")  # loads the model on every device
                times = [run_round(url, args, args.requests, 2 * count, f"r{r}") for r in range(args.repeats)]
                assert batch_sizes(url)[1] >= args.requests  # every job ran
            finally:
                stop()
            seconds = statistics.median(times)
            row = {"devices": list(used), "engine": "fake" if args.fake else "real", "model": args.model,
                   "size": args.size, "steps": args.steps, "requests": args.requests,
                   "median_s": round(seconds, 3), "images_per_s": round(args.requests / seconds, 3),
                   "runs_s": [round(t, 3) for t in times]}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    if len(rows) > 1:
        print(f"{len(devices)} devices over 1: {rows[-1]['images_per_s'] / rows[0]['images_per_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
