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
    assert eventloop.loop_factory() is None
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
    assert eventloop.loop_factory() is None
    assert eventloop.run(asyncio.sleep(0, result=42)) == 42
