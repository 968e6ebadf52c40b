"""A text-to-image pipeline over the light modules, with the interface of diffusers' StableDiffusionPipeline that
sdplay's text-to-image path uses (prompt embeddings in, latents out, step-end callbacks), step for step as
StableDiffusionPipeline.__call__ runs it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdplay.light import scheduler as schedulers
from sdplay.light.modules import CLIPTextModel, Config, UNet, VAEDecoder
from sdplay.light.tokenizer import CLIPTokenizer


@dataclass
class PipelineOutput:
    images: Any


class LightPipeline:
    """The modules of a standard diffusers folder (sdplay.light.folder.check passed), loaded without diffusers."""

    sdplay_attention = "sdpa"  # what sdplay.optimize records: every attention here is scaled_dot_product_attention
    sdplay_schedulers = schedulers  # where sdplay.samplers.make_scheduler finds the scheduler classes for this pipeline

    def __init__(self, unet: UNet, vae: VAEDecoder, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 scheduler: schedulers.DPMSolverMultistepScheduler, index: dict[str, Any]):  # fmt: skip
        self.unet, self.vae, self.text_encoder, self.tokenizer, self.scheduler = (
            unet,
            vae,
            text_encoder,
            tokenizer,
            scheduler,
        )
        self.safety_checker = self.feature_extractor = None
        self.config = Config(index)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self._guidance_scale = 1.0

    @classmethod
    def from_folder(cls, folder: Path, dtype: torch.dtype = torch.float32) -> LightPipeline:
        folder = Path(folder)
        unet = _load(UNet, folder / "unet", "diffusion_pytorch_model.safetensors", dtype)
        vae = _load(VAEDecoder, folder / "vae", "diffusion_pytorch_model.safetensors", dtype,
                    keep=("decoder.", "post_quant_conv."))  # fmt: skip
        text = _load(CLIPTextModel, folder / "text_encoder", "model.safetensors", dtype, strip="text_model.")
        sched = schedulers.DPMSolverMultistepScheduler.from_config(
            _json(folder / "scheduler" / "scheduler_config.json")
        )
        return cls(unet, vae, text, CLIPTokenizer(folder / "tokenizer"), sched, _json(folder / "model_index.json"))

    # -- what sdplay reads of a diffusers pipeline ------------------------------------------------------------
    @property
    def components(self) -> dict[str, Any]:
        return {"vae": self.vae, "text_encoder": self.text_encoder, "tokenizer": self.tokenizer, "unet": self.unet,
                "scheduler": self.scheduler, "safety_checker": None, "feature_extractor": None}  # fmt: skip

    @property
    def _execution_device(self) -> torch.device:
        return self.unet.device

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1 and self.unet.config.get("time_cond_proj_dim") is None

    def to(self, device: Any) -> LightPipeline:
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device)
        return self

    def set_progress_bar_config(self, **_: Any) -> None:
        """No bars are drawn here."""

    # -- text to image ------------------------------------------------------------------------------------------
    def __call__(self, *, prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor, height: int, width: int,
                 num_inference_steps: int, guidance_scale: float, latents: torch.Tensor, generator: Any = None,
                 output_type: str = "latent", callback_on_step_end: Any = None,
                 callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",)) -> PipelineOutput:  # fmt: skip
        """Denoise `latents` (B, C, H/f, W/f) with classifier-free guidance; the latents come back, undecoded."""
        if output_type != "latent":
            raise ValueError("The light pipeline returns latents only.")
        device = self._execution_device
        self._guidance_scale = guidance_scale
        guided = self.do_classifier_free_guidance
        # 1. Conditioning: negative and positive side by side under guidance.
        dtype = self.text_encoder.dtype
        prompt_embeds = prompt_embeds.to(dtype=dtype, device=device)
        negative_prompt_embeds = negative_prompt_embeds.to(dtype=dtype, device=device)
        if guided:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
        # 2. The schedule, and the starting noise at the scheduler's scale.
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents.to(device) * self.scheduler.init_noise_sigma
        # 3. The denoising loop; the step-end callback may change the latents and the conditioning.
        for i, t in enumerate(self.scheduler.timesteps):
            x = torch.cat([latents] * 2) if guided else latents
            x = self.scheduler.scale_model_input(x, t)
            noise_pred = self.unet(x, t, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
            if guided:
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + guidance_scale * (text - uncond)
            latents = self.scheduler.step(noise_pred, t, latents)[0]
            if callback_on_step_end is not None:
                here = {
                    "latents": latents,
                    "prompt_embeds": prompt_embeds,
                    "negative_prompt_embeds": negative_prompt_embeds,
                }
                out = callback_on_step_end(self, i, t, {k: here[k] for k in callback_on_step_end_tensor_inputs})
                latents = out.pop("latents", latents)
                prompt_embeds = out.pop("prompt_embeds", prompt_embeds)
                negative_prompt_embeds = out.pop("negative_prompt_embeds", negative_prompt_embeds)
        return PipelineOutput(images=latents)


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _load(cls: type, folder: Path, file: str, dtype: torch.dtype, keep: tuple[str, ...] = (), strip: str = ""):
    """A module built from `folder`/config.json with the weights of `folder`/`file` (cast to `dtype`, as diffusers'
    `from_pretrained(dtype=...)` casts them), in eval mode; every parameter must be in the file."""
    from safetensors import safe_open

    module = cls(Config(_json(folder / "config.json")))
    with safe_open(str(folder / file), framework="pt") as f:
        names = [k for k in f.keys() if not keep or k.startswith(keep)]  # noqa: SIM118 (safe_open is no dict)
        state = {k.removeprefix(strip): f.get_tensor(k).to(dtype) for k in names}
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval().requires_grad_(False)
