"""Long scenarios shared by the e2e tests and the stress scripts (bigger counts).

``crash_cycle``: kill -9 a send, check the store, re-run to the end, count
duplicates (tests/e2e/test_crash_resume.py, stress/crash_resume.py).
``run_matrix``: a send against a push service that misbehaves in every documented
way at once, then ``--retry-failed`` (tests/e2e/test_fault_matrix.py,
stress/fault_matrix.py). Both take a ``tests.support.Workspace``.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from pushcli.campaign import load_campaign
from pushcli.store import Store, deliveries, subscriptions
from tests.support import Workspace, wait_for_group_exit

# --- crash and resume -----------------------------------------------------------------------

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


def kill_at(proc: subprocess.Popen[str], after: float) -> None:
    """SIGKILL ``proc`` ``after`` seconds after it was started, and reap it.

    The kill moment is the experiment's variable (before the first request, mid-run,
    near the end), so this is a deadline on a process, not a wait for something.
    """
    try:
        proc.wait(timeout=after)  # returns early only if the send already ended
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for_group_exit(proc.pid)  # orphaned sender processes stop and write what they know


def _ledger(db: Any) -> dict[int, str]:
    with Store.open(db) as store, store.engine.connect() as conn:
        return {r[0]: r[1] for r in conn.execute(
            select(deliveries.c.subscription_id, deliveries.c.outcome))}


def crash_cycle(e2e: Workspace, subs: list[dict[str, Any]], campaign: Any, kill_after: float,
                *, delay: float = 0.02, concurrency: int = CONCURRENCY,
                extra: tuple[str, ...] = (), skip: bool = False) -> CrashFigures:
    """Start a send, SIGKILL it after ``kill_after`` s, check the store, re-run to the end.

    Every duplicate is counted: duplicates <= possible_duplicates <= duplicates + the
    intent window; with ``skip`` (``--on-uncertain skip``) there are none at all.
    """
    n = len(subs)
    e2e.emu.add_fault("slow", rate=1.0, delay=delay)
    accepted_before = e2e.emu.stats()["accepted"]
    proc = e2e.start("send", str(campaign), "-q", "--concurrency", str(concurrency), *extra,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_at(proc, kill_after)
    accepted = e2e.emu.stats()["accepted"] - accepted_before
    with Store.open(e2e.db) as store:
        assert store.integrity_ok()
        by_id = {s.id: s.subscription.endpoint for s in store.iter_subscriptions()}
    at_kill = _ledger(e2e.db)
    recorded_ids = {sid for sid, o in at_kill.items() if o == "sent"}
    with Store.open(e2e.db) as store:  # the intent log: who may have it, unrecorded
        info = store.get_campaign(load_campaign(campaign).name)
        in_flight = store.in_flight(info.id) if info is not None else set()
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



# --- the fault matrix ---------------------------------------------------------------------

#: (kind, emulator fault spec or None, expected final outcome in the first run)
#: Counts are per 1,000 subscribers. 403s and transport faults are spread
#: thin so neither the 20-in-a-row auth stop nor the 50-in-a-row circuit trips.
KINDS: list[tuple[str, int, dict[str, Any] | None, str]] = [
    ("ok", 0, None, "sent"),  # the rest
    ("gone410", 15, {"status": 410}, "expired"),
    ("gone404", 10, {"status": 404}, "expired"),
    ("expired", 10, "expire", "expired"),  # emulator marks it expired: 410 from its own logic
    ("toolarge413", 5, {"status": 413}, "rejected"),
    ("bad400", 5, {"status": 400}, "rejected"),
    ("auth403", 5, {"status": 403}, "auth"),
    ("throttle429", 3, {"status": 429, "retry_after": 1, "times": 1}, "sent"),
    ("wns406", 2, {"status": 406, "retry_after": 1, "times": 1}, "sent"),
    ("unavail503", 10, {"status": 503, "times": 2}, "sent"),
    ("err500once", 10, {"status": 500, "times": 1}, "sent"),
    ("err500always", 5, {"status": 500}, "failed"),
    ("slow", 5, {"status": "slow", "delay": 2, "times": 1}, "sent"),
    ("drop", 8, {"status": "drop", "times": 1}, "sent"),
    ("drop_after_accept", 8, {"status": "drop_after_accept", "times": 1}, "sent"),
    ("created201", 5, {"status": 201, "times": 1}, "sent"),  # accepted, not stored; no retry
]
AMBIGUOUS_KINDS = {"slow", "drop", "drop_after_accept"}
DUPLICATING_KINDS = {"slow", "drop_after_accept"}  # stored, then the client saw no answer


@dataclass
class MatrixResult:
    n: int
    kinds: dict[str, str]  # endpoint -> kind
    ids: dict[str, int]  # endpoint -> subscription id
    reports: list[dict[str, Any]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)
    unscripted_ambiguous: int = 0

    def figures(self) -> dict[str, Any]:
        first, last = self.reports[0], self.reports[-1]
        return {
            "subscribers": self.n,
            "first_run_s": round(self.seconds[0], 2),
            "first_run_rate_per_s": round(self.n / self.seconds[0], 1),
            "retry_run_s": round(self.seconds[-1], 2),
            "first": {k: first[k] for k in ("sent", "expired", "rejected", "auth", "blocked",
                                            "failed", "retried_after_ambiguous")},
            "first_retries": first["run"]["retries"],
            # latency p50/p95 and the concurrency the limit reached, per push service
            "first_by_service": first["run"]["by_service"],
            "final": {k: last[k] for k in ("sent", "expired", "rejected", "auth", "failed",
                                           "retried_after_ambiguous")},
            "duplicates": sum(self.duplicates.values()),
            "duplicated_subscribers": len(self.duplicates),
            "unscripted_ambiguous": self.unscripted_ambiguous,
        }


def assign_kinds(n: int, rng: random.Random) -> list[str]:
    """Spread fault kinds evenly (shuffled) over n subscribers."""
    kinds: list[str] = []
    for kind, per_1000, _, _ in KINDS[1:]:
        kinds.extend([kind] * max(1, n * per_1000 // 1000))
    kinds.extend(["ok"] * (n - len(kinds)))
    rng.shuffle(kinds)
    # no long run of 403s or of transport faults next to each other
    return kinds


def ledger_rows(db: Any) -> list[tuple[int, str, int, int, int | None]]:
    with Store.open(db) as store, store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(
            deliveries.c.subscription_id, deliveries.c.outcome, deliveries.c.attempts,
            deliveries.c.ambiguous, deliveries.c.status_code).order_by(
                deliveries.c.subscription_id))]


def send(e2e: Workspace, campaign: Any, *args: str, timeout: float = 600,
         **env: str) -> tuple[int, dict[str, Any]]:
    """``Workspace.send`` with a longer subprocess timeout (20,000 subscribers in stress)."""
    proc = e2e.pushcli("send", str(campaign), "--json", *args, timeout=timeout, **env)
    assert proc.returncode in (0, 1), f"{proc.returncode}: {proc.stderr[-2000:]}"
    return proc.returncode, json.loads(proc.stdout)


def run_matrix(e2e: Workspace, n: int, *, seed: int = 7, concurrency: int | None = 64,
               max_unscripted: int = 3) -> MatrixResult:
    """Import n subscribers, script the faults, send, check, retry-failed, check.

    ``concurrency`` pins the requests in flight (``--concurrency``); None sends with
    pushcli's defaults, the adaptive limit growing and shrinking on the faults."""
    rng = random.Random(seed)
    subs = e2e.subscribe(n)
    e2e.import_subs(subs)
    kinds = assign_kinds(n, rng)
    by_endpoint = {s["endpoint"]: k for s, k in zip(subs, kinds, strict=True)}
    spec = {k: f for k, _, f, _ in KINDS}
    for s, kind in zip(subs, kinds, strict=True):
        fault = spec[kind]
        if fault == "expire":
            e2e.emu.expire(s["endpoint"])
        elif fault is not None:
            e2e.emu.add_fault(client_hash=s["endpoint"], **fault)
    # random transient errors on top, tried after the per-subscriber rules
    e2e.emu.add_fault(503, rate=0.02)
    e2e.emu.add_fault(502, rate=0.01)
    with Store.open(e2e.db) as store:
        ids = {s.subscription.endpoint: s.id for s in store.iter_subscriptions()}
    result = MatrixResult(n, by_endpoint, ids)
    campaign = e2e.campaign("matrix")

    started = time.monotonic()
    pin = () if concurrency is None else ("--concurrency", str(concurrency))
    code, report = send(e2e, campaign, "--timeout", "1", *pin)
    result.seconds.append(time.monotonic() - started)
    result.reports.append(report)
    assert code == 1  # rejected, auth and failed ones exist

    check_consistency(e2e, result, report, first_run=True, max_unscripted=max_unscripted)

    # the permanent 500s recover; --retry-failed delivers them and touches nobody else
    e2e.emu.clear_faults()
    before = e2e.emu.stats()["total_requests"]
    started = time.monotonic()
    code, report = send(e2e, campaign, "--timeout", "5", "--retry-failed")
    result.seconds.append(time.monotonic() - started)
    result.reports.append(report)
    n_failed = result.reports[0]["failed"]
    assert report["run"]["attempted"] == n_failed
    assert e2e.emu.stats()["total_requests"] - before == n_failed
    assert report["failed"] == 0
    check_consistency(e2e, result, report, first_run=False,
                      max_unscripted=max_unscripted)
    return result


