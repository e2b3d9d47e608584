"""The bare forwarder: litestar on granian relaying POST /v1/chat/completions to one upstream
through httpx over the aiohttp transport, with nothing else (no auth, limits, records).

The floor the gateway's overhead is measured against (~2,500 req/s per worker for this shape
when it was chosen, docs/architecture.md §8): run by ``bench.gateway_overhead`` as a target of
its own.

    FLOOPY_BARE_UPSTREAM=http://127.0.0.1:8090/v1 python -m bench.bare_forwarder --port 8070
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from httpx_aiohttp import AiohttpTransport
from litestar import Litestar, Request, Response, get, post

__all__ = ["app_factory", "main"]


def app_factory() -> Litestar:
    upstream = os.environ["FLOOPY_BARE_UPSTREAM"].rstrip("/") + "/chat/completions"
    state: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        async with httpx.AsyncClient(transport=AiohttpTransport(), timeout=30) as client:
            state["client"] = client
            yield

    @post("/v1/chat/completions")
    async def forward(request: Request[Any, Any, Any]) -> Response[bytes]:
        reply = await state["client"].post(
            upstream,
            content=await request.body(),
            headers={"content-type": "application/json", "authorization": "Bearer sk-bare"},
        )
        return Response(reply.content, status_code=reply.status_code, media_type="application/json")

    @get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar([forward, health], lifespan=[lifespan])


def main(argv: list[str] | None = None) -> None:
    from granian import Granian
    from granian.constants import Interfaces

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    Granian(
        "bench.bare_forwarder:app_factory",
        factory=True,
        address="127.0.0.1",
        port=args.port,
        workers=1,
        interface=Interfaces.ASGI,
        log_access=False,
    ).serve()


if __name__ == "__main__":
    main()
