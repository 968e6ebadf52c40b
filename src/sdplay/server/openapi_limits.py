"""The OpenAPI document states the limits this server enforces (its settings), not the library's ceilings."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from sdplay.server.settings import Settings

# Request schemas and, per field, the setting that bounds it.
REQUEST_SCHEMAS = ("JobCreate", "ImageGenerateRequest", "Txt2ImgRequest")
FIELD_LIMITS = {"n_images": "max_images", "n": "max_images", "batch_size": "max_images", "n_iter": "max_images",
                "steps": "max_steps", "width": "max_side", "height": "max_side"}  # fmt: skip
NOTE = (
    " This server also limits width x height per image and width x height x steps x images per request by its "
    "devices' speed; GET /api/v1/system shows the limits."
)


def state_limits(app: FastAPI, settings: Settings) -> None:
    """Wrap `app.openapi` so each bounded request field carries the server's own maximum."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.get("components", {}).get("schemas", {})
            for name in REQUEST_SCHEMAS:
                component = components.get(name)
                if component is None:
                    continue
                for field, setting in FIELD_LIMITS.items():
                    if field in component.get("properties", {}):
                        _cap(component["properties"][field], getattr(settings, setting))
                component["description"] = (component.get("description") or "").rstrip() + NOTE
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _cap(prop: dict[str, Any], limit: int) -> None:
    """Lower `maximum` to `limit` in a property schema (directly or inside anyOf)."""
    for part in [prop, *prop.get("anyOf", [])]:
        if part.get("type") in ("integer", "number"):
            part["maximum"] = min(part.get("maximum", limit), limit)
