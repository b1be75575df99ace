"""Cron-safe operation end to end: prune, its history rule, reports after prune,
and real concurrent processes (send + send, prune during a send; a dead sender's lock:
test_store.py).

Every command runs as ``python -m pushcli`` in a subprocess against the
loopback push-service emulator (see ``tests/support.py``).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

from pushcli.store import Store
from tests.support import Workspace, run_side_by_side


def dump(db: Path) -> list[str]:
    """The whole store as SQL text: schema, subscribers, ledger, campaigns, locks."""
    conn = sqlite3.connect(db)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def rows(db: Path, table: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
    finally:
        conn.close()


def ids_by_endpoint(db: Path) -> dict[str, int]:
    with Store.open(db, create=False) as store:
        return {s.subscription.endpoint: s.id for s in store.iter_subscriptions(status="all")}


def endpoints(subs: list[dict]) -> set[str]:
    return {s["endpoint"] for s in subs}


def run_all(e2e: Workspace, *argvs: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run read-only commands side by side (saves start-up time on a small machine)."""
    jobs = {str(i): (argv, e2e.env()) for i, argv in enumerate(argvs)}
    done = run_side_by_side(jobs, cwd=e2e.dir, parallel=len(argvs), timeout=60)
    return [done[str(i)] for i in range(len(argvs))]


def json_ok(proc: subprocess.CompletedProcess[str], code: int = 0):
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


# --- prune: exactly the expired, dry run changes nothing, reports survive ----------------


def test_prune_deletes_exactly_the_expired_and_dry_run_changes_nothing(e2e) -> None:
    subs = e2e.subscribe(12)
    blocked = e2e.emu.create_subscriptions(
        3, e2e.server_key, base_url=e2e.emu.url.replace("127.0.0.1", "localhost"))
    e2e.import_subs(subs + blocked, "--allow-host", "localhost")
    gone = subs[:4]
    for s in gone:
        e2e.emu.expire(s["endpoint"])  # 410
    e2e.emu.add_fault(404, client_hash=subs[4]["endpoint"])
    expired = gone + [subs[4]]
    for s in subs[5:7]:
        e2e.emu.add_fault(403, client_hash=s["endpoint"])  # auth: the sender's problem
    e2e.emu.add_fault(400, client_hash=subs[7]["endpoint"])  # rejected
    code, report = e2e.send(e2e.campaign("weekly"))
    assert code == 1
    assert (report["expired"], report["auth"], report["rejected"], report["blocked"],
            report["sent"]) == (5, 2, 1, 3, 4)
    ids = ids_by_endpoint(e2e.db)
    expired_ids = sorted(ids[s["endpoint"]] for s in expired)

    before = dump(e2e.db)
    report_before = json_ok(e2e.pushcli("report", "weekly", "--json"))
    dry = json_ok(e2e.pushcli("prune", "--dry-run", "--json"))
    assert dry == {"dry_run": True, "count": 5, "deleted": 0, "ids": expired_ids}
    assert dump(e2e.db) == before, "prune --dry-run changed the store"

    subs_before = {r[0]: r for r in rows(e2e.db, "subscriptions")}
    ledger_before = rows(e2e.db, "deliveries")
    campaigns_before = rows(e2e.db, "campaigns")
    done = json_ok(e2e.pushcli("prune", "--json"))
    assert done["deleted"] == 5 and done["count"] == 5 and done["dry_run"] is False
    subs_after = {r[0]: r for r in rows(e2e.db, "subscriptions")}
    assert set(subs_after) == set(subs_before) - set(expired_ids)
    for sid, row in subs_after.items():  # survivors untouched, auth/blocked/rejected included
        assert row == subs_before[sid]
    assert set(ids_by_endpoint(e2e.db)) == endpoints(subs + blocked) - endpoints(expired)
    assert rows(e2e.db, "deliveries") == ledger_before, "prune must keep the ledger"
    assert rows(e2e.db, "campaigns") == campaigns_before
    assert rows(e2e.db, "locks") == []

    # the report reads the same after the prune
    assert json_ok(e2e.pushcli("report", "weekly", "--json")) == report_before
    # and a second prune has nothing left to do
    assert json_ok(e2e.pushcli("prune", "--json"))["deleted"] == 0


