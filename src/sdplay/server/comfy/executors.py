"""Every node class sdplay runs -> the function that plans it."""

from __future__ import annotations

from sdplay.server.comfy import image_nodes, plan

EXECUTORS: dict[str, plan.Executor] = {**plan.NODES, **image_nodes.NODES}
