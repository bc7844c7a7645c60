"""The web gallery: three static pages (search grid, asset, batch) that call the JSON API,
and the 3D viewer script from the npm folder set up by ``scripts/install.sh``.

The pages are plain HTML with one stylesheet and one script; nothing is fetched from a CDN.
Without ``@google/model-viewer`` the asset page shows the static previews and says why.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from foundry3d.api.errors import ApiError

STATIC = Path(__file__).resolve().parent / "static"
MODEL_VIEWER = Path("@google") / "model-viewer" / "dist" / "model-viewer.min.js"
"""The self-contained build of model-viewer (three.js included) inside node_modules."""
SWAGGER_UI = Path("swagger-ui-dist")
"""Swagger UI's files inside node_modules, for ``/docs`` without a CDN."""
SWAGGER_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
                 "favicon-32x32.png": "image/png"}

router = APIRouter(include_in_schema=False)


def _page(name: str) -> HTMLResponse:
    return HTMLResponse((STATIC / name).read_text(encoding="utf-8"))


@router.get("/")
def index() -> HTMLResponse:
    return _page("index.html")


@router.get("/assets/{asset_id}")
def asset_page(asset_id: str) -> HTMLResponse:
    return _page("asset.html")


@router.get("/batches/{batch_id}")
def batch_page(batch_id: str) -> HTMLResponse:
    return _page("batch.html")


@router.get("/static/{name}")
def static_file(name: str) -> FileResponse:
    path = STATIC / name
    if "/" in name or name.startswith(".") or not path.is_file():
        raise ApiError(404, "not_found", f"no static file {name!r}")
    return FileResponse(path)


@router.get("/vendor/model-viewer.min.js")
def model_viewer(request: Request) -> FileResponse:
    path = request.app.state.api_settings.vendor_dir / MODEL_VIEWER
    if not path.is_file():
        raise ApiError(404, "viewer_missing", "@google/model-viewer is not installed; run "
                       "scripts/install.sh (needs npm)", {"looked_in": str(path)})
    return FileResponse(path, media_type="text/javascript")


@router.get("/docs")
def docs(request: Request) -> HTMLResponse:
    """Swagger UI from the npm folder; FastAPI's CDN links only when it is not installed."""
    folder = request.app.state.api_settings.vendor_dir / SWAGGER_UI
    if not (folder / "swagger-ui-bundle.js").is_file():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="foundry3d API")
    return get_swagger_ui_html(
        openapi_url="/openapi.json", title="foundry3d API",
        swagger_js_url="/vendor/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url="/vendor/swagger-ui/swagger-ui.css",
        swagger_favicon_url="/vendor/swagger-ui/favicon-32x32.png",
    )


@router.get("/vendor/swagger-ui/{name}")
def swagger_file(name: str, request: Request) -> FileResponse:
    path = request.app.state.api_settings.vendor_dir / SWAGGER_UI / name
    if name not in SWAGGER_FILES or not path.is_file():
        raise ApiError(404, "not_found", f"no Swagger UI file {name!r}")
    return FileResponse(path, media_type=SWAGGER_FILES[name])
