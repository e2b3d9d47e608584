"""Spool files: where records wait on local disk until the next hop takes them.

The ingester spools a batch ClickHouse cannot take (until replay); the gateway spools what it
cannot publish while Redis is unreachable (until Redis answers). Both use these files, which is
why they live in ``shared`` although ``shared`` is otherwise free of I/O: the writer, reader and
rotation must be one implementation, not two that drift. Nothing here imports the gateway or
the ingester.

Invariants (docs/architecture.md §4):
- One JSONL file per spool name (a sink, or the gateway's ``usage``), ``<dir>/<name>.jsonl``,
  one payload (``shared.codec`` bytes) per line. An append is written, flushed and fsynced
  before it returns; what the spool stands for (stream entries, buffered records) is let go
  only after that.
- Writers create and append; rotation (``rotation.plan_rotation``) shifts ``.jsonl`` → ``.1``
  → ``.2`` before an append would pass the cap, and drops the oldest generation only when
  every generation exists. Each file stays within the cap, or holds exactly one batch when that
  batch alone is bigger, so a sink's rotating files stay within ``generations x cap`` (plus one
  batch per file for over-cap batches). Drops are the only data loss: counted in ``DROPPED``,
  in the sidecar ``<name>.dropped.json``, and logged at ERROR.
- Only the replayer deletes files, after their delivery is confirmed; it first seals them
  (``seal``: renames them out of the rotation and lists the sealed files, under the same flock
  writers hold), so rotation and appends never touch a file being replayed.
- Readers stream files in batches; memory is flat whatever the file size.
"""

from __future__ import annotations

from shared.spool.reader import SpoolBatch, count_lines, read_batches
from shared.spool.rotation import Rotation, plan_rotation, replay_order
from shared.spool.writer import (
    DROPPED,
    DroppedTotals,
    SpoolWriter,
    pending_files,
    read_dropped,
    seal,
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
    "pending_files",
    "plan_rotation",
    "read_batches",
    "read_dropped",
    "replay_order",
    "seal",
    "spool_flock",
    "spool_path",
]
