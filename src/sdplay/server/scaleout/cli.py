"""`sdplay serve --ray`: the flags, and running the server as a Ray Serve application (imports Ray only then)."""

from __future__ import annotations

import argparse
import contextlib
import time

from sdplay.errors import InvalidRequest
from sdplay.extras import missing_extra

# flag -> RayOptions field
FLAGS = {
    "ray_address": "address",
    "ray_replicas": "replicas",
    "ray_min_replicas": "min_replicas",
    "ray_max_replicas": "max_replicas",
    "ray_target_ongoing": "target_ongoing_requests",
    "ray_max_ongoing": "max_ongoing_requests",
    "ray_gpus_per_replica": "num_gpus",
    "ray_cpus_per_replica": "num_cpus",
    "ray_models_per_replica": "models_per_replica",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The --ray flags of `sdplay serve`."""
    g = parser.add_argument_group("scale-out on Ray Serve (docs/scale-out.md)")
    g.add_argument("--ray", action="store_true", default=None, help="serve on a Ray cluster, one replica per GPU")
    g.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        default=None,
        help="cluster to join (default: `ray start`'s on this machine)",
    )
    g.add_argument(
        "--ray-replicas", metavar="N", type=int, default=None, help="fixed number of engine replicas (no autoscaling)"
    )
    g.add_argument(
        "--ray-min-replicas", metavar="N", type=int, default=None, help="autoscaling minimum (default 1; 0 allowed)"
    )
    g.add_argument(
        "--ray-max-replicas", metavar="N", type=int, default=None, help="autoscaling maximum (default: one per GPU)"
    )
    g.add_argument(
        "--ray-target-ongoing",
        metavar="X",
        type=float,
        default=None,
        help="requests per replica to aim for (default 1)",
    )
    g.add_argument(
        "--ray-max-ongoing", metavar="N", type=int, default=None, help="requests one replica holds at once (default 2)"
    )
    g.add_argument(
        "--ray-gpus-per-replica",
        metavar="X",
        type=float,
        default=None,
        help="default 1 if the cluster has GPUs, else 0",
    )
    g.add_argument(
        "--ray-cpus-per-replica", metavar="X", type=float, default=None, help="CPUs reserved per replica (default 1)"
    )
    g.add_argument(
        "--ray-models-per-replica", metavar="N", type=int, default=None, help="models kept warm per replica (default 2)"
    )


def wants_ray(args: argparse.Namespace) -> bool:
    """True with --ray; a --ray-* option without --ray is a mistake worth saying."""
    given = [flag for flag in FLAGS if getattr(args, flag, None) is not None]
    if getattr(args, "ray", None):
        return True
    if given:
        name = "--" + given[0].replace("_", "-")
        raise InvalidRequest(f"{name} only applies to the Ray server.", field=given[0], hint="Add --ray.")
    return False


def options_from_args(args: argparse.Namespace):
    from sdplay.server.scaleout.options import RayOptions

    values = {field: getattr(args, flag) for flag, field in FLAGS.items() if getattr(args, flag, None) is not None}
    return RayOptions(**values).check()


def run_ray(args: argparse.Namespace, settings) -> int:
    """Join (or start) a Ray cluster, deploy the application, serve until Ctrl-C, then remove it."""
    options = options_from_args(args)
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise (missing_extra(exc, "serve --ray") or exc) from exc
    from sdplay.server.scaleout.app import deploy

    ray.init(address=options.address)
    try:
        deploy(settings, options)
        resolved = serve.status().applications[options.app_name].deployments
        print(f"sdplay on Ray Serve at http://{settings.host}:{settings.port}  (deployments: {', '.join(resolved)})")
        print("Ctrl-C stops the application; `ray status` shows the cluster, /api/v1/cluster the replicas at work.")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping")
    finally:
        with contextlib.suppress(Exception):  # nothing to remove if the deployment never started
            serve.delete(options.app_name)
        ray.shutdown()
    return 0