def check_consistency(e2e: Workspace, result: MatrixResult, report: dict[str, Any],
                      *, first_run: bool, max_unscripted: int = 3) -> None:
    """Ledger == report == emulator tally; duplicates only where admitted.

    ``max_unscripted``: ambiguous failures nobody scripted (a request slower than
    ``--timeout`` because the machine is saturated) tolerated before failing.
    """
    n = result.n
    rows = ledger_rows(e2e.db)
    # exactly one ledger row per subscriber
    assert len(rows) == n and len({r[0] for r in rows}) == n
    with Store.open(e2e.db) as store, store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(subscriptions)).scalar() == n
    ledger_counts = Counter(r[1] for r in rows)
    report_counts = {k: report[k] for k in ("sent", "expired", "rejected", "auth", "blocked",
                                            "failed") if report[k]}
    assert dict(ledger_counts) == report_counts
    assert report["total"] == n
    assert report["by_service"]["127.0.0.1"]["total"] == n

    outcome_by_id = {r[0]: r for r in rows}
    expected = {k: o for k, _, _, o in KINDS}
    stats = e2e.emu.stats(per_subscription=True)["per_subscription"]
    mismatched = []
    duplicates: dict[str, int] = {}
    ambiguous_ids = set()
    for endpoint, kind in result.kinds.items():
        sid = result.ids[endpoint]
        _, outcome, attempts, ambiguous, status = outcome_by_id[sid]
        want = expected[kind] if first_run else ("sent" if kind == "err500always"
                                                 else expected[kind])
        if outcome != want:
            mismatched.append((kind, outcome, status))
        emu_id = e2e.emu.id_for(endpoint)
        per = stats.get(emu_id, {"requests": 0, "accepted": 0})
        # the emulator's tally agrees with the ledger
        if outcome == "sent" and kind != "created201":
            assert per["accepted"] >= 1, (kind, per)
        if outcome != "sent":
            assert per["accepted"] == 0, (kind, outcome, per)
        if per["accepted"] > 1:
            duplicates[endpoint] = per["accepted"] - 1
        if ambiguous:
            ambiguous_ids.add(sid)
        if kind in ("gone410", "gone404", "expired", "toolarge413", "bad400", "auth403"):
            # final at the first answer; a second request only after a timeout (load)
            assert per["requests"] == attempts, (kind, per, attempts)
            assert attempts == 1 or ambiguous, (kind, per, attempts)
        if kind == "err500always" and first_run:
            assert per["requests"] == 5 and attempts == 5, (kind, per)
        if kind in ("throttle429", "wns406"):
            times = per["request_times"]
            assert len(times) >= 2 and times[1] - times[0] >= 0.95, (kind, times)
    assert not mismatched, Counter(mismatched).most_common(10)

    # duplicates: only where the engine saw an ambiguous failure, and all admitted
    for endpoint in duplicates:
        assert result.ids[endpoint] in ambiguous_ids, result.kinds[endpoint]
    assert all(v == 1 for v in duplicates.values()), duplicates
    scripted_count = Counter(result.kinds.values())
    dup_kinds = Counter(result.kinds[e] for e in duplicates)
    # drop_after_accept and slow-beyond-timeout each stored one message the client never
    # heard about: exactly one duplicate per such subscriber
    assert dup_kinds["drop_after_accept"] == scripted_count["drop_after_accept"]
    assert dup_kinds["slow"] == scripted_count["slow"]
    # the report admits every ambiguous retry: the duplicates plus plain drops, which the
    # sender cannot tell apart from drop_after_accept (the connection died either way)
    scripted = {result.ids[e] for e, k in result.kinds.items() if k in AMBIGUOUS_KINDS}
    unscripted = ambiguous_ids - scripted  # genuine timeouts under load, if any
    result.unscripted_ambiguous = len(unscripted)
    assert len(unscripted) <= max_unscripted, len(unscripted)
    n_ambiguous_sent = sum(1 for r in rows if r[3] and r[1] == "sent")
    assert report["retried_after_ambiguous"] == n_ambiguous_sent
    unscripted_sent = sum(1 for r in rows if r[0] in unscripted and r[1] == "sent")
    assert n_ambiguous_sent == len(scripted) + unscripted_sent
    scripted_dups = sum(1 for e in duplicates if result.ids[e] in scripted)
    assert scripted_dups == len(scripted) - scripted_count["drop"]
    assert len(duplicates) <= n_ambiguous_sent
    result.duplicates = duplicates
