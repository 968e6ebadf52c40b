"""`sdplay bench`: sdplay (eager and fast) against plain diffusers, in one process, on the same inputs."""

from sdplay.bench.runner import BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench"]
