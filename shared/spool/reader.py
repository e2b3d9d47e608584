"""Stream a spool file in batches of lines, with the byte offset after each batch.

Invariants:
- Memory stays flat whatever the file size: at most one batch of lines is held at a time.
- ``end_offset`` of a batch is the byte just past its last line, so a replay that records it
  after a confirmed insert can resume there (``start_offset``) without re-reading or skipping.
- Blank lines are skipped; a last line without its newline (a writer killed mid-write) is
  still yielded: it is either a whole payload or garbage the decoder will dead-letter.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SpoolBatch", "count_lines", "read_batches"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class SpoolBatch:
    payloads: list[bytes]
    start_offset: int
    end_offset: int


def read_batches(path: Path, batch_records: int, *, start_offset: int = 0) -> Iterator[SpoolBatch]:
    """Yield the payloads of ``path`` from ``start_offset`` on, ``batch_records`` at a time."""
    if batch_records < 1:
        raise ValueError("batch_records must be >= 1")
    with path.open("rb", buffering=_CHUNK) as f:
        f.seek(start_offset)
        offset = start = start_offset
        payloads: list[bytes] = []
        for line in f:
            offset += len(line)
            payload = line.rstrip(b"\r\n")
            if payload.strip():
                payloads.append(payload)
            if len(payloads) >= batch_records:
                yield SpoolBatch(payloads, start, offset)
                payloads, start = [], offset
        if payloads:
            yield SpoolBatch(payloads, start, offset)


def count_lines(path: Path) -> int:
    """Non-blank lines of ``path`` (one per record), streamed like ``read_batches``."""
    with path.open("rb", buffering=_CHUNK) as f:
        return sum(1 for line in f if line.strip())
