"""``UpstreamHTTP`` against a real HTTP server on a host name (``localhost``: aiohttp's default
cookie jar refuses cookies of IP addresses, so only a name shows what a jar would keep)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import httpx
import pytest
from aiohttp import web

from gateway.clients.upstream_http import UpstreamHTTP
from gateway.settings import ProviderSettings
from shared.errors import UpstreamError

pytestmark = pytest.mark.integration

_JSON = {"Content-Type": "application/json"}
_STREAM = {"content-type": "application/json", "Accept": "text/event-stream"}


@dataclass
class Upstream:
    url: str
    seen: list[dict[str, list[str]]] = field(default_factory=list)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream("")

    async def chat(request: web.Request) -> web.Response:
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        up.seen.append(headers)
        if request.query.get("sleep"):
            await asyncio.sleep(float(request.query["sleep"]))
        status = int(request.query.get("status", "200"))
        response = web.json_response({"id": "x", "object": "chat.completion"}, status=status)
        response.set_cookie("tenant", f"secret-{len(up.seen)}", domain="localhost")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "localhost", 0)
    await site.start()
    port = runner.addresses[0][1]
    up.url = f"http://localhost:{port}/v1/chat/completions"
    yield up
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[UpstreamHTTP]:
    client = UpstreamHTTP(
        ProviderSettings(name="p", timeout_s=0.5), {"Authorization": "Bearer sk-provider"}
    )
    await client.open()
    yield client
    await client.aclose()


async def test_headers_are_the_clients_defaults_then_the_providers_then_the_calls(
    upstream: Upstream, http: UpstreamHTTP
) -> None:
    await http.post(httpx.URL(upstream.url), b"{}", _JSON)
    stream = await http.open_stream(httpx.URL(upstream.url), b"{}", _STREAM)
    await http.release(stream)
    whole, streamed = upstream.seen
    assert whole["authorization"] == ["Bearer sk-provider"]
    assert whole["content-type"] == ["application/json"]
    assert whole["accept"] == ["*/*"] and "gzip" in whole["accept-encoding"][0]
    assert whole["user-agent"][0].startswith("python-httpx/")
    assert streamed["accept"] == ["text/event-stream"]  # replaced, whatever its case


async def test_a_providers_cookie_is_never_sent_on_a_later_request(
    upstream: Upstream, http: UpstreamHTTP
) -> None:
    for _ in range(3):
        await http.post(httpx.URL(upstream.url), b"{}", _JSON)
    assert [h.get("cookie") for h in upstream.seen] == [None, None, None]


async def test_an_error_status_and_a_slow_answer_are_upstream_errors_and_the_pool_survives(
    upstream: Upstream, http: UpstreamHTTP
) -> None:
    with pytest.raises(UpstreamError) as refused:
        await http.post(httpx.URL(upstream.url + "?status=503"), b"{}", _JSON)
    assert refused.value.status == 503 and not refused.value.timed_out
    with pytest.raises(UpstreamError) as slow:
        await http.post(httpx.URL(upstream.url + "?sleep=2"), b"{}", _JSON)
    assert slow.value.timed_out
    for _ in range(20):  # connections of failed calls went back or were dropped, not leaked
        response = await http.post(httpx.URL(upstream.url), b"{}", _JSON)
        assert response.status_code == 200


async def test_calls_leave_nothing_to_the_cyclic_collector(
    upstream: Upstream, http: UpstreamHTTP
) -> None:
    """What a call makes is freed by reference counting: a worker's full collections stalled it
    for 100-200 ms when each response hung in a reference cycle."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(20):
            await http.post(httpx.URL(upstream.url), b"{}", _JSON)
            stream = await http.open_stream(httpx.URL(upstream.url), b"{}", _STREAM)
            async for _chunk in http.iter_bytes(stream):
                pass
            await http.release(stream)
        gc.collect()
        left = [
            type(o).__name__
            for o in gc.garbage
            if isinstance(o, httpx.Response | httpx.Request | aiohttp.ClientResponse)
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []
