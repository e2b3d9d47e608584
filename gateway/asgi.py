"""Whole answers as plain ASGI messages, for the parts of the app outside Litestar: the guard's
refusals, the proxied endpoints' answers and the app's own (``gateway.app``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from litestar.types import Send

__all__ = ["Headers", "send_whole", "whole_headers"]

Headers = list[tuple[bytes, bytes]]


def whole_headers(content_type: str, body: bytes, headers: Mapping[str, str]) -> Headers:
    """The header lines of a whole answer. A value that is not latin-1 raises here
    (``UnicodeEncodeError``), before anything was sent."""
    return [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
    ]


async def send_whole(send: Send, status: int, headers: Headers, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
