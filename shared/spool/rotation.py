"""The spool's rotation policy and file names. Pure: sizes in, actions out; no I/O.

Generation 0 is ``<sink>.jsonl`` (the file appended to), generation ``g >= 1`` is
``<sink>.jsonl.<g>``; a higher generation is older. With ``generations`` files allowed, the
oldest one (``generations - 1``) is the only file rotation ever drops.

Bound: the current file rotates *before* an append that would take it past the cap, unless it
is empty. So a file holds at most ``cap`` bytes, or exactly one batch when that single batch is
larger than the cap: every file is within ``max(cap, largest batch)`` and the sink's rotating
files together within ``generations x cap`` (plus one batch per file only for batches over the
cap). Files sealed for replay have left the rotation and are not counted here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Rotation",
    "generation_name",
    "parse_generation",
    "parse_sealed",
    "plan_rotation",
    "replay_order",
    "sealed_name",
]


@dataclass(frozen=True)
class Rotation:
    """What to do before an append. ``drop`` is the generation deleted (counted as lost);
    ``renames`` are ``(from_gen, to_gen)`` pairs to run in order (each target is free by then)."""

    drop: int | None
    renames: tuple[tuple[int, int], ...]

    @property
    def needed(self) -> bool:
        return self.drop is not None or bool(self.renames)


NO_ROTATION = Rotation(drop=None, renames=())


def plan_rotation(
    sizes: Sequence[int | None], batch_bytes: int, cap_bytes: int, generations: int
) -> Rotation:
    """Decide the rotation before appending ``batch_bytes``.

    ``sizes[g]`` is the size of generation ``g`` (``None``: no such file); entries past
    ``generations`` are ignored, missing ones count as absent. Rotation happens only when the
    current file is non-empty and the append would take it past the cap. The cascade stops at
    the first free generation, so a gap left by a replay is filled instead of dropping data;
    only when every generation exists is the oldest dropped.
    """
    if cap_bytes <= 0 or generations < 1 or batch_bytes < 0:
        raise ValueError("cap_bytes > 0, generations >= 1 and batch_bytes >= 0 required")
    padded = [*sizes[:generations], *([None] * (generations - len(sizes)))]
    current = padded[0] or 0
    if current == 0 or current + batch_bytes <= cap_bytes:
        return NO_ROTATION
    free = next((g for g in range(1, generations) if padded[g] is None), None)
    top = free if free is not None else generations - 1
    drop = None if free is not None else generations - 1
    renames = tuple((g - 1, g) for g in range(top, 0, -1))
    return Rotation(drop=drop, renames=renames)


def generation_name(sink: str, generation: int) -> str:
    return f"{sink}.jsonl" if generation == 0 else f"{sink}.jsonl.{generation}"


def parse_generation(sink: str, name: str) -> int | None:
    """The generation of a file name of ``sink``, or ``None`` if it is not one."""
    if name == f"{sink}.jsonl":
        return 0
    match = re.fullmatch(re.escape(f"{sink}.jsonl.") + r"([1-9][0-9]*)", name)
    return int(match.group(1)) if match else None


_NS_DIGITS = 20
"""Nanosecond timestamps are zero-padded so names also sort as text, for people using ls."""


def sealed_name(sink: str, sealed_at_ns: int, order: int) -> str:
    """A file sealed for replay. ``order`` is its rank within one seal, oldest first. The name
    starts with ``<sink>.jsonl`` so a glob for the sink's spool files finds sealed ones too."""
    return f"{sink}.jsonl.replay.{sealed_at_ns:0{_NS_DIGITS}d}.{order:03d}"


def parse_sealed(sink: str, name: str) -> tuple[int, int] | None:
    """``(sealed_at_ns, order)`` of a sealed file name of ``sink`` — the replay order key."""
    match = re.fullmatch(re.escape(f"{sink}.jsonl.replay.") + r"([0-9]+)\.([0-9]+)", name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def replay_order(sink: str, names: Iterable[str]) -> list[str]:
    """The files of ``sink`` among ``names`` that hold records to replay, oldest first: sealed
    files by seal time and rank (earlier seals are older than anything still rotating), then
    the rotating generations from the highest (oldest) down to the current file."""
    sealed: list[tuple[tuple[int, int], str]] = []
    rotating: list[tuple[int, str]] = []
    for name in names:
        if (key := parse_sealed(sink, name)) is not None:
            sealed.append((key, name))
        elif (generation := parse_generation(sink, name)) is not None:
            rotating.append((generation, name))
    return [name for _, name in sorted(sealed)] + [
        name for _, name in sorted(rotating, reverse=True)
    ]
