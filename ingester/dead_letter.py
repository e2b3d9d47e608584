"""Dead letters: payloads set aside as poison, one JSON line each in ``<dir>/<sink>.dead.jsonl``.

Invariants:
- Append-only; nothing in Floopy deletes or rewrites the file (on-call reads it with jq, fixes
  what can be fixed and re-publishes by hand).
- ``append`` writes all its lines and fsyncs before it returns (and fsyncs the directory when
  it created the file), all or nothing (``shared.durable.append_durably``, as the spools), so
  a payload acknowledged as dead-lettered is on disk and a full disk leaves no torn line.
- A line is ``{"sink", "error", "dead_at_ms", "payload"}`` where ``payload`` is the codec's
  bytes as text — the very line a stream entry or spool line carries. Bytes that are not UTF-8
  are kept as ``payload_b64`` instead, so nothing is lost to re-encoding.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from shared.durable import append_durably
from shared.streams import Sink

__all__ = ["DeadLetter", "DeadLetterFile", "dead_letter_path", "encode_dead_letter"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadLetter:
    payload: bytes
    error: str


class _Line(msgspec.Struct, omit_defaults=True):
    sink: str
    error: str
    dead_at_ms: int
    payload: str | None = None
    payload_b64: str | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Line)


def dead_letter_path(directory: Path, sink: Sink) -> Path:
    return directory / f"{sink.value}.dead.jsonl"


def encode_dead_letter(sink: Sink, letter: DeadLetter, now_ms: int) -> bytes:
    """One line (with its newline) for ``letter``. Pure."""
    try:
        line = _Line(sink.value, letter.error, now_ms, payload=letter.payload.decode())
    except UnicodeDecodeError:
        b64 = base64.b64encode(letter.payload).decode()
        line = _Line(sink.value, letter.error, now_ms, payload_b64=b64)
    return _encoder.encode(line) + b"\n"


class DeadLetterFile:
    """The dead-letter file of one sink."""

    def __init__(self, directory: Path, sink: Sink) -> None:
        self.directory = directory
        self.sink = sink
        self.path = dead_letter_path(directory, sink)

    def append(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        now_ms = int(time.time() * 1000)
        data = b"".join(encode_dead_letter(self.sink, letter, now_ms) for letter in letters)
        self.directory.mkdir(parents=True, exist_ok=True)
        append_durably(self.path, data)
        log.warning("dead-lettered sink=%s count=%d file=%s", self.sink, len(letters), self.path)

    def read(self) -> Iterator[DeadLetter]:
        """Every dead letter in the file, oldest first (for on-call and tests)."""
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            for raw in f:
                line = _decoder.decode(raw)
                if line.payload is not None:
                    payload = line.payload.encode()
                else:
                    payload = base64.b64decode(line.payload_b64 or "")
                yield DeadLetter(payload, line.error)
