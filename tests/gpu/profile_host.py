"""Where the host spends an image's time on the fast path: cProfile of one warm generation.

`python tests/gpu/profile_host.py [model]` on a CUDA machine (default sd-v1-4). Prints sdplay's phase times and the
functions with the most own time; with the GPU busy in graph replays, host time that is not waiting on the device
is what end to end pays beyond the GPU work.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))  # runs from a checkout too

from sdplay import catalog
from sdplay.bench.variants import FAST, Workload, build
from sdplay.devices import resolve_device, synchronize


def main() -> int:
    model = sys.argv[1] if len(sys.argv) > 1 else "sd-v1-4"
    spec = catalog.resolve(model)
    device = resolve_device("cuda:0")
    work = Workload(spec, "a photograph of an astronaut riding a horse on the moon", spec.native_size,
                    spec.native_size, spec.default_steps, spec.default_guidance, spec.default_sampler, "float16",
                    True)  # fmt: skip
    fast = build(FAST, work, device)
    for seed in range(3):
        fast.run(1, seed)
    synchronize(device)
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    fast.run(1, 7)
    synchronize(device)
    profile.disable()
    print(f"{model}: one image {time.perf_counter() - start:.3f} s (under the profiler); phases {fast.timings}")
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats(key).print_stats(25)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
