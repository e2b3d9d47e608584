"""The one drain behind the publisher and the usage recorder: order, the bound, and what each
policy does with a batch the store did not take. The outlet here is an in-memory list that
refuses what it is told to refuse (the Redis-backed outlets are tested against real Redis)."""

from __future__ import annotations

import asyncio

from gateway.clients.drain import Drain, Outlet, Policy, Undelivered
from gateway.metrics import access_counters
from shared.backoff import Backoff


class _ListOutlet(Outlet[int]):
    """Takes every item but those in ``refuse`` (each refused once, then taken)."""

    def __init__(self, refuse: tuple[int, ...] = ()) -> None:
        self.taken: list[int] = []
        self.failures: list[Undelivered[int]] = []
        self.left: list[int] = []
        self.refuse = set(refuse)
        self.progress = asyncio.Event()

    async def send(self, batch: list[int]) -> Undelivered[int] | None:
        refused = [item for item in batch if item in self.refuse]
        self.refuse -= set(refused)
        self.taken += [item for item in batch if item not in refused]
        self.progress.set()
        return Undelivered(refused, ConnectionError("refused")) if refused else None

    async def on_failure(self, failure: Undelivered[int]) -> None:
        self.failures.append(failure)

    async def left_at_stop(self, drain: Drain[int]) -> None:
        self.left = drain.held()


def _drain(outlet: _ListOutlet, policy: Policy) -> Drain[int]:
    return Drain(
        outlet,
        access_counters("unit_drain", "dropped"),
        name="unit",
        policy=policy,
        capacity=100,
        batch_items=3,
        linger_s=0,
        backoff=Backoff(0, 0),
    )


async def _until(outlet: _ListOutlet, done: int) -> None:
    while len(outlet.taken) + sum(len(f.items) for f in outlet.failures if f.items) < done:
        outlet.progress.clear()
        await outlet.progress.wait()


def test_a_full_buffer_refuses_and_counts() -> None:
    counters = access_counters("unit_drain", "dropped")
    drain = Drain(
        _ListOutlet(),
        counters,
        name="unit",
        policy=Policy.KEEP,
        capacity=2,
        batch_items=3,
        linger_s=0,
    )
    assert [drain.submit(i) for i in range(4)] == [True, True, False, False]
    assert len(drain) == 2
    assert counters.get("dropped") == 2


async def test_keep_retries_what_was_refused_in_order() -> None:
    outlet = _ListOutlet(refuse=(1, 4))
    drain = _drain(outlet, Policy.KEEP)
    for i in range(8):
        drain.submit(i)
    drain.start()
    while len(outlet.taken) < 8:
        outlet.progress.clear()
        await outlet.progress.wait()
    await drain.stop(1.0)
    # batches of 3: [0 1 2] takes 0 and 2, 1 goes back in front; [1 3 4] takes 1 and 3, ...
    assert outlet.taken == [0, 2, 1, 3, 4, 5, 6, 7]
    assert [f.items for f in outlet.failures] == [[], []]  # counted; the items stayed buffered
    assert len(drain) == 0 and outlet.left == []


async def test_drop_hands_what_was_refused_to_the_outlet_and_goes_on() -> None:
    outlet = _ListOutlet(refuse=(1, 4))
    drain = _drain(outlet, Policy.DROP)
    for i in range(8):
        drain.submit(i)
    drain.start()
    await _until(outlet, 8)
    await drain.stop(1.0)
    assert outlet.taken == [0, 2, 3, 5, 6, 7]
    assert [f.items for f in outlet.failures] == [[1], [4]]


async def test_stop_sends_what_it_can_and_hands_over_the_rest() -> None:
    outlet = _ListOutlet()
    drain = _drain(outlet, Policy.KEEP)
    for i in range(5):
        drain.submit(i)
    await drain.stop(1.0)  # never started: stop still flushes
    assert outlet.taken == [0, 1, 2, 3, 4] and outlet.left == []


class _DownOutlet(_ListOutlet):
    def hold_at_stop(self) -> bool:
        return True


async def test_stop_with_the_store_known_down_hands_everything_over() -> None:
    outlet = _DownOutlet()
    drain = _drain(outlet, Policy.KEEP)
    for i in range(5):
        drain.submit(i)
    await drain.stop(1.0)
    assert outlet.taken == [] and outlet.left == [0, 1, 2, 3, 4]
    assert len(drain) == 0


class _SlowReplyOutlet(_ListOutlet):
    """The store takes a batch at once, but its answer waits for ``reply``: a send in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.reply = asyncio.Event()
        self.in_flight = asyncio.Event()

    async def send(self, batch: list[int]) -> Undelivered[int] | None:
        self.taken += batch
        self.in_flight.set()
        await self.reply.wait()
        return None


async def test_stop_lets_a_send_in_flight_finish_rather_than_send_it_twice() -> None:
    """A cancelled send leaves its batch buffered though the store may have it: stopping
    mid-send must not flush that batch a second time (seen as a doubled record in CI)."""
    outlet = _SlowReplyOutlet()
    drain = _drain(outlet, Policy.KEEP)
    for i in range(5):
        drain.submit(i)
    drain.start()
    await outlet.in_flight.wait()
    stopping = asyncio.create_task(drain.stop(1.0))
    await asyncio.sleep(0.05)
    outlet.reply.set()
    await stopping
    assert outlet.taken == [0, 1, 2, 3, 4] and outlet.left == []
