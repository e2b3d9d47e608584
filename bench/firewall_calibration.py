"""Calibrate the firewall verdict cache's similarity for the local embedder.

    python -m bench.firewall_calibration [--pairs bench/data/firewall_pairs.json]

Embeds the labelled pairs of ``bench/data/firewall_pairs.json`` with the gateway's own
``LocalEmbedder`` (multilingual-e5-small, 4-bit, the ``query:`` prefix) and prints, for each
candidate threshold, how many reworded attacks a cached block would catch (``paraphrase``), how
many legitimate near-misses it would wrongly block (``distinct``), and how many "benign text +
appended attack" variants a cache of *safe* verdicts would wave through (``appended``). The
threshold to pick is the lowest one with no wrong block, plus a margin.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from gateway.clients.embeddings import LocalEmbedder
from gateway.settings import EmbedderSettings

__all__ = ["main", "similarities"]

DEFAULT_PAIRS = Path(__file__).parent / "data" / "firewall_pairs.json"
THRESHOLDS = (0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97)


def similarities(embedder: LocalEmbedder, pairs: list[list[str]]) -> list[float]:
    """Cosine similarity of each pair (vectors are unit length: a dot product)."""
    vectors = embedder.embed_sync([text for pair in pairs for text in pair])
    return [
        sum(a * b for a, b in zip(vectors[2 * i], vectors[2 * i + 1], strict=True))
        for i in range(len(pairs))
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS)
    args = parser.parse_args(argv)
    data = json.loads(args.pairs.read_text())
    embedder = LocalEmbedder.load(EmbedderSettings())
    found = {
        kind: similarities(embedder, data[kind]) for kind in ("paraphrase", "distinct", "appended")
    }
    print(f"embedder {embedder.name}, pairs from {args.pairs}")
    for kind, values in found.items():
        print(
            f"{kind:>10}: n={len(values):2d} min {min(values):.3f} "
            f"median {statistics.median(values):.3f} max {max(values):.3f}"
        )
    print(
        "\nthreshold | paraphrases caught | distinct wrongly blocked | appended attacks let through"
    )
    for t in THRESHOLDS:
        caught = sum(v >= t for v in found["paraphrase"])
        wrong = sum(v >= t for v in found["distinct"])
        through = sum(v >= t for v in found["appended"])
        print(
            f"{t:9.2f} | {caught:2d}/{len(found['paraphrase'])} | "
            f"{wrong:2d}/{len(found['distinct'])} | {through:2d}/{len(found['appended'])}"
        )
    worst = max(found["distinct"])
    print(f"\nhighest distinct pair: {worst:.3f}; suggested threshold >= {worst + 0.01:.2f}")


if __name__ == "__main__":
    main()
