"""Pydantic schemas of the AUTOMATIC1111-compatible API (1.9+ field names), and conversion to the core."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sdplay.errors import InvalidRequest
from sdplay.samplers import combine_sampler
from sdplay.types import MAX_GUIDANCE, MAX_IMAGES, MAX_PROMPT_CHARS, MAX_SEED, MAX_SIDE, MAX_STEPS, GenerationRequest


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
        )

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
        if self.enable_hr:
            raise InvalidRequest(
                "Hires fix (enable_hr) is not supported.", field="enable_hr", hint="Send enable_hr: false."
            )
        if self.script_name:
            raise InvalidRequest(
                f"Script {self.script_name!r} not found.", field="script_name", hint="GET /sdapi/v1/scripts."
            )
        if self.alwayson_scripts:
            name = next(iter(self.alwayson_scripts))
            raise InvalidRequest(f"always on script {name} not found.", field="alwayson_scripts", hint="Send {}.")
        if self.refiner_checkpoint:
            raise InvalidRequest("Refiners are not supported.", field="refiner_checkpoint", hint="Leave it empty.")


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
