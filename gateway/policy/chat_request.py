"""What makes a chat-completions body acceptable, and what the gateway needs to know of it.

Non-streamed bodies are forwarded byte for byte: only the few fields below are decoded (msgspec
skips the rest without building it). Streamed bodies are decoded whole because the gateway adds
``stream_options.include_usage`` to learn the token counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from gateway.domain import ChatRequest
from gateway.policy.json_body import decode_json
from shared.errors import BadRequestError

__all__ = [
    "MAX_MODEL_CHARS",
    "check_content_type",
    "check_model_name",
    "header_text",
    "parse_chat_request",
    "parse_embeddings_request",
]

MAX_MODEL_CHARS = 256
"""Longer than any provider's model or deployment name; the name is echoed in a header."""
_HEADER_MAX_CHARS = 256


class _StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _Head(msgspec.Struct):
    model: str
    messages: list[msgspec.Raw]
    stream: bool | None = False
    stream_options: _StreamOptions | None = None


class _EmbeddingsHead(msgspec.Struct):
    model: str
    input: str | list[str | int | list[int]]


_decode_head = msgspec.json.Decoder(_Head).decode
_decode_embeddings_head = msgspec.json.Decoder(_EmbeddingsHead).decode
_decode_object = msgspec.json.Decoder(dict[str, Any]).decode


def check_content_type(content_type: str) -> None:
    """JSON only. A wrong type is a 400 BAD_REQUEST (not 415): the error table has one code
    for every malformed request, and SDKs treat any 400 the same way."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        shown = media or "none"
        raise BadRequestError(f"Content-Type must be application/json (got {shown})")


def _visible_ascii(text: str) -> bool:
    return text.isascii() and text.isprintable() and " " not in text


def check_model_name(model: str) -> str:
    """Model names are 1-256 visible ASCII characters (no space, control or non-ASCII): every
    provider's names fit, and the name can go back in ``Floopy-Model`` as it is."""
    if not model:
        raise BadRequestError("invalid request body: `model` must not be empty")
    if len(model) > MAX_MODEL_CHARS:
        raise BadRequestError(f"invalid request body: `model` is over {MAX_MODEL_CHARS} characters")
    if not _visible_ascii(model):
        raise BadRequestError(
            "invalid request body: `model` must be visible ASCII characters (no spaces, "
            "control characters or non-ASCII)"
        )
    return model


def header_text(value: str) -> str:
    """A value fit for a response header: what a provider names itself may be anything."""
    if len(value) <= _HEADER_MAX_CHARS and _visible_ascii(value):
        return value
    kept = "".join(c for c in value[:_HEADER_MAX_CHARS] if c.isascii() and c.isprintable())
    return kept.replace(" ", "_")


def _check_utf8(raw: bytes) -> None:
    """msgspec skips the bytes of ``messages`` (kept raw), so bad UTF-8 inside would go upstream."""
    if raw.isascii():
        return
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequestError(
            f"request body is not valid UTF-8 (byte {exc.start}); JSON must be UTF-8"
        ) from None


_H = TypeVar("_H", _Head, _EmbeddingsHead)


def _head(raw: bytes, decode: Callable[[bytes], _H]) -> _H:
    if not raw:
        raise BadRequestError("request body is empty; expected a JSON object")
    _check_utf8(raw)
    head = decode_json(decode, raw)
    check_model_name(head.model)
    return head


def parse_chat_request(raw: bytes) -> ChatRequest:
    head = _head(raw, _decode_head)
    if not head.messages:
        raise BadRequestError("invalid request body: `messages` must not be empty")
    stream = bool(head.stream)
    wants_usage = bool(head.stream_options and head.stream_options.include_usage)
    request = ChatRequest(raw=raw, model=head.model, stream=stream, client_wants_usage=wants_usage)
    if stream:
        request.fields = decode_json(_decode_object, raw)
    return request


def parse_embeddings_request(raw: bytes) -> ChatRequest:
    """``POST /v1/embeddings``: ``model`` and a non-empty ``input`` (text, texts or token ids);
    carried as a ``ChatRequest`` (bytes and model) since routing and dispatch need no more."""
    head = _head(raw, _decode_embeddings_head)
    if not head.input:
        raise BadRequestError("invalid request body: `input` must not be empty")
    return ChatRequest(raw=raw, model=head.model)
