"""The web page: GET /ui (and / redirects there), its script, style sheet and icon, which lie
beside this module in ui_static/, and the options its form is drawn from. No build step and no
asset from the network; a Content-Security-Policy lets the page load only from this origin and
run no inline script, so model text can never become markup that runs."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from routers.deps import StateDep
from service.errors import ErrorCode, ServiceError
from service.schemas import PageOptions

STATIC = Path(__file__).with_name("ui_static")
ASSETS = {
    "ui.js": "text/javascript; charset=utf-8",
    "ui.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files: always revalidated, so a new version of the page shows at once.
    "Cache-Control": "no-cache",
}
# Open without an API key, as the probes are: the page holds no data, and asks for a key itself.
PUBLIC_PATHS = frozenset({"/", "/ui", "/ui/options.json", *(f"/ui/{name}" for name in ASSETS)})

router = APIRouter(include_in_schema=False)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui")
async def page() -> FileResponse:
    return FileResponse(
        STATIC / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS
    )


@router.get("/ui/options.json", response_model=PageOptions)
async def options(state: StateDep) -> PageOptions:
    return PageOptions.of(state.settings)


@router.get("/ui/{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:  # a fixed list: no path from the request ever reaches the disk
        raise ServiceError(ErrorCode.NOT_FOUND, f"name: the page has no file {name!r}")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers=HEADERS)
