"""Which asyncio event loop a send runs on: uvloop where it is installed (Linux), else asyncio's.

uvloop (libuv) spends less CPU per request than asyncio's selector loop, and
CPU is what bounds a send on a fast network; ``bench/send_bench.py
--compare-loops`` measures both in one run (README, Performance). It is an
optional extra (``pip install 'pushcli[fast]'``): without it, or with
``PUSHCLI_EVENT_LOOP=asyncio``, sends run on the standard loop, unchanged.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: Environment variable that forces a loop: ``asyncio`` or ``uvloop`` (default: uvloop if present).
ENV = "PUSHCLI_EVENT_LOOP"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor when wanted and importable, else None (asyncio's default)."""
    choice = os.environ.get(ENV, "").strip().lower()
    if choice == "asyncio" or (not choice and not sys.platform.startswith("linux")):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop that :func:`loop_factory` picks."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
