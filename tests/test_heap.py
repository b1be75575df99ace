"""heap: the collector leaves the imported world alone while sending and at exit."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from pushcli import heap

# A cycle whose finalizer says so when the collector frees it; automatic collections are
# off so that only the interpreter's own collections at exit can reach it.
_CYCLE = """
import gc, sys
{setup}
gc.disable()
class Noisy:
    def __del__(self):
        sys.stdout.write("collected\\n")
        sys.stdout.flush()
a = Noisy(); a.me = a; del a
"""


def _exit_output(setup: str) -> str:
    proc = subprocess.run([sys.executable, "-c", _CYCLE.format(setup=setup)],
                          capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout


def test_at_exit_the_interpreter_collects_nothing_once_asked() -> None:
    """Without the call the interpreter's last collections free the cycle (the cost
    skipped: ~0.3 s for a send's heap); with it, called twice, nothing is collected."""
    assert _exit_output("") == "collected\n"
    asked = ("from pushcli import heap\n"
             "heap.skip_collection_at_exit(); heap.skip_collection_at_exit()")
    assert _exit_output(asked) == ""


def test_sending_freezes_what_exists_and_restores_the_collector() -> None:
    """Inside: the objects made before are frozen and the youngest generation is
    collected rarely. Outside again: the thresholds and the frozen set are as they were,
    even when the send raised."""
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError), heap.sending():
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold() == (heap.SENDING_THRESHOLD, *before[1:])
        raise RuntimeError("the send failed")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_cycle_made_while_sending_is_still_collected() -> None:
    """Freezing what existed before does not stop garbage made during the send from
    being freed."""
    freed: list[str] = []

    class Node:
        def __del__(self) -> None:
            freed.append("node")

    with heap.sending():
        node = Node()
        node.me = node  # type: ignore[attr-defined]
        del node
        gc.collect()
    assert freed == ["node"]
