"""Several senders on one campaign, coordinated by PostgreSQL (SKIP LOCKED + leases)."""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter

from sqlalchemy import select

from pushcli.store import Store, deliveries
from tests.support import fresh_database

N = 20_000


def _popen(e2e, db: str, campaign, *args: str) -> subprocess.Popen:
    return e2e.start("send", str(campaign), "--json", *args, PUSHCLI_DB=db)


def _received(e2e, subs) -> Counter:
    return Counter({s["endpoint"]: len(e2e.emu.messages(s["endpoint"])) for s in subs})


def _ledger(db: str) -> Counter:
    with Store.open(db) as store, store.engine.connect() as conn:
        return Counter(r[0] for r in conn.execute(select(deliveries.c.outcome)))


def test_three_senders_share_one_campaign_exactly_once(e2e, pg_admin) -> None:
    db = fresh_database(pg_admin)
    subs = e2e.subscribe(N)
    path = e2e.dir / "subs.ndjson"
    path.write_text("".join(json.dumps(s) + "\n" for s in subs))
    imported = e2e.pushcli("--db", db, "subscribers", "import", str(path), "--json")
    assert json.loads(imported.stdout)["added"] == N, imported.stderr
    campaign = e2e.campaign("shared")
    senders = [_popen(e2e, db, campaign, "--concurrency", "16") for _ in range(3)]
    reports = []
    for p in senders:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        reports.append(json.loads(out))
    received = _received(e2e, subs)
    assert set(received.values()) == {1}, "every subscriber exactly one message"
    # each sender did a share of the work, and each report merges all senders
    attempted = [r["run"]["attempted"] for r in reports]
    assert sum(attempted) == N and all(a > 0 for a in attempted), attempted
    assert {r["sent"] for r in reports} >= {N}
    final = json.loads(e2e.pushcli("--db", db, "report", "shared", "--json").stdout)
    assert final["sent"] == N and final["total"] == N
    assert _ledger(db) == Counter({"sent": N})


def test_a_killed_senders_leased_work_is_finished_by_the_others(e2e, pg_admin) -> None:
    db = fresh_database(pg_admin)
    subs = e2e.subscribe(N // 4)
    path = e2e.dir / "subs.ndjson"
    path.write_text("".join(json.dumps(s) + "\n" for s in subs))
    assert e2e.pushcli("--db", db, "subscribers", "import", str(path)).returncode == 0
    e2e.emu.add_fault("slow", rate=1.0, delay=0.02)
    campaign = e2e.campaign("killed")
    # one process each: the victim's leases carry its own pid
    lease = ("--lease", "3", "--concurrency", "8", "--workers", "1")
    victim = _popen(e2e, db, campaign, *lease)
    e2e.wait_until("accepted", 300)
    others = [_popen(e2e, db, campaign, *lease) for _ in range(2)]
    e2e.wait_until("accepted", 1500)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    with Store.open(db) as store, store.engine.connect() as conn:
        held = conn.execute(select(deliveries.c.subscription_id).where(
            # queued or marked in flight (intent log): either way it must go to the others
            deliveries.c.outcome.in_(("pending", "inflight")),
            deliveries.c.lease_owner.is_not(None),
            deliveries.c.lease_owner.like(f"%:{victim.pid}"))).all()
    assert held, "the victim held leased work when it died"
    for p in others:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    assert _ledger(db) == Counter({"sent": N // 4})
    received = _received(e2e, subs)
    assert min(received.values()) == 1
    duplicates = sum(n - 1 for n in received.values())
    # only what the victim had in flight (8) or sent but not yet recorded (one flush)
    assert duplicates <= 8 + 500, duplicates
