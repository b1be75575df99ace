"""Send windows end to end: cron-like runs at simulated moments (PUSHCLI_NOW, the tests-only
clock) send each subscriber exactly once inside its local window; frequency caps across
campaigns; the end of a schedule closes who still waits as missed."""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from datetime import UTC, datetime

import pytest

from pushcli.store import Store
from tests.support import Workspace, fresh_database

SCHEDULE = """\
schedule:
  start: 2026-12-01T00:00:00Z
  end: 2026-12-02T12:00:00Z
  local_time: "09:00"
  window: 1h
  timezone: Europe/Paris
"""

#: zone -> subscribers; None: no zone of their own (the schedule's Europe/Paris)
ZONES = {"Asia/Kolkata": 3, "Europe/Paris": 3, None: 2, "America/New_York": 3,
         "Pacific/Pago_Pago": 2}


def _received(e2e: Workspace, subs: list[dict]) -> Counter:
    return Counter({s["endpoint"]: len(e2e.emu.messages(s["endpoint"])) for s in subs})


def _subscribers(e2e: Workspace) -> dict[str | None, list[dict]]:
    by_zone = {}
    for zone, n in ZONES.items():
        by_zone[zone] = e2e.subscribe(n, **({"timezone": zone} if zone else {}))
    e2e.import_subs([s for subs in by_zone.values() for s in subs])
    return by_zone


def _run(e2e: Workspace, campaign, now: str, *args: str, db: str | None = None) -> dict:
    env = {"PUSHCLI_NOW": now, **({"PUSHCLI_DB": db} if db else {})}
    proc = e2e.pushcli("send", str(campaign), "--json", *args, **env)
    assert proc.returncode == 0, proc.stderr  # everything due was handled
    return json.loads(proc.stdout)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_runs_across_a_day_send_each_zone_once_inside_its_window(e2e: Workspace,
                                                                workers: str) -> None:
    zones = _subscribers(e2e)
    everyone = [s for subs in zones.values() for s in subs]
    campaign = e2e.campaign("windows", extra=SCHEDULE)
    # (now, the zones whose 09:00-10:00 contains it)
    runs = [("2026-12-01T03:00:00Z", []),  # Kolkata 08:30, Paris 04:00, New York 22:00
            ("2026-12-01T03:45:00Z", ["Asia/Kolkata"]),  # 09:15 in Kolkata (+05:30)
            ("2026-12-01T04:10:00Z", []),
            ("2026-12-01T08:20:00Z", ["Europe/Paris", None]),  # 09:20 in Paris
            ("2026-12-01T08:50:00Z", []),  # still inside Paris' window: nobody left there
            ("2026-12-01T14:05:00Z", ["America/New_York"])]  # 09:05 in New York
    expected: Counter = Counter()
    for now, due in runs:
        doc = _run(e2e, campaign, now, "--workers", workers)
        for zone in due:
            expected.update({s["endpoint"]: 1 for s in zones[zone]})
        assert _received(e2e, everyone) == expected + Counter(
            {s["endpoint"]: 0 for s in everyone}), now
        assert doc["sent"] == sum(expected.values())
        # Pago Pago (-11) opens at 20:00Z, after this day's last run: it always waits
        assert doc["waiting"] == len(everyone) - doc["sent"] > 0
        assert doc["status"] == "waiting" and doc["next_due_at"] is not None
    first = _run(e2e, campaign, "2026-12-01T03:00:00Z")  # a re-run sends nothing twice
    assert first["sent"] == 11 and first["waiting"] == 2
    assert first["waiting_by_reason"] == {"start": 0, "local_time": 2, "quiet_hours": 0}
    # Pago Pago's 09:00 is 20:00Z: due then, in the dry run's preview
    preview = json.loads(e2e.pushcli("send", str(campaign), "--dry-run", "--json", "--at",
                                     "2026-12-01T09:10:00-11:00").stdout)
    assert (preview["due"], preview["waiting"]) == (2, 0)
    # the schedule ends before the next run: who still waits is closed as missed
    last = _run(e2e, campaign, "2026-12-02T12:00:00Z")
    assert (last["missed"], last["waiting"], last["status"]) == (2, 0, "finished")
    assert _received(e2e, zones["Pacific/Pago_Pago"]) == Counter(
        {s["endpoint"]: 0 for s in zones["Pacific/Pago_Pago"]})
    listed = json.loads(e2e.pushcli("campaigns", "list", "--json").stdout)
    assert listed[0]["missed"] == 2 and listed[0]["waiting"] == 0


