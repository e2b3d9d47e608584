"""OpenAI chat completions ⇄ Anthropic Messages, as pure translation (no I/O).

Callers speak OpenAI; Anthropic's Messages API differs in shape, not in meaning:

- system (and developer) messages go to the top-level ``system``; the rest must be user or
  assistant turns, so consecutive messages of one role are merged into one turn and tool results
  (``role: tool``) become ``tool_result`` blocks of a user turn;
- ``max_tokens`` is required by Anthropic (``DEFAULT_MAX_TOKENS`` when the caller set none);
  ``stop`` becomes ``stop_sequences``; ``n > 1`` has no equivalent and is a 400;
- function tools map to tools with an ``input_schema``; assistant ``tool_calls`` to ``tool_use``
  blocks and back;
- usage: Anthropic's ``input_tokens`` excludes cached tokens, OpenAI's ``prompt_tokens``
  includes them, so prompt = input + cache read + cache creation, cached = cache read.

Streams: :class:`StreamTranslator` turns Anthropic's SSE events (``message_start``,
``content_block_start``/``_delta``/``_stop``, ``message_delta``, ``message_stop``, ``ping``,
``error``) one at a time into OpenAI ``chat.completion.chunk`` SSE lines, ending with a usage
chunk (when asked for) and ``data: [DONE]``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from gateway.policy.json_body import decode_json
from shared.errors import BadRequestError

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "FINISH_REASONS",
    "AnthropicUsage",
    "StreamTranslator",
    "to_anthropic_request",
    "to_openai_response",
    "translate_stream",
]

DEFAULT_MAX_TOKENS = 4096
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_PASSED_THROUGH = ("temperature", "top_p", "stream")
_encode = msgspec.json.encode


@dataclass(frozen=True)
class AnthropicUsage:
    """Usage in OpenAI's terms, plus the cache writes that Anthropic bills separately."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def of(cls, usage: Mapping[str, Any], output_tokens: int | None = None) -> AnthropicUsage:
        read = int(usage.get("cache_read_input_tokens") or 0)
        write = int(usage.get("cache_creation_input_tokens") or 0)
        out = usage.get("output_tokens") if output_tokens is None else output_tokens
        return cls(
            prompt_tokens=int(usage.get("input_tokens") or 0) + read + write,
            completion_tokens=int(out or 0),
            cached_prompt_tokens=read,
            cache_write_tokens=write,
        )

    def openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_prompt_tokens},
        }


# -- request ------------------------------------------------------------------------------


