"""The advanced tier's second check (pure): do two last user turns ask the same thing?

Embeddings put "yes" near "no", "2 + 2" near "2 + 3" and "continue" near "stop" (GPTCache's and
LiteLLM #12234's false hits). A candidate the embedding found is served only if, lexically:
- the numbers in both turns are the same set (``"top 5"`` is not ``"top 10"``);
- both or neither carry a negation (``"not"``, ``"never"``, ``n't`` …);
- the content words (lower case, stop words out) of one turn all appear in the other: words may
  be added ("which *city* is the capital of France"), none replaced ("reverse" → "sort",
  "Rust" → "Go" is the classic false hit of an embedding);
- and they overlap by at least ``min_overlap`` (Jaccard: shared / all distinct).
Cheap (a few µs per pair) and conservative: a paraphrase in other words is a miss, never a
wrong answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Verdict", "content_words", "verify_turns"]

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_NEGATIONS = frozenset(
    {"not", "no", "never", "none", "nothing", "neither", "nor", "without", "cannot", "nao", "não"}
)
_STOP = frozenset(
    (  # noqa: SIM905 - a word list reads best as words
        "a an the of to in on at for from by with and or but if then so as is are was were be "
        "been being do does did doing have has had i me my we our you your he she it its they "
        "them their this that these those what which who whom whose when where why how please "
        "can could would should will shall may might must tell give show explain about into than "
        "too very just also there here some any all each every s"
    ).split()
)


@dataclass(frozen=True, slots=True)
class Verdict:
    same: bool
    overlap: float
    reason: str = ""


def _negated(words: list[str]) -> bool:
    return any(w in _NEGATIONS or w.endswith("n't") for w in words)


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and w not in _NEGATIONS}


def verify_turns(asked: str, stored: str, min_overlap: float) -> Verdict:
    if set(_NUMBER.findall(asked)) != set(_NUMBER.findall(stored)):
        return Verdict(False, 0.0, "numbers differ")
    words_a = _WORD.findall(asked.lower())
    words_b = _WORD.findall(stored.lower())
    if _negated(words_a) != _negated(words_b):
        return Verdict(False, 0.0, "negation differs")
    a, b = content_words(asked), content_words(stored)
    if not a and not b:  # only stop words ("yes?" vs "yes?"): exact text or nothing
        same = asked.strip().lower() == stored.strip().lower()
        return Verdict(same, 1.0 if same else 0.0, "" if same else "no content words")
    overlap = len(a & b) / len(a | b)
    if not (a <= b or b <= a):
        return Verdict(False, overlap, "a content word was replaced")
    if overlap < min_overlap:
        return Verdict(False, overlap, f"word overlap {overlap:.2f} < {min_overlap:.2f}")
    return Verdict(True, overlap)
