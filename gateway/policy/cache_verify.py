"""The advanced tier's second check (pure): do two last user turns ask the same thing?

Embeddings put "yes" near "no", "2 + 2" near "2 + 3" and "continue" near "stop" (GPTCache's and
LiteLLM #12234's false hits). A candidate the embedding found is served only if, lexically:
- the numbers in both turns are the same set (``"top 5"`` is not ``"top 10"``);
- both or neither carry a negation (``"not"``, ``"never"``, ``n't`` …);
- the content words (lower case, stop words out) of one turn all appear in the other: words may
  be added ("which *city* is the capital of France"), none replaced ("reverse" → "sort",
  "Rust" → "Go" is the classic false hit of an embedding), and the words around a
  directional word pair up the same way ("string to integer" is not "integer to string");
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
        "been being do does did doing have has had me my we our you your he she it its they "
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


_DIRECTIONAL = frozenset({"to", "into", "from", "than", "vs", "versus", "over", "under"})


def _directions(words: list[str]) -> set[tuple[str, str]]:
    """(content word before, content word after) around each directional word: "string to
    integer" is not "integer to string", while "a list in Python" may be "a Python list"."""
    pairs: set[tuple[str, str]] = set()
    for i, word in enumerate(words):
        if word not in _DIRECTIONAL:
            continue
        before = next((w for w in reversed(words[:i]) if w not in _STOP), "")
        after = next((w for w in words[i + 1 :] if w not in _STOP), "")
        pairs.add((before, after))
    return pairs


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and w not in _NEGATIONS}


def _lexical_mismatch(asked: str, stored: str) -> str:
    """Why the two turns cannot ask the same thing, before counting words; "" if they may."""
    if set(_NUMBER.findall(asked)) != set(_NUMBER.findall(stored)):
        return "numbers differ"
    if _negated(_WORD.findall(asked.lower())) != _negated(_WORD.findall(stored.lower())):
        return "negation differs"
    return ""


def verify_turns(asked: str, stored: str, min_overlap: float) -> Verdict:
    mismatch = _lexical_mismatch(asked, stored)
    if mismatch:
        return Verdict(False, 0.0, mismatch)
    a, b = content_words(asked), content_words(stored)
    if not a and not b:  # only stop words ("yes?" vs "yes?"): exact text or nothing
        same = asked.strip().lower() == stored.strip().lower()
        return Verdict(same, 1.0 if same else 0.0, "" if same else "no content words")
    overlap = len(a & b) / len(a | b)
    if not (a <= b or b <= a):
        reason = "a content word was replaced"
    elif _directions(_WORD.findall(asked.lower())) != _directions(_WORD.findall(stored.lower())):
        reason = "the words around to/from/than are swapped"
    elif overlap < min_overlap:
        reason = f"word overlap {overlap:.2f} < {min_overlap:.2f}"
    else:
        return Verdict(True, overlap)
    return Verdict(False, overlap, reason)
