"""The engine and an unwritable ledger, and the intent log, without a store.

A failed ledger write must never drop outcomes: it is retried with backoff,
no request starts while it fails, and after the retry budget the engine
stops and raises StoreError (exit 74). Before a request goes out its
subscriber is committed as in flight (intent), so a crash leaves a record.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from pushcli.encoding import b64_decode
from pushcli.engine import Engine
from pushcli.errors import StoreError
from pushcli.keys import VapidSigner, generate_keys, load_private_key
from pushcli.messages import DeliveryOptions, Job
from pushcli.pushservices import Outcome, check_endpoint
from pushcli.store import DeliveryRecord
from pushcli.testing import PushServiceEmulator

ALLOWED = frozenset({"127.0.0.1"})


class _NoSigner:
    signatures = 0

    def header(self, origin: str) -> str:
        return ""


class _FakeTime:
    """A clock that only the injected sleep advances: backoff runs instantly."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


def _blocked_jobs(n: int) -> list[list[Job]]:
    jobs = [Job(i, "", "", "blocked", b"", b"", b"", blocked="refused") for i in range(1, n + 1)]
    return [jobs[i:i + 10] for i in range(0, n, 10)]


def test_a_sink_that_fails_once_loses_no_outcome() -> None:
    """Before: the first exception killed the flush loop and its batch was gone."""
    written: list[int] = []
    calls = 0

    def sink(recs: list[DeliveryRecord]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("disk I/O error")
        written.extend(r.subscription_id for r in recs)

    t = _FakeTime()
    engine = Engine(_NoSigner(), DeliveryOptions(flush_size=10), sink,  # type: ignore[arg-type]
                    clock=t.clock, sleep=t.sleep)
    stats = asyncio.run(engine.run(iter(_blocked_jobs(100))))
    assert sorted(written) == list(range(1, 101))  # each exactly once, none dropped
    assert t.sleeps == [0.05]
    assert stats.ledger_retries == 1


def test_a_sink_that_always_fails_stops_with_store_error_after_the_budget() -> None:
    attempts = 0

    def sink(recs: list[DeliveryRecord]) -> None:
        nonlocal attempts
        attempts += 1
        raise StoreError("database or disk is full")

    t = _FakeTime()
    options = DeliveryOptions(flush_size=10, ledger_retry_budget=60.0)
    engine = Engine(_NoSigner(), options, sink, clock=t.clock,  # type: ignore[arg-type]
                    sleep=t.sleep)
    with pytest.raises(StoreError) as info:
        asyncio.run(engine.run(iter(_blocked_jobs(100))))
    message = str(info.value)
    assert "\n" not in message
    assert "database or disk is full" in message and "re-run" in message
    # exponential backoff, capped, for the whole budget (the run had finished sending, so
    # its final flush is the one that keeps retrying), then it gives up
    last = len(t.sleeps) - 1 - t.sleeps[::-1].index(0.05)  # the final flush's retries
    tail = t.sleeps[last:]
    assert tail[:8] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, options.ledger_backoff_max]
    assert set(tail[7:]) == {options.ledger_backoff_max}
    assert 60.0 <= sum(tail) <= 60.0 + options.ledger_backoff_max
    # one try per backoff, plus the first of each loop (the flusher's, cut short by the
    # end of the run, and the final flush's)
    assert len(t.sleeps) + 1 <= attempts <= len(t.sleeps) + 2


def _http_jobs(emu: PushServiceEmulator, key: str, n: int) -> tuple[list[Job], dict[int, str]]:
    subs = emu.create_subscriptions(n, key)
    jobs, endpoints = [], {}
    for i, s in enumerate(subs, start=1):
        ep = check_endpoint(s["endpoint"], ALLOWED)
        jobs.append(Job(i, ep.url, ep.origin, ep.service, b64_decode(s["keys"]["p256dh"]),
                        b64_decode(s["keys"]["auth"]), b'{"title":"hi"}'))
        endpoints[i] = s["endpoint"]
    return jobs, endpoints


def _signer(tmp_path: Path) -> tuple[VapidSigner, str]:
    info = generate_keys(tmp_path)
    return (VapidSigner(load_private_key(tmp_path / "vapid_private.pem"),
                        "mailto:ops@shop.example.com"), info.application_server_key)


