"""Which asyncio event loop a send runs on: asyncio's own, or uvloop when asked for.

asyncio's loop runs on a selector that adds up the time the loop spent waiting
for the network (:func:`waited_clock`). The adaptive in-flight limit reads it:
a loop that never waited was saturated (busy with its own work every turn),
and then the latency it measures is its own queue, not the push service's
(``limiter.ConcurrencyLimit``).

``PUSHCLI_EVENT_LOOP=uvloop`` runs sends on uvloop (libuv) where it is
installed (``pip install uvloop``, Linux). Measured here (README, Performance):
on the libcurl transport, three alternating pairs of 100,000-message sends came
out even (means 3,896/s on uvloop, 3,907/s on asyncio's loop), and uvloop cannot
say when it waited, so the in-flight limit loses its saturation signal there: it
is not the default. ``bench/send_bench.py --compare-loops`` measures both in one
run, for re-checking on a quieter machine.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from pushcli.defaults import EVENT_LOOP_ENV

T = TypeVar("T")


class _WaitTimingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The platform's selector, adding up the seconds ``select`` blocked.

    asyncio asks with a zero timeout while callbacks are ready, so only the calls
    that may block count: the time the loop had nothing to do but wait."""

    waited = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:
            return super().select(timeout)
        began = time.monotonic()
        try:
            return super().select(timeout)
        finally:
            self.waited += time.monotonic() - began


#: Loops made by :func:`new_asyncio_loop` -> their selector.
_SELECTORS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _WaitTimingSelector] = (
    weakref.WeakKeyDictionary())


def new_asyncio_loop() -> asyncio.AbstractEventLoop:
    """asyncio's own loop, on a selector that times its waits (see :func:`waited_clock`)."""
    selector = _WaitTimingSelector()
    loop = asyncio.SelectorEventLoop(selector)
    _SELECTORS[loop] = selector
    return loop


def waited_clock() -> Callable[[], float] | None:
    """Seconds the running loop has spent waiting for the network so far, as a clock to
    read (compare two readings with ``time.monotonic``); None when the loop does not
    say (uvloop, or a loop made elsewhere, such as a test's ``asyncio.run``)."""
    selector = _SELECTORS.get(asyncio.get_running_loop())
    if selector is None:
        return None
    return lambda: selector.waited


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop constructor when asked for and importable, else asyncio's own loop
    on a wait-timing selector."""
    if os.environ.get(EVENT_LOOP_ENV, "").strip().lower() != "uvloop":
        return new_asyncio_loop
    try:
        import uvloop
    except ImportError:
        return new_asyncio_loop
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