def test_prune_failed_campaigns_uses_the_last_n_campaigns_of_each_subscriber(e2e) -> None:
    subs = e2e.subscribe(11)
    groups = {
        "good": subs[0:2],  # sent, sent
        "fail_then_reject": subs[2:4],  # failed (500 x5), rejected -> pruned with N=2
        "reject_both": subs[4:6],  # rejected, rejected -> pruned with N=2
        "auth": subs[6:8],  # auth, auth -> never pruned
        "reject_then_auth": subs[8:9],  # rejected, auth -> not pruned
        "recovered": subs[9:10],  # rejected, sent -> not pruned
        "expired": subs[10:11],  # expired in campaign 1 -> always pruned
    }
    blocked = e2e.emu.create_subscriptions(
        2, e2e.server_key, base_url=e2e.emu.url.replace("127.0.0.1", "localhost"))
    e2e.import_subs(subs + blocked, "--allow-host", "localhost")

    def fault(status: int, *names: str) -> None:
        for name in names:
            for s in groups[name]:
                e2e.emu.add_fault(status, client_hash=s["endpoint"])

    fault(500, "fail_then_reject")
    fault(400, "reject_both", "reject_then_auth", "recovered")
    fault(403, "auth")
    e2e.emu.expire(groups["expired"][0]["endpoint"])
    code, first = e2e.send(e2e.campaign("c1"), "--timeout", "2")
    assert code == 1
    assert (first["sent"], first["failed"], first["rejected"], first["auth"], first["expired"],
            first["blocked"], first["total"]) == (2, 2, 4, 2, 1, 2, 13)

    late = e2e.subscribe(1)  # joins after campaign 1: only one campaign of history
    e2e.import_subs(late)
    groups["late"] = late
    e2e.emu.clear_faults()
    fault(400, "fail_then_reject", "reject_both", "late")
    fault(403, "auth", "reject_then_auth")
    code, second = e2e.send(e2e.campaign("c2"), "--timeout", "2")
    assert code == 1
    assert (second["sent"], second["failed"], second["rejected"], second["auth"],
            second["expired"], second["blocked"], second["total"]) == (3, 0, 5, 3, 0, 2, 13)

    ids = ids_by_endpoint(e2e.db)

    def ids_of(*names: str) -> list[int]:
        return sorted(ids[s["endpoint"]] for n in names for s in groups[n])

    def dry(n: int) -> list[str]:
        return ["prune", "--dry-run", "--failed-campaigns", str(n), "--json"]

    # (prune takes the "prune" lock even for --dry-run, so these run one at a time)
    three, one, two = (e2e.pushcli(*dry(n)) for n in (3, 1, 2))
    bad, *reports_before = run_all(e2e, ["prune", "--failed-campaigns", "0"],
                                   ["report", "c1", "--json"], ["report", "c2", "--json"])
    assert json_ok(three)["ids"] == ids_of("expired"), "nobody has three campaigns of history"
    assert json_ok(one)["ids"] == ids_of("expired", "fail_then_reject", "reject_both", "late")
    assert json_ok(two)["ids"] == ids_of("expired", "fail_then_reject", "reject_both")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr

    done = json_ok(e2e.pushcli("prune", "--failed-campaigns", "2", "--json"))
    assert done["deleted"] == done["count"] == 5
    kept = {n for n in groups if n not in ("expired", "fail_then_reject", "reject_both")}
    expected = {s["endpoint"] for n in kept for s in groups[n]} | endpoints(blocked)
    assert set(ids_by_endpoint(e2e.db)) == expected

    # reports and history read the same after the prune
    *reports_after, listed_proc = run_all(
        e2e, ["report", "c1", "--json"], ["report", "c2", "--json"],
        ["campaigns", "list", "--json"])
    for before, after in zip(reports_before, reports_after, strict=True):
        assert json_ok(after) == json_ok(before)
    listed = json_ok(listed_proc)
    assert [r["campaign"] for r in listed] == ["c1", "c2"]
    for row, doc in zip(listed, (first, second), strict=True):
        assert row["status"] == "finished" and row["runs"] == 1
        assert isinstance(row["started_at"], float) and isinstance(row["finished_at"], float)
        assert row["started_at"] <= row["finished_at"]
        for k in ("total", "sent", "expired", "rejected", "auth", "blocked", "failed"):
            assert row[k] == doc[k], k
    assert listed[0]["finished_at"] <= listed[1]["started_at"]


# --- real concurrent processes ----------------------------------------------------------


