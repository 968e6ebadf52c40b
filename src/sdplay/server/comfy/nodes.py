"""The node classes sdplay runs, described as data in ComfyUI's terms (what /object_info publishes).

Each input is `(type, options)` as ComfyUI writes it: a type name ("INT", "FLOAT", "STRING", "BOOLEAN", or a
link type such as "MODEL"), or a list of choices. Ranges are sdplay's real limits, so a value sdplay cannot
honour fails validation with ComfyUI's own error types instead of running as something else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdplay import samplers
from sdplay.types import MAX_CLIP_SKIP, MAX_LORA_WEIGHT

MAX_SEED = 0xFFFFFFFFFFFFFFFF  # ComfyUI's seed range; sdplay seeds are taken modulo 2**32
LINK_TYPES = ("MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK")
PIXEL_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
# ComfyUI's latent upscale methods -> sdplay's latent upscalers (A1111's names); area and bislerp have none.
LATENT_METHODS = {"nearest-exact": "Latent (nearest-exact)", "bilinear": "Latent", "bicubic": "Latent (bicubic)"}


@dataclass(frozen=True)
class Choices:
    """What the dynamic lists and ranges of the node table are filled with (from the service)."""

    checkpoints: list[str]
    samplers: list[str]  # sdplay sampler names this engine offers
    loras: list[str] = field(default_factory=list)  # LoRA files ("name.safetensors")
    inputs: list[str] = field(default_factory=list)  # uploaded images (LoadImage)
    max_steps: int = 150
    max_side: int = 2048
    max_images: int = 8
    max_guidance: float = 30.0


@dataclass(frozen=True)
class NodeSpec:
    name: str
    display_name: str
    category: str
    description: str
    required: dict[str, tuple]
    outputs: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    optional: dict[str, tuple] = field(default_factory=dict)
    hidden: dict[str, str] = field(default_factory=dict)
    output_node: bool = False

    def input(self, name: str) -> tuple | None:
        return self.required.get(name) or self.optional.get(name)

    def info(self) -> dict[str, Any]:
        """This node as one entry of ComfyUI's /object_info."""
        inputs: dict[str, Any] = {"required": {k: list(v) for k, v in self.required.items()}}
        if self.optional:
            inputs["optional"] = {k: list(v) for k, v in self.optional.items()}
        if self.hidden:
            inputs["hidden"] = dict(self.hidden)
        order = {"required": list(self.required)} | ({"optional": list(self.optional)} if self.optional else {})
        return {
            "input": inputs,
            "input_order": order,
            "output": list(self.outputs),
            "output_is_list": [False] * len(self.outputs),
            "output_name": list(self.output_names or self.outputs),
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": "nodes",
            "category": self.category,
            "output_node": self.output_node,
        }


def _int(default: int, lo: int, hi: int, **extra: Any) -> tuple:
    return ("INT", {"default": default, "min": lo, "max": hi, **extra})


def _float(default: float, lo: float, hi: float, step: float = 0.01, **extra: Any) -> tuple:
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, **extra})


def _sampling(c: Choices) -> dict[str, tuple]:
    return {
        "cfg": _float(8.0, 0.0, c.max_guidance, 0.1, round=0.01),
        "sampler_name": (samplers.comfy_sampler_names(c.samplers), {}),
        "scheduler": (samplers.comfy_scheduler_names(c.samplers), {}),
        "positive": ("CONDITIONING", {}),
        "negative": ("CONDITIONING", {}),
        "latent_image": ("LATENT", {}),
    }


