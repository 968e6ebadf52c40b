"""Ray Serve settings: replicas, resources and autoscaling, and the deployment options they become."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from sdplay.errors import InvalidRequest

if TYPE_CHECKING:
    from sdplay.loading import LoadOptions
    from sdplay.server.settings import Settings

APP_NAME = "sdplay"
ENGINE_DEPLOYMENT = "SdplayEngine"
INGRESS_DEPLOYMENT = "SdplayIngress"
HEAD_NODE_RESOURCE = "node:__internal_head__"  # a resource only the head node has: pins the ingress there


@dataclass(frozen=True)
class RayOptions:
    """How sdplay runs on Ray Serve; `None` means "decide from the cluster" (see `resolve`)."""

    address: str | None = None  # None: the cluster `ray start` made on this machine, else a new local one
    app_name: str = APP_NAME
    replicas: int | None = None  # a fixed number of engine replicas (turns autoscaling off)
    min_replicas: int = 1
    max_replicas: int | None = None  # None: one per GPU of the cluster, or 1 without GPUs
    target_ongoing_requests: float = 1.0  # requests per replica the autoscaler aims for
    max_ongoing_requests: int = 2  # requests a replica holds at once (one runs, the next waits)
    upscale_delay_s: float = 10.0
    downscale_delay_s: float = 300.0
    num_gpus: float | None = None  # per replica; None: 1 if the cluster has GPUs, else 0 (CPU replicas)
    num_cpus: float = 1.0  # per replica
    models_per_replica: int = 2  # models kept warm in each replica (least recently used goes first)
    device: str = "auto"  # inside a replica; Ray shows each GPU replica only its own GPU
    random_weights: bool = False
    preload: tuple[str, ...] = ()  # models every replica loads at start (local folders join the catalog)
    stream_latents: bool = True  # send latents with each step so the ingress can draw previews
    start_timeout_s: float = 900.0  # a job no replica has taken by then fails (cold start + model load)
    ingress_max_ongoing: int = 1000  # HTTP requests the ingress holds at once (SSE streams count)

    @classmethod
    def from_args(cls, args: dict[str, str]) -> RayOptions:
        """Options from `key=value` strings (the arguments of `serve run ...:build`), keys named as the fields."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(args) - set(known))
        if unknown:
            raise InvalidRequest(
                f"Unknown option(s) {', '.join(unknown)}.", hint=f"Known options: {', '.join(sorted(known))}."
            )
        values = {}
        for name, raw in args.items():
            try:
                values[name] = _parse(str(raw), known[name].type)
            except ValueError as exc:
                raise InvalidRequest(f"{name}={raw!r} is not valid: {exc}.", field=name) from exc
        return cls(**values).check()

    def check(self) -> RayOptions:
        """Refuse impossible combinations with a message saying what to do."""
        if self.replicas is not None and self.replicas < 1:
            raise InvalidRequest("--ray-replicas must be at least 1.", field="replicas")
        if self.min_replicas < 0:
            raise InvalidRequest("--ray-min-replicas must be 0 or more.", field="min_replicas")
        if self.max_replicas is not None and self.max_replicas < max(1, self.min_replicas):
            raise InvalidRequest(
                f"--ray-max-replicas ({self.max_replicas}) is below --ray-min-replicas ({self.min_replicas}).",
                field="max_replicas",
                hint="Raise the maximum or lower the minimum.",
            )
        for name in ("max_ongoing_requests", "models_per_replica", "ingress_max_ongoing"):
            if getattr(self, name) < 1:
                raise InvalidRequest(f"{name} must be at least 1, got {getattr(self, name)}.", field=name)
        if self.target_ongoing_requests <= 0 or self.num_cpus < 0 or (self.num_gpus or 0) < 0:
            raise InvalidRequest("Requests per replica must be above 0 and resources 0 or more.", field="num_gpus")
        return self

    def resolve(self, cluster: dict[str, float]) -> RayOptions:
        """Fill the `None`s from the cluster's resources (`ray.cluster_resources()`)."""
        gpus = float(cluster.get("GPU", 0))
        num_gpus = self.num_gpus if self.num_gpus is not None else (1.0 if gpus >= 1 else 0.0)
        if self.max_replicas is not None:
            most = self.max_replicas
        elif num_gpus > 0:
            most = max(1, int(gpus // num_gpus))
        else:
            most = 1
        most = max(most, self.min_replicas, 1)
        return replace(self, num_gpus=num_gpus, max_replicas=most).check()

    @property
    def most_replicas(self) -> int:
        """The most engine replicas there can be at once."""
        return self.replicas if self.replicas is not None else max(1, self.max_replicas or 1)

    @property
    def dispatch_slots(self) -> int:
        """Jobs the ingress keeps in flight: enough to fill every replica, so Ray sees the real queue depth."""
        return self.most_replicas * self.max_ongoing_requests


def replica_load_options(settings: Settings, options: RayOptions) -> LoadOptions:
    """The load options of every engine replica: the server's (`sdplay serve` flags, SDPLAY_* variables), as a
    single-machine server gives its engines, with random weights if either the settings or the Ray options ask."""
    return replace(settings.load_options(), random_weights=settings.random_weights or options.random_weights)


def engine_deployment_options(opts: RayOptions) -> dict[str, Any]:
    """`serve.deployment(...)` options of the engine: one replica per GPU (or `num_cpus` CPUs), autoscaled."""
    actor: dict[str, Any] = {"num_cpus": opts.num_cpus, "num_gpus": opts.num_gpus or 0}
    options: dict[str, Any] = {
        "name": ENGINE_DEPLOYMENT,
        "max_ongoing_requests": opts.max_ongoing_requests,
        "ray_actor_options": actor,
        "graceful_shutdown_timeout_s": 30,
    }
    if opts.replicas is not None:
        options["num_replicas"] = opts.replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": opts.min_replicas,
            "initial_replicas": max(1, opts.min_replicas),
            "max_replicas": opts.most_replicas,
            "target_ongoing_requests": opts.target_ongoing_requests,
            "upscale_delay_s": opts.upscale_delay_s,
            "downscale_delay_s": opts.downscale_delay_s,
        }
    return options


def ingress_deployment_options(opts: RayOptions) -> dict[str, Any]:
    """The ingress: one replica on the head node, where the gallery database and image folder live."""
    return {
        "name": INGRESS_DEPLOYMENT,
        "num_replicas": 1,
        "max_ongoing_requests": opts.ingress_max_ongoing,
        "ray_actor_options": {"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.001}},
        "graceful_shutdown_timeout_s": 15,
    }


def _parse(raw: str, annotation: str) -> Any:
    """A `key=value` string as the type its field is annotated with (annotations are strings here)."""
    if annotation == "bool":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if annotation.startswith("tuple"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if annotation.startswith("int"):
        return int(raw)
    if annotation.startswith("float"):
        return float(raw)
    return raw
