"""Streams and the cache (pure): a finished SSE stream folded into the chat.completion it adds
up to (what is stored), and a stored chat.completion unfolded into SSE events (what a streamed
hit replays).

The replay is what OpenAI sends: a first chunk with the role per choice, the content in pieces,
tool calls whole, a chunk with the finish reason, then (when the caller asked with
``stream_options.include_usage``) ``"usage": null`` on every chunk and a last usage-only chunk,
and ``data: [DONE]``. ``id``, ``created``, ``model`` and ``system_fingerprint`` are the stored
completion's, as in the non-streamed hit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from gateway.policy.sse import DONE, event_data

__all__ = ["PIECE_CHARS", "assemble_stream", "replay_events"]

PIECE_CHARS = 48
"""Largest content piece per replayed chunk (cut after a space when there is one)."""

_decode = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.encode


class _Choice:
    def __init__(self) -> None:
        self.role = "assistant"
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None

    def add(self, delta: dict[str, Any]) -> None:
        if isinstance(delta.get("role"), str):
            self.role = delta["role"]
        if isinstance(delta.get("content"), str):
            self.content.append(delta["content"])
        if isinstance(delta.get("refusal"), str):
            self.refusal.append(delta["refusal"])
        for call in delta.get("tool_calls") or ():
            self._add_call(call)

    def _add_call(self, call: dict[str, Any]) -> None:
        slot = self.tool_calls.setdefault(
            int(call.get("index", 0)),
            {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if call.get("id"):
            slot["id"] = call["id"]
        if call.get("type"):
            slot["type"] = call["type"]
        function = call.get("function") or {}
        slot["function"]["name"] += function.get("name") or ""
        slot["function"]["arguments"] += function.get("arguments") or ""

    def message(self) -> dict[str, Any]:
        text = "".join(self.content)
        message: dict[str, Any] = {
            "role": self.role,
            "content": text if text or not self.tool_calls else None,
            "refusal": "".join(self.refusal) or None,
        }
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return message


def assemble_stream(events: Iterable[bytes], usage: dict[str, Any] | None) -> bytes | None:
    """The completion a complete stream's events add up to; None when any event is not a
    chunk we can read (then the stream is not stored)."""
    head: dict[str, Any] = {}
    choices: dict[int, _Choice] = {}
    for event in events:
        data = event_data(event)
        if not data or data == DONE:
            continue
        try:
            chunk = _decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        if chunk.get("object") not in (None, "chat.completion.chunk"):
            return None
        for name in ("id", "created", "model", "system_fingerprint"):
            if name in chunk and name not in head:
                head[name] = chunk[name]
        for raw in chunk.get("choices") or ():
            choice = choices.setdefault(int(raw.get("index", 0)), _Choice())
            choice.add(raw.get("delta") or {})
            if raw.get("finish_reason"):
                choice.finish_reason = raw["finish_reason"]
    if not choices:
        return None
    return _encode(
        {
            "id": head.get("id", ""),
            "object": "chat.completion",
            "created": head.get("created", 0),
            "model": head.get("model", ""),
            "system_fingerprint": head.get("system_fingerprint"),
            "choices": [
                {
                    "index": i,
                    "message": choices[i].message(),
                    "logprobs": None,
                    "finish_reason": choices[i].finish_reason,
                }
                for i in sorted(choices)
            ],
            "usage": usage,
        }
    )


def _pieces(text: str) -> list[str]:
    pieces: list[str] = []
    while len(text) > PIECE_CHARS:
        cut = text.rfind(" ", 1, PIECE_CHARS)
        cut = PIECE_CHARS if cut <= 0 else cut
        pieces.append(text[:cut])
        text = text[cut:]
    if text:
        pieces.append(text)
    return pieces


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + _encode(payload) + b"\n\n"


def _deltas(message: dict[str, Any]) -> list[dict[str, Any]]:
    deltas: list[dict[str, Any]] = [{"role": message.get("role") or "assistant", "content": ""}]
    content = message.get("content")
    if isinstance(content, str):
        deltas.extend({"content": piece} for piece in _pieces(content))
    if isinstance(message.get("refusal"), str):
        deltas.append({"refusal": message["refusal"]})
    for index, call in enumerate(message.get("tool_calls") or ()):
        deltas.append({"tool_calls": [{"index": index, **call}]})
    return deltas


def replay_events(completion: bytes, *, include_usage: bool) -> list[bytes] | None:
    """The SSE events replaying a stored chat.completion; None if it is not one."""
    try:
        stored = _decode(completion)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    choices = stored.get("choices")
    if stored.get("object") != "chat.completion" or not isinstance(choices, list):
        return None
    head = {
        "id": stored.get("id", ""),
        "object": "chat.completion.chunk",
        "created": stored.get("created", 0),
        "model": stored.get("model", ""),
        "system_fingerprint": stored.get("system_fingerprint"),
    }
    tail = {"usage": None} if include_usage else {}
    events: list[bytes] = []
    for choice in choices:
        index = choice.get("index", 0)
        steps: list[tuple[dict[str, Any], str | None]] = [
            (d, None) for d in _deltas(choice.get("message") or {})
        ]
        steps.append(({}, choice.get("finish_reason") or "stop"))
        for delta, finish in steps:
            one = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            events.append(_event({**head, "choices": [one], **tail}))
    if include_usage:
        events.append(_event({**head, "choices": [], "usage": stored.get("usage")}))
    events.append(b"data: [DONE]\n\n")
    return events
