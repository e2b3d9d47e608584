"""Incremental Server-Sent-Events framing over raw bytes.

Why not a library: the gateway forwards each event byte for byte and only peeks at its data,
while SSE libraries (httpx-sse, aiohttp-sse-client) hand out parsed events that would have to be
serialised again. Framing is small: an event ends at a blank line (``\\n\\n`` or ``\\r\\n\\r\\n``),
and its data is the ``data:`` lines joined with ``\\n``.
"""

from __future__ import annotations

__all__ = ["DONE", "SSESplitter", "event_data"]

DONE = b"[DONE]"
"""The data of the event that ends an OpenAI stream."""

_SEPARATORS = (b"\n\n", b"\r\n\r\n")


class SSESplitter:
    """Feed upstream reads in, get complete raw events out (each with its blank line)."""

    def __init__(self) -> None:
        self._pending = b""

    @property
    def pending(self) -> bytes:
        """Bytes of an event not complete yet."""
        return self._pending

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._pending + data if self._pending else data
        events: list[bytes] = []
        start = 0
        while True:
            end = _next_boundary(buffer, start)
            if end < 0:
                break
            events.append(buffer[start:end])
            start = end
        self._pending = buffer[start:]
        return events


def _next_boundary(buffer: bytes, start: int) -> int:
    """Index just past the first event separator at or after ``start``; -1 if none."""
    best = -1
    for separator in _SEPARATORS:
        index = buffer.find(separator, start)
        if index >= 0 and (best < 0 or index + len(separator) < best):
            best = index + len(separator)
    return best


def event_data(event: bytes) -> bytes:
    """The data of one raw event: its ``data:`` lines, one leading space dropped, joined by LF."""
    lines = event.replace(b"\r\n", b"\n").split(b"\n")
    data = [line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")]
    return b"\n".join(data)
