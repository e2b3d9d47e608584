"""A fake Anthropic provider speaking the real Messages wire format, for tests and demos.

``python -m devstack.fake_anthropic --port N`` serves it; tests start it in-process with
``await FakeAnthropic().start()``.

What is real: ``POST /v1/messages`` requires ``x-api-key`` (401 ``authentication_error``) and
``anthropic-version`` (400); ``model``, ``messages`` and ``max_tokens`` are required; answers are
``message`` objects, streams the real event sequence (``message_start``, ``content_block_start``,
``ping``, ``content_block_delta`` …, ``content_block_stop``, ``message_delta``,
``message_stop``), errors ``{"type": "error", "error": {"type", "message"}}`` with a
``request-id`` header. It never calls out.

Behaviour and knobs (headers for direct tests; magic model names pass through a gateway):

- a request with ``tools`` whose last turn is not a tool result gets a text block and then a
  ``tool_use`` of the first tool (``stop_reason: tool_use``); otherwise ``REPLY_TEXT``;
- ``max_tokens`` smaller than the reply cuts it (``stop_reason: max_tokens``); a stop sequence
  found in the reply cuts it there (``stop_reason: stop_sequence``);
- ``x-fake-status: 529`` or model ``fake-status-529``: that status in Anthropic's error shape;
- ``x-fake-delay-ms`` or model ``fake-delay-<ms>``: wait before answering;
- ``x-fake-chunk-delay-ms``: wait between stream events;
- ``x-fake-cache-read-tokens: N``: report N cache-read input tokens;
- model ``fake-stream-error``: a stream that sends an ``error`` event (overloaded) midway;
- models outside ``MODELS`` and not ``fake-*``: 404 ``not_found_error``;
- a firewall classification (the gateway's classifier prompt as ``system``) gets a verdict from
  ``devstack.fake_classifier``; ``GET /fake/stats`` counts messages and classifications.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from collections import Counter
from collections.abc import Mapping
from typing import Any

import msgspec
from aiohttp import web

from devstack.fake_classifier import classifier_text, fake_verdict
from devstack.servers import free_port

__all__ = ["MODELS", "REPLY_TEXT", "FakeAnthropic", "build_app", "error_body", "main"]

MODELS = (
    "claude-3-5-haiku-latest",
    "claude-3-5-haiku-20241022",
    "claude-3-5-sonnet-latest",
    "claude-3-5-sonnet-20241022",
    "claude-3-7-sonnet-latest",
    "claude-sonnet-4-20250514",
    "claude-opus-4-20250514",
)
REPLY_TEXT = "Hello from the fake Anthropic provider. This answer is canned."
TOOL_PREAMBLE = "Let me look that up."
TOOL_INPUT = {"query": "fake", "limit": 3}

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_encode = msgspec.json.encode


def error_body(status: int, message: str) -> bytes:
    kind = _ERROR_TYPES.get(status, "api_error")
    return _encode({"type": "error", "error": {"type": kind, "message": message}})


def _error(status: int, message: str, request_id: str) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(status, message),
        content_type="application/json",
        headers={"request-id": request_id},
    )


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


def _input_tokens(body: Mapping[str, Any]) -> int:
    return max(1, (len(str(body.get("messages"))) + len(str(body.get("system", "")))) // 4)


def _magic(model: str, prefix: str) -> int | None:
    tail = model.removeprefix(prefix)
    return int(tail) if model.startswith(prefix) and tail.isdigit() else None


def _wants_tool(body: Mapping[str, Any]) -> bool:
    if not body.get("tools"):
        return False
    last = body["messages"][-1].get("content")
    return not (isinstance(last, list) and any(b.get("type") == "tool_result" for b in last))


def _plan_text(body: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """The reply text, the stop reason and the stop sequence met, as the real API decides them."""
    text, reason, sequence = REPLY_TEXT, "end_turn", None
    for stop in body.get("stop_sequences") or []:
        at = text.find(stop)
        if at >= 0:
            text, reason, sequence = text[:at], "stop_sequence", stop
    words = _words(text)
    if len(words) > int(body["max_tokens"]):
        text, reason, sequence = "".join(words[: int(body["max_tokens"])]), "max_tokens", None
    return text, reason, sequence


def _validate(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    for field in ("model", "messages", "max_tokens"):
        if field not in body:
            return f"{field}: Field required"
    if not isinstance(body["messages"], list) or not body["messages"]:
        return "messages: at least one message is required"
    for i, message in enumerate(body["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        return "max_tokens: Input should be a positive integer"
    return None


class _Handler:
    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.requests: list[dict[str, Any]] = []
        """Every accepted request body, for tests that check what the gateway sent."""
        self.served: Counter[str] = Counter()
        """Requests received, by kind (``chat``, ``classifier``); ``GET /fake/stats``."""

    async def messages(self, request: web.Request) -> web.StreamResponse:
        n = next(self.ids)
        rid = f"req_fake{n:06d}"
        body = await self._accept(request, rid)
        if isinstance(body, web.Response):
            return body
        self.requests.append(body)
        system = body.get("system")
        screened = classifier_text(
            system if isinstance(system, list) else [system], body["messages"]
        )
        self.served["chat" if screened is None else "classifier"] += 1
        if screened is not None:
            return await self._classify(body, screened, f"msg_fake{n:06d}", rid)
        message = self._message(body, request, f"msg_fake{n:06d}")
        if body.get("stream"):
            return await self._stream(request, body, message, rid)
        return web.Response(
            body=_encode(message), content_type="application/json", headers={"request-id": rid}
        )

    async def _accept(self, request: web.Request, rid: str) -> dict[str, Any] | web.Response:
        """The request body, or the error the real API gives for it."""
        if not request.headers.get("x-api-key"):
            return _error(401, "x-api-key header is required", rid)
        if not request.headers.get("anthropic-version"):
            return _error(400, "anthropic-version: header is required", rid)
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            return _error(400, "There was an error parsing the body of your request", rid)
        problem = _validate(body)
        if problem is not None:
            return _error(400, problem, rid)
        refusal = await self._refusal(request, str(body["model"]), rid)
        return body if refusal is None else refusal

    async def _refusal(self, request: web.Request, model: str, rid: str) -> web.Response | None:
        status = _magic(model, "fake-status-") or int(request.headers.get("x-fake-status", 200))
        delay_ms = _magic(model, "fake-delay-") or int(request.headers.get("x-fake-delay-ms", 0))
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if status != 200:
            return _error(status, f"Fake failure with status {status}.", rid)
        if model not in MODELS and not model.startswith("fake-"):
            return _error(404, f"model: {model}", rid)
        return None

    async def _classify(
        self, body: Mapping[str, Any], screened: str, msg_id: str, rid: str
    ) -> web.Response:
        verdict = fake_verdict(screened)
        if verdict.delay_s:
            await asyncio.sleep(verdict.delay_s)
        if verdict.status != 200:
            return _error(verdict.status, "Fake classifier failure.", rid)
        message = {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": verdict.text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": _input_tokens(body), "output_tokens": len(verdict.text) // 4},
        }
        return web.Response(
            body=_encode(message), content_type="application/json", headers={"request-id": rid}
        )

    async def stats_view(self, _: web.Request) -> web.Response:
        return web.Response(body=_encode(dict(self.served)), content_type="application/json")

    def _message(
        self, body: Mapping[str, Any], request: web.Request, msg_id: str
    ) -> dict[str, Any]:
        content: list[dict[str, Any]]
        if _wants_tool(body):
            tool = body["tools"][0]
            content = [
                {"type": "text", "text": TOOL_PREAMBLE},
                {
                    "type": "tool_use",
                    "id": f"toolu_{msg_id}",
                    "name": tool["name"],
                    "input": TOOL_INPUT,
                },
            ]
            reason, sequence = "tool_use", None
            output = len(_words(TOOL_PREAMBLE)) + 10
        else:
            text, reason, sequence = _plan_text(body)
            content = [{"type": "text", "text": text}]
            output = len(_words(text)) if text else 0
        return {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": {
                "input_tokens": _input_tokens(body),
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": int(request.headers.get("x-fake-cache-read-tokens", 0)),
                "output_tokens": output,
            },
        }

    async def _stream(
        self, request: web.Request, body: Mapping[str, Any], message: dict[str, Any], rid: str
    ) -> web.StreamResponse:
        delay = int(request.headers.get("x-fake-chunk-delay-ms", 0)) / 1000
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "request-id": rid}
        )
        await response.prepare(request)
        try:
            for event, data in stream_events(
                message, fail_midway=body["model"] == "fake-stream-error"
            ):
                await response.write(f"event: {event}\ndata: ".encode() + _encode(data) + b"\n\n")
                if delay:
                    await asyncio.sleep(delay)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-stream, as clients do
        return response


def stream_events(
    message: Mapping[str, Any], *, fail_midway: bool = False
) -> list[tuple[str, dict[str, Any]]]:
    """The event sequence the real API sends for ``message``."""
    usage = message["usage"]
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start})
    ]
    for index, block in enumerate(message["content"]):
        block_events = _block_events(index, block)
        if index == 0:  # the real API pings right after the first block opens
            block_events.insert(1, ("ping", {"type": "ping"}))
        events.extend(block_events)
        if fail_midway:
            error = {"type": "overloaded_error", "message": "Overloaded"}
            return [*events, ("error", {"type": "error", "error": error})]
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": delta,
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _block_events(index: int, block: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    if block["type"] == "tool_use":
        opened = {**block, "input": {}}
        raw = _encode(block["input"]).decode()
        pieces = [raw[i : i + 8] for i in range(0, len(raw), 8)]
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", *pieces]]
    else:
        opened = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": w} for w in _words(block["text"]) if w]
    out: list[tuple[str, dict[str, Any]]] = [
        (
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": opened},
        )
    ]
    out += [
        ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
        for d in deltas
    ]
    out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    return out


def build_app(handler: _Handler | None = None) -> web.Application:
    handler = handler or _Handler()
    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_post("/v1/messages", handler.messages)
    app.router.add_get("/fake/stats", handler.stats_view)
    return app


class FakeAnthropic:
    """The fake provider running in the current event loop, on a free loopback port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._runner: web.AppRunner | None = None
        self._handler = _Handler()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self._handler.requests

    async def start(self) -> FakeAnthropic:
        self._runner = web.AppRunner(build_app(self._handler), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake Anthropic Messages provider")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    args = parser.parse_args(argv)
    web.run_app(build_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
