"""The one shape of every place a batch can go: ClickHouse (``ingester.delivery.Delivery``,
prepared batches), the fallback spool (``shared.spool.writer.SpoolWriter``, payloads) and the
dead letters (``ingester.dead_letter.DeadLetterFile``, poison with its error).

The contract, the same for all three: ``append(batch)`` returns only once the whole batch is
durable there (ClickHouse confirmed the insert, or the file is fsynced; the file writes share
``shared.durable``), and raises if it is not, leaving nothing the caller may count as done.
That is what lets the consumer ack an entry after any one of them returned, and only then.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

__all__ = ["BatchSink"]

_Batch_contra = TypeVar("_Batch_contra", contravariant=True)
_Report_co = TypeVar("_Report_co", covariant=True)


class BatchSink(Protocol[_Batch_contra, _Report_co]):
    """Takes a batch durably or raises (see the module)."""

    def append(self, batch: _Batch_contra) -> _Report_co: ...
