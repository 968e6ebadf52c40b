"""Planning a validated graph onto sdplay: every sampling node becomes one GenerationRequest (one job).

Nodes evaluate to small symbolic values (which model, which prompt, which latent); only samplers do work,
through the same job queue as every other API. What sdplay cannot do is refused here, node by node, with
ComfyUI's error shapes, before anything is queued.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from sdplay import samplers
from sdplay.errors import InvalidRequest, SdplayError
from sdplay.plan import Plan as JobPlan
from sdplay.server.comfy.graph import Checked, PromptRefused, error
from sdplay.types import MAX_SEED, GenerationRequest

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class Model:
    name: str
    loras: tuple[tuple[str, float], ...] = ()  # (name, strength on the UNet)


@dataclass(frozen=True)
class Clip:
    model: str
    loras: tuple[tuple[str, float], ...] = ()  # (name, strength on the text encoders)
    skip: int | None = None  # sdplay's (A1111's) clip skip: 2 = the layer before the last


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


@dataclass(frozen=True, eq=False)
class Pixels:
    image: Image.Image  # RGB


@dataclass(frozen=True, eq=False)
class Mask:
    image: Image.Image  # L, white = repaint


@dataclass(frozen=True, eq=False)
class Encoded:
    """A VAE-encoded input image: the sampler runs image-to-image, or inpainting when it carries a mask."""

    image: Image.Image  # RGB, sides multiples of 8
    model: str
    mask: Image.Image | None = None
    fill: str = "original"  # sdplay's inpaint_fill for the masked area


@dataclass(frozen=True)
class Upscaled:
    """A sampler's latent, upscaled: a second sampler on it is sdplay's hires fix of the first."""

    index: int
    model: str
    width: int
    height: int
    upscaler: str


@dataclass(frozen=True)
class Sampled:
    index: int  # into Plan.samplings
    model: str
    stage: int = 1  # 2: after a hires fix on it


@dataclass(frozen=True)
class Decoded:
    index: int
    stage: int = 1


@dataclass
class Sampling:
    node_id: str
    job: JobPlan  # sdplay's plan of the job: what the engine runs
    stages: int = 1  # 2: a second sampler made it a hires fix

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
    decodes: dict[str, Decoded] = field(default_factory=dict)  # VAEDecode node id -> what it decodes

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
    find_embedding: Callable[[str], Any] | None = None  # an embedding by name (raises InvalidRequest if unknown)


Executor = Callable[..., tuple]


def make_plan(graph: dict[str, dict], checked: Checked, ctx: Context, executors: dict[str, Executor]) -> Plan:
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
            results[nid] = executors[plan.classes[nid]](nid, args, plan, ctx)
        except NodeProblem as exc:
            node_errors[nid] = {
                "errors": [exc.error],
                "dependent_outputs": list(checked.outputs),
                "class_type": plan.classes[nid],
            }
    for nid, decoded in plan.decodes.items():
        if decoded.stage < plan.samplings[decoded.index].stages and nid not in node_errors:
            problem = unsupported(
                "this decodes the first pass of a hires fix;",
                "sdplay keeps only the final image: decode the second sampler's LATENT.",
                input_name="samples",
            )
            node_errors[nid] = {
                "errors": [problem.error],
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


# ComfyUI's textual-inversion syntax: `embedding:name` (weighted as `(embedding:name:1.2)`)
_EMBEDDING = re.compile(r"\bembedding:([^\s,()\[\]:<>|]+)")
_EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")


def _encode(nid, a, plan, ctx) -> tuple:
    return (Cond(_embedding_names(a["text"], ctx), a["clip"]),)


def _embedding_names(text: str, ctx: Context) -> str:
    """`embedding:name` -> `name`, the word sdplay's embeddings folder knows; an unknown name is refused."""

    def name(match: re.Match) -> str:
        stem = match.group(1)
        for suffix in _EMBEDDING_SUFFIXES:
            stem = stem.removesuffix(suffix)
        if ctx.find_embedding is not None:
            try:
                ctx.find_embedding(stem)
            except InvalidRequest as exc:
                raise unsupported(exc.message, exc.hint or "", input_name="text") from exc
        return stem

    return _EMBEDDING.sub(name, text)


def _last_layer(nid, a, plan, ctx) -> tuple:
    layer = a["stop_at_clip_layer"]  # ComfyUI's -1 is the last layer: A1111's clip skip 1
    return (replace(a["clip"], skip=None if layer == -1 else -layer),)


def _lora(nid, a, plan, ctx) -> tuple:
    """LoraLoader: the LoRA on the model (strength_model) and the text encoders (strength_clip)."""
    model, clip, name = a["model"], a["clip"], a["lora_name"].removesuffix(".safetensors")
    if name in {n for n, _ in model.loras}:
        raise unsupported(f"LoRA {name} is loaded twice;", "load each LoRA once.", input_name="lora_name")
    return (
        replace(model, loras=(*model.loras, (name, a["strength_model"]))),
        replace(clip, loras=(*clip.loras, (name, a["strength_clip"]))),
    )


