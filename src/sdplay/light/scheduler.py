"""DPM++ 2M (Lu et al. 2022, "DPM-Solver++", Algorithm 2), step for step as diffusers 0.42's
DPMSolverMultistepScheduler computes it for the options below, so the light runtime's images equal diffusers'.

Only the deterministic multistep solver is here: `algorithm_type="dpmsolver++"`, the midpoint second-order update,
epsilon or v-prediction, uniform ("linspace", "leading", "trailing") or Karras sigmas. Any other option raises
`Unsupported`, and sdplay.light.folder then leaves the model to diffusers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sdplay.light.config import Config, resolve_config


class DPMSolverMultistepScheduler:
    """The subset of diffusers' class named above (same name: it is recorded as the image's scheduler)."""

    order = 1
    init_noise_sigma = 1.0

    def __init__(self, config: Config):
        c = self.config = config
        if c.beta_schedule == "linear":
            self.betas = torch.linspace(c.beta_start, c.beta_end, c.num_train_timesteps, dtype=torch.float32)
        else:  # scaled_linear
            self.betas = (
                torch.linspace(c.beta_start**0.5, c.beta_end**0.5, c.num_train_timesteps, dtype=torch.float32) ** 2
            )
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.num_inference_steps: int | None = None
        self.timesteps = torch.from_numpy(
            np.linspace(0, c.num_train_timesteps - 1, c.num_train_timesteps, dtype=np.float32)[::-1].copy()
        )
        self.model_outputs: list[Any] = [None] * c.solver_order
        self.lower_order_nums = 0
        self._step_index: int | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any], **overrides: Any) -> DPMSolverMultistepScheduler:
        return cls(resolve_config(config, **overrides))

    @property
    def step_index(self) -> int | None:
        return self._step_index

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        c = self.config
        clipped_idx = torch.searchsorted(torch.flip(self.lambda_t, [0]), c.lambda_min_clipped)
        last_timestep = ((c.num_train_timesteps - clipped_idx).numpy()).item()
        n = num_inference_steps
        if c.timestep_spacing == "linspace":
            timesteps = np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        elif c.timestep_spacing == "leading":
            step_ratio = last_timestep // (n + 1)
            timesteps = (np.arange(0, n + 1) * step_ratio).round()[::-1][:-1].copy().astype(np.int64)
            timesteps += c.steps_offset
        else:  # trailing
            step_ratio = c.num_train_timesteps / n
            timesteps = np.arange(last_timestep, 0, -step_ratio).round().copy().astype(np.int64)
            timesteps -= 1
        sigmas = np.array(((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5)
        log_sigmas = np.log(sigmas)
        if c.use_karras_sigmas:
            sigmas = _karras(np.flip(sigmas).copy(), n)
            timesteps = np.array([_sigma_to_t(sigma, log_sigmas) for sigma in sigmas]).round()
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
        if c.final_sigmas_type == "sigma_min":
            sigma_last = ((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5
        else:
            sigma_last = 0
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [sigma_last]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self.model_outputs = [None] * c.solver_order
        self.lower_order_nums = 0
        self._step_index = None

    def scale_model_input(self, sample: torch.Tensor, *args: Any) -> torch.Tensor:
        return sample

    def _alpha_sigma(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
        return alpha_t, sigma * alpha_t

    def _x0(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The data prediction DPM-Solver++ steps with."""
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[self.step_index])
        if self.config.prediction_type == "epsilon":
            return (sample - sigma_t * model_output) / alpha_t
        return alpha_t * sample - sigma_t * model_output  # v-prediction

    def _first_order(self, x0: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        i = self.step_index
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[i + 1])
        alpha_s, sigma_s = self._alpha_sigma(self.sigmas[i])
        h = (torch.log(alpha_t) - torch.log(sigma_t)) - (torch.log(alpha_s) - torch.log(sigma_s))
        return (sigma_t / sigma_s) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * x0

    def _second_order(self, sample: torch.Tensor) -> torch.Tensor:
        i = self.step_index
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[i + 1])
        alpha_s0, sigma_s0 = self._alpha_sigma(self.sigmas[i])
        alpha_s1, sigma_s1 = self._alpha_sigma(self.sigmas[i - 1])
        lambda_t = torch.log(alpha_t) - torch.log(sigma_t)
        lambda_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
        lambda_s1 = torch.log(alpha_s1) - torch.log(sigma_s1)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        d0, d1 = m0, (1.0 / r0) * (m0 - m1)
        return (
            (sigma_t / sigma_s0) * sample
            - (alpha_t * (torch.exp(-h) - 1.0)) * d0
            - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1
        )

    def _init_step_index(self, timestep: torch.Tensor) -> None:
        found = (self.timesteps == timestep.to(self.timesteps.device)).nonzero()
        if len(found) == 0:
            self._step_index = len(self.timesteps) - 1
        else:
            self._step_index = (found[1] if len(found) > 1 else found[0]).item()

    def step(self, model_output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor, **_: Any) -> tuple:
        """One solver step; returns (previous sample,) as diffusers' step(..., return_dict=False)."""
        c = self.config
        if self.step_index is None:
            self._init_step_index(timestep)
        n = len(self.timesteps)
        lower_order_final = (self.step_index == n - 1) and (
            c.euler_at_final or (c.lower_order_final and n < 15) or c.final_sigmas_type == "zero"
        )
        x0 = self._x0(model_output, sample)
        for k in range(c.solver_order - 1):
            self.model_outputs[k] = self.model_outputs[k + 1]
        self.model_outputs[-1] = x0
        sample = sample.to(torch.float32)
        if c.solver_order == 1 or self.lower_order_nums < 1 or lower_order_final:
            prev = self._first_order(x0, sample)
        else:  # second order (diffusers' third-order branch needs solver_order 3, refused above)
            prev = self._second_order(sample)
        if self.lower_order_nums < c.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        return (prev.to(x0.dtype),)


def _karras(in_sigmas: np.ndarray, n: int) -> np.ndarray:
    """Karras et al. (2022) noise levels, rho = 7, between the model's smallest and largest sigma."""
    sigma_min, sigma_max = in_sigmas[-1].item(), in_sigmas[0].item()
    rho = 7.0
    ramp = np.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def _sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The (fractional) training timestep of a noise level, by interpolating the log-sigmas."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    t = (1 - w) * low_idx + w * high_idx
    return t.reshape(sigma.shape)
