"""The dashboard pages: one static HTML shell, one script and one stylesheet, no build step.

The pages call the read API with the key the person typed (kept in the browser's
localStorage, sent as ``Authorization: Bearer``); the shell itself holds no data, so it is
served without a key. Charts are inline SVG drawn by the script.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Router, get
from litestar.handlers import HTTPRouteHandler
from litestar.response import File, Redirect
from litestar.static_files import create_static_files_router

__all__ = ["STATIC_DIR", "page_handlers"]

STATIC_DIR = Path(__file__).parent / "static"


@get("/console", include_in_schema=False, media_type="text/html")
async def console_page() -> File:
    return File(STATIC_DIR / "index.html", content_disposition_type="inline")


@get("/console/", include_in_schema=False)
async def console_slash() -> Redirect:
    return Redirect("/console")


def page_handlers() -> list[HTTPRouteHandler | Router]:
    static = create_static_files_router(
        path="/console/static", directories=[STATIC_DIR], include_in_schema=False
    )
    return [console_page, console_slash, static]