def _lora_refs(model: Model, clip: Clip) -> tuple:
    """sdplay's LoRA list: each LoRA with its UNet and text-encoder strengths (0 where it was not applied)."""
    from sdplay.prompt_syntax import LoraRef

    unet, text = dict(model.loras), dict(clip.loras)
    names = list(dict.fromkeys([*unet, *text]))
    return tuple(LoraRef(n, weight=unet.get(n, 0.0), te_weight=text.get(n, 0.0)) for n in names)


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
    for name, cond in (("positive", pos), ("negative", neg)):
        if cond.clip.model != model.name:
            raise unsupported(
                f"{name} was encoded with {cond.clip.model}, the sampler runs {model.name};",
                "encode prompts with the CLIP of the same checkpoint.",
                input_name=name,
            )
    if pos.clip != neg.clip:
        raise unsupported(
            "positive and negative were encoded with different CLIP settings (LoRAs, last layer);",
            "encode both with the same CLIP.",
            input_name="negative",
        )
    sampler = _sampler(a, ctx)
    request = GenerationRequest(
        prompt=pos.text,
        negative_prompt=neg.text,
        model=model.name,
        steps=a["steps"],
        guidance=a["cfg"],
        seed=seed % (MAX_SEED + 1),
        sampler=sampler,
        loras=_lora_refs(model, pos.clip),
        clip_skip=pos.clip.skip,
    )
    if isinstance(latent, Upscaled):
        return _hires(nid, request, latent, denoise, plan, ctx)
    if isinstance(latent, EmptyLatent):
        if not math.isclose(denoise, 1.0):
            raise unsupported(
                f"denoise {denoise:g} on an empty latent;", "use denoise 1.0 for text-to-image.", input_name="denoise"
            )
        request = request.with_(n_images=latent.batch, width=latent.width, height=latent.height)
    elif isinstance(latent, Encoded):
        if latent.model != model.name:
            raise unsupported(
                f"the image was encoded with the VAE of {latent.model}, the sampler runs {model.name};",
                "encode with the VAE of the sampler's checkpoint.",
                input_name="latent_image",
            )
        request = request.with_(
            width=latent.image.width,
            height=latent.image.height,
            init_image=latent.image,
            mask=latent.mask,
            strength=denoise,
            mask_blur=0,
            inpaint_fill=latent.fill,
        )
    else:
        raise unsupported(
            "latent_image is the raw output of another sampler;",
            "upscale it first (LatentUpscale), which makes a hires fix.",
            input_name="latent_image",
        )
    plan.samplings.append(Sampling(nid, _plan_job(request, ctx)))
    return (Sampled(len(plan.samplings) - 1, model.name),)


def _sampler(a, ctx: Context) -> str:
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
    return sampler


def _plan_job(request: GenerationRequest, ctx: Context) -> JobPlan:
    try:
        return ctx.plan_job(request)
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


HIRES_SAME = ("prompt", "negative_prompt", "guidance", "sampler", "seed", "loras", "clip_skip")


def _hires(nid, second: GenerationRequest, latent: Upscaled, denoise: float, plan: Plan, ctx: Context) -> tuple:
    """A sampler on an upscaled latent: sdplay's hires fix of the first sampler (one job, two passes)."""
    from sdplay.types import HiresFix

    first = plan.samplings[latent.index]
    if first.stages > 1:
        raise unsupported("this is a third pass;", "sdplay's hires fix has two passes.", input_name="latent_image")
    differ = [f for f in HIRES_SAME if getattr(second, f) != getattr(first.request, f)]
    if differ:
        raise unsupported(
            f"the second pass differs from the first in {', '.join(differ)};",
            "sdplay's hires fix runs both passes with the same prompts, cfg, sampler and seed.",
            input_name="latent_image",
        )
    hires = HiresFix(
        width=latent.width, height=latent.height, upscaler=latent.upscaler, steps=second.steps, strength=denoise
    )
    job = _plan_job(first.request.with_(hires=hires), ctx)
    plan.samplings[latent.index] = Sampling(first.node_id, job, stages=2)
    return (Sampled(latent.index, latent.model, stage=2),)


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
    plan.decodes[nid] = Decoded(samples.index, samples.stage)
    return (plan.decodes[nid],)


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
    "LoraLoader": _lora,
    "EmptyLatentImage": _empty_latent,
    "KSampler": _ksampler,
    "KSamplerAdvanced": _ksampler_advanced,
    "VAEDecode": _decode,
    "SaveImage": _output("output"),
    "PreviewImage": _output("temp"),
    "UNETLoader": _never,
    "VAELoader": _never,
}
