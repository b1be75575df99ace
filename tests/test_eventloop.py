"""Which event loop a send runs on: asyncio's unless PUSHCLI_EVENT_LOOP=uvloop asks for uvloop."""

from __future__ import annotations

import asyncio
import sys
import types

import pytest

from pushcli import eventloop
from pushcli.defaults import EVENT_LOOP_ENV


async def _loop_class() -> type:
    return type(asyncio.get_running_loop())


def _fake_uvloop(made: list[asyncio.AbstractEventLoop]) -> types.ModuleType:
    """Stands in for uvloop (not a dependency): records that its constructor was used."""
    fake = types.ModuleType("uvloop")

    def new_event_loop() -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        made.append(loop)
        return loop

    fake.new_event_loop = new_event_loop  # type: ignore[attr-defined]
    return fake


@pytest.mark.parametrize("value", [None, "", "asyncio", "something-else"])
def test_asyncio_loop_unless_uvloop_is_asked_for(monkeypatch: pytest.MonkeyPatch,
                                                 value: str | None) -> None:
    made: list[asyncio.AbstractEventLoop] = []
    monkeypatch.setitem(sys.modules, "uvloop", _fake_uvloop(made))
    if value is None:
        monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    else:
        monkeypatch.setenv(EVENT_LOOP_ENV, value)
    assert eventloop.loop_factory() is eventloop.new_asyncio_loop
    assert issubclass(eventloop.run(_loop_class()), asyncio.SelectorEventLoop)
    assert made == []


def test_uvloop_when_asked_for_and_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[asyncio.AbstractEventLoop] = []
    monkeypatch.setitem(sys.modules, "uvloop", _fake_uvloop(made))
    monkeypatch.setenv(EVENT_LOOP_ENV, " UVLoop ")
    assert eventloop.run(_loop_class()) is not None
    assert len(made) == 1 and made[0].is_closed()  # the runner made and closed it


def test_asked_for_uvloop_but_not_installed_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    monkeypatch.setenv(EVENT_LOOP_ENV, "uvloop")
    assert eventloop.loop_factory() is eventloop.new_asyncio_loop
    assert eventloop.run(asyncio.sleep(0, result=42)) == 42


async def _waits_while_sleeping_not_while_busy() -> tuple[float, float, float, float]:
    """(waited, elapsed) over a sleep, then over a stretch of busy callbacks."""
    clock = eventloop.waited_clock()
    assert clock is not None
    loop = asyncio.get_running_loop()
    w0, t0 = clock(), loop.time()
    await asyncio.sleep(0.05)  # nothing to do: the loop waits in select
    w1, t1 = clock(), loop.time()
    for _ in range(200):  # always a callback ready: select is asked not to block
        sum(range(2000))
        await asyncio.sleep(0)
    w2, t2 = clock(), loop.time()
    return w1 - w0, t1 - t0, w2 - w1, t2 - t1


def test_the_asyncio_loop_times_its_waits_for_the_network(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What tells the adaptive limit that the sender, not the push service, is the queue."""
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    idle_waited, idle_span, busy_waited, busy_span = eventloop.run(
        _waits_while_sleeping_not_while_busy())
    assert idle_waited >= 0.8 * idle_span > 0
    assert busy_span > 0 and busy_waited < 0.02 * busy_span


def test_loops_made_elsewhere_do_not_say_how_long_they_waited() -> None:
    async def clock_here() -> object:
        return eventloop.waited_clock()

    assert asyncio.run(clock_here()) is None
