"""The dashboard pages: one static HTML shell, one script and one stylesheet, no build step.

The pages call the read API with the key the person typed (kept in the tab's sessionStorage,
sent as ``Authorization: Bearer``); a ``?key=`` in the URL is moved there and out of the URL at
once. The shell itself holds no data, so it is served without a key. Charts are inline SVG drawn
by the script.

Every page and static file carries ``SECURITY_HEADERS``: a Content-Security-Policy allowing only
the gateway's own script, stylesheet and API (no inline script or style attribute; the script
sets styles through the CSSOM), no framing, no MIME sniffing, no referrer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Response, Router, get
from litestar.datastructures import ResponseHeader
from litestar.handlers import HTTPRouteHandler
from litestar.response import File, Redirect
from litestar.static_files import create_static_files_router

__all__ = ["SECURITY_HEADERS", "STATIC_DIR", "page_handlers"]

STATIC_DIR = Path(__file__).parent / "static"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_HEADERS = [ResponseHeader(name=k, value=v) for k, v in SECURITY_HEADERS.items()]


async def _secure(response: Response[Any]) -> Response[Any]:
    """For the static files router, which takes no ``response_headers``."""
    response.headers.update(SECURITY_HEADERS)
    return response


@get("/console", include_in_schema=False, media_type="text/html", response_headers=_HEADERS)
async def console_page() -> File:
    return File(STATIC_DIR / "index.html", content_disposition_type="inline")


@get("/console/", include_in_schema=False, response_headers=_HEADERS)
async def console_slash() -> Redirect:
    return Redirect("/console")


def page_handlers() -> list[HTTPRouteHandler | Router]:
    static = create_static_files_router(
        path="/console/static",
        directories=[STATIC_DIR],
        include_in_schema=False,
        after_request=_secure,
    )
    return [console_page, console_slash, static]
