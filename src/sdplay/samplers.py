"""The sampler table, and the only place sampler names are read or written.

Every entry point (CLI flag, notebook, native / OpenAI / A1111 APIs) parses names with `get_sampler` (or
`combine_sampler` for A1111's split sampler + schedule type), so an alias such as `euler_a` means the same
everywhere; infotext and A1111's `/samplers` are written from the same table. ComfyUI's names (sampler_name x
scheduler) are data in the table too (`SamplerSpec.comfy`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sdplay.errors import InvalidRequest


@dataclass(frozen=True)
class SamplerSpec:
    """A named sampler: a diffusers scheduler class plus config overrides, and its names in other dialects."""

    name: str  # sdplay's canonical name: A1111's combined name, e.g. "DPM++ 2M Karras"
    scheduler: str
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    comfy: tuple[str, str] | None = None  # ComfyUI KSampler (sampler_name, scheduler); None: no equivalent

    @property
    def karras(self) -> bool:
        return bool(self.options.get("use_karras_sigmas"))

    @property
    def base(self) -> str:
        """The name without its schedule: A1111 >= 1.9's `sampler_name`."""
        return self.name.removesuffix(" Karras")

    @property
    def schedule(self) -> str:
        """A1111 >= 1.9's schedule type of this sampler: "Karras" or "Uniform"."""
        return "Karras" if self.karras else "Uniform"


_KARRAS = {"use_karras_sigmas": True}
_SDE = {"algorithm_type": "sde-dpmsolver++"}
_S = SamplerSpec

