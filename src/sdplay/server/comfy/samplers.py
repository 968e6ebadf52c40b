"""ComfyUI's sampler and scheduler names, and the sdplay sampler each (sampler, scheduler) pair runs as."""

from __future__ import annotations

# ComfyUI `sampler_name` -> sdplay's sampler (uniform spacing). Names missing here have no sdplay equivalent.
SAMPLERS: dict[str, str] = {
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "heun": "Heun",
    "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_sde_gpu": "DPM++ SDE",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_gpu": "DPM++ 2M SDE",
    "ddim": "DDIM",
    "uni_pc": "UniPC",
    "uni_pc_bh2": "UniPC",
    "deis": "DEIS",
}

# ComfyUI `scheduler` -> the suffix of sdplay's sampler name. The uniform ones all run the model's own
# timestep spacing; "karras" runs Karras sigmas. ComfyUI's "exponential", "beta", "linear_quadratic" and
# "kl_optimal" have no sdplay equivalent.
SCHEDULERS: dict[str, str] = {
    "normal": "",
    "simple": "",
    "sgm_uniform": "",
    "ddim_uniform": "",
    "karras": " Karras",
}


def sampler_choices(available: list[str]) -> list[str]:
    """The ComfyUI sampler names whose sdplay sampler this engine has, in ComfyUI's order."""
    have = set(available)
    return [name for name, target in SAMPLERS.items() if target in have]


def scheduler_choices(available: list[str]) -> list[str]:
    """The ComfyUI scheduler names at least one offered sampler can run with."""
    have = set(available)
    return [s for s, suffix in SCHEDULERS.items() if any(t + suffix in have for t in SAMPLERS.values())]


def schedulers_for(sampler: str, available: list[str]) -> list[str]:
    """The scheduler names `sampler` can run with here."""
    target = SAMPLERS.get(sampler)
    return [s for s, suffix in SCHEDULERS.items() if target and target + suffix in set(available)]


def to_sdplay(sampler: str, scheduler: str, available: list[str]) -> str | None:
    """sdplay's sampler name for ComfyUI's (sampler_name, scheduler), or None if this engine has none."""
    target, suffix = SAMPLERS.get(sampler), SCHEDULERS.get(scheduler)
    if target is None or suffix is None:
        return None
    name = target + suffix
    return name if name in set(available) else None
