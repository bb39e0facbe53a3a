"""The inspection page at ``/``: paste text or open a JSONL file, see the filter's token scores as
a heat map, the spans over a threshold and what ``remove`` would leave.

Static HTML, JavaScript and CSS shipped in ``server/static`` (no CDN, no build step, works offline).
The page calls ``POST /v1/filter`` with ``"tokens": true`` once per document and applies the
threshold itself with the server's span rule, so the slider re-colours without a new request.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static")

router = APIRouter()


@router.get("/", include_in_schema=False)
def inspection_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")


def add_page(app: FastAPI) -> None:
    """Serve the page at ``/`` and its files under ``/static`` (no API key: the page asks for one
    when ``/v1/filter`` answers 401)."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
