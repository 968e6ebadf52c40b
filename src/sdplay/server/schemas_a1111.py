"""Pydantic schemas of the AUTOMATIC1111-compatible API (1.9+ field names), and conversion to the core."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sdplay.errors import InvalidRequest
from sdplay.samplers import combine_sampler
from sdplay.types import (
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    GenerationRequest,
    HiresFix,
)
from sdplay.vaes import is_default


class Txt2ImgRequest(BaseModel):
    """A1111's StableDiffusionTxt2ImgProcessingAPI. Fields sdplay cannot honour are accepted at their
    defaults and refused otherwise; unknown fields are ignored, as A1111 does."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    styles: list[str] | None = None
    seed: int = Field(-1, ge=-1, le=MAX_SEED)
    subseed: int = Field(-1, ge=-1, le=MAX_SEED)
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    sampler_index: str | None = Field(None, description="Deprecated alias of sampler_name.")
    batch_size: int = Field(1, ge=1, le=MAX_IMAGES)
    n_iter: int = Field(1, ge=1, le=MAX_IMAGES)
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="Omitted: the model's default.")
    cfg_scale: float | None = Field(None, ge=0, le=MAX_GUIDANCE, description="Omitted: the model's default.")
    width: int | None = Field(None, ge=8, le=MAX_SIDE, description="Omitted: the model's native size.")
    height: int | None = Field(None, ge=8, le=MAX_SIDE, description="Omitted: the model's native size.")
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    clip_skip: int | None = Field(
        None, ge=1, le=12, description="A1111 clip skip (also override_settings.CLIP_stop_at_last_layers)."
    )
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] = []
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = {}
    infotext: str | None = None

    def to_request(self, model: str | None, options: dict[str, Any] | None = None) -> GenerationRequest:
        """The core request; `model` is the checkpoint chosen by options or override_settings."""
        self._refuse_unsupported()
        return self._common(model, options).with_(hires=self._hires(), **self._refiner())

    def _refiner(self) -> dict[str, Any]:
        """refiner_checkpoint (an A1111 title or a name; "None" is none) and refiner_switch_at (default 0.8)."""
        if not self.refiner_checkpoint or self.refiner_checkpoint.strip().lower() in ("", "none"):
            return {}
        switch = 0.8 if self.refiner_switch_at is None else self.refiner_switch_at
        name = self.refiner_checkpoint.split(" [")[0].strip().removesuffix(".safetensors")  # A1111 titles
        return {"refiner": name, "refiner_switch_at": switch}

    def _hires(self) -> HiresFix | None:
        """enable_hr and the hr_* fields -> the hires fix (A1111 takes the size from hr_resize_x/y if set)."""
        if not self.enable_hr:
            return None
        for name in ("hr_checkpoint_name", "hr_sampler_name", "hr_scheduler"):
            value = getattr(self, name)
            if value and value not in ("Use same checkpoint", "Use same sampler", "Use same scheduler"):
                raise InvalidRequest(f"{name} is not supported; the second pass uses the first pass's.", field=name)
        for name, base in (("hr_prompt", self.prompt), ("hr_negative_prompt", self.negative_prompt)):
            if getattr(self, name) not in ("", base):
                raise InvalidRequest(f"{name} is not supported; the second pass uses the same prompt.", field=name)
        strength = 0.7 if self.denoising_strength is None else self.denoising_strength
        return HiresFix(scale=self.hr_scale, width=self.hr_resize_x // 8 * 8, height=self.hr_resize_y // 8 * 8,
                        upscaler=self.hr_upscaler or "Latent", steps=self.hr_second_pass_steps,
                        strength=strength)  # fmt: skip

    def _common(self, model: str | None, options: dict[str, Any] | None = None) -> GenerationRequest:
        if self.batch_size * self.n_iter > MAX_IMAGES:
            raise InvalidRequest(
                f"batch_size x n_iter is {self.batch_size * self.n_iter}; the limit is {MAX_IMAGES} images.",
                field="n_iter",
                hint="Ask for fewer images per request.",
            )
        return GenerationRequest(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            model=model,
            n_images=self.batch_size * self.n_iter,
            batch_size=self.batch_size,
            steps=self.steps,
            guidance=self.cfg_scale,
            width=self.width // 8 * 8 if self.width else None,  # A1111 rounds sizes down to a multiple of 8
            height=self.height // 8 * 8 if self.height else None,
            seed=self.seed,
            sampler=combine_sampler(self.sampler_name or self.sampler_index, self.scheduler),
            clip_skip=self._clip_skip(options or {}),
            vae=self._vae(options or {}),
        )

    def _vae(self, options: dict[str, Any]) -> str | None:
        """override_settings' then the saved options' sd_vae ("Automatic": the server's default VAE, "None": the
        model's own)."""
        for value in ((self.override_settings or {}).get("sd_vae"), options.get("sd_vae")):
            if value is not None:
                if not isinstance(value, str):
                    hint = 'Use a name from GET /sdapi/v1/sd-vae, "Automatic" or "None".'
                    raise InvalidRequest(f"sd_vae must be text, got {value!r}.", field="sd_vae", hint=hint)
                return None if is_default(value) else value  # A1111's "Automatic" is the request's default
        return None

    def _clip_skip(self, options: dict[str, Any]) -> int | None:
        """clip_skip, else override_settings' then the saved options' CLIP_stop_at_last_layers (1: the default)."""
        for value in (self.clip_skip, (self.override_settings or {}).get("CLIP_stop_at_last_layers"),
                      options.get("CLIP_stop_at_last_layers")):  # fmt: skip
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
                    raise InvalidRequest(f"CLIP_stop_at_last_layers must be a whole number, got {value!r}.",
                                         field="clip_skip")  # fmt: skip
                return None if int(value) == 1 else int(value)
        return None

    def _refuse_unsupported(self) -> None:
        if self.script_name:
            raise InvalidRequest(
                f"Script {self.script_name!r} not found.", field="script_name", hint="GET /sdapi/v1/scripts."
            )
        if self.alwayson_scripts:
            name = next(iter(self.alwayson_scripts))
            raise InvalidRequest(f"always on script {name} not found.", field="alwayson_scripts", hint="Send {}.")