def test_no_request_starts_while_the_ledger_cannot_be_written(tmp_path: Path) -> None:
    signer, key = _signer(tmp_path)
    concurrency = 4
    with PushServiceEmulator(port=0, seed=1) as emu:
        emu.add_fault("slow", rate=1.0, delay=0.01)
        jobs, endpoints = _http_jobs(emu, key, 120)
        written: list[int] = []
        failures = 0
        growth: list[int] = []

        def sink(recs: list[DeliveryRecord]) -> None:
            nonlocal failures
            if written and failures < 3:
                failures += 1
                raise StoreError("database is locked")
            written.extend(r.subscription_id for r in recs)

        async def watching_sleep(delay: float) -> None:
            before = emu.stats()["total_requests"]
            await asyncio.sleep(0.3)  # an observation window, not a schedule
            growth.append(emu.stats()["total_requests"] - before)

        engine = Engine(signer, DeliveryOptions(concurrency=concurrency, flush_size=5), sink,
                        allowed_hosts=ALLOWED, sleep=watching_sleep)
        asyncio.run(engine.run(iter([jobs[i:i + 20] for i in range(0, 120, 20)])))
        assert failures == 3 and len(growth) == 3
        # only requests already in flight when the ledger failed may still arrive
        assert max(growth) <= concurrency, growth
        assert sorted(written) == list(range(1, 121))
        assert all(len(emu.messages(e)) == 1 for e in endpoints.values())


class _Intents:
    """The intent log as the store keeps it (chunk -> ids), checking the engine's calls:
    a chunk is opened before any of its requests, closed only once its outcomes are
    committed."""

    def __init__(self, reached: Callable[[int], bool], committed: set[int]) -> None:
        self.rows: dict[int, list[int]] = {}
        self.opened: set[int] = set()
        self.early: list[int] = []
        self.closed_too_soon: list[int] = []
        self._reached = reached
        self._committed = committed

    def _forget(self, closed: Sequence[int]) -> None:
        for c in closed:
            self.closed_too_soon += [i for i in self.rows.pop(c)
                                     if self._reached(i) and i not in self._committed]

    def open(self, chunk: int, ids: Sequence[int], closed: Sequence[int]) -> None:
        self._forget(closed)
        self.early += [i for i in ids if self._reached(i)]
        self.opened.update(ids)
        self.rows[chunk] = list(ids)

    def close(self, closed: Sequence[int], keep: Mapping[int, Sequence[int]]) -> None:
        self._forget(closed)
        for c, ids in keep.items():
            self.rows[c] = list(ids)

    def left(self) -> set[int]:
        return {i for ids in self.rows.values() for i in ids}


def _logged_jobs(emu: PushServiceEmulator, key: str, n: int
                 ) -> tuple[list[Job], dict[int, str], set[int], _Intents]:
    """``n`` jobs to the emulator, the set their sink records into, and an intent log
    that checks the engine's calls against what the emulator received."""
    jobs, endpoints = _http_jobs(emu, key, n)
    recorded: set[int] = set()
    return jobs, endpoints, recorded, _Intents(lambda i: bool(emu.messages(endpoints[i])),
                                               recorded)


def _abort(engine: Engine, jobs: list[Job], after: float) -> None:
    """Run ``engine`` on ``jobs`` and cancel it (a second Ctrl-C) ``after`` seconds in."""
    async def run_then_cancel() -> None:
        run = asyncio.ensure_future(engine.run(iter([jobs])))
        await asyncio.sleep(after)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(run_then_cancel())


def test_intent_is_committed_before_any_request_of_its_chunk(tmp_path: Path) -> None:
    signer, key = _signer(tmp_path)
    with PushServiceEmulator(port=0, seed=1) as emu:
        jobs, endpoints, recorded, log = _logged_jobs(emu, key, 200)

        def sink(recs: list[DeliveryRecord]) -> None:
            assert {r.subscription_id for r in recs} <= log.opened
            recorded.update(r.subscription_id for r in recs)

        options = DeliveryOptions(concurrency=8)
        engine = Engine(signer, options, sink, allowed_hosts=ALLOWED, intents=log)
        asyncio.run(engine.run(iter([jobs[i:i + 100] for i in range(0, 200, 100)])))
        assert log.early == [] and log.closed_too_soon == []
        assert log.opened == recorded == set(range(1, 201))
        assert log.rows == {}  # every chunk closed: nothing left for a later run


def test_a_graceful_stop_leaves_no_intent_for_what_never_went_out(tmp_path: Path) -> None:
    """Else ``on_uncertain: skip`` would never send them after a Ctrl-C."""
    signer, key = _signer(tmp_path)
    with PushServiceEmulator(port=0, seed=1) as emu:
        emu.add_fault("slow", rate=1.0, delay=0.02)
        jobs, endpoints, recorded, log = _logged_jobs(emu, key, 300)
        engine: Engine

        def sink(recs: list[DeliveryRecord]) -> None:
            recorded.update(r.subscription_id for r in recs if r.outcome is Outcome.SENT)
            engine.stop()  # Ctrl-C as soon as something is recorded

        engine = Engine(signer, DeliveryOptions(concurrency=4, flush_size=2), sink,
                        allowed_hosts=ALLOWED, intents=log)
        asyncio.run(engine.run(iter([jobs[i:i + 100] for i in range(0, 300, 100)])))
        unsent = log.opened - recorded
        assert unsent, "the stop came after everything was sent"
        assert all(not emu.messages(endpoints[i]) for i in unsent)
        # in-flight requests finished and were recorded: none left uncertain
        assert log.left() == set() and log.closed_too_soon == []


