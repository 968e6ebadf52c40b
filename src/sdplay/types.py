"""Typed boundaries of the core: what goes into a generation and what comes out."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from sdplay.errors import InvalidRequest
from sdplay.prompt_syntax import LoraRef, extract_loras

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from sdplay.masking import Outpaint

MAX_IMAGES = 16
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MAX_PIXELS = 2048 * 2048
MAX_SIDE = 4096
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 10_000
MAX_CLIP_SKIP = 12
MAX_LORAS = 16
MAX_LORA_WEIGHT = 10.0
MAX_PADDING = 512
TASKS = ("txt2img", "img2img", "inpaint")
DEFAULT_STRENGTH = 0.75
IMAGE_FIELDS = ("init_image", "mask")


@dataclass(frozen=True)
class HiresFix:
    """A1111's hires fix: a second image-to-image pass at a larger size (by `scale`, or to width x height)."""

    scale: float = 2.0
    width: int = 0  # 0: from scale
    height: int = 0
    upscaler: str = "Latent"
    steps: int = 0  # 0: as many as the first pass
    strength: float = 0.7

    def validate(self) -> HiresFix:
        _check_float(self.scale, "hr_scale", 1.0, 8.0)
        for name, value in (("hr_resize_x", self.width), ("hr_resize_y", self.height)):
            if value:
                _check_side(value, name)
        _check_int(self.steps, "hr_second_pass_steps", 0, MAX_STEPS)
        _check_float(self.strength, "denoising_strength", 0.0, 1.0)
        from sdplay.hires import check_upscaler

        check_upscaler(self.upscaler)
        return self


