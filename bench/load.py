"""Open-loop load for the benchmark programs: requests leave on schedule whatever the answers do,
so a slow target shows as latency, not as a lower offered rate (closed-loop clients hide it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["open_loop"]


async def open_loop(
    rate: float, seconds: float, one: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    """Start ``one()`` every 1/rate s for ``seconds``, then wait for all of them."""
    tasks = []
    began = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = began + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