def test_an_abort_keeps_in_flight_what_may_have_arrived(tmp_path: Path) -> None:
    """A second Ctrl-C cancels requests mid-flight: their chunk stays in the intent log
    (each of them may have arrived), and only those jobs, not the ones never posted."""
    signer, key = _signer(tmp_path)
    with PushServiceEmulator(port=0, seed=1) as emu:
        emu.add_fault("slow", rate=1.0, delay=0.5)
        jobs, endpoints, recorded, log = _logged_jobs(emu, key, 64)
        engine = Engine(signer, DeliveryOptions(concurrency=4, flush_size=2),
                        lambda recs: recorded.update(r.subscription_id for r in recs),
                        allowed_hosts=ALLOWED, intents=log)

        _abort(engine, jobs, 0.2)  # requests are in flight (0.5 s each): abort them
        left = log.left()
        assert left and not left & recorded
        assert len(left) <= 4 < len(log.opened)  # what was posted, not the whole chunk


def test_an_abort_keeps_no_job_still_waiting_for_its_rate_limit_slot(tmp_path: Path) -> None:
    """Jobs a worker took but the rate limit still holds were never posted: an abort
    must not leave them in the log as if their requests had gone out."""
    signer, key = _signer(tmp_path)
    with PushServiceEmulator(port=0, seed=1) as emu:
        jobs, endpoints, recorded, log = _logged_jobs(emu, key, 40)
        engine = Engine(signer, DeliveryOptions(concurrency=4, rate_limit=1.0), lambda recs:
                        recorded.update(r.subscription_id for r in recs),
                        allowed_hosts=ALLOWED, intents=log)

        _abort(engine, jobs, 0.3)  # one posted and answered; the others wait ~1 s each
        reached = {i for i in log.opened if emu.messages(endpoints[i])}
        assert reached and log.left() <= reached - recorded, sorted(log.left())


def test_an_abort_during_an_intent_write_keeps_none_of_that_chunk(tmp_path: Path) -> None:
    """A second Ctrl-C landing while a chunk's intent is being committed: the write
    still completes, but none of that chunk was posted, so none of it may stay in the
    log (the next run would count the whole chunk as possible duplicates)."""
    signer, key = _signer(tmp_path)
    with PushServiceEmulator(port=0, seed=1) as emu:
        emu.add_fault("slow", rate=1.0, delay=0.5)
        jobs, endpoints, recorded, log = _logged_jobs(emu, key, 200)
        writing, release = threading.Event(), threading.Event()
        open_chunk = log.open

        def slow_open(chunk: int, ids: Sequence[int], closed: Sequence[int]) -> None:
            if chunk == 1:  # the second chunk's write is under way when the abort comes
                writing.set()
                release.wait(10)
            open_chunk(chunk, ids, closed)

        log.open = slow_open  # type: ignore[method-assign]
        engine = Engine(signer, DeliveryOptions(concurrency=4, flush_size=2),
                        lambda recs: recorded.update(r.subscription_id for r in recs),
                        allowed_hosts=ALLOWED, intents=log)

        async def abort_mid_write() -> None:
            run = asyncio.ensure_future(engine.run(iter([jobs])))
            while not writing.is_set():
                await asyncio.sleep(0.01)
            run.cancel()
            await asyncio.sleep(0.05)  # the cancel reaches the feed, awaiting the write
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await run

        asyncio.run(abort_mid_write())
        second = set(log.opened) - {j.subscription_id for j in jobs[:32]}
        assert second and not any(emu.messages(endpoints[i]) for i in second)
        left = log.left()
        assert not left & second, sorted(left & second)
        assert left and len(left) <= 4  # the first chunk's requests cut short


def test_a_stop_arriving_as_the_flush_wakes_still_ends_the_flush_loop() -> None:
    """Python 3.11's wait_for swallowed a cancel landing in the loop turn its event was set:
    the engine's flusher then ran on and a send of all-blocked subscribers never ended."""
    from pushcli.eventloop import wait_event

    async def scenario() -> bool:
        wake = asyncio.Event()

        async def periodic_writer() -> None:
            while True:
                await wait_event(wake, 10)
                wake.clear()

        task = asyncio.create_task(periodic_writer())
        for _ in range(3):
            await asyncio.sleep(0)  # the writer is waiting
        wake.set()  # the last outcomes fill the buffer ...
        task.cancel()  # ... in the turn the run stops its flusher
        done, _ = await asyncio.wait({task}, timeout=5)
        return task in done and task.cancelled()

    assert asyncio.run(scenario())