class Img2ImgRequest(Txt2ImgRequest):
    """A1111's StableDiffusionImg2ImgProcessingAPI: image-to-image, and inpainting when a mask is sent."""

    init_images: list[str] = Field(
        min_length=1,
        max_length=MAX_IMAGES,
        description="Base64 images (data: URL or bare). Several: at most batch_size; the batch takes one each "
        "(batch_size becomes their number) and every n_iter repeats them, as in A1111.",
    )
    mask: str | None = Field(None, description="Base64 mask, white = repaint (or alpha, opaque = repaint).")
    resize_mode: int = Field(0, ge=0, le=2, description="0 just resize, 1 crop and resize, 2 resize and fill.")
    denoising_strength: float | None = Field(0.75, ge=0, le=1)
    image_cfg_scale: float | None = None
    mask_blur: int | None = Field(None, ge=0, le=64)
    mask_blur_x: int = Field(4, ge=0, le=64)
    mask_blur_y: int = Field(4, ge=0, le=64)
    inpainting_fill: int = Field(0, ge=0, le=3, description="0 fill, 1 original, 2 latent noise, 3 latent nothing.")
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = Field(0, ge=0, le=512)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False

    def to_request(self, model: str | None, options: dict[str, Any] | None = None) -> GenerationRequest:
        from sdplay.image_input import decode_base64, decode_image, decode_mask
        from sdplay.masking import fill_mode, resize_mode

        self._refuse_unsupported()
        if self.enable_hr:
            raise InvalidRequest("enable_hr is for txt2img.", field="enable_hr", hint="Set width and height instead.")
        if self.initial_noise_multiplier not in (None, 1, 1.0) or self.latent_mask:
            field = "latent_mask" if self.latent_mask else "initial_noise_multiplier"
            raise InvalidRequest(f"{field} is not supported.", field=field, hint="Leave it out.")
        images = [decode_image(decode_base64(text, "init_images"), "init_images") for text in self.init_images]
        image = images[0]
        mask = None
        if self.mask:
            mask = decode_mask(decode_base64(self.mask, "mask"), "mask", size=image.size)
        return self._common(model, options).with_(
            **self._batch_of(len(images)), **self._refiner(), init_image=image, extra_init_images=tuple(images[1:]),
            mask=mask,
            strength=self.denoising_strength,
            mask_blur=self.mask_blur if self.mask_blur is not None else max(self.mask_blur_x, self.mask_blur_y),
            mask_invert=bool(self.inpainting_mask_invert), inpaint_fill=fill_mode(self.inpainting_fill),
            inpaint_full_res=self.inpaint_full_res, inpaint_padding=self.inpaint_full_res_padding,
            resize_mode=resize_mode(self.resize_mode),
        )  # fmt: skip

    def _batch_of(self, count: int) -> dict[str, Any]:
        """A1111's rule for several init images: one per image of the batch, so batch_size becomes their number
        (more than batch_size is an error there too); each n_iter repeats them."""
        if count == 1:
            return {}
        if count > self.batch_size:
            hint = f"Set batch_size to {count}, or send at most {self.batch_size} images."
            raise InvalidRequest(f"{count} init_images but batch_size is {self.batch_size}; each image of a batch "
                                 "takes one init image.", field="init_images", hint=hint)  # fmt: skip
        return {"n_images": count * self.n_iter, "batch_size": count}

    def echoed(self) -> dict[str, Any]:
        """The request as A1111 returns it in `parameters`: images only if include_init_images."""
        out = self.model_dump()
        if not self.include_init_images:
            out["init_images"], out["mask"] = None, None
        return out


class Txt2ImgResponse(BaseModel):
    images: list[str] = Field(description="Base64 PNGs (no data: prefix).")
    parameters: dict[str, Any]
    info: str = Field(description="A JSON string: seed, all_seeds, infotexts, sampler_name, ...")


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = -1
    need_inner_model: bool | None = False


class ScriptsList(BaseModel):
    txt2img: list[str] = []
    img2img: list[str] = []


class PNGInfoRequest(BaseModel):
    image: str = Field(min_length=1, max_length=64 * 2**20, description="Base64 PNG, optionally as a data: URI.")


class PNGInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class MemoryResponse(BaseModel):
    ram: dict[str, Any]
    cuda: dict[str, Any]
