"""When buffered records leave memory for the disk spool: the clock of a Redis outage. Pure."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Outage"]


@dataclass
class Outage:
    """``since``: when the first failure of the current outage happened (monotonic seconds),
    ``None`` while Redis answers. Spooling starts once the outage is ``grace_s`` old, so a blip
    costs no disk writes, and stops at the first success."""

    grace_s: float
    since: float | None = None

    def failed(self, now: float) -> None:
        if self.since is None:
            self.since = now

    def recovered(self) -> None:
        self.since = None

    @property
    def down(self) -> bool:
        return self.since is not None

    def spooling(self, now: float) -> bool:
        return self.since is not None and now - self.since >= self.grace_s
