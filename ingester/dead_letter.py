"""Dead letters: payloads set aside as poison, one JSON line each in ``<dir>/<sink>.dead.jsonl``.

Invariants:
- Append-only; nothing in Floopy deletes or rewrites a line (on-call reads the file with jq).
- Re-publishing (``floopy-ingester dead-letters requeue``, once the cause is fixed: an upgraded
  ingester, a migrated schema) moves the file aside before reading it: under the sink's
  ``<sink>.dead.lock`` (which every ``append`` takes too) it is renamed
  ``<sink>.dead.requeue-<ms>.jsonl``, so a letter appended meanwhile goes to a new file and none
  is read half-written. Once every line of it is back in the stream it is renamed
  ``…requeued-<ms>.jsonl`` and kept for on-call to delete. A requeue that died midway leaves its
  ``requeue-`` file, and the next one sends it again whole: at least once, which the tables'
  deduplication by record identity absorbs. A letter that is still poison comes back here.
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

from shared.durable import append_durably, exclusive_flock, fsync_directory
from shared.streams import Sink

__all__ = [
    "DeadLetter",
    "DeadLetterFile",
    "claim_for_requeue",
    "claimed_files",
    "dead_letter_path",
    "encode_dead_letter",
    "mark_requeued",
    "read_letters",
]

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


def _lock_path(directory: Path, sink: Sink) -> Path:
    return directory / f"{sink.value}.dead.lock"


_REQUEUE = ".dead.requeue-"
_REQUEUED = ".dead.requeued-"


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
        with exclusive_flock(_lock_path(self.directory, self.sink)):
            append_durably(self.path, data)
        log.warning("dead-lettered sink=%s count=%d file=%s", self.sink, len(letters), self.path)

    def read(self) -> Iterator[DeadLetter]:
        """Every dead letter in the file, oldest first (for on-call and tests)."""
        if self.path.exists():
            yield from read_letters(self.path)


def read_letters(path: Path) -> Iterator[DeadLetter]:
    """The letters of one dead-letter file, oldest first; a line torn by a crash (no valid
    JSON) is skipped and logged: it was never acknowledged as dead-lettered."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = _decoder.decode(raw)
            except msgspec.DecodeError:
                log.warning("%s line %d is not a dead letter (torn?): skipped", path, number)
                continue
            if line.payload is not None:
                payload = line.payload.encode()
            else:
                payload = base64.b64decode(line.payload_b64 or "")
            yield DeadLetter(payload, line.error)


def claim_for_requeue(directory: Path, sink: Sink, now_ms: int) -> list[Path]:
    """The sink's files to requeue, oldest first: any a requeue left unfinished, then the live
    file, renamed under the sink's lock (a later letter starts a new file)."""
    live = dead_letter_path(directory, sink)
    if live.exists():  # else nothing to take the lock for (nor a directory to make)
        with exclusive_flock(_lock_path(directory, sink)):
            if live.exists():  # a concurrent requeue may have claimed it meanwhile
                while (claimed := directory / f"{sink.value}{_REQUEUE}{now_ms}.jsonl").exists():
                    now_ms += 1  # a rename onto a file replaces it
                live.rename(claimed)
                fsync_directory(directory)
    return claimed_files(directory, sink)


def claimed_files(directory: Path, sink: Sink) -> list[Path]:
    """Files claimed by a requeue that has not marked them done, oldest first."""
    return sorted(directory.glob(f"{sink.value}{_REQUEUE}*.jsonl"), key=_stamp)


def mark_requeued(path: Path) -> Path:
    """Every letter of ``path`` is back in the stream: keep the file, as done."""
    done = path.with_name(path.name.replace(_REQUEUE, _REQUEUED, 1))
    path.rename(done)
    fsync_directory(path.parent)
    return done


def _stamp(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1].removesuffix(".jsonl"))