def to_anthropic_request(
    body: Mapping[str, Any],
    *,
    model: str | None = None,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
) -> dict[str, Any]:
    """The Messages request for an OpenAI chat-completions body; BadRequestError if it has no
    Anthropic equivalent."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("messages must be a non-empty list")
    _check_n(body.get("n"))
    system, turns = _split_messages(messages)
    out: dict[str, Any] = {
        "model": model or body.get("model"),
        "messages": turns,
        "max_tokens": body.get("max_completion_tokens")
        or body.get("max_tokens")
        or default_max_tokens,
    }
    if system:
        out["system"] = system
    out.update({k: body[k] for k in _PASSED_THROUGH if body.get(k) is not None})
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else _strings(stop, "stop")
    if body.get("tools"):
        out["tools"] = [_tool(t) for t in _list(body["tools"], "tools")]
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    return out


def _check_n(n: Any) -> None:
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, int):
        raise BadRequestError("n must be an integer")
    if n != 1:
        raise BadRequestError("n > 1 is not supported by Anthropic models")


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadRequestError(f"{what} must be a list")
    return value


def _strings(value: Any, what: str) -> list[str]:
    items = _list(value, what)
    if not all(isinstance(v, str) for v in items):
        raise BadRequestError(f"{what} must be a string or a list of strings")
    return items


def _split_messages(messages: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise BadRequestError(f"messages[{index}] must be an object")
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_text_parts(message.get("content"), index))
            continue
        role, blocks = _blocks(message, index)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise BadRequestError("messages must contain a user or assistant message")
    return "\n\n".join(system), turns


def _blocks(message: Mapping[str, Any], index: int) -> tuple[str, list[dict[str, Any]]]:
    role = message.get("role")
    if role == "tool":
        result = {
            "type": "tool_result",
            "tool_use_id": str(message.get("tool_call_id", "")),
            "content": "\n".join(_text_parts(message.get("content"), index)),
        }
        return "user", [result]
    if role not in ("user", "assistant"):
        raise BadRequestError(f"messages[{index}].role {role!r} is not supported")
    blocks = _content_blocks(message.get("content"), index)
    for call in _list(message.get("tool_calls") or [], f"messages[{index}].tool_calls"):
        blocks.append(_tool_use(call, index))
    return str(role), blocks


def _text_parts(content: Any, index: int) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)
        ]
    raise BadRequestError(f"messages[{index}].content must be a string or a list of parts")


def _content_blocks(content: Any, index: int) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise BadRequestError(f"messages[{index}].content must be a string or a list of parts")
    blocks = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), index))
        else:
            raise BadRequestError(f"messages[{index}]: content part {kind!r} is not supported")
    return blocks


def _image(image_url: Any, index: int) -> dict[str, Any]:
    url = image_url.get("url") if isinstance(image_url, Mapping) else image_url
    if not isinstance(url, str):
        raise BadRequestError(f"messages[{index}]: image_url needs a url")
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[len("data:") :].split(";")[0]
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _tool_use(call: Any, index: int) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping):
        raise BadRequestError(f"messages[{index}].tool_calls: each call needs a function")
    arguments = function.get("arguments") or "{}"
    if isinstance(arguments, str):
        what = f"messages[{index}].tool_calls: arguments"
        arguments = decode_json(msgspec.json.decode, arguments.encode(), what)
    elif not isinstance(arguments, Mapping):
        raise BadRequestError(f"messages[{index}].tool_calls: arguments must be a JSON string")
    return {
        "type": "tool_use",
        "id": call.get("id", ""),
        "name": function.get("name", ""),
        "input": arguments,
    }


def _tool(tool: Any) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, Mapping) else None
    if not isinstance(function, Mapping) or tool.get("type", "function") != "function":
        raise BadRequestError("only function tools are supported for Anthropic models")
    out = {
        "name": function.get("name", ""),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: Any) -> dict[str, Any]:
    simple = {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}
    if isinstance(choice, str) and choice in simple:
        return simple[choice]
    if isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        return {"type": "tool", "name": choice["function"].get("name", "")}
    raise BadRequestError(f"tool_choice {choice!r} is not supported for Anthropic models")


# -- response -----------------------------------------------------------------------------


def to_openai_response(
    message: Mapping[str, Any], *, created: int | None = None
) -> tuple[dict[str, Any], AnthropicUsage]:
    """The OpenAI ``chat.completion`` for an Anthropic message, and its usage."""
    texts = [b.get("text", "") for b in message.get("content", []) if b.get("type") == "text"]
    calls = [
        {
            "id": b.get("id", ""),
            "type": "function",
            "function": {
                "name": b.get("name", ""),
                "arguments": _encode(b.get("input", {})).decode(),
            },
        }
        for b in message.get("content", [])
        if b.get("type") == "tool_use"
    ]
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if calls:
        reply["tool_calls"] = calls
    usage = AnthropicUsage.of(message.get("usage") or {})
    body = {
        "id": message.get("id", ""),
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": message.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": FINISH_REASONS.get(str(message.get("stop_reason")), "stop"),
            }
        ],
        "usage": usage.openai(),
    }
    return body, usage


# -- streaming ----------------------------------------------------------------------------


class StreamTranslator:
    """Anthropic SSE events in, OpenAI chunk SSE lines out, one event at a time.

    What it saw is kept for the record: ``model``, ``usage``, ``finish_reason``, the text, and
    ``completed`` (``message_stop`` arrived) or ``error`` (an ``error`` event arrived).
    """

    def __init__(self, *, include_usage: bool = True, created: int | None = None) -> None:
        self.include_usage = include_usage
        self.created = created if created is not None else int(time.time())
        self.id = ""
        self.model = ""
        self.finish_reason = ""
        self.usage = AnthropicUsage()
        self.content_parts: list[str] = []
        self.completed = False
        self.error: dict[str, Any] | None = None
        self._input_usage: Mapping[str, Any] = {}
        self._tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index

    def feed(self, event: str, data: Mapping[str, Any]) -> list[bytes]:
        handler = getattr(self, "_on_" + event, None)
        if handler is None:  # ping, and event types newer than this code: nothing to say
            return []
        out: list[bytes] = handler(data)
        return out

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self._line({"choices": [choice]})

    def _line(self, fields: dict[str, Any]) -> bytes:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            **fields,
        }
        return b"data: " + _encode(chunk) + b"\n\n"

    def _on_message_start(self, data: Mapping[str, Any]) -> list[bytes]:
        message = data.get("message") or {}
        self.id = str(message.get("id", ""))
        self.model = str(message.get("model", ""))
        self._input_usage = message.get("usage") or {}
        self.usage = AnthropicUsage.of(self._input_usage)
        return [self._chunk({"role": "assistant", "content": ""})]

    def _on_content_block_start(self, data: Mapping[str, Any]) -> list[bytes]:
        block = data.get("content_block") or {}
        if block.get("type") == "tool_use":
            index = self._tool_index[int(data.get("index", 0))] = len(self._tool_index)
            call = {
                "index": index,
                "id": block.get("id", ""),
                "type": "function",
                "function": {"name": block.get("name", ""), "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        if block.get("type") == "text" and block.get("text"):
            return self._text(block["text"])
        return []

    def _text(self, text: str) -> list[bytes]:
        self.content_parts.append(text)
        return [self._chunk({"content": text})]

    def _on_content_block_delta(self, data: Mapping[str, Any]) -> list[bytes]:
        delta = data.get("delta") or {}
        if delta.get("type") == "text_delta":
            return self._text(str(delta.get("text", "")))
        if delta.get("type") == "input_json_delta":
            index = self._tool_index.get(int(data.get("index", 0)), 0)
            call = {"index": index, "function": {"arguments": str(delta.get("partial_json", ""))}}
            return [self._chunk({"tool_calls": [call]})]
        return []  # thinking and signature deltas have no OpenAI equivalent

    def _on_message_delta(self, data: Mapping[str, Any]) -> list[bytes]:
        usage = data.get("usage") or {}
        self.usage = AnthropicUsage.of({**self._input_usage, **usage}, usage.get("output_tokens"))
        reason = (data.get("delta") or {}).get("stop_reason")
        if reason is None:
            return []
        self.finish_reason = FINISH_REASONS.get(str(reason), "stop")
        return [self._chunk({}, self.finish_reason)]

    def _on_message_stop(self, _: Mapping[str, Any]) -> list[bytes]:
        self.completed = True
        out = []
        if self.include_usage:
            out.append(self._line({"choices": [], "usage": self.usage.openai()}))
        out.append(b"data: [DONE]\n\n")
        return out

    def _on_error(self, data: Mapping[str, Any]) -> list[bytes]:
        error = data.get("error") or {}
        self.error = {
            "message": str(error.get("message", "")),
            "type": str(error.get("type", "api_error")),
            "code": None,
        }
        return [b"data: " + _encode({"error": self.error}) + b"\n\n"]


def translate_stream(
    events: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    include_usage: bool = True,
    created: int | None = None,
) -> Iterator[bytes]:
    """A generator over (event type, data) pairs; see :class:`StreamTranslator`."""
    translator = StreamTranslator(include_usage=include_usage, created=created)
    for event, data in events:
        yield from translator.feed(event, data)