def table(c: Choices) -> dict[str, NodeSpec]:
    """Every node class sdplay executes, with this server's choices and limits."""
    seed = _int(0, 0, MAX_SEED, control_after_generate=True)
    steps = _int(20, 1, c.max_steps)
    side = {"min": 16, "max": c.max_side, "step": 8}
    specs = [
        NodeSpec(
            "CheckpointLoaderSimple",
            "Load Checkpoint",
            "loaders",
            "Loads a model of the sdplay catalog; its name is the model's name or alias.",
            {"ckpt_name": (list(c.checkpoints), {"tooltip": "The model to generate with."})},
            ("MODEL", "CLIP", "VAE"),
        ),
        NodeSpec(
            "CLIPTextEncode",
            "CLIP Text Encode (Prompt)",
            "conditioning",
            "A prompt (or negative prompt) for a sampler, encoded by the model's text encoder(s).",
            {"text": ("STRING", {"multiline": True, "dynamicPrompts": True}), "clip": ("CLIP", {})},
            ("CONDITIONING",),
        ),
        NodeSpec(
            "CLIPSetLastLayer",
            "CLIP Set Last Layer",
            "conditioning",
            "Which text-encoder layer conditions the image (-1: the last one, -2: the one before).",
            {"clip": ("CLIP", {}), "stop_at_clip_layer": _int(-1, -MAX_CLIP_SKIP, -1, step=1)},
            ("CLIP",),
        ),
        NodeSpec(
            "EmptyLatentImage",
            "Empty Latent Image",
            "latent",
            "The size and number of images to generate from noise.",
            {
                "width": ("INT", {"default": 512, **side}),
                "height": ("INT", {"default": 512, **side}),
                "batch_size": _int(1, 1, c.max_images),
            },
            ("LATENT",),
        ),
        NodeSpec(
            "KSampler",
            "KSampler",
            "sampling",
            "Denoises the latent: one sdplay job.",
            {"model": ("MODEL", {}), "seed": seed, "steps": steps, **_sampling(c), "denoise": _float(1.0, 0.0, 1.0)},
            ("LATENT",),
        ),
        NodeSpec(
            "KSamplerAdvanced",
            "KSampler (Advanced)",
            "sampling",
            "KSampler with explicit noise and step range; sdplay runs whole schedules from step 0.",
            {
                "model": ("MODEL", {}),
                "add_noise": (["enable"], {}),
                "noise_seed": seed,
                "steps": steps,
                **_sampling(c),
                "start_at_step": _int(0, 0, 0),
                "end_at_step": _int(10000, 0, 10000),
                "return_with_leftover_noise": (["disable"], {}),
            },
            ("LATENT",),
        ),
        NodeSpec(
            "VAEDecode",
            "VAE Decode",
            "latent",
            "Decodes a sampled latent into pixels with the model's VAE.",
            {"samples": ("LATENT", {}), "vae": ("VAE", {})},
            ("IMAGE",),
        ),
        NodeSpec(
            "SaveImage",
            "Save Image",
            "image",
            "Stores the images in sdplay's gallery (PNG with the prompt and workflow).",
            {"images": ("IMAGE", {}), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
            hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            output_node=True,
        ),
        NodeSpec(
            "PreviewImage",
            "Preview Image",
            "image",
            "Shows the images (they are stored in the gallery too, as every sdplay image is).",
            {"images": ("IMAGE", {})},
            hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            output_node=True,
        ),
        *_image_nodes(c),
        NodeSpec(
            "LoraLoader",
            "Load LoRA",
            "loaders",
            "A LoRA of this server's LoRA folder on the model and CLIP.",
            {
                "model": ("MODEL", {}),
                "clip": ("CLIP", {}),
                "lora_name": (list(c.loras), {}),
                "strength_model": _float(1.0, -MAX_LORA_WEIGHT, MAX_LORA_WEIGHT),
                "strength_clip": _float(1.0, -MAX_LORA_WEIGHT, MAX_LORA_WEIGHT),
            },
            ("MODEL", "CLIP"),
        ),
        # Listed with no files so that clients that read these lists work; no value validates.
        NodeSpec(
            "UNETLoader",
            "Load Diffusion Model",
            "advanced/loaders",
            "sdplay has no separate diffusion-model files: use CheckpointLoaderSimple.",
            {"unet_name": ([], {}), "weight_dtype": (["default"], {})},
            ("MODEL",),
        ),
        NodeSpec(
            "VAELoader",
            "Load VAE",
            "loaders",
            "sdplay has no separate VAE files: every model brings its own VAE.",
            {"vae_name": ([], {})},
            ("VAE",),
        ),
    ]
    return {s.name: s for s in specs}


def _image_nodes(c: Choices) -> list[NodeSpec]:
    upload = (list(c.inputs), {"image_upload": True})
    size = {"default": 512, "min": 0, "max": c.max_side, "step": 8}
    return [
        NodeSpec(
            "LoadImage",
            "Load Image",
            "image",
            "An uploaded image; its transparent pixels are the MASK.",
            {"image": upload},
            ("IMAGE", "MASK"),
        ),
        NodeSpec(
            "LoadImageMask",
            "Load Image (as Mask)",
            "mask",
            "One channel of an uploaded image as a mask.",
            {"image": upload, "channel": (["alpha", "red", "green", "blue"], {})},
            ("MASK",),
        ),
        NodeSpec(
            "ImageScale",
            "Upscale Image",
            "image/upscaling",
            "Resizes a loaded image.",
            {
                "image": ("IMAGE", {}),
                "upscale_method": (list(PIXEL_METHODS), {}),
                "width": ("INT", {**size, "step": 1}),
                "height": ("INT", {**size, "step": 1}),
                "crop": (["disabled", "center"], {}),
            },
            ("IMAGE",),
        ),
        NodeSpec(
            "ImageScaleBy",
            "Upscale Image By",
            "image/upscaling",
            "Resizes a loaded image by a factor.",
            {"image": ("IMAGE", {}), "upscale_method": (list(PIXEL_METHODS), {}), "scale_by": _float(1.0, 0.01, 8.0)},
            ("IMAGE",),
        ),
        NodeSpec(
            "VAEEncode",
            "VAE Encode",
            "latent",
            "An image to start from: the sampler runs image-to-image with denoise as its strength.",
            {"pixels": ("IMAGE", {}), "vae": ("VAE", {})},
            ("LATENT",),
        ),
        NodeSpec(
            "VAEEncodeForInpaint",
            "VAE Encode (for Inpainting)",
            "latent/inpaint",
            "Inpainting: the masked area is generated from nothing, the rest kept.",
            {"pixels": ("IMAGE", {}), "vae": ("VAE", {}), "mask": ("MASK", {}), "grow_mask_by": _int(6, 0, 64)},
            ("LATENT",),
        ),
        NodeSpec(
            "SetLatentNoiseMask",
            "Set Latent Noise Mask",
            "latent/inpaint",
            "Inpainting: only the masked area of the encoded image is denoised.",
            {"samples": ("LATENT", {}), "mask": ("MASK", {})},
            ("LATENT",),
        ),
        NodeSpec(
            "LatentUpscale",
            "Upscale Latent",
            "latent",
            "A sampler's latent, larger: a second sampler on it is sdplay's hires fix.",
            {
                "samples": ("LATENT", {}),
                "upscale_method": (list(LATENT_METHODS), {}),
                "width": ("INT", size),
                "height": ("INT", size),
                "crop": (["disabled"], {}),
            },
            ("LATENT",),
        ),
        NodeSpec(
            "LatentUpscaleBy",
            "Upscale Latent By",
            "latent",
            "A sampler's latent scaled: a second sampler on it is sdplay's hires fix.",
            {
                "samples": ("LATENT", {}),
                "upscale_method": (list(LATENT_METHODS), {}),
                "scale_by": _float(1.5, 1.0, 8.0),
            },
            ("LATENT",),
        ),
    ]
