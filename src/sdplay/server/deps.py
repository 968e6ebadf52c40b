"""The routes' dependency providers: every route gets the service (and the A1111 options) from here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request

if TYPE_CHECKING:
    from sdplay.server.service import Service


def get_service(request: Request) -> Service:
    """The app's service (queue, jobs, gallery, engines), set by create_app."""
    return request.app.state.service
