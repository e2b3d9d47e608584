"""The fallback spool: where a batch goes when ClickHouse cannot take it, until replay.

Invariants (DESIGN.md §5):
- One JSONL file per sink, ``<dir>/<sink>.jsonl``, one payload (``shared.codec`` bytes) per
  line. An append is written, flushed and fsynced before it returns; stream entries are
  acknowledged only after that.
- Writers create and append; rotation (``rotation.plan_rotation``) shifts ``.jsonl`` → ``.1``
  → ``.2`` before an append would pass the cap, and drops the oldest generation only when
  every generation exists. Each file stays within the cap, or holds exactly one batch when that
  batch alone is bigger, so a sink's rotating files stay within ``generations x cap`` (plus one
  batch per file for over-cap batches). Drops are the only data loss: counted in ``DROPPED``,
  in the sidecar ``<sink>.dropped.json``, and logged at ERROR.
- Only the replayer deletes files, after their inserts are confirmed; it first seals them
  (renames them out of the rotation) under the same flock writers hold, so rotation never
  touches a file being replayed.
- Readers stream files in batches; memory is flat whatever the file size.
"""

from __future__ import annotations

from ingester.spool.reader import SpoolBatch, count_lines, read_batches
from ingester.spool.rotation import Rotation, plan_rotation, replay_order
from ingester.spool.writer import (
    DROPPED,
    DroppedTotals,
    SpoolWriter,
    read_dropped,
    spool_flock,
    spool_path,
)

__all__ = [
    "DROPPED",
    "DroppedTotals",
    "Rotation",
    "SpoolBatch",
    "SpoolWriter",
    "count_lines",
    "plan_rotation",
    "read_batches",
    "read_dropped",
    "replay_order",
    "spool_flock",
    "spool_path",
]
