from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.policy import tokens
from gateway.policy.tokens import (
    MAX_TOKENIZED_CHARS,
    TokenCounter,
    TokenEstimate,
    estimate_completion_tokens,
    estimate_prompt_tokens,
    estimate_text_tokens,
)


def test_known_counts_of_cl100k() -> None:
    assert estimate_text_tokens("hello world") == 2
    assert estimate_text_tokens("tiktoken is great!") == 6
    assert estimate_text_tokens("") == 0


def test_special_token_text_is_counted_as_text() -> None:
    assert estimate_text_tokens("<|endoftext|>") > 1


def test_chat_overhead() -> None:
    # 3 (reply priming) + 3 (message) + 1 ("user") + 2 ("hello world")
    assert estimate_prompt_tokens([{"role": "user", "content": "hello world"}]) == 9
    named = [{"role": "user", "name": "bob", "content": "hello world"}]
    assert estimate_prompt_tokens(named) == 9 + 1 + estimate_text_tokens("bob")


def test_content_parts_count_text_only() -> None:
    parts = [
        {"type": "text", "text": "hello world"},
        {"type": "image_url", "image_url": {"url": "x"}},
    ]
    assert estimate_prompt_tokens([{"role": "user", "content": parts}]) == 9
    assert estimate_prompt_tokens([{"role": "assistant", "content": None}]) == 3 + 3 + 1


def test_estimate_totals() -> None:
    e = TokenEstimate(prompt_tokens=9, completion_tokens=estimate_completion_tokens("hi there"))
    assert e.total_tokens == 9 + 2


def test_fallback_when_tokenizer_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_encoder", lambda: None)
    before = tokens.fallback_count()
    assert estimate_text_tokens("abcdefgh") == 2
    assert estimate_text_tokens("a") == 1
    assert tokens.fallback_count() == before + 2


def test_encoding_loads_without_network(tmp_path: Path) -> None:
    """A fresh process with an empty tiktoken cache and sockets disabled still tokenizes."""
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('network disabled in this test')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "from gateway.policy import tokens\n"
        "print(tokens.estimate_text_tokens('hello world'), tokens.fallback_count())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"TIKTOKEN_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert out.stdout.split() == ["2", "0"]


def test_estimates_tokenize_a_bounded_prefix_and_count_the_rest_by_characters() -> None:
    text = "a b " * 100_000  # ~2 characters a token when tokenized, 4 by the character rule
    counter = TokenCounter(budget_chars=40_000)
    estimate = counter.count(text)
    tokenized = estimate_text_tokens(text[:40_000])
    assert estimate == tokenized + (len(text) - 40_000 + 3) // 4
    assert counter.left == 0 and counter.count("more text") == 3  # the budget is spent
    assert estimate_text_tokens("a b " * 10) == TokenCounter().count("a b " * 10)


def test_a_prompt_shares_one_budget_across_its_messages() -> None:
    big = "a b " * (MAX_TOKENIZED_CHARS // 2)  # two of these exceed the budget
    one = estimate_prompt_tokens([{"role": "user", "content": big}])
    two = estimate_prompt_tokens([{"role": "user", "content": big}] * 2)
    assert two < 2 * one  # the second message is counted by characters (fewer tokens here)
