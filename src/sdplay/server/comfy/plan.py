"""Planning a validated graph onto sdplay: every sampling node becomes one GenerationRequest (one job).

Nodes evaluate to small symbolic values (which model, which prompt, which latent); only samplers do work,
through the same job queue as every other API. What sdplay cannot do is refused here, node by node, with
ComfyUI's error shapes, before anything is queued.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sdplay import samplers
from sdplay.errors import SdplayError
from sdplay.plan import Plan as JobPlan
from sdplay.server.comfy.graph import Checked, PromptRefused, error
from sdplay.types import MAX_SEED, GenerationRequest


@dataclass(frozen=True)
class Model:
    name: str


@dataclass(frozen=True)
class Clip:
    model: str


@dataclass(frozen=True)
class Vae:
    model: str


@dataclass(frozen=True)
class Cond:
    text: str
    clip: Clip


@dataclass(frozen=True)
class EmptyLatent:
    width: int
    height: int
    batch: int


@dataclass(frozen=True)
class Sampled:
    index: int  # into Plan.samplings
    model: str


@dataclass(frozen=True)
class Decoded:
    index: int


@dataclass
class Sampling:
    node_id: str
    job: JobPlan  # sdplay's plan of the job: what the engine runs

    @property
    def request(self) -> GenerationRequest:
        return self.job.request


@dataclass
class Output:
    node_id: str
    folder: str  # "output" (SaveImage) or "temp" (PreviewImage)
    samplings: list[int]


@dataclass
class Plan:
    order: list[str]  # node ids in execution order
    classes: dict[str, str]  # node id -> class_type
    samplings: list[Sampling] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)

    def sampling_of(self, node_id: str) -> int | None:
        return next((i for i, s in enumerate(self.samplings) if s.node_id == node_id), None)


class NodeProblem(Exception):
    def __init__(self, err: dict[str, Any]):
        super().__init__(err["message"])
        self.error = err


def unsupported(what: str, hint: str, **extra: Any) -> NodeProblem:
    return NodeProblem(
        error("custom_validation_failed", "Custom validation failed for node", f"{what} {hint}", **extra)
    )


@dataclass(frozen=True)
class Context:
    """What planning needs from the server: its samplers, its request check, and its input images."""

    samplers: list[str]  # sdplay sampler names the engine offers
    plan_job: Callable[[GenerationRequest], JobPlan]  # Service.plan: limits, model, defaults, device
    open_input: Callable[[str], bytes] | None = None  # an uploaded image by LoadImage name


def make_plan(graph: dict[str, dict], checked: Checked, ctx: Context) -> Plan:
    """Evaluate the needed nodes in order; raise PromptRefused naming every node sdplay cannot run."""
    plan = Plan(checked.order, {n: graph[n]["class_type"] for n in checked.order})
    results: dict[str, tuple] = {}
    node_errors: dict[str, Any] = {}
    for nid in checked.order:
        values = checked.values[nid]
        if any(isinstance(v, tuple) and v[0] not in results for v in values.values()):
            continue  # an upstream node failed: it carries the error
        args = {k: (results[v[0]][v[1]] if isinstance(v, tuple) else v) for k, v in values.items()}
        try:
            results[nid] = NODES[plan.classes[nid]](nid, args, plan, ctx)
        except NodeProblem as exc:
            node_errors[nid] = {
                "errors": [exc.error],
                "dependent_outputs": list(checked.outputs),
                "class_type": plan.classes[nid],
            }
    if node_errors:
        details = "\n".join(f"{e['message']}: {e['details']}" for n in node_errors.values() for e in n["errors"])
        raise PromptRefused(
            error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details), node_errors
        )
    return plan


def _checkpoint(nid, a, plan, ctx) -> tuple:
    name = a["ckpt_name"]
    return Model(name), Clip(name), Vae(name)


def _encode(nid, a, plan, ctx) -> tuple:
    return (Cond(a["text"], a["clip"]),)


def _last_layer(nid, a, plan, ctx) -> tuple:
    return (a["clip"],)  # only -1 (the last layer) validates


def _empty_latent(nid, a, plan, ctx) -> tuple:
    return (EmptyLatent(a["width"] // 8 * 8, a["height"] // 8 * 8, a["batch_size"]),)


def _ksampler(nid, a, plan, ctx) -> tuple:
    return _sample(nid, a, a["seed"], a["denoise"], plan, ctx)


def _ksampler_advanced(nid, a, plan, ctx) -> tuple:
    if a["end_at_step"] < a["steps"]:
        raise unsupported(
            f"end_at_step {a['end_at_step']} stops before the last of {a['steps']} steps;",
            "sdplay runs whole schedules: set end_at_step to 10000 (or at least steps).",
            input_name="end_at_step",
        )
    return _sample(nid, a, a["noise_seed"], 1.0, plan, ctx)


def _sample(nid, a, seed: int, denoise: float, plan: Plan, ctx: Context) -> tuple:
    model, pos, neg, latent = a["model"], a["positive"], a["negative"], a["latent_image"]
    if not isinstance(latent, EmptyLatent):
        raise unsupported(
            "latent_image comes from another sampler or an image;",
            "this server samples from an Empty Latent Image only.",
            input_name="latent_image",
        )
    if not math.isclose(denoise, 1.0):
        raise unsupported(
            f"denoise {denoise:g} on an empty latent;", "use denoise 1.0 for text-to-image.", input_name="denoise"
        )
    for name, cond in (("positive", pos), ("negative", neg)):
        if cond.clip.model != model.name:
            raise unsupported(
                f"{name} was encoded with {cond.clip.model}, the sampler runs {model.name};",
                "encode prompts with the CLIP of the same checkpoint.",
                input_name=name,
            )
    sampler = samplers.from_comfy(a["sampler_name"], a["scheduler"], ctx.samplers)
    if sampler is None:
        choices = samplers.comfy_schedulers_for(a["sampler_name"], ctx.samplers)
        raise NodeProblem(
            error(
                "value_not_in_list",
                "Value not in list",
                f"scheduler: '{a['scheduler']}' not in {choices} (for sampler {a['sampler_name']})",
                input_name="scheduler",
                input_config=[choices, {}],
                received_value=a["scheduler"],
            )
        )
    request = GenerationRequest(
        prompt=pos.text,
        negative_prompt=neg.text,
        model=model.name,
        n_images=latent.batch,
        steps=a["steps"],
        guidance=a["cfg"],
        width=latent.width,
        height=latent.height,
        seed=seed % (MAX_SEED + 1),
        sampler=sampler,
    )
    try:
        job = ctx.plan_job(request)
    except SdplayError as exc:
        raise NodeProblem(
            error(
                "exception_during_validation",
                "Exception when validating node",
                str(exc),
                exception_type=type(exc).__name__,
                input_name=exc.field,
            )
        ) from exc
    plan.samplings.append(Sampling(nid, job))
    return (Sampled(len(plan.samplings) - 1, model.name),)


def _decode(nid, a, plan, ctx) -> tuple:
    samples, vae = a["samples"], a["vae"]
    if not isinstance(samples, Sampled):
        raise unsupported(
            "samples is not the output of a sampler;", "decode a KSampler's LATENT.", input_name="samples"
        )
    if vae.model != samples.model:
        raise unsupported(
            f"the VAE of {vae.model} cannot decode latents of {samples.model};",
            "use the VAE of the sampler's checkpoint.",
            input_name="vae",
        )
    return (Decoded(samples.index),)


def _output(folder: str):
    def run(nid, a, plan, ctx) -> tuple:
        plan.outputs.append(Output(nid, folder, [a["images"].index]))
        return ()

    return run


def _never(nid, a, plan, ctx) -> tuple:  # UNETLoader / VAELoader: no value validates
    raise unsupported("this loader has no files here;", "use CheckpointLoaderSimple.")


NODES: dict[str, Callable[..., tuple]] = {
    "CheckpointLoaderSimple": _checkpoint,
    "CLIPTextEncode": _encode,
    "CLIPSetLastLayer": _last_layer,
    "EmptyLatentImage": _empty_latent,
    "KSampler": _ksampler,
    "KSamplerAdvanced": _ksampler_advanced,
    "VAEDecode": _decode,
    "SaveImage": _output("output"),
    "PreviewImage": _output("temp"),
    "UNETLoader": _never,
    "VAELoader": _never,
}
