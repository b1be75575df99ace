"""A ledger that cannot be written (full disk, lock held by another process) and the
intent log across runs, with a real SQLite store and the emulator."""

from __future__ import annotations

import csv
import io
import queue
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, event, select

import pushcli.store as store_mod
from pushcli.campaign import Renderer, load_campaign
from pushcli.delivery import Plan, _run_partition, send_campaign
from pushcli.errors import StoreError
from pushcli.keys import VapidSigner, load_private_key
from pushcli.messages import DeliveryOptions, DeliveryRecord, Stats
from pushcli.pushservices import Outcome
from pushcli.report import build_report, write_csv_rows
from pushcli.store import INFLIGHT, Store, deliveries, locks
from pushcli.workers import Control, RangesFromParent

ALLOWED = frozenset({"127.0.0.1"})


def _send(e2e: Any, store: Store, campaign: Path, **kw: Any) -> Any:
    signer = VapidSigner(load_private_key(e2e.dir / "vapid_private.pem"),
                         "mailto:ops@shop.example.com")
    options = kw.pop("options", DeliveryOptions(concurrency=8))
    return send_campaign(store, load_campaign(campaign), signer, allowed_hosts=ALLOWED,
                         options=options, workers=1, **kw)


def _outcomes(db: Path) -> dict[int, str]:
    with Store.open(db) as store, store.engine.connect() as conn:
        return {r[0]: r[1] for r in conn.execute(
            select(deliveries.c.subscription_id, deliveries.c.outcome))}


def _status(db: Path, name: str) -> str:
    with Store.open(db) as store:
        return build_report(store, name)["status"]


def _counts(e2e: Any, subs: list[dict[str, Any]]) -> list[int]:
    return [len(e2e.emu.messages(s["endpoint"])) for s in subs]


def test_full_disk_stops_with_exit_74_then_a_rerun_finishes(e2e) -> None:
    """Before: 1,455 of 2,000 rows written, status finished, exit 0."""
    subs = e2e.subscribe(600)
    e2e.import_subs(subs)
    campaign = e2e.campaign("full")
    e2e.emu.add_fault("slow", rate=1.0, delay=0.005)
    with Store.open(e2e.db) as store:
        with store.engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
        store.engine.dispose()

        @event.listens_for(store.engine, "connect")
        def _full(dbapi_conn: Any, _record: Any) -> None:  # the disk fills mid-send
            dbapi_conn.execute(f"PRAGMA max_page_count = {pages + 8}")

        options = DeliveryOptions(concurrency=8, ledger_retry_budget=0.5)
        with pytest.raises(StoreError) as info:
            _send(e2e, store, campaign, options=options)
    assert "\n" not in str(info.value) and "re-run" in str(info.value)
    assert "full" in str(info.value)
    assert _status(e2e.db, "full") == "interrupted"
    ledger = _outcomes(e2e.db)
    assert len(ledger) < 600
    reached = {s["endpoint"] for s in subs if e2e.emu.messages(s["endpoint"])}
    with Store.open(e2e.db) as store:
        ids = {s.subscription.endpoint: s.id for s in store.iter_subscriptions()}
        info = store.get_campaign("full")
        assert info is not None
        in_flight = store.in_flight(info.id)
    # every subscriber the push service reached is in the ledger: sent, or in flight
    assert all(ledger.get(ids[e]) == "sent" or ids[e] in in_flight for e in reached)

    with Store.open(e2e.db) as store:  # space again: the re-run finishes
        result = _send(e2e, store, campaign)
        report = build_report(store, "full")
    assert not result.interrupted and report["status"] == "finished"
    assert report["sent"] == 600 and set(_outcomes(e2e.db).values()) == {"sent"}
    counts = _counts(e2e, subs)
    assert min(counts) == 1
    assert sum(counts) - 600 <= report["possible_duplicates"]


