"""kill -9 the sender at random moments; the store stays intact and a re-run
finishes the campaign, re-sending only what was in flight or not yet flushed.

``crash_cycle`` (tests/scenarios.py) is shared with ``stress/crash_resume.py``
(>= 10 kill times).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time

import pytest

from pushcli.engine import Engine
from pushcli.messages import DeliveryOptions, Job
from pushcli.store import Store
from tests.scenarios import CONCURRENCY, FLUSH_WINDOW, crash_cycle, kill_at
from tests.support import wait_for


@pytest.mark.parametrize("kill_after,skip", [(0.6, False), (1.4, False), (2.5, False),
                                             (1.4, True)])
def test_kill_9_at_random_points_then_rerun_completes(e2e, kill_after: float,
                                                      skip: bool) -> None:
    subs = e2e.subscribe(600)
    e2e.import_subs(subs)
    rng = random.Random(kill_after)
    figures = crash_cycle(e2e, subs, e2e.campaign(), kill_after + rng.uniform(-0.2, 0.2),
                          skip=skip)
    print(figures)


def test_kill_9_with_worker_processes_counts_every_duplicate(e2e) -> None:
    subs = e2e.subscribe(800)
    e2e.import_subs(subs)
    print(crash_cycle(e2e, subs, e2e.campaign(), 2.0, extra=("--workers", "2")))


def test_second_kill_during_the_rerun_still_converges(e2e) -> None:
    subs = e2e.subscribe(400)
    e2e.import_subs(subs)
    campaign = e2e.campaign()
    e2e.emu.add_fault("slow", rate=1.0, delay=0.02)
    for kill_after in (0.8, 0.8):
        proc = e2e.start("send", str(campaign), "-q", "--concurrency", str(CONCURRENCY),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_at(proc, kill_after)
        with Store.open(e2e.db) as store:
            assert store.integrity_ok()
    e2e.emu.clear_faults()
    code, report = e2e.send(campaign)
    assert code == 0 and report["sent"] == 400
    counts = [len(e2e.emu.messages(s["endpoint"])) for s in subs]
    assert min(counts) == 1
    assert sum(counts) - 400 <= 2 * (CONCURRENCY + FLUSH_WINDOW)


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (an exited orphan waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_orphaned_workers_send_nothing_after_the_parent_is_killed(e2e) -> None:
    """kill -9 of a multi-process send: the workers must stop at once, or they keep
    sending while the next run (the parent's lock died with it) sends the same ones."""
    subs = e2e.subscribe(2000)
    e2e.import_subs(subs)
    e2e.emu.add_fault("slow", rate=1.0, delay=0.02)
    proc = e2e.start("send", str(e2e.campaign()), "-q", "--workers", "2", "--concurrency", "16",
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # kill the parent (the sender of share 0) as soon as it has started its child sender
    children = wait_for(lambda: _sender_processes(proc.pid), 30,
                        "the sender to start its child sender")
    killed_at = time.time()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # every request an orphan could still make is made before it exits
    wait_for(lambda: not any(_alive(pid) for pid in children), 60,
             "the orphaned workers to exit")
    late = [t - killed_at for t, _, _ in e2e.emu.request_log() if t > killed_at + 0.5]
    # at most what each worker already had in flight (concurrency 16 split over 2)
    assert len(late) <= 16, f"{len(late)} requests from orphaned workers, last at " \
        f"+{max(late):.1f}s after the kill"


def _sender_processes(pid: int) -> list[int]:
    """The child senders among ``pid``'s children."""
    found = []
    for child in _children(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as fh:
                if b"_child_main" in fh.read():
                    found.append(child)
        except OSError:
            continue
    return found


@pytest.mark.parametrize("victim", ["parent", "worker"])
def test_no_leaked_semaphore_warning_after_a_sender_process_is_killed(e2e, victim: str) -> None:
    """kill -9 of a multi-process send (or of one of its workers) leaves nothing for the
    resource tracker to warn about: with a multiprocessing Queue and Events it printed
    "There appear to be 13 leaked semaphore objects" once the orphaned workers exited."""
    subs = e2e.subscribe(1500)
    e2e.import_subs(subs)
    e2e.emu.add_fault("slow", rate=1.0, delay=0.02)
    proc = e2e.start("send", str(e2e.campaign()), "-q", "--workers", "2", "--concurrency", "8")
    e2e.wait_until("accepted", 100)
    workers = _sender_processes(proc.pid)
    assert len(workers) == 1  # --workers 2: this process sends share 0, one child share 1
    os.kill(proc.pid if victim == "parent" else workers[0], signal.SIGKILL)
    # stderr closes when the last holder exits: the child sender too
    _, stderr = proc.communicate(timeout=120)
    assert "leaked" not in stderr and "resource_tracker" not in stderr, stderr
    if victim == "worker":
        assert proc.returncode == 1
        assert stderr.strip().splitlines() == [
            "error: a sender process exited with code -9; "
            "re-run the same command to finish the campaign"]


def test_engine_flushes_at_flush_size_not_only_on_the_timer() -> None:
    """The unflushed window a kill -9 loses is bounded by ``flush_size`` (documented:
    "every flush_interval or flush_size records"), whatever the send rate."""
    batches: list[int] = []

    class _Signer:
        signatures = 0

        def header(self, origin: str) -> str:
            return ""

    options = DeliveryOptions(flush_interval=5.0, flush_size=10, concurrency=4)
    engine = Engine(_Signer(), options, lambda recs: batches.append(len(recs)))  # type: ignore[arg-type]
    jobs = [Job(i, "", "", "blocked", b"", b"", b"", blocked="refused") for i in range(1, 101)]
    feed = [jobs[i:i + 5] for i in range(0, 100, 5)]  # the store hands out small batches

    async def main() -> None:
        await asyncio.wait_for(engine.run(iter(feed)), timeout=30)

    asyncio.run(main())
    assert sum(batches) == 100
    # flush_size, give or take one feed batch that lands while a flush is being scheduled
    assert max(batches) <= 2 * options.flush_size, batches
