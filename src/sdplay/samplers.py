"""Sampler names as users know them from A1111, mapped to diffusers scheduler configurations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdplay.errors import InvalidRequest


@dataclass(frozen=True)
class SamplerSpec:
    """A named sampler: a diffusers scheduler class plus config overrides."""

    name: str
    scheduler: str
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


_KARRAS = {"use_karras_sigmas": True}
_SDE = {"algorithm_type": "sde-dpmsolver++"}

SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", aliases=("dpmpp_2m",)),
    SamplerSpec("DPM++ 2M Karras", "DPMSolverMultistepScheduler", _KARRAS, ("dpmpp_2m_karras",)),
    SamplerSpec("DPM++ 2M SDE", "DPMSolverMultistepScheduler", _SDE, ("dpmpp_2m_sde",)),
    SamplerSpec("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", {**_SDE, **_KARRAS}, ("dpmpp_2m_sde_karras",)),
    SamplerSpec("DPM++ SDE", "DPMSolverSDEScheduler", aliases=("dpmpp_sde",)),
    SamplerSpec("DPM++ SDE Karras", "DPMSolverSDEScheduler", _KARRAS, ("dpmpp_sde_karras",)),
    SamplerSpec("DPM2", "KDPM2DiscreteScheduler", aliases=("dpm_2",)),
    SamplerSpec("DPM2 Karras", "KDPM2DiscreteScheduler", _KARRAS, ("dpm_2_karras",)),
    SamplerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler", aliases=("dpm_2_ancestral",)),
    SamplerSpec("DPM2 a Karras", "KDPM2AncestralDiscreteScheduler", _KARRAS, ("dpm_2_ancestral_karras",)),
    SamplerSpec("Euler", "EulerDiscreteScheduler", aliases=("euler", "k_euler")),
    SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler", aliases=("euler_a", "euler_ancestral", "k_euler_a")),
    SamplerSpec("Heun", "HeunDiscreteScheduler", aliases=("heun",)),
    SamplerSpec("LMS", "LMSDiscreteScheduler", aliases=("lms", "k_lms")),
    SamplerSpec("LMS Karras", "LMSDiscreteScheduler", _KARRAS, ("lms_karras",)),
    SamplerSpec("DDIM", "DDIMScheduler", aliases=("ddim",)),
    SamplerSpec("PNDM", "PNDMScheduler", aliases=("plms", "pndm")),
    SamplerSpec("UniPC", "UniPCMultistepScheduler", aliases=("unipc", "uni_pc")),
    SamplerSpec("DEIS", "DEISMultistepScheduler", aliases=("deis",)),
)

# A1111 >= 1.9 splits "DPM++ 2M Karras" into sampler "DPM++ 2M" + schedule type "Karras".
SCHEDULE_TYPES = ("Automatic", "Uniform", "Karras")


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def get_sampler(name: str, schedule: str | None = None) -> SamplerSpec:
    """Look a sampler up by A1111 name or alias, optionally with a split schedule type."""
    spec = _find(name)
    if schedule and schedule.lower() not in ("automatic", "uniform", ""):
        if schedule.lower() != "karras":
            raise InvalidRequest(
                f"Unknown schedule type {schedule!r}.",
                field="scheduler",
                hint=f"Use one of: {', '.join(SCHEDULE_TYPES)}.",
            )
        spec = _find(spec.name if spec.name.endswith("Karras") else f"{spec.name} Karras")
    return spec


def _find(name: str) -> SamplerSpec:
    key = name.strip().lower()
    for spec in SAMPLERS:
        if key == spec.name.lower() or key in spec.aliases:
            return spec
    raise InvalidRequest(
        f"Unknown sampler {name!r}.", field="sampler", hint=f"Choose one of: {', '.join(sampler_names())}."
    )


def make_scheduler(name: str, base_config: dict[str, Any], seeds: list[int] | None = None):
    """A fresh scheduler for one batch, keeping the model's own betas and prediction type.

    `seeds` (one per image) seed the Brownian-tree noise of the SDE samplers, so every image
    depends only on its own seed, whatever batch it runs in.
    """
    import diffusers

    spec = get_sampler(name)
    cls = getattr(diffusers, spec.scheduler)
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    if spec.scheduler == "DPMSolverMultistepScheduler" and config.get("prediction_type") == "v_prediction":
        config["final_sigmas_type"] = "zero"
    scheduler = cls.from_config(config, **spec.options)
    if spec.scheduler == "DPMSolverSDEScheduler" and seeds:
        scheduler.noise_sampler_seed = list(seeds)
    return scheduler
