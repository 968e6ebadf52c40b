"""A1111 1.9+ sampler semantics: a sampler name plus a separate schedule type, combined into sdplay's names."""

from __future__ import annotations

from sdplay.errors import InvalidRequest

# Schedule types sdplay can honour, as A1111 lists them (name, label).
SCHEDULERS = (("automatic", "Automatic"), ("uniform", "Uniform"), ("karras", "Karras"))

# A1111 >= 1.9: the schedule "Automatic" picks for these samplers is Karras; for the others it is uniform.
# (A1111 gives the SDE variants "exponential", which sdplay does not have; they keep their uniform schedule.)
AUTOMATIC_KARRAS = ("DPM++ 2M", "DPM++ SDE", "DPM2", "DPM2 a")


def combine_sampler(name: str | None, scheduler: str | None) -> str | None:
    """'DPM++ 2M' + 'Karras' -> 'DPM++ 2M Karras'; 'Automatic' -> the sampler's default; None -> the name as is."""
    if not name:
        return None
    name = name.strip()
    if scheduler is None or not scheduler.strip():
        return name
    schedule = scheduler.strip().lower()
    base = name[: -len(" Karras")] if name.lower().endswith(" karras") else name
    if schedule == "automatic":
        if name.lower().endswith(" karras"):
            return name
        return f"{base} Karras" if base.lower() in (s.lower() for s in AUTOMATIC_KARRAS) else base
    if schedule == "uniform":
        return base
    if schedule == "karras":
        return f"{base} Karras"
    labels = ", ".join(label for _, label in SCHEDULERS)
    raise InvalidRequest(
        f"Schedule type {scheduler!r} is not supported.", field="scheduler", hint=f"Use one of: {labels}."
    )


def split_sampler(name: str) -> tuple[str, str]:
    """'DPM++ 2M Karras' -> ('DPM++ 2M', 'Karras'); 'Euler a' -> ('Euler a', 'Uniform')."""
    if name.endswith(" Karras"):
        return name[: -len(" Karras")], "Karras"
    return name, "Uniform"
