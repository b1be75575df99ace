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


def test_overlapping_sends_share_one_setting_and_the_last_out_restores_it() -> None:
    """Two sends in threads of one process: the second one in changes nothing, the
    first one out leaves the setting to the other, the last one out restores it."""
    before = gc.get_threshold()
    first, second = heap.sending(), heap.sending()
    first.__enter__()
    frozen = gc.get_freeze_count()
    second.__enter__()
    assert gc.get_freeze_count() == frozen
    first.__exit__(None, None, None)  # the first ends while the second still sends
    assert gc.get_freeze_count() == frozen
    assert gc.get_threshold() == (heap.SENDING_THRESHOLD, *before[1:])
    second.__exit__(None, None, None)
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, 0)


def test_what_the_caller_set_is_left_alone() -> None:
    """Objects the caller froze stay frozen and nothing more is frozen for it (10,000
    lists made after its freeze stay collectable), and automatic collection it switched
    off (threshold 0) stays off."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(0)
    try:
        mine = gc.get_freeze_count()
        later = [[] for _ in range(10_000)]
        with heap.sending():
            assert gc.get_threshold()[0] == 0
            assert mine - 1_000 < gc.get_freeze_count() <= mine  # not 0, not +10,000
        assert gc.get_threshold()[0] == 0
        assert mine - 1_000 < gc.get_freeze_count() <= mine
        assert len(later) == 10_000
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
