"""Pinning for the benchmark programs: on a 2-core machine the process measured and the
servers that feed it (ClickHouse, Redis, the fake provider, the load generator) otherwise share
both cores, and what one gets is a share of what the other leaves; pinned, each side has a core
of its own, so a rate or a ratio is the measured process's own."""

from __future__ import annotations

import contextlib
import os

__all__ = ["MEASURED_CPUS", "SERVER_CPUS", "pin"]

MEASURED_CPUS, SERVER_CPUS = {0}, {1}


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` onto ``cpus`` (threads and children it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)