# fmt: off
SAMPLERS: tuple[SamplerSpec, ...] = (
    _S("DPM++ 2M", "DPMSolverMultistepScheduler", {}, ("dpmpp_2m",), ("dpmpp_2m", "normal")),
    _S("DPM++ 2M Karras", "DPMSolverMultistepScheduler", _KARRAS, ("dpmpp_2m_karras",), ("dpmpp_2m", "karras")),
    _S("DPM++ 2M SDE", "DPMSolverMultistepScheduler", _SDE, ("dpmpp_2m_sde",), ("dpmpp_2m_sde", "normal")),
    _S("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", {**_SDE, **_KARRAS}, ("dpmpp_2m_sde_karras",),
       ("dpmpp_2m_sde", "karras")),
    _S("DPM++ SDE", "DPMSolverSDEScheduler", {}, ("dpmpp_sde",), ("dpmpp_sde", "normal")),
    _S("DPM++ SDE Karras", "DPMSolverSDEScheduler", _KARRAS, ("dpmpp_sde_karras",), ("dpmpp_sde", "karras")),
    _S("DPM2", "KDPM2DiscreteScheduler", {}, ("dpm_2",), ("dpm_2", "normal")),
    _S("DPM2 Karras", "KDPM2DiscreteScheduler", _KARRAS, ("dpm_2_karras",), ("dpm_2", "karras")),
    _S("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, ("dpm_2_ancestral",), ("dpm_2_ancestral", "normal")),
    _S("DPM2 a Karras", "KDPM2AncestralDiscreteScheduler", _KARRAS, ("dpm_2_ancestral_karras",),
       ("dpm_2_ancestral", "karras")),
    _S("Euler", "EulerDiscreteScheduler", {}, ("euler", "k_euler"), ("euler", "normal")),
    _S("Euler a", "EulerAncestralDiscreteScheduler", {}, ("euler_a", "euler_ancestral", "k_euler_a"),
       ("euler_ancestral", "normal")),
    _S("Heun", "HeunDiscreteScheduler", {}, ("heun",), ("heun", "normal")),
    _S("LMS", "LMSDiscreteScheduler", {}, ("lms", "k_lms"), ("lms", "normal")),
    _S("LMS Karras", "LMSDiscreteScheduler", _KARRAS, ("lms_karras",), ("lms", "karras")),
    _S("DDIM", "DDIMScheduler", {}, ("ddim",), ("ddim", "ddim_uniform")),
    _S("PNDM", "PNDMScheduler", {}, ("plms", "pndm"), None),
    _S("UniPC", "UniPCMultistepScheduler", {}, ("unipc", "uni_pc"), ("uni_pc", "normal")),
    _S("DEIS", "DEISMultistepScheduler", {}, ("deis",), ("deis", "normal")),
)
# fmt: on

# A1111 >= 1.9 splits "DPM++ 2M Karras" into sampler "DPM++ 2M" + schedule type "Karras"; (value, label) pairs.
SCHEDULE_TYPES = (("automatic", "Automatic"), ("uniform", "Uniform"), ("karras", "Karras"))
# A1111 >= 1.9: the schedule "Automatic" picks for these samplers is Karras; for the others it is uniform.
# (A1111 gives the SDE variants "exponential", which sdplay does not have; they keep their uniform schedule.)
AUTOMATIC_KARRAS = ("DPM++ 2M", "DPM++ SDE", "DPM2", "DPM2 a")


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def get_sampler(name: str, schedule: str | None = None) -> SamplerSpec:
    """Look a sampler up by name or alias, optionally with A1111's separate schedule type.

    "DPM++ 2M Karras" == ("DPM++ 2M", "Karras") == ("dpmpp_2m", "karras"); ("DPM++ 2M", "Automatic") is Karras
    (A1111's automatic choice for it), ("DPM++ 2M Karras", "Uniform") is "DPM++ 2M".
    """
    spec = _find(name)
    key = (schedule or "").strip().lower()
    if not key:
        return spec
    if key == "automatic":
        return spec if spec.karras or spec.base not in AUTOMATIC_KARRAS else _find(f"{spec.base} Karras")
    if key == "uniform":
        return _find(spec.base)
    if key == "karras":
        return _find(f"{spec.base} Karras")
    labels = ", ".join(label for _, label in SCHEDULE_TYPES)
    raise InvalidRequest(f"Unknown schedule type {schedule!r}.", field="scheduler", hint=f"Use one of: {labels}.")


def combine_sampler(name: str | None, schedule: str | None = None) -> str | None:
    """The canonical name for a sampler (+ A1111 schedule type) as an API sends it; None: the model's default."""
    if name is None or not str(name).strip():
        return None
    return get_sampler(name, schedule).name


def a1111_split(name: str) -> tuple[str, str]:
    """'DPM++ 2M Karras' -> ('DPM++ 2M', 'Karras'); 'Euler a' -> ('Euler a', 'Uniform')."""
    if not name:
        return "", "Uniform"
    spec = _find(name)
    return spec.base, spec.schedule


def a1111_samplers(names: list[str] | tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """A1111's `/sdapi/v1/samplers` items (name, aliases, options) for `names` (default: the whole table)."""
    wanted = sampler_names() if names is None else list(names)
    return [
        {"name": s.name, "aliases": list(s.aliases), "options": {"scheduler": "karras"} if s.karras else {}}
        for s in map(_find, wanted)
    ]


def infotext_fields(name: str) -> dict[str, str | None]:
    """The `Sampler` and `Schedule type` fields of A1111's infotext (no schedule type for a uniform one)."""
    if not name:
        return {"Sampler": "", "Schedule type": None}
    spec = _find(name)
    return {"Sampler": spec.base, "Schedule type": "Karras" if spec.karras else None}


def _find(name: str) -> SamplerSpec:
    key = name.strip().lower()
    for spec in SAMPLERS:
        if key == spec.name.lower() or key in spec.aliases:
            return spec
    raise InvalidRequest(
        f"Unknown sampler {name!r}.", field="sampler", hint=f"Choose one of: {', '.join(sampler_names())}."
    )


def make_scheduler(
    name: str | SamplerSpec, base_config: dict[str, Any], seeds: list[int] | None = None, classes: Any = None
):
    """A fresh scheduler for one batch, keeping the model's own betas and prediction type.

    `seeds` (one per image) seed the Brownian-tree noise of the SDE samplers, so every image
    depends only on its own seed, whatever batch it runs in. `classes`: where the scheduler classes are found by
    name (default: diffusers; sdplay.light brings its own).
    """
    if classes is None:
        import diffusers

        classes = diffusers

    spec = name if isinstance(name, SamplerSpec) else get_sampler(name)
    cls = getattr(classes, spec.scheduler)
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    if spec.scheduler == "DPMSolverMultistepScheduler" and config.get("prediction_type") == "v_prediction":
        config["final_sigmas_type"] = "zero"
    scheduler = cls.from_config(config, **spec.options)
    if spec.scheduler == "DPMSolverSDEScheduler" and seeds:
        scheduler.noise_sampler_seed = list(seeds)
    return scheduler


# ComfyUI's KSampler names, in ComfyUI's order, of the samplers this table has (SamplerSpec.comfy holds each
# entry's own pair). The GPU variants run the same algorithm; UniPC's bh2 solver is diffusers' default one.
COMFY_SAMPLERS = ("euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_sde", "dpmpp_sde_gpu",
                  "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "ddim", "uni_pc", "uni_pc_bh2", "deis")  # fmt: skip
COMFY_SAMPLER_ALIASES = {"dpmpp_sde_gpu": "dpmpp_sde", "dpmpp_2m_sde_gpu": "dpmpp_2m_sde", "uni_pc_bh2": "uni_pc"}
# ComfyUI schedulers: these run the model's own timestep spacing, "karras" Karras sigmas; ComfyUI's others
# (exponential, beta, linear_quadratic, kl_optimal) have no equivalent here.
COMFY_UNIFORM = ("normal", "simple", "sgm_uniform", "ddim_uniform")
COMFY_SCHEDULERS = (*COMFY_UNIFORM, "karras")


def from_comfy(sampler_name: str, scheduler: str, available: Sequence[str] | None = None) -> str | None:
    """sdplay's name for ComfyUI's (sampler_name, scheduler), or None if there is none (among `available`)."""
    base = COMFY_SAMPLER_ALIASES.get(sampler_name, sampler_name)
    if scheduler not in COMFY_SCHEDULERS:
        return None
    karras = scheduler == "karras"
    names = set(sampler_names() if available is None else available)
    return next((s.name for s in SAMPLERS if s.comfy and s.comfy[0] == base and s.karras == karras
                 and s.name in names), None)  # fmt: skip


def comfy_sampler_names(available: Sequence[str] | None = None) -> list[str]:
    """ComfyUI's sampler names that run here with at least one scheduler."""
    return [n for n in COMFY_SAMPLERS if any(from_comfy(n, s, available) for s in COMFY_SCHEDULERS)]


def comfy_scheduler_names(available: Sequence[str] | None = None) -> list[str]:
    """ComfyUI's scheduler names that run here with at least one sampler."""
    return [s for s in COMFY_SCHEDULERS if any(from_comfy(n, s, available) for n in COMFY_SAMPLERS)]


def comfy_schedulers_for(sampler_name: str, available: Sequence[str] | None = None) -> list[str]:
    """The scheduler names `sampler_name` runs with here."""
    return [s for s in COMFY_SCHEDULERS if from_comfy(sampler_name, s, available)]