def test_dry_run_at_previews_due_and_waiting(e2e: Workspace) -> None:
    _subscribers(e2e)
    campaign = e2e.campaign("preview", extra=SCHEDULE)
    proc = e2e.pushcli("send", str(campaign), "--dry-run", "--json", "--at",
                       "2026-12-01T09:30:00+01:00")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["due"] == 5 and doc["waiting"] == 8  # Paris' 5 are in their window
    assert doc["waiting_by_reason"]["local_time"] == 8
    human = e2e.pushcli("send", str(campaign), "--dry-run", "--at", "2026-12-01T09:30:00+01:00")
    assert "5 due, 8 waiting (local_time 8)" in human.stdout, human.stdout
    bad = e2e.pushcli("send", str(campaign), "--at", "2026-12-01T09:30:00+01:00")
    assert bad.returncode == 2 and "--at works with --dry-run only" in bad.stderr
    assert e2e.emu.stats()["accepted"] == 0


def test_frequency_cap_counts_messages_of_other_campaigns(e2e: Workspace) -> None:
    first = e2e.subscribe(5)
    e2e.import_subs(first)
    assert _run(e2e, e2e.campaign("monday"), "2026-11-27T10:00:00Z")["sent"] == 5
    later = e2e.subscribe(3)
    e2e.import_subs(later)
    capped = e2e.campaign("tuesday", extra="audience:\n  frequency_cap: {max: 1, within: 7d}\n")
    # a run on the real clock (no PUSHCLI_NOW): the cap counts the ledger's sent rows
    proc = e2e.pushcli("send", str(capped), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["sent"], doc["capped"], doc["status"]) == (3, 5, "finished")
    assert _received(e2e, first + later) == Counter({s["endpoint"]: 1 for s in first + later})
    with Store.open(e2e.db) as store:
        reasons = {r["reason"] for r in store.delivery_rows(store.get_campaign("tuesday").id)
                   if r["outcome"] == "capped"}
    assert reasons == {"frequency cap: 1 messages sent in the last 7d (max 1)"}
    again = json.loads(e2e.pushcli("send", str(capped), "--json", "--retry-failed").stdout)
    assert again["capped"] == 5 and again["run"]["attempted"] == 0  # capped is final


def test_postgresql_shared_send_claims_only_due_subscribers(e2e: Workspace, pg_admin) -> None:
    db = fresh_database(pg_admin)
    by_zone = {z: e2e.subscribe(n, timezone=z) for z, n in
               (("Asia/Kolkata", 30), ("America/New_York", 20))}
    path = e2e.write_subs([s for subs in by_zone.values() for s in subs])
    assert e2e.pushcli("--db", db, "subscribers", "import", str(path)).returncode == 0
    campaign = e2e.campaign("shared-windows", extra=SCHEDULE)
    senders = [e2e.start("send", str(campaign), "--json", PUSHCLI_DB=db,
                         PUSHCLI_NOW="2026-12-01T03:45:00Z") for _ in range(2)]
    for p in senders:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert _received(e2e, by_zone["Asia/Kolkata"]) == Counter(
        {s["endpoint"]: 1 for s in by_zone["Asia/Kolkata"]})
    assert sum(_received(e2e, by_zone["America/New_York"]).values()) == 0
    doc = _run(e2e, campaign, "2026-12-01T14:30:00Z", db=db)
    assert (doc["sent"], doc["waiting"], doc["status"]) == (50, 0, "finished")
    assert _received(e2e, by_zone["America/New_York"]) == Counter(
        {s["endpoint"]: 1 for s in by_zone["America/New_York"]})