@dataclass(frozen=True)
class GenerationRequest:
    """One text-to-image job. `None` means "the model's default"."""

    prompt: str
    negative_prompt: str = ""
    model: str | None = None
    n_images: int = 1
    batch_size: int | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    seed: int = -1
    sampler: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    # Images in (the edge decodes them with sdplay.image_input): image-to-image, inpainting, outpainting.
    init_image: Image.Image | None = None  # RGB
    # More init images (A1111's init_images beyond the first): image k of the request starts from
    # init_images[k % len(init_images)]; with a mask or outpainting they must all have the first one's size.
    extra_init_images: tuple[Image.Image, ...] = ()
    mask: Image.Image | None = None  # L, white = repaint (the init image's size)
    strength: float | None = None  # denoising strength; None: 0.75 (1.0 when outpainting)
    mask_blur: int = 4
    mask_invert: bool = False
    inpaint_fill: str = "original"  # fill / original / latent noise / latent nothing
    inpaint_full_res: bool = False  # work on the masked area only, at full resolution
    inpaint_padding: int = 32
    resize_mode: str = "just resize"  # just resize / crop and resize / resize and fill
    outpaint: Outpaint | None = None
    hires: HiresFix | None = None  # text-to-image only
    refiner: str | None = None  # SDXL refiner model: runs the last (1 - refiner_switch_at) of the steps run
    refiner_switch_at: float = 0.8
    loras: tuple[LoraRef, ...] = ()  # besides the prompt's <lora:name:weight> tags
    clip_skip: int | None = None  # A1111's: 1 = the text encoder's last layer, 2 = the one before, ...
    vae: str | None = None  # a VAE of the VAE folder (library: or a path); None/"Automatic": the engine's default,
    # "None": the model's own

    @property
    def init_images(self) -> tuple[Image.Image, ...]:
        """Every init image: the first, then the extra ones (empty for text-to-image)."""
        return () if self.init_image is None else (self.init_image, *self.extra_init_images)

    def init_image_for(self, k: int) -> Image.Image | None:
        """The init image of the request's image k (they cycle, as A1111's init_images over a batch)."""
        images = self.init_images
        return images[k % len(images)] if images else None

    @property
    def task(self) -> str:
        """txt2img, img2img or inpaint (a mask or an outpaint makes it inpainting)."""
        if self.init_image is None:
            return "txt2img"
        return "inpaint" if self.mask is not None or self.outpaint is not None else "img2img"

    def batch_fields(self) -> tuple:
        """What, beyond model/size/steps/sampler/guidance, must agree for requests to share a UNet batch."""
        return (self.task, self.strength, self.inpaint_fill if self.task == "inpaint" else None,
                self.hires, self.refiner, self.refiner_switch_at if self.refiner else None)  # fmt: skip

    def validate(self) -> GenerationRequest:
        """Check every field; raise InvalidRequest naming the field and the fix."""
        self._validate_images()
        _check_text(self.prompt, "prompt")
        _check_text(self.negative_prompt, "negative_prompt")
        _check_int(self.n_images, "n_images", 1, MAX_IMAGES)
        if self.batch_size is not None:
            _check_int(self.batch_size, "batch_size", 1, MAX_IMAGES)
        if self.steps is not None:
            _check_int(self.steps, "steps", 1, MAX_STEPS)
        if self.guidance is not None:
            _check_float(self.guidance, "guidance", 0.0, MAX_GUIDANCE)
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None:
                _check_side(value, name)
        if self.width and self.height and self.width * self.height > MAX_PIXELS:
            raise InvalidRequest(
                f"{self.width}x{self.height} is {self.width * self.height:,} pixels, over the limit of {MAX_PIXELS:,}.",
                field="width",
                hint="Choose a smaller size, e.g. 1024x1024, and upscale afterwards.",
            )
        _check_int(self.seed, "seed", -1, MAX_SEED)
        if self.seed + self.n_images - 1 > MAX_SEED:  # image i has seed + i: refuse rather than wrap to 0
            raise InvalidRequest(
                f"seed {self.seed} + {self.n_images} images runs past the largest seed, {MAX_SEED}.",
                field="seed",
                hint=f"Use a seed of at most {MAX_SEED - self.n_images + 1}, or -1 for a random one.",
            )
        if self.clip_skip is not None:
            _check_int(self.clip_skip, "clip_skip", 1, MAX_CLIP_SKIP)
        _check_loras(self.loras)
        if self.vae is not None:
            _check_text(self.vae, "vae")
        return self

    def _validate_images(self) -> None:
        from sdplay.masking import fill_mode, resize_mode

        if self.strength is not None:
            _check_float(self.strength, "denoising_strength", 0.0, 1.0)
        _check_int(self.mask_blur, "mask_blur", 0, 64)
        _check_int(self.inpaint_padding, "inpaint_full_res_padding", 0, MAX_PADDING)
        _check_float(self.refiner_switch_at, "refiner_switch_at", 0.0, 1.0)
        fill_mode(self.inpaint_fill)
        resize_mode(self.resize_mode)
        for name in IMAGE_FIELDS:
            value = getattr(self, name)
            if value is not None and not (hasattr(value, "size") and hasattr(value, "mode")):
                raise InvalidRequest(f"{name} must be a decoded image.", field=name,
                                     hint="Read it with sdplay.image_input.decode_image.")  # fmt: skip
        self._validate_extra_images()
        if self.init_image is None:
            for name in ("mask", "outpaint"):
                if getattr(self, name) is not None:
                    raise InvalidRequest(f"{name} needs an init image.", field=name, hint="Give the image to edit.")
        elif self.mask is not None and self.mask.size != self.init_image.size:
            (w, h), (mw, mh) = self.init_image.size, self.mask.size
            raise InvalidRequest(f"mask is {mw}x{mh} but the image is {w}x{h}.", field="mask",
                                 hint=f"Send a {w}x{h} mask (white = the area to repaint, black = keep).")  # fmt: skip
        if self.outpaint is not None:
            self.outpaint.validate()
        if self.refiner is not None:
            _check_text(self.refiner, "refiner_checkpoint")
            if self.task == "inpaint" or self.hires is not None:
                raise InvalidRequest("The refiner runs after text-to-image and image-to-image here, not after "
                                     "inpainting, outpainting or hires fix.", field="refiner_checkpoint",
                                     hint="Leave out the mask, outpaint and hires fix, or the refiner.")  # fmt: skip
            _check_float(self.refiner_switch_at, "refiner_switch_at", 0.05, 0.95)
        if self.hires is not None:
            if self.init_image is not None:
                hint = "For an init image, set the size you want and a denoising strength."
                raise InvalidRequest("hires fix is for text-to-image.", field="enable_hr", hint=hint)
            self.hires.validate()

    def _validate_extra_images(self) -> None:
        extra = self.extra_init_images
        if not isinstance(extra, tuple | list):
            raise InvalidRequest("extra_init_images must be a list of images.", field="init_images")
        if not extra:
            return
        if self.init_image is None:
            raise InvalidRequest("extra_init_images needs init_image (the first image).", field="init_images",
                                 hint="Put the first image in init_image.")  # fmt: skip
        if len(extra) + 1 > MAX_IMAGES:
            raise InvalidRequest(f"At most {MAX_IMAGES} init images, got {len(extra) + 1}.", field="init_images",
                                 hint="Send fewer images.")  # fmt: skip
        same_size = self.mask is not None or self.outpaint is not None
        for k, img in enumerate(extra, start=2):
            if not (hasattr(img, "size") and hasattr(img, "mode")):
                raise InvalidRequest(f"init image {k} must be a decoded image.", field="init_images",
                                     hint="Read it with sdplay.image_input.decode_image.")  # fmt: skip
            if same_size and img.size != self.init_image.size:
                (w, h), (iw, ih) = self.init_image.size, img.size
                what = "a mask" if self.mask is not None else "outpainting"
                raise InvalidRequest(f"init image {k} is {iw}x{ih} but the first is {w}x{h}; with {what} every init "
                                     "image must have the same size.", field="init_images",
                                     hint=f"Resize the images to {w}x{h}, or send one request per size.")  # fmt: skip

    def prompt_loras(self) -> tuple[str, tuple[LoraRef, ...]]:
        """The prompt without its `<lora:…>` tags, and every LoRA asked for (the tags, then `loras`)."""
        text, refs = extract_loras(self.prompt)
        return text, (*refs, *self.loras)

    def with_(self, **changes: Any) -> GenerationRequest:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-ready data; images appear as their size and SHA-256."""
        images = {name: getattr(self, name) for name in IMAGE_FIELDS}
        out = asdict(replace(self, init_image=None, mask=None, extra_init_images=()))
        for name, img in images.items():
            out[name] = None if img is None else _image_summary(img)
        out["extra_init_images"] = [_image_summary(img) for img in self.extra_init_images]
        return out


def _image_summary(img: Image.Image) -> dict[str, Any]:
    from sdplay.image_input import image_hash

    return {"width": img.size[0], "height": img.size[1], "sha256": image_hash(img)}


@dataclass(frozen=True)
class PhaseTimings:
    """Seconds spent in each phase of one generation."""

    load: float = 0.0
    text_encoding: float = 0.0
    denoising: float = 0.0
    decoding: float = 0.0
    safety_check: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class StepInfo:
    """Progress of a running generation, passed to the per-step callback."""

    step: int
    total_steps: int
    batch_index: int
    batch_count: int
    elapsed: float
    latents: torch.Tensor | None = None
    family: str = "sd1"

    @property
    def fraction(self) -> float:
        done = self.batch_index * self.total_steps + self.step
        return done / max(1, self.batch_count * self.total_steps)


StepCallback = Callable[[StepInfo], None]


@dataclass
class GenerationResult:
    """Images of one request with everything needed to reproduce them."""

    images: list[Image.Image]
    seeds: list[int]
    request: GenerationRequest
    timings: PhaseTimings
    peak_memory_bytes: int | None
    nsfw: list[bool] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    telemetry: dict[str, Any] | None = None


def _check_loras(loras: Any) -> None:
    if not isinstance(loras, tuple | list) or not all(isinstance(x, LoraRef) for x in loras):
        raise InvalidRequest("loras must be a list of {name, weight} entries.", field="loras")
    if len(loras) > MAX_LORAS:
        raise InvalidRequest(f"At most {MAX_LORAS} LoRAs at once, got {len(loras)}.", field="loras")
    for ref in loras:
        _check_text(ref.name, "loras")
        for w in (ref.weight, ref.text_weight):
            _check_float(w, "loras", -MAX_LORA_WEIGHT, MAX_LORA_WEIGHT)


def _check_text(value: Any, name: str) -> None:
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be text, got {type(value).__name__}.", field=name)
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequest(
            f"{name} is {len(value):,} characters long; the limit is {MAX_PROMPT_CHARS:,}.",
            field=name,
            hint="Shorten it.",
        )


def _check_int(value: Any, name: str, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name} must be a whole number, got {value!r}.", field=name)
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be between {lo} and {hi}, got {value}.", field=name)


def _check_float(value: Any, name: str, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{name} must be a number, got {value!r}.", field=name)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be a number between {lo:g} and {hi:g}, got {value}.", field=name)


def _check_side(value: Any, name: str) -> None:
    _check_int(value, name, 8, MAX_SIDE)
    if value % 8:
        lower, upper = value // 8 * 8, value // 8 * 8 + 8
        raise InvalidRequest(
            f"{name} must be a multiple of 8, got {value}.",
            field=name,
            hint=f"Use {lower or 8} or {upper}.",
        )


@dataclass(frozen=True)
class ModelInfo:
    """A catalog entry as shown to users: defaults, and whether it can run here."""

    name: str
    family: str
    native_size: int
    default_sampler: str
    default_steps: int
    default_guidance: float
    available: bool
    loaded: bool = False
    aliases: tuple[str, ...] = ()
    description: str = ""
    sizes: tuple[tuple[int, int], ...] = ()
    how_to_get: str = ""
    usable: bool = False  # the engine can run it: weights here, or models built with random weights


@dataclass(frozen=True)
class Catalog:
    """What an engine offers: its models (each saying whether it can run here) and its sampler names."""

    models: tuple[ModelInfo, ...] = ()
    samplers: tuple[str, ...] = ()

    def find_model(self, name: str) -> ModelInfo | None:
        key = name.strip().lower()
        for info in self.models:
            if key == info.name.lower() or key in (a.lower() for a in info.aliases):
                return info
        return None
