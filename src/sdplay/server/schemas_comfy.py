"""Bodies of the ComfyUI API, for the OpenAPI document (ComfyUI's own shapes; extra fields are allowed)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class ComfyError(BaseModel):
    """ComfyUI's error body: `{"error": {"type", "message", "details", "extra_info"}, "node_errors": {...}}`."""

    model_config = ConfigDict(extra="allow")
    error: dict[str, Any] | str
    node_errors: dict[str, Any] = {}


class PromptAccepted(BaseModel):
    prompt_id: str
    number: float
    node_errors: dict[str, Any]


class ExecInfo(BaseModel):
    queue_remaining: int


class PromptStatus(BaseModel):
    exec_info: ExecInfo


class QueueView(BaseModel):
    queue_running: list[list[Any]]
    queue_pending: list[list[Any]]


class Uploaded(BaseModel):
    name: str
    subfolder: str
    type: str


PROMPT_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["prompt"],
                "properties": {
                    "prompt": {"type": "object", "description": "The workflow in API format: node id -> node."},
                    "client_id": {"type": "string", "description": "The /ws clientId that follows the prompt."},
                    "prompt_id": {"type": "string", "maxLength": 200},
                    "front": {"type": "boolean"},
                    "number": {"type": "number"},
                    "extra_data": {"type": "object", "description": "extra_pnginfo.workflow goes into the PNGs."},
                },
            }
        }
    },
}

ERROR_CODES = (400, 401, 403, 404, 413, 415, 422, 429, 500)


def comfy_responses() -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ComfyError, "description": "Error (the message says what to do)"} for code in ERROR_CODES}
