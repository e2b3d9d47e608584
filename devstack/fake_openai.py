"""A fake OpenAI-compatible provider speaking the real wire format, for tests, demos and benchmarks.

``python -m devstack.fake_openai --port N`` serves it; tests start it in-process with
``await FakeOpenAI().start()`` (an ``AppRunner`` on a free loopback port, in the current loop) or
``FakeOpenAIThread().start()`` (its own loop in a thread).

Invariants: it never calls out; bodies are precomputed per model at start-up and only the
request id and the usage figures are spliced in per request, because this server is the
baseline the gateway's overhead is measured against.

Knobs (each as a request header or as a magic model name, because a gateway in between forwards
the model but not arbitrary headers):

- ``x-fake-status: 503`` or model ``fake-status-503``: an OpenAI-style error with that status.
- ``x-fake-delay-ms: 250`` or model ``fake-delay-250``: wait before answering (before the first
  chunk of a stream).
- ``x-fake-chunk-delay-ms: 20``: wait between stream chunks.
- model ``fake-drop``: close the connection without answering.
- model ``fake-stall``: a stream that sends its first chunk, then nothing for a minute.
- a model containing ``no-usage`` (``fake-no-usage``): answers without usage, in streams too
  (as some OpenAI-compatible servers do).
- models outside ``MODELS`` (and not ``fake-*``) get OpenAI's 404 ``model_not_found``.
- a request without ``Authorization: Bearer …`` gets OpenAI's 401 ``invalid_api_key``.
- a firewall classification (the gateway's classifier prompt) gets a verdict from
  ``devstack.fake_classifier`` (markers in the screened text choose it).
- ``GET /fake/stats``: how many chat requests and classifications it received.

``POST /v1/embeddings`` answers the ``EMBEDDING_MODELS`` with deterministic vectors (floats or
``encoding_format: base64``) and ``GET /v1/models`` lists every model. ``served`` counts the
requests that reached each endpoint, so tests can tell a cache hit from a provider call.

Azure OpenAI is served too, at ``/openai/deployments/{deployment}/chat/completions`` with the
``api-version`` query parameter and the ``api-key`` header (401 without it, Azure's 404 without
the version); the deployment name is the model, and the same knobs apply to it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import math
import random
import struct
import threading
from base64 import b64encode
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from devstack.fake_classifier import classifier_text, fake_verdict
from devstack.servers import free_port

__all__ = [
    "EMBEDDING_MODELS",
    "MODELS",
    "REPLY_TEXT",
    "FakeOpenAI",
    "FakeOpenAIThread",
    "build_app",
    "fake_embedding",
    "main",
]

MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-4-turbo",
    "gpt-4",
    "gpt-3.5-turbo",
    "o1",
    "o3-mini",
)
EMBEDDING_MODELS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072}
"""Embedding models and their dimensions; vectors are derived from a hash of the text, so the
same text always gets the same vector (and different texts unrelated ones)."""
REPLY_TEXT = "Hello from the fake provider. This answer is canned."
"""The assistant's answer; streams send it word by word."""

COMPLETION_TOKENS = len(REPLY_TEXT.split())
_ID = b"__FAKE_ID__"
_PROMPT = b"__PROMPT_TOKENS__"
_TOTAL = b"__TOTAL_TOKENS__"
_CREATED = 1_750_000_000
_encode = msgspec.json.encode


class _Request(msgspec.Struct):
    model: str
    messages: list[Any]
    stream: bool = False
    stream_options: dict[str, Any] | None = None


_decode_request = msgspec.json.Decoder(_Request).decode


@dataclass(frozen=True)
class _Bodies:
    """Byte templates of one model's answers, with placeholders for the per-request parts."""

    completion: bytes
    completion_without_usage: bytes
    chunks: tuple[bytes, ...]
    chunks_with_usage: tuple[bytes, ...]
    usage_chunk: bytes


