"""Model families as data: one FamilySpec per family holds its detection rules and its behaviour.

Adding a family means adding one entry to FAMILIES (and its configs under assets/configs); nothing else in
sdplay looks at pipeline class names or tensor names to tell families apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

RGB = tuple[float, float, float]
_SD1_CLIP = "cond_stage_model.transformer."


class Family(StrEnum):
    """The architecture a model reports (in metadata, model lists and previews)."""

    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"


@dataclass(frozen=True)
class FamilySpec:
    """Everything sdplay does differently per model family.

    - detection: `single_file_keys` (tensor-name prefixes of the original single-file layout, tried in
      FAMILIES order), `single_file_text_encoders` ((module, "clip" or "openclip", key prefix) per text encoder
      of a single file), `index_class_prefix` (a diffusers model_index.json `_class_name` prefix),
      `prediction_type` (the scheduler's, for folders), `max_unet_sample_size` (a small UNet: the embedded model);
    - `pipelines`: the diffusers pipeline class per task (None: the task is not supported for this family yet);
    - text conditioning: `text_encoders`/`tokenizers` (module names on the pipeline) and `pooled` (a pooled
      embedding from the last encoder, SDXL); `size_conditioning`: micro-conditioning on size and crop (SDXL);
    - `latent_rgb` / `latent_rgb_bias`: the linear latent -> RGB preview map (ComfyUI's latent2rgb factors);
    - `vae_fp32_if_upcast`: decode in float32 when the VAE config says `force_upcast` (SDXL's VAE makes NaNs
      in fp16; SD 1.x/2.x VAEs decode in fp16 as diffusers does);
    - LoRA files: `lora_keys` (tensor-name prefixes only LoRAs for this family have: SDXL's two encoders and
      its original UNet block names) and `cross_attention_dim` (the UNet's text width, which a LoRA's attn2
      projections show); `short_label` names the family in messages about them;
    - `compile_default`: the fast path's (compile mode, dynamic) for `compile=auto`;
    - `unet_tflop` / `vae_tflop`: FLOPs of one UNet forward (latent side, TFLOP) and one VAE decode
      (image side, TFLOP) at batch 1, for MFU figures.
    """

    name: str
    family: Family
    label: str
    short_label: str
    base_model: str  # the built-in model whose defaults a folder or file of this family starts from
    single_file_keys: tuple[str, ...] = ()
    single_file_text_encoders: tuple[tuple[str, str, str], ...] = (("text_encoder", "clip", _SD1_CLIP),)
    index_class_prefix: str = "StableDiffusion"
    prediction_type: str = "epsilon"
    max_unet_sample_size: int | None = None
    pipelines: dict[str, str | None] = field(default_factory=dict)
    text_encoders: tuple[str, ...] = ("text_encoder",)
    tokenizers: tuple[str, ...] = ("tokenizer",)
    pooled: bool = False
    size_conditioning: bool = False
    safety_checker: bool = True  # the pipeline takes safety_checker/feature_extractor arguments
    lora_keys: tuple[str, ...] = ()
    cross_attention_dim: int | None = None
    latent_rgb: tuple[RGB, ...] = ()
    latent_rgb_bias: RGB = (0.0, 0.0, 0.0)
    vae_fp32_if_upcast: bool = False
    compile_default: tuple[str, bool | None] = ("regional", True)
    unet_tflop: tuple[int, float] | None = None
    vae_tflop: tuple[int, float] | None = None

    def pipeline_class(self, task: str = "txt2img") -> str:
        """The diffusers pipeline class name for `task`, or a teaching error."""
        cls = self.pipelines.get(task)
        if cls is None:
            from sdplay.errors import InvalidRequest

            raise InvalidRequest(
                f"{self.label} models do not support {task} here.",
                field="task",
                hint=f"Supported: {', '.join(t for t, c in self.pipelines.items() if c)}.",
            )
        return cls

    def pipeline_kwargs(self, index: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments beyond the modules when assembling a pipeline by hand."""
        if self.safety_checker:
            return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
        return {"force_zeros_for_empty_prompt": index.get("force_zeros_for_empty_prompt", True)}


# Rows are the 4 latent channels, columns R, G, B: the "latent2rgb" factors of ComfyUI's latent previews.
# SD 1.x and 2.x share one VAE, so they share one matrix; SDXL's VAE has its own, plus a bias.
_SD_VAE_RGB: tuple[RGB, ...] = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
_SDXL_VAE_RGB: tuple[RGB, ...] = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
_SD_PIPELINES = {"txt2img": "StableDiffusionPipeline", "img2img": "StableDiffusionImg2ImgPipeline",
                 "inpaint": "StableDiffusionInpaintPipeline"}  # fmt: skip
_SDXL_PIPELINES = {"txt2img": "StableDiffusionXLPipeline", "img2img": "StableDiffusionXLImg2ImgPipeline",
                   "inpaint": "StableDiffusionXLInpaintPipeline"}  # fmt: skip
# kohya's SDXL names (two text encoders, the original UNet's block names) and diffusers' second encoder
_SDXL_LORA_KEYS = ("lora_te1_", "lora_te2_", "lora_unet_input_blocks", "lora_unet_output_blocks",
                   "lora_unet_middle_block", "text_encoder_2.")  # fmt: skip

# Measured on an H100 (docs/benchmarks.md): the whole UNet compiled is 27-31% faster for SD 1.x/2.x (cold compile
# 41-49 s, restart 11-15 s); for SDXL 18% faster but 103 s cold and 23 s at every restart, so SDXL compiles its
# transformer blocks only (20 s cold, 14 s restart). FLOPs: torch FlopCounterMode, diffusers 0.42.
SDXL = FamilySpec(
    name="sdxl",
    family=Family.SDXL,
    label="Stable Diffusion XL",
    short_label="SDXL",
    base_model="sdxl-base-1.0",
    single_file_keys=("conditioner.embedders.1.model.",),
    single_file_text_encoders=(
        ("text_encoder", "clip", "conditioner.embedders.0.transformer."),
        ("text_encoder_2", "openclip", "conditioner.embedders.1.model."),
    ),
    index_class_prefix="StableDiffusionXL",
    pipelines=_SDXL_PIPELINES,
    text_encoders=("text_encoder", "text_encoder_2"),
    tokenizers=("tokenizer", "tokenizer_2"),
    pooled=True,
    size_conditioning=True,
    safety_checker=False,
    lora_keys=_SDXL_LORA_KEYS,
    cross_attention_dim=2048,
    latent_rgb=_SDXL_VAE_RGB,
    latent_rgb_bias=(0.1084, -0.0175, -0.0011),
    vae_fp32_if_upcast=True,
    compile_default=("regional", True),
    unet_tflop=(128, 6.761),
    vae_tflop=(1024, 10.470),
)
SD2 = FamilySpec(
    name="sd2",
    family=Family.SD2,
    label="Stable Diffusion 2.x",
    short_label="SD 2.x",
    base_model="sd-v2-1",
    single_file_keys=("cond_stage_model.model.",),
    single_file_text_encoders=(("text_encoder", "openclip", "cond_stage_model.model."),),
    prediction_type="v_prediction",
    pipelines=_SD_PIPELINES,
    cross_attention_dim=1024,
    latent_rgb=_SD_VAE_RGB,
    compile_default=("full", None),
    unet_tflop=(96, 2.149),
    vae_tflop=(768, 5.754),
)
EMBEDDED = FamilySpec(
    name="embedded",
    family=Family.SD1,
    label="sdplay's embedded model (SD 1.x layout, small UNet)",
    short_label="the embedded model",
    base_model="sdplay-emoji",
    max_unet_sample_size=32,
    pipelines=_SD_PIPELINES,
    latent_rgb=_SD_VAE_RGB,
    compile_default=("full", None),
)
SD1 = FamilySpec(
    name="sd1",
    family=Family.SD1,
    label="Stable Diffusion 1.x",
    short_label="SD 1.x",
    base_model="sd-v1-4",
    single_file_keys=("cond_stage_model.transformer.", "model.diffusion_model."),
    pipelines=_SD_PIPELINES,
    cross_attention_dim=768,
    latent_rgb=_SD_VAE_RGB,
    compile_default=("full", None),
    unet_tflop=(64, 0.803),
    vae_tflop=(512, 2.515),
)

# Detection order: the most specific rules first (SDXL's keys also contain model.diffusion_model.).
FAMILIES: tuple[FamilySpec, ...] = (SDXL, SD2, EMBEDDED, SD1)
BY_NAME: dict[str, FamilySpec] = {f.name: f for f in FAMILIES}


def get(name: str) -> FamilySpec:
    return BY_NAME[name]


def for_architecture(family: Family | str) -> FamilySpec:
    """The main spec of an architecture (sd1 -> SD 1.x, not the embedded model)."""
    return next(f for f in reversed(FAMILIES) if f.family == family)


def from_tensor_names(keys: list[str]) -> FamilySpec | None:
    """The family of an original-layout single-file checkpoint, from its tensor names."""
    for spec in FAMILIES:
        if spec.single_file_keys and any(k.startswith(spec.single_file_keys) for k in keys):
            return spec
    return None


def from_lora_keys(keys: list[str]) -> FamilySpec | None:
    """The family whose LoRA layout a LoRA file's tensor names show; None for the SD 1.x/2.x layout."""
    for spec in FAMILIES:
        if spec.lora_keys and any(k.startswith(spec.lora_keys) for k in keys):
            return spec
    return None


def from_cross_attention_dim(dim: int | None) -> FamilySpec | None:
    """The full-size family with this UNet text width (768: SD 1.x, 1024: SD 2.x, 2048: SDXL); None if none."""
    return next((f for f in FAMILIES if dim is not None and f.cross_attention_dim == dim), None)


def from_index(class_name: str, prediction_type: str, unet_sample_size: int | None) -> FamilySpec:
    """The family of a diffusers folder, from model_index.json, its scheduler and its UNet config."""
    for spec in FAMILIES:
        if spec.index_class_prefix != "StableDiffusion" and class_name.startswith(spec.index_class_prefix):
            return spec
    for spec in FAMILIES:
        if spec.prediction_type != "epsilon" and prediction_type == spec.prediction_type:
            return spec
    for spec in FAMILIES:
        limit = spec.max_unet_sample_size
        if limit is not None and (unet_sample_size if unet_sample_size is not None else 64) <= limit:
            return spec
    return SD1


def from_pipeline(pipe: Any) -> FamilySpec:
    """The family of a loaded pipeline (a hub model, whose family is known only once it is read)."""
    sample = getattr(getattr(pipe, "unet", None), "config", {}).get("sample_size")
    return from_index(type(pipe).__name__, pipe.scheduler.config.get("prediction_type", "epsilon"), sample)
