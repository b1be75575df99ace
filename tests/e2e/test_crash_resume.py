"""kill -9 the sender at random moments; the store stays intact and a re-run
finishes the campaign, re-sending only what was in flight or not yet flushed.

``crash_cycle`` is shared with ``stress/crash_resume.py`` (>= 10 kill times).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from pushcli.engine import Engine
from pushcli.messages import DeliveryOptions, Job
from pushcli.store import Store, deliveries

CONCURRENCY = 16
FLUSH_WINDOW = 500  # DeliveryOptions.flush_size: the most outcomes one flush may hold


def intent_window(concurrency: int) -> int:
    """The most subscribers marked in flight whose request had not started: the engine
    commits intent one chunk (2 x concurrency, at least 32) ahead of what is queued."""
    chunk = max(2 * concurrency, 32)
    return 2 * chunk + concurrency


@dataclass
class CrashFigures:
    kill_after_s: float
    accepted_at_kill: int
    recorded_at_kill: int
    lost_outcomes: int  # accepted by the emulator but not in the ledger at the kill
    duplicates: int
    rerun_attempted: int
    rerun_s: float
    in_flight_at_kill: int = 0  # ledger rows the killed run left marked in flight
    possible_duplicates: int = 0  # what the re-run's report admits to
    uncertain: int = 0  # with --on-uncertain skip: recorded, not resent


def _ledger(db: Any) -> dict[int, str]:
    with Store.open(db) as store, store.engine.connect() as conn:
        return {r[0]: r[1] for r in conn.execute(
            select(deliveries.c.subscription_id, deliveries.c.outcome))}


def crash_cycle(e2e: Any, subs: list[dict[str, Any]], campaign: Any, kill_after: float,
                *, delay: float = 0.02, concurrency: int = CONCURRENCY,
                extra: tuple[str, ...] = (), skip: bool = False) -> CrashFigures:
    """Start a send, SIGKILL it after ``kill_after`` s, check the store, re-run to the end.

    Every duplicate is counted: duplicates <= possible_duplicates <= duplicates + the
    intent window; with ``skip`` (``--on-uncertain skip``) there are none at all.
    """
    n = len(subs)
    e2e.emu.add_fault("slow", rate=1.0, delay=delay)
    accepted_before = e2e.emu.stats()["accepted"]
    proc = subprocess.Popen([sys.executable, "-m", "pushcli", "send", str(campaign), "-q",
                             "--concurrency", str(concurrency), *extra], cwd=e2e.dir,
                            env=e2e.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    accepted = e2e.emu.stats()["accepted"] - accepted_before
    with Store.open(e2e.db) as store:
        assert store.integrity_ok()
        by_id = {s.id: s.subscription.endpoint for s in store.iter_subscriptions()}
    at_kill = _ledger(e2e.db)
    recorded_ids = {sid for sid, o in at_kill.items() if o == "sent"}
    in_flight = {sid for sid, o in at_kill.items() if o == "inflight"}
    counts_at_kill = {s["endpoint"]: len(e2e.emu.messages(s["endpoint"])) for s in subs}
    e2e.emu.clear_faults()
    started = time.monotonic()
    rerun = ("--on-uncertain", "skip") if skip else ()
    proc2 = e2e.pushcli("send", str(campaign), "--json", *extra, *rerun, timeout=300)
    rerun_s = time.monotonic() - started
    assert proc2.returncode == 0, proc2.stderr[-2000:]
    report = json.loads(proc2.stdout)
    uncertain = report.get("uncertain", 0)
    assert report["sent"] + uncertain == n and report["total"] == n
    with Store.open(e2e.db) as store:
        assert store.integrity_ok()
    ledger = _ledger(e2e.db)
    assert len(ledger) == n and set(ledger.values()) <= {"sent", "uncertain"}
    assert {sid for sid, o in ledger.items() if o == "uncertain"} == (in_flight if skip
                                                                       else set())
    counts = {s["endpoint"]: len(e2e.emu.messages(s["endpoint"])) for s in subs}
    unsure = {by_id[sid] for sid in in_flight} if skip else set()
    assert all(c >= 1 for e, c in counts.items() if e not in unsure), \
        "a subscriber was never reached"
    for sid in recorded_ids:
        assert counts[by_id[sid]] == counts_at_kill[by_id[sid]], "re-sent a recorded one"
    duplicates = sum(c - 1 for c in counts.values() if c)
    # only what was accepted but not yet in the ledger when the process died is re-sent
    lost = sum(1 for e, c in counts_at_kill.items() if c) - len(recorded_ids)
    assert duplicates <= max(lost, 0) + concurrency, (duplicates, lost)
    assert duplicates <= concurrency + FLUSH_WINDOW, duplicates
    possible = report["possible_duplicates"]
    if skip:
        assert duplicates == 0 and possible == 0, (duplicates, possible)
    else:  # every duplicate counted, and not many more than there were
        assert possible == len(in_flight)
        assert duplicates <= possible <= duplicates + intent_window(concurrency), \
            (duplicates, possible)
    return CrashFigures(kill_after, accepted, len(recorded_ids), lost, duplicates,
                        report["run"]["attempted"], rerun_s, len(in_flight), possible,
                        uncertain)


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
        proc = subprocess.Popen([sys.executable, "-m", "pushcli", "send", str(campaign), "-q",
                                 "--concurrency", str(CONCURRENCY)], cwd=e2e.dir,
                                env=e2e.env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
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


def test_orphaned_workers_send_nothing_after_the_parent_is_killed(e2e) -> None:
    """kill -9 of a multi-process send: the workers must stop at once, or they keep
    sending while the next run (the parent's lock died with it) sends the same ones."""
    subs = e2e.subscribe(2000)
    e2e.import_subs(subs)
    e2e.emu.add_fault("slow", rate=1.0, delay=0.02)
    proc = subprocess.Popen([sys.executable, "-m", "pushcli", "send", str(e2e.campaign()),
                             "-q", "--workers", "2", "--concurrency", "16"], cwd=e2e.dir,
                            env=e2e.env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # kill the parent as soon as it has spawned its workers
    assert len(_children(proc.pid)) >= 2
    killed_at = time.time()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(4)
    late = [t - killed_at for t, _, _ in e2e.emu.request_log() if t > killed_at + 0.5]
    # at most what each worker already had in flight (concurrency 16 split over 2)
    assert len(late) <= 16, f"{len(late)} requests from orphaned workers, last at " \
        f"+{max(late):.1f}s after the kill"


def _sender_processes(pid: int) -> list[int]:
    """The spawned sender workers among ``pid``'s children (not the resource tracker)."""
    found = []
    for child in _children(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as fh:
                if b"spawn_main" in fh.read():
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
    assert len(workers) == 2
    os.kill(proc.pid if victim == "parent" else workers[0], signal.SIGKILL)
    # stderr closes when the last holder exits: the workers and the resource tracker too
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
