"""The OpenAPI document states what this server enforces: its own limits (its settings, not the library's
ceilings), and the errors every operation can answer (invalid fields are 400, not FastAPI's 422; the app-wide
guards answer 421 for a foreign Host, 403 for a cross-site change, 400/413 for a bad body)."""

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
            for path, operations in schema.get("paths", {}).items():
                for method, operation in operations.items():
                    _document_errors(path, method.upper(), operation)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _cap(prop: dict[str, Any], limit: int) -> None:
    """Lower `maximum` to `limit` in a property schema (directly or inside anyOf)."""
    for part in [prop, *prop.get("anyOf", [])]:
        if part.get("type") in ("integer", "number"):
            part["maximum"] = min(part.get("maximum", limit), limit)


ERROR_MODELS = {"openai": "OpenAIError", "a1111": "A1111Error", "native": "NativeError"}
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")


def _document_errors(path: str, method: str, operation: dict[str, Any]) -> None:
    """Replace FastAPI's 422 validation answer by the 400 the handlers give, and add the guards' statuses."""
    from sdplay.server.errors import api_of

    responses = operation.setdefault("responses", {})
    ref = {"$ref": f"#/components/schemas/{ERROR_MODELS[api_of(path)]}"}
    error = {"description": "Error (the message says what to do)", "content": {"application/json": {"schema": ref}}}
    validation = responses.get("422", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if validation.get("$ref", "").endswith("/HTTPValidationError"):
        del responses["422"]
    codes = ["421"]
    if operation.get("parameters") or operation.get("requestBody"):
        codes.append("400")
    if method in STATE_CHANGING:
        codes += ["400", "403", "413"]
    for code in codes:
        responses.setdefault(code, error)