def test_frequency_cap_window_follows_the_runs_clock(e2e: Workspace) -> None:
    """Simulated runs years from the real clock: the cap counts what earlier runs sent by
    their own moments (the ledger stamps outcomes on the run's clock), not the real one."""
    subs = e2e.subscribe(4)
    e2e.import_subs(subs)
    assert _run(e2e, e2e.campaign("jan-7"), "2030-01-07T10:00:00Z")["sent"] == 4
    cap = "audience:\n  frequency_cap: {max: 1, within: 7d}\n"
    inside = _run(e2e, e2e.campaign("jan-10", extra=cap), "2030-01-10T10:00:00Z")
    assert (inside["sent"], inside["capped"]) == (0, 4)  # 3 days after jan-7's message
    after = _run(e2e, e2e.campaign("jan-15", extra=cap), "2030-01-15T10:00:00Z")
    assert (after["sent"], after["capped"]) == (4, 0)  # 8 days after: the cap lets it go
    with Store.open(e2e.db) as store:
        rows = list(store.delivery_rows(store.get_campaign("jan-15").id))
    assert {r["updated_at"] // 86400 for r in rows} == {
        datetime(2030, 1, 15, tzinfo=UTC).timestamp() // 86400}
    assert _received(e2e, subs) == Counter({s["endpoint"]: 2 for s in subs})


def test_report_csv_has_a_waiting_row_per_subscriber_still_waiting(e2e: Workspace) -> None:
    zones = _subscribers(e2e)
    campaign = e2e.campaign("csv-windows", extra=SCHEDULE)
    _run(e2e, campaign, "2026-12-01T03:45:00Z")  # only Kolkata's 09:15
    for command in (["report", "csv-windows"], ["send", str(campaign)]):
        out = e2e.dir / f"{command[0]}.csv"
        proc = e2e.pushcli(*command, "--report", str(out), PUSHCLI_NOW="2026-12-01T04:10:00Z")
        assert proc.returncode == 0, proc.stderr
        with out.open(newline="") as fh:
            rows = {r["endpoint"]: r for r in csv.DictReader(fh)}
        assert len(rows) == 13, command
        for zone, subs in zones.items():
            for s in subs:
                row = rows[s["endpoint"]]
                if zone == "Asia/Kolkata":
                    assert row["outcome"] == "sent"
                else:
                    assert (row["outcome"], row["reason"]) == (
                        "waiting", f"waiting for time zone {zone or 'Europe/Paris'}")
                    assert row["attempts"] == "0" and row["service"]
    # campaigns list: how many wait and when the next is due (Paris' 09:00 = 08:00Z)
    listed = json.loads(e2e.pushcli("campaigns", "list", "--json").stdout)[0]
    paris_9 = datetime(2026, 12, 1, 8, tzinfo=UTC)
    assert (listed["status"], listed["waiting"], listed["next_due_at"]) == (
        "waiting", 10, round(paris_9.timestamp()))
    lines = e2e.pushcli("campaigns", "list").stdout.splitlines()
    header, row = lines[0].split("\t"), lines[1].split("\t")
    assert row[header.index("waiting")] == "10"
    assert row[header.index("next due")] == time.strftime(
        "%Y-%m-%d %H:%M", time.localtime(paris_9.timestamp()))
    summary = e2e.pushcli("report", "csv-windows").stdout  # the summary table
    assert "waiting (local_time 10; next due " in summary, summary
    _run(e2e, campaign, "2026-12-02T12:00:00Z")  # the end: everyone left is missed
    assert "missed (schedule ended)" in e2e.pushcli("report", "csv-windows").stdout
    out = e2e.dir / "final.csv"
    assert e2e.pushcli("report", "csv-windows", "--report", str(out)).returncode == 0
    with out.open(newline="") as fh:
        outcomes = Counter(r["outcome"] for r in csv.DictReader(fh))
    assert outcomes == {"sent": 3, "missed": 10}
