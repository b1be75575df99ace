"""Which asyncio event loop a send runs on: asyncio's own, or uvloop when asked for.

``PUSHCLI_EVENT_LOOP=uvloop`` runs sends on uvloop (libuv) where it is
installed (``pip install uvloop``, Linux). Measured here (README, Performance):
uvloop spent ~8 % less CPU per message than asyncio's loop, but its sends were
not faster in wall time on this loaded 2-core machine (slower in 3 of 4
paired runs), so it is not the default. ``bench/send_bench.py --compare-loops``
measures both in one run, for re-checking on a quieter machine.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from pushcli.defaults import EVENT_LOOP_ENV

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor when asked for and importable, else None (asyncio's)."""
    if os.environ.get(EVENT_LOOP_ENV, "").strip().lower() != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; whether it was set.

    Not ``asyncio.wait_for(event.wait(), timeout)``: on Python 3.11 that swallows a
    cancel arriving in the loop turn the event is set, so a periodic writer told
    to stop at that moment (the engine's flush loop, the events collector) ran on
    and the send never ended. ``asyncio.timeout`` lets the cancel through.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop that :func:`loop_factory` picks."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
