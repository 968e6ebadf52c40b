"""Gallery API: search stored images by prompt text, model and date; fetch; delete."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Path, Query, Response

from sdplay.errors import InvalidRequest
from sdplay.server.auth import require_api_key
from sdplay.server.deps import get_service
from sdplay.server.errors import NotFound
from sdplay.server.records import ImageRecord
from sdplay.server.schemas_errors import NativeError, error_responses
from sdplay.server.schemas_gallery import GalleryItem, GalleryPage
from sdplay.server.service import Service
from sdplay.server.storage import encode_file

router = APIRouter(
    prefix="/api/v1/gallery",
    tags=["gallery"],
    dependencies=[Depends(require_api_key)],
    responses=error_responses(NativeError),
)

WHEN = r"^(\d{1,12}(\.\d{1,6})?|\d{4}-[01]\d-[0-3]\d([T ][0-2]\d:[0-5]\d(:[0-5]\d)?)?)$"
IMAGE_ID = Path(ge=1, le=2**62, description="The gallery id of an image.")


def _when(value: str | None, name: str) -> float | None:
    """A unix time or an ISO date/time (e.g. 2025-01-31 or 2025-01-31T12:00:00)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError as exc:
        raise InvalidRequest(
            f"{name} must be a unix time or an ISO date, got {value!r}.", field=name, hint="E.g. 2025-01-31."
        ) from exc


@router.get("", response_model=GalleryPage)
def search(
    q: str | None = Query(None, max_length=1000, pattern=r"^[^\x00]*$", description="Text the prompt contains."),
    model: str | None = Query(None, max_length=200),
    since: str | None = Query(None, pattern=WHEN, description="Unix time or ISO date (inclusive)."),
    until: str | None = Query(None, pattern=WHEN, description="Unix time or ISO date (exclusive)."),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=10**9),
    service: Service = Depends(get_service),
) -> GalleryPage:
    """Newest first."""
    images, total = service.gallery.search(q, model, _when(since, "since"), _when(until, "until"), limit, offset)
    return GalleryPage(items=[GalleryItem.of(im) for im in images], total=total, limit=limit, offset=offset)


def _image(service: Service, image_id: int) -> ImageRecord:
    image = service.gallery.get_image(image_id)
    if image is None:
        raise NotFound(f"No gallery image {image_id}.", field="image_id", hint="Search with GET /api/v1/gallery.")
    return image


@router.get("/{image_id}", response_model=GalleryItem)
def get_item(image_id: int = IMAGE_ID, service: Service = Depends(get_service)) -> GalleryItem:
    return GalleryItem.of(_image(service, image_id))


@router.get("/{image_id}/image", response_class=Response, responses={200: {"content": {"image/png": {}}}})
def get_image(image_id: int = IMAGE_ID, service: Service = Depends(get_service)) -> Response:
    path = service.gallery.file_path(_image(service, image_id))
    if not path.is_file():
        raise NotFound(f"The file of gallery image {image_id} is gone.", hint="Delete the entry.")
    return Response(encode_file(path), media_type="image/png")


@router.delete("/{image_id}", status_code=204, response_class=Response)
def delete_item(image_id: int = IMAGE_ID, service: Service = Depends(get_service)) -> Response:
    """Delete the gallery entry and its file."""
    if not service.gallery.delete_image(image_id):
        raise NotFound(f"No gallery image {image_id}.", field="image_id")
    return Response(status_code=204)