@pytest.mark.parametrize("hold,budget,finishes", [(1.5, 30.0, True), (2.5, 0.5, False)])
def test_another_process_holding_the_write_lock(e2e, monkeypatch, hold: float, budget: float,
                                                finishes: bool) -> None:
    """Held past the busy timeout: retried until released (nothing lost, no duplicate),
    or, past the retry budget, exit 74 and a re-run finishes. Before: 1,985 of 2,000."""
    monkeypatch.setattr(store_mod.database, "BUSY_TIMEOUT_MS", 100)
    subs = e2e.subscribe(500)
    e2e.import_subs(subs)
    campaign = e2e.campaign("locked")
    e2e.emu.add_fault("slow", rate=1.0, delay=0.01)
    holder = sqlite3.connect(e2e.db, isolation_level=None, check_same_thread=False)
    started = threading.Event()
    released = threading.Event()
    threads: list[threading.Thread] = []

    def hold_lock() -> None:
        holder.execute("BEGIN IMMEDIATE")
        started.set()
        released.wait(hold)
        holder.execute("COMMIT")

    def on_progress(stats: Stats) -> None:
        if stats.done and not started.is_set():  # mid-send, after the first flush
            threads.append(threading.Thread(target=hold_lock, daemon=True))
            threads[0].start()
            started.wait()

    options = DeliveryOptions(concurrency=8, ledger_retry_budget=budget)
    with Store.open(e2e.db) as store:
        if finishes:
            result = _send(e2e, store, campaign, options=options, on_progress=on_progress)
            assert not result.interrupted and result.stats.ledger_retries > 0
        else:
            with pytest.raises(StoreError, match="locked"):
                _send(e2e, store, campaign, options=options, on_progress=on_progress)
    released.set()
    threads[0].join()
    holder.close()
    if not finishes:
        # never "finished" with outcomes missing (the status write itself may have met
        # the held lock: then it stays "running", shown as interrupted once we exit)
        assert _status(e2e.db, "locked") in ("interrupted", "running")
        with Store.open(e2e.db) as store:
            with store.engine.begin() as conn:  # our process "exited": its lock is stale
                conn.execute(delete(locks))
            _send(e2e, store, campaign)
    with Store.open(e2e.db) as store:
        report = build_report(store, "locked")
    assert report["status"] == "finished" and report["sent"] == 500
    counts = _counts(e2e, subs)
    assert min(counts) == 1
    if finishes:
        assert max(counts) == 1 and report["possible_duplicates"] == 0
    else:
        assert sum(counts) - 500 <= report["possible_duplicates"]


def _leave_in_flight(db: Path, name: str, n: int) -> list[int]:
    """What a kill -9 leaves: an intent row naming the first ``n`` subscribers, no outcome."""
    with Store.open(db) as store:
        info = store.start_campaign(name, {})
        ids = [s.id for s in store.iter_subscriptions()][:n]
        store.open_intent(info.id, "dead-host:1", ids)
    return ids


def test_resend_counts_what_an_earlier_run_left_in_flight(e2e) -> None:
    subs = e2e.subscribe(50)
    e2e.import_subs(subs)
    campaign = e2e.campaign("resend")
    _leave_in_flight(e2e.db, "resend", 7)
    with Store.open(e2e.db) as store:
        _send(e2e, store, campaign)
        report = build_report(store, "resend")
        out = io.StringIO()
        write_csv_rows(store, store.get_campaign("resend").id, out)  # type: ignore[union-attr]
    assert report["sent"] == 50 and report["possible_duplicates"] == 7
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert sum(int(r["possible_duplicates"]) for r in rows) == 7
    assert _counts(e2e, subs) == [1] * 50


def test_skip_records_uncertain_never_resends_retries_or_prunes_them(e2e) -> None:
    subs = e2e.subscribe(40)
    e2e.import_subs(subs)
    campaign = e2e.campaign("skip")
    left = _leave_in_flight(e2e.db, "skip", 5)
    options = DeliveryOptions(concurrency=8, on_uncertain="skip")
    with Store.open(e2e.db) as store:
        _send(e2e, store, campaign, options=options)
        _send(e2e, store, campaign, retry_failed=True)
        report = build_report(store, "skip")
        prunable = set(store.prunable(failed_campaigns=1))
    assert report["uncertain"] == 5 and report["sent"] == 35
    assert report["possible_duplicates"] == 0
    by_endpoint = dict(zip([s["endpoint"] for s in subs], _counts(e2e, subs), strict=True))
    with Store.open(e2e.db) as store:
        uncertain = {s.subscription.endpoint for s in store.iter_subscriptions()
                     if s.id in left}
    assert all(by_endpoint[e] == 0 for e in uncertain)
    assert sum(by_endpoint.values()) == 35
    assert not prunable & set(left)


