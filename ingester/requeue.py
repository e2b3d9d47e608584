"""Dead letters back into their stream, once what made them poison is fixed
(``floopy-ingester dead-letters requeue``).

Invariants (the files' side is ``ingester.dead_letter``'s):
- A file is marked requeued only after Redis acknowledged every one of its letters; a failure
  leaves it claimed, and the next requeue sends it again whole (at least once; the tables
  deduplicate by record identity).
- Letters go to the sink's shard 0 in file order, as the spool's drain sends them: any
  consumer of the sink takes them from there.
- The payload is sent as it was set aside: the ingester decodes it again, and what is still
  poison is dead-lettered again, with today's reason.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ingester.dead_letter import (
    claim_for_requeue,
    claimed_files,
    dead_letter_path,
    mark_requeued,
    read_letters,
)
from shared.streams import RECORD_FIELD, Sink, stream_key

__all__ = ["BATCH_LETTERS", "Requeued", "requeue", "survey"]

BATCH_LETTERS = 500
"""Letters per pipeline of XADDs."""


@dataclass
class Requeued:
    """What a requeue (or a dry run: ``survey``) found for one sink."""

    sink: Sink
    letters: int = 0
    files: list[Path] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)


def survey(directory: Path, sink: Sink) -> Requeued:
    """What a requeue would send, changing nothing: the live file and any unfinished claim."""
    found = Requeued(sink)
    live = dead_letter_path(directory, sink)
    for path in [*claimed_files(directory, sink), *([live] if live.exists() else [])]:
        found.files.append(path)
        for letter in read_letters(path):
            found.letters += 1
            found.reasons[_reason(letter.error)] += 1
    return found


def requeue(client: redis.Redis, directory: Path, sink: Sink, prefix: str) -> Requeued:
    """Send every dead letter of ``sink`` back to its stream; raises ``redis.RedisError`` (the
    file being sent stays claimed for the next try)."""
    done = Requeued(sink)
    key = stream_key(sink, prefix, 0)
    for path in claim_for_requeue(directory, sink, int(time.time() * 1000)):
        letters = read_letters(path)
        while batch := list(itertools.islice(letters, BATCH_LETTERS)):
            pipe = client.pipeline(transaction=False)
            for letter in batch:
                pipe.xadd(key, {RECORD_FIELD: letter.payload})
                done.reasons[_reason(letter.error)] += 1
            pipe.execute()
            done.letters += len(batch)
        done.files.append(mark_requeued(path))
    return done


def _reason(error: str) -> str:
    """An error's first line, cut short: letters group by what went wrong, not by which value."""
    return error.splitlines()[0][:80] if error else "(none)"