def _usage() -> dict[str, Any]:
    return {
        "prompt_tokens": "P",
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": "T",
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _placeholders(body: bytes) -> bytes:
    return (
        body.replace(b'"__ID__"', b'"' + _ID + b'"')
        .replace(b'"P"', _PROMPT)
        .replace(b'"T"', _TOTAL)
    )


def _chunk(model: str, delta: dict[str, Any], finish: str | None, usage: bool) -> bytes:
    chunk: dict[str, Any] = {
        "id": "__ID__",
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage:
        chunk["usage"] = None
    return b"data: " + _placeholders(_encode(chunk)) + b"\n\n"


def _bodies(model: str) -> _Bodies:
    completion = {
        "id": "__ID__",
        "object": "chat.completion",
        "created": _CREATED,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": REPLY_TEXT, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(),
    }
    words = REPLY_TEXT.split(" ")
    pieces = [words[0]] + [" " + w for w in words[1:]]

    def stream(usage: bool) -> tuple[bytes, ...]:
        first = _chunk(model, {"role": "assistant", "content": "", "refusal": None}, None, usage)
        middle = [_chunk(model, {"content": p}, None, usage) for p in pieces]
        return (first, *middle, _chunk(model, {}, "stop", usage))

    usage_chunk = {
        "id": "__ID__",
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [],
        "usage": _usage(),
    }
    return _Bodies(
        completion=_placeholders(_encode(completion)),
        completion_without_usage=_placeholders(_encode({**completion, "usage": None})),
        chunks=stream(False),
        chunks_with_usage=stream(True),
        usage_chunk=b"data: " + _placeholders(_encode(usage_chunk)) + b"\n\n",
    )


def error_body(status: int, message: str, code: str | None = None) -> bytes:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        404: "invalid_request_error",
        429: "rate_limit_exceeded",
    }.get(status, "server_error")
    return _encode({"error": {"message": message, "type": kind, "param": None, "code": code}})


def _error(status: int, message: str, code: str | None = None) -> web.Response:
    return web.Response(
        status=status, body=error_body(status, message, code), content_type="application/json"
    )


def _azure_error(status: int, message: str) -> web.Response:
    """Azure's own errors (auth, routing) carry the status as a string code."""
    return web.Response(
        status=status,
        body=_encode({"error": {"code": str(status), "message": message}}),
        content_type="application/json",
    )


_NO_USAGE = "no-usage"
_STALL_S = 60.0


async def _stall(request: web.Request) -> None:
    """Send nothing for ``_STALL_S``, or until the client hangs up (so a stop is prompt)."""
    deadline = asyncio.get_running_loop().time() + _STALL_S
    while asyncio.get_running_loop().time() < deadline:
        if request.transport is None or request.transport.is_closing():
            return
        await asyncio.sleep(0.05)


def _magic(model: str, prefix: str) -> int | None:
    if model.startswith(prefix):
        tail = model[len(prefix) :]
        if tail.isdigit():
            return int(tail)
    return None


class _Handler:
    """The chat-completions endpoint; holds the precomputed bodies and the id counter."""

    def __init__(self) -> None:
        self.bodies = {m: _bodies(m) for m in MODELS}
        self.ids = itertools.count(1)
        self.served: Counter[str] = Counter()
        """Requests received, by kind (``chat``, ``classifier``, ``embeddings``);
        ``GET /fake/stats``."""

    def bodies_for(self, model: str) -> _Bodies:
        found = self.bodies.get(model)
        if found is None:
            found = self.bodies[model] = _bodies(model)
        return found

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return _error(401, "You didn't provide an API key.", "invalid_api_key")
        try:
            body = _decode_request(await request.read())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _error(400, f"Invalid request body: {exc}")
        return await self.answer(request, body)

    async def azure_chat(self, request: web.Request) -> web.StreamResponse:
        """Azure OpenAI: the deployment in the path is the model; ``api-key`` header (a Bearer
        token is not accepted here); ``api-version`` query parameter required."""
        if not request.headers.get("api-key"):
            return _azure_error(
                401,
                "Access denied due to invalid subscription key or wrong API endpoint. Make "
                "sure to provide a valid key for an active subscription and use a correct "
                "regional API endpoint for your resource.",
            )
        if not request.query.get("api-version"):
            return _azure_error(404, "Resource not found")
        try:
            body = _decode_request(await request.read())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _error(400, f"Invalid request body: {exc}")
        body.model = request.match_info["deployment"]
        return await self.answer(request, body)

    async def answer(self, request: web.Request, body: _Request) -> web.StreamResponse:
        messages = [m for m in body.messages if isinstance(m, dict)]
        screened = classifier_text(
            [m.get("content") for m in messages if m.get("role") == "system"],
            [m for m in messages if m.get("role") == "user"],
        )
        self.served["chat" if screened is None else "classifier"] += 1
        refusal = await self.refusal(request, body.model)
        if refusal is not None:
            return refusal
        prompt = max(1, sum(len(str(m)) for m in body.messages) // 4)
        if screened is not None:
            return await self.classify(body.model, screened, prompt)
        splice = _Splice(f"chatcmpl-fake{next(self.ids)}", prompt)
        bodies = self.bodies_for(body.model)
        if body.stream:
            return await self.stream(request, bodies, body, splice)
        template = bodies.completion_without_usage if _NO_USAGE in body.model else bodies.completion
        return web.Response(body=splice(template), content_type="application/json")

    async def refusal(self, request: web.Request, model: str) -> web.Response | None:
        """The knobs: magic model names and x-fake-* headers (see the module docstring)."""
        status = _magic(model, "fake-status-") or int(request.headers.get("x-fake-status", 200))
        delay_ms = _magic(model, "fake-delay-") or int(request.headers.get("x-fake-delay-ms", 0))
        if model == "fake-drop":
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if status != 200:
            return _error(status, f"Fake failure with status {status}.", f"fake_{status}")
        known = model in self.bodies or model in EMBEDDING_MODELS
        if not known and not model.startswith("fake-"):
            return _error(404, f"The model `{model}` does not exist.", "model_not_found")
        return None

    async def classify(self, model: str, screened: str, prompt_tokens: int) -> web.Response:
        verdict = fake_verdict(screened)
        if verdict.delay_s:
            await asyncio.sleep(verdict.delay_s)
        if verdict.status != 200:
            return _error(verdict.status, "Fake classifier failure.", "fake_classifier_error")
        completion = max(1, len(verdict.text) // 4)
        answer = {
            "id": f"chatcmpl-fake{next(self.ids)}",
            "object": "chat.completion",
            "created": _CREATED,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": verdict.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
            },
        }
        return web.Response(body=_encode(answer), content_type="application/json")

    async def stats_view(self, _: web.Request) -> web.Response:
        return web.Response(body=_encode(dict(self.served)), content_type="application/json")

    async def stream(
        self, request: web.Request, bodies: _Bodies, body: _Request, splice: _Splice
    ) -> web.StreamResponse:
        usage = bool(body.stream_options and body.stream_options.get("include_usage"))
        usage = usage and _NO_USAGE not in body.model
        chunk_delay = int(request.headers.get("x-fake-chunk-delay-ms", 0)) / 1000
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for chunk in bodies.chunks_with_usage if usage else bodies.chunks:
                await response.write(splice(chunk))
                if chunk_delay:
                    await asyncio.sleep(chunk_delay)
                if body.model == "fake-stall":
                    await _stall(request)
            if usage:
                await response.write(splice(bodies.usage_chunk))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-stream, as clients do; nothing to answer
        return response

    async def embeddings(self, request: web.Request) -> web.Response:
        self.served["embeddings"] += 1
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return _error(401, "You didn't provide an API key.", "invalid_api_key")
        try:
            body = msgspec.json.decode(await request.read(), type=_EmbeddingsRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _error(400, f"Invalid request body: {exc}")
        refusal = await self.refusal(request, body.model)
        if refusal is not None:
            return refusal
        dimensions = body.dimensions or EMBEDDING_MODELS.get(body.model)
        if dimensions is None:
            return _error(400, f"`{body.model}` is not an embedding model.", "invalid_model")
        texts = [body.input] if isinstance(body.input, str) else body.input
        as_base64 = body.encoding_format == "base64"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": fake_embedding(text, dimensions, base64=as_base64),
            }
            for i, text in enumerate(texts)
        ]
        tokens = sum(max(1, len(str(t)) // 4) for t in texts)
        answer = {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return web.Response(body=_encode(answer), content_type="application/json")

    async def models(self, _: web.Request) -> web.Response:
        names = [*MODELS, *EMBEDDING_MODELS]
        data = [
            {"id": m, "object": "model", "created": _CREATED, "owned_by": "fake"} for m in names
        ]
        return web.Response(
            body=_encode({"object": "list", "data": data}), content_type="application/json"
        )


HANDLER = web.AppKey("handler", _Handler)


class _Splice:
    """Puts one request's id and usage into a precomputed body."""

    def __init__(self, request_id: str, prompt_tokens: int) -> None:
        self.id = request_id.encode()
        self.prompt = str(prompt_tokens).encode()
        self.total = str(prompt_tokens + COMPLETION_TOKENS).encode()

    def __call__(self, template: bytes) -> bytes:
        out = template.replace(_ID, self.id)
        if _PROMPT in out:
            out = out.replace(_PROMPT, self.prompt).replace(_TOTAL, self.total)
        return out


class _EmbeddingsRequest(msgspec.Struct):
    model: str
    input: str | list[str | int | list[int]]
    encoding_format: str = "float"
    dimensions: int | None = None


def fake_embedding(text: object, dimensions: int, *, base64: bool = False) -> list[float] | str:
    """A unit vector drawn from a generator seeded by the text's hash (deterministic)."""
    seed = int.from_bytes(hashlib.sha256(repr(text).encode()).digest()[:8], "little")
    rng = random.Random(seed)
    vector = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    unit = [v / norm for v in vector]
    if base64:
        return b64encode(struct.pack(f"<{dimensions}f", *unit)).decode()
    return unit


async def _health(_: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def build_app() -> web.Application:
    handler = _Handler()
    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_post("/v1/chat/completions", handler.chat)
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", handler.azure_chat)
    app.router.add_post("/v1/embeddings", handler.embeddings)
    app.router.add_get("/v1/models", handler.models)
    app.router.add_get("/health", _health)
    app[HANDLER] = handler
    app.router.add_get("/fake/stats", handler.stats_view)
    return app


class FakeOpenAI:
    """The fake provider running in the current event loop, on a free loopback port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._runner: web.AppRunner | None = None
        self._app: web.Application | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def served(self) -> Counter[str]:
        """Requests served so far, by kind (``chat``, ``embeddings``)."""
        return self._app[HANDLER].served if self._app is not None else Counter()

    async def start(self) -> FakeOpenAI:
        self._app = build_app()
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class FakeOpenAIThread:
    """The fake provider on its own event loop in a daemon thread, for callers whose loop
    blocks while a request is in flight (litestar's test client runs the app that way)."""

    def __init__(self, port: int | None = None) -> None:
        self.server = FakeOpenAI(port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def served(self) -> Counter[str]:
        return self.server.served

    def start(self) -> FakeOpenAIThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible provider")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    web.run_app(build_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
