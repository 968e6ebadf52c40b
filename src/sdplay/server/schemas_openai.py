"""Pydantic schemas of the OpenAI-compatible images API, and conversion to the core request."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sdplay.errors import InvalidRequest
from sdplay.samplers import combine_sampler
from sdplay.server.jsontypes import IntegralFloats
from sdplay.types import MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS, GenerationRequest

_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")


class ImageGenerateRequest(IntegralFloats):
    """POST /v1/images/generations. sdplay's own fields (seed, negative_prompt, steps, guidance, sampler)
    sit at the top level, as the `openai` client's `extra_body` sends them."""

    model_config = ConfigDict(extra="allow", strict=True)

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    model: str | None = Field(None, description="A name from GET /v1/models; OpenAI names mean the default model.")
    n: int | None = Field(1, ge=1, le=10)
    size: str | None = Field("auto", max_length=20, description="'auto' (the model's native size) or 'WIDTHxHEIGHT'.")
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    quality: str | None = None
    style: str | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    moderation: str | None = None
    user: str | None = None
    stream: bool | None = False
    partial_images: int | None = Field(None, ge=0, le=3)
    seed: int | None = Field(None, ge=-1, le=MAX_SEED)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    guidance: float | None = Field(None, ge=0, le=MAX_GUIDANCE)
    sampler: str | None = None
    scheduler: str | None = None

    def to_request(self) -> GenerationRequest:
        if self.background == "transparent":
            raise InvalidRequest(
                "Transparent backgrounds are not supported.", field="background", hint="Use 'auto' or 'opaque'."
            )
        width, height = parse_size(self.size)
        return GenerationRequest(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt or "",
            model=self.model,
            n_images=self.n or 1,
            steps=self.steps,
            guidance=self.guidance,
            width=width,
            height=height,
            seed=-1 if self.seed is None else self.seed,
            sampler=combine_sampler(self.sampler, self.scheduler),
        )

    @property
    def format(self) -> str:
        return self.output_format or "png"

    @property
    def answer_format(self) -> str:
        """`response_format`, or its default as OpenAI documents it for the model asked: `url` for the DALL-E
        models (and for no model, which means dall-e-2 unless a GPT-image-only field is sent), `b64_json` for the
        GPT-image models and for sdplay's own models (the image comes with the answer; links expire)."""
        if self.response_format:
            return self.response_format
        name = (self.model or "").strip().lower()
        if name.startswith("dall-e"):
            return "url"
        if not name:
            gpt_image_only = (self.output_format, self.output_compression, self.background, self.moderation,
                              self.partial_images, self.stream or None)  # fmt: skip
            return "b64_json" if any(v is not None for v in gpt_image_only) else "url"
        return "b64_json"


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    """'auto' or None -> the model's native size; 'WxH' -> (W, H)."""
    if size is None or size.strip().lower() in ("", "auto"):
        return None, None
    match = _SIZE.match(size)
    if not match:
        raise InvalidRequest(
            f"size must be 'auto' or 'WIDTHxHEIGHT', got {size!r}.", field="size", hint="For example '512x512'."
        )
    width, height = int(match.group(1)), int(match.group(2))
    if not width or not height:
        raise InvalidRequest(f"size {size!r} has a side of 0.", field="size", hint="Use 'auto' or e.g. '512x512'.")
    return width, height


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: str | None = None
    size: str | None = None
    quality: str | None = None
    background: str | None = None


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sdplay"


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]