def test_two_sends_of_different_campaigns_at_once_both_deliver_exactly_once(e2e) -> None:
    subs = e2e.subscribe(30)
    e2e.import_subs(subs)
    e2e.emu.add_fault("slow", rate=1.0, delay=0.2)  # ~3 s per campaign at concurrency 2
    a = e2e.campaign("spring", body="Spring sale")
    b = e2e.campaign("autumn", body="Autumn sale")
    procs = [e2e.start("send", str(a), "--json", "--concurrency", "2")]
    e2e.wait_until("total_requests", 2)  # the first holds its lock
    procs.append(e2e.start("send", str(b), "--json", "--concurrency", "2"))
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs, strict=True):
        assert p.returncode == 0, stderr
        doc = json.loads(stdout)
        assert doc["sent"] == doc["total"] == 30 and doc["run"]["attempted"] == 30
    listed = {r["campaign"]: r for r in json_ok(e2e.pushcli("campaigns", "list", "--json"))}
    assert listed["spring"]["started_at"] < listed["autumn"]["finished_at"]
    assert listed["autumn"]["started_at"] < listed["spring"]["finished_at"], "did not overlap"
    for s in subs:
        bodies = sorted(json.loads(m)["notification"]["body"]
                        for m in e2e.emu.messages(s["endpoint"]))
        assert bodies == ["Autumn sale", "Spring sale"]
    assert e2e.emu.stats()["total_requests"] == 60
    assert rows(e2e.db, "locks") == []


def test_prune_during_a_send_waits_or_refuses_quickly(e2e) -> None:
    subs = e2e.subscribe(40)
    e2e.import_subs(subs)
    for s in subs[:3]:
        e2e.emu.expire(s["endpoint"])
    e2e.emu.add_fault("slow", rate=1.0, delay=0.25)  # ~4.6 s at concurrency 2
    send = e2e.start("send", str(e2e.campaign("slow")), "--json",
                         "--concurrency", "2")
    e2e.wait_until("total_requests", 4)

    # refuses quickly: within a 5 s deadline, and while the send still runs (below)
    refused = e2e.pushcli("prune", "--wait", "1", "--json", timeout=5)
    assert refused.returncode == 75, refused.stderr
    assert f"campaign:slow is locked by pid {send.pid}" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and refused.stdout == ""
    assert send.poll() is None, "the send ended too early for this test to mean anything"

    started = time.time()
    waiting = e2e.start("prune", "--wait", "60", "--json")
    stdout, stderr = send.communicate(timeout=60)
    assert send.returncode == 0, stderr
    assert json.loads(stdout)["expired"] == 3
    p_out, p_err = waiting.communicate(timeout=60)
    ended = time.time()
    assert waiting.returncode == 0, p_err
    assert json.loads(p_out)["deleted"] == 3
    finished_at = json_ok(e2e.pushcli("report", "slow", "--json"))["finished_at"]
    assert started < finished_at - 1, "prune was not started while the send ran"
    assert ended >= finished_at
    assert json_ok(e2e.pushcli("subscribers", "count", "--status", "all",
                               "--json"))["count"] == 37
    assert rows(e2e.db, "locks") == []


# --- prune never counts the sender's problems (issue 10, item 1) ---------------------------


def test_prune_after_two_campaigns_answered_403_to_everyone_deletes_nobody(e2e) -> None:
    """The auth stop holds the rest of the queue back: recorded so prune never counts it."""
    e2e.import_subs(e2e.subscribe(30))
    e2e.emu.add_fault(403)  # a push service refusing our key (wrong key, revoked, ...)
    for name in ("k1", "k2"):
        code, report = e2e.send(e2e.campaign(name), "--concurrency", "1")
        assert code == 1 and (report["auth"], report["failed"]) == (20, 10)
    done = json_ok(e2e.pushcli("prune", "--failed-campaigns", "2", "--json"))
    assert done["deleted"] == done["count"] == 0
    assert len(ids_by_endpoint(e2e.db)) == 30
    e2e.emu.clear_faults()  # key fixed: --retry-failed reaches the held-back ones
    code, report = e2e.send(e2e.campaign("k2"), "--retry-failed")
    assert (report["sent"], report["failed"], report["auth"]) == (10, 0, 20)


def test_prune_after_two_campaigns_of_campaign_wide_bad_topic_deletes_nobody(e2e) -> None:
    """Apple's 400 BadWebPushTopic to every subscriber is the sender's fault."""
    e2e.import_subs(e2e.subscribe(10))
    e2e.emu.add_fault(400, reason="BadWebPushTopic")
    for name in ("t1", "t2"):
        code, report = e2e.send(e2e.campaign(name))
        assert code == 1 and report["rejected"] == 10
    done = json_ok(e2e.pushcli("prune", "--failed-campaigns", "2", "--json"))
    assert done["deleted"] == done["count"] == 0
    assert len(ids_by_endpoint(e2e.db)) == 10