def test_cli_on_uncertain_overrides_the_campaign(e2e) -> None:
    subs = e2e.subscribe(10)
    e2e.import_subs(subs)
    campaign = e2e.campaign("cli", extra="delivery:\n  on_uncertain: resend\n")
    _leave_in_flight(e2e.db, "cli", 3)
    code, report = e2e.send(campaign, "--on-uncertain", "skip")
    assert code == 0, report
    assert report["uncertain"] == 3 and report["sent"] == 7


def test_inflight_rows_are_not_outcomes_in_reports(e2e) -> None:
    subs = e2e.subscribe(5)
    e2e.import_subs(subs)
    _leave_in_flight(e2e.db, "half", 5)
    with Store.open(e2e.db) as store:
        info = store.get_campaign("half")
        assert info is not None
        store.record(info.id, [DeliveryRecord(1, Outcome.SENT, "127.0.0.1", 201, "")])
        assert store.in_flight(info.id) == {2, 3, 4, 5}  # 1 got its outcome
        assert store.adopt_intents(info.id, everything=True) == 5
        assert store.in_flight(info.id) == {2, 3, 4, 5}  # adopted: now inflight rows
        with store.engine.connect() as conn:
            outcomes = dict(conn.execute(select(deliveries.c.subscription_id,
                                                deliveries.c.outcome)).all())
        report = build_report(store, "half")
    assert outcomes == {1: "sent", 2: INFLIGHT, 3: INFLIGHT, 4: INFLIGHT, 5: INFLIGHT}
    assert report["total"] == 1 and report["sent"] == 1


def test_a_child_waiting_for_its_next_range_ends_when_its_ledger_fails(e2e) -> None:
    """A child sender's feed thread waits for the parent's next id range, which only its
    progress loop reads off the link; when the ledger gives up that loop has ended, and
    asyncio joins the feed thread before the run returns. Before: it waited forever (the
    child never exited, the parent waited for it), instead of the child exiting 74.
    Here the answer is still on its way when the ledger gives up mid-range."""
    subs = e2e.subscribe(200)
    e2e.add_subscribers(subs)
    e2e.emu.add_fault("slow", rate=1.0, delay=0.05)  # the range takes seconds to send
    campaign = load_campaign(e2e.campaign("stuck"))
    signer = VapidSigner(load_private_key(e2e.key), "mailto:ops@shop.example.com")
    control = Control()
    asked: list[int] = []
    # the answer to its request never reaches the queue: nothing reads the link any more
    ranges = RangesFromParent((0, 200), lambda: asked.append(1), queue.SimpleQueue(), control)
    failed: list[BaseException] = []
    with Store.open(e2e.db) as store:
        info = store.start_campaign(campaign.name, campaign.model_dump(mode="json"))
        plan = Plan(campaign, info.id, ALLOWED,
                    DeliveryOptions(concurrency=2, ledger_retry_budget=0.2))

        def unwritable(*_: Any, **__: Any) -> None:
            raise StoreError("database is locked")

        store.record = unwritable  # type: ignore[method-assign]

        def run() -> None:
            try:
                _run_partition(store, plan, Renderer(campaign), signer, Stats(), None,
                               control, None, ranges=ranges)
            except BaseException as exc:  # noqa: BLE001 - checked below
                failed.append(exc)

        sender = threading.Thread(target=run, daemon=True)
        sender.start()
        sender.join(30)  # a bound on a hang, not a timing figure: it ends in ~1 s
        hung = sender.is_alive()
        control.press()  # let a hung sender go, so that this process can exit
        sender.join()
    assert not hung, "the sender still waited for a range nobody answers"
    assert asked == [1]  # it did ask for the next range while it sent the first
    assert len(failed) == 1 and isinstance(failed[0], StoreError)
