"""What the light runtime reads from a folder's configs, without torch: component configs as attribute dicts and the
DPM++ 2M options sdplay.light.scheduler runs."""

from __future__ import annotations

from typing import Any


class Config(dict):
    """A component's config.json, its keys readable as attributes too (as diffusers' FrozenDict)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


# diffusers' defaults for the options this solver runs; a config may set these, and only to the values allowed.
DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "solver_order": 2, "prediction_type": "epsilon", "thresholding": False,
    "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0, "algorithm_type": "dpmsolver++",
    "solver_type": "midpoint", "lower_order_final": True, "euler_at_final": False, "use_karras_sigmas": False,
    "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_lu_lambdas": False, "use_flow_sigmas": False,
    "flow_shift": 1.0, "final_sigmas_type": "zero", "lambda_min_clipped": -float("inf"), "variance_type": None,
    "timestep_spacing": "linspace", "steps_offset": 0, "rescale_betas_zero_snr": False,
    "use_dynamic_shifting": False, "time_shift_type": "exponential",
}  # fmt: skip
ALLOWED: dict[str, tuple] = {
    "beta_schedule": ("linear", "scaled_linear"), "trained_betas": (None,), "solver_order": (1, 2),
    "prediction_type": ("epsilon", "v_prediction"), "thresholding": (False,), "algorithm_type": ("dpmsolver++",),
    "solver_type": ("midpoint",), "use_exponential_sigmas": (False,), "use_beta_sigmas": (False,),
    "use_lu_lambdas": (False,), "use_flow_sigmas": (False,), "final_sigmas_type": ("zero", "sigma_min"),
    "variance_type": (None,), "timestep_spacing": ("linspace", "leading", "trailing"),
    "rescale_betas_zero_snr": (False,), "use_dynamic_shifting": (False,),
}  # fmt: skip


class Unsupported(ValueError):
    """A scheduler option this solver does not run."""


def resolve_config(config: dict[str, Any], **overrides: Any) -> Config:
    """The full config (diffusers' defaults, then the folder's known keys, then `overrides`), or Unsupported."""
    given = {k: v for k, v in config.items() if not k.startswith("_") and k in DEFAULTS} | overrides
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise Unsupported(f"scheduler options {sorted(unknown)}")
    full = Config({**DEFAULTS, **given})
    for key, allowed in ALLOWED.items():
        if full[key] not in allowed:
            raise Unsupported(f"{key}={full[key]!r}")
    return full
