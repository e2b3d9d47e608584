"""The providers and routes in force on one worker.

Invariants: one ``Generation`` per worker, shared by every part that routes or dispatches
(routing, dispatch, the classifier, the embedder, ``/v1/models``, ``/health/providers``). Only
the routing watcher writes it, replacing ``settings`` and ``upstreams`` together (no ``await``
between the two assignments), so a reader on the loop never sees one without the other. Whoever
needs the current generation keeps the object, never a field of it, across an ``await``.
"""

from __future__ import annotations

from dataclasses import dataclass

# imported at run time: Litestar hands a ``Generation`` to handlers and reads its annotations
from gateway.clients.upstreams import Upstreams
from gateway.settings import GatewaySettings

__all__ = ["Generation"]


@dataclass(slots=True)
class Generation:
    settings: GatewaySettings
    """The worker's settings with the stored providers and routes merged in."""
    upstreams: Upstreams
    """The adapters, routing table, breakers and prices built from ``settings``."""

    def replace(self, settings: GatewaySettings, upstreams: Upstreams) -> None:
        self.settings, self.upstreams = settings, upstreams
