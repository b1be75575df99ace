"""Send windows: the time to choose who is due, with 1,000,000 subscribers over 400 zones.

A scheduled send groups the pending audience by time zone in SQL (one GROUP BY),
asks ``schedule`` which zones are due now (a few hundred pure computations) and
lets SQL select the due zones' subscribers (``COALESCE(timezone, default) IN
(...)``). The peer, measured in the same run on the same store, is the
obvious alternative: read every pending subscriber into Python and decide per
row (with the zone's answer cached, so only the reading and the loop cost).

Rows are generated straight into a scratch SQLite store with executemany (an
import of a million validated records would take minutes on a loaded machine
and is not what is measured). ``--db postgresql://...`` measures PostgreSQL.

    .venv/bin/python bench/schedule_bench.py --rows 1000000 --zones 400
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import available_timezones

from pushcli.schedule import Schedule, parse_clock, parse_duration, plan_zones, zone_state
from pushcli.store import Store

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/schedule_bench.py`: the harness is in tests/
    sys.path.insert(0, str(ROOT))
from tests.support import p256dh_keys  # noqa: E402

#: 09:00 local, a 2 h window, at 08:30 UTC: the zones around UTC+0..+1 are due.
NOW = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
SCHEDULE = Schedule(start=datetime(2026, 12, 1, tzinfo=UTC), end=datetime(2026, 12, 3, tzinfo=UTC),
                    local_time=parse_clock("09:00"), window=parse_duration("2h"),
                    timezone="Europe/Paris")


def fill(store: Store, rows: int, zones: list[str]) -> None:
    """``rows`` active subscribers, round-robin over ``zones``; every seventh has no zone."""
    key = p256dh_keys(1)[0]
    auth = "A" * 21 + "w"
    batch: list[tuple[str, str, str, str | None]] = []
    raw = store.engine.raw_connection()
    try:
        cur = raw.cursor()
        sql = ("INSERT INTO subscriptions (endpoint, p256dh, auth, tags, attributes, status, "
               "created_at, updated_at, timezone) VALUES (%s, %s, %s, '[]', '{}', 'active', "
               "0, 0, %s)")
        if store.is_sqlite:
            sql = sql.replace("%s", "?")
        for i in range(rows):
            batch.append((f"https://fcm.googleapis.com/fcm/send/bench-{i}", key, auth,
                          None if i % 7 == 0 else zones[i % len(zones)]))
            if len(batch) == 50_000:
                cur.executemany(sql, batch)
                batch = []
        if batch:
            cur.executemany(sql, batch)
        raw.commit()
    finally:
        raw.close()


def choose_in_sql(store: Store, campaign_id: int) -> tuple[int, int]:
    """pushcli's way: zones in one GROUP BY, the rules per zone, the due ones counted in SQL
    with the same filter the send's batches use."""
    counts = store.pending_by_zone(campaign_id, default_zone=SCHEDULE.timezone)
    plan = plan_zones(SCHEDULE, sorted(counts), NOW)
    due = store.count_pending(campaign_id, zones=plan.due, default_zone=SCHEDULE.timezone)
    return len(counts), due


def choose_in_python(store: Store, campaign_id: int) -> int:
    """The peer: every pending row read into Python, decided there (zone answers cached)."""
    answers: dict[str, bool] = {}
    due = 0
    for batch in store.pending(campaign_id, batch_size=5000):
        for s in batch:
            z = s.subscription.timezone or SCHEDULE.timezone
            if z not in answers:
                answers[z] = zone_state(SCHEDULE, z, NOW).due
            due += answers[z]
    return due


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--zones", type=int, default=400)
    parser.add_argument("--db", help="a store URL (default: a scratch SQLite file)")
    parser.add_argument("--repeat", type=int, default=3, help="SQL rounds (best is printed)")
    args = parser.parse_args()
    zones = sorted(z for z in available_timezones() if "/" in z)[: args.zones]
    with tempfile.TemporaryDirectory(prefix="pushcli-schedule-bench-") as tmp:
        db = args.db or str(Path(tmp) / "bench.db")
        with Store.open(db) as store:
            t = time.perf_counter()
            fill(store, args.rows, zones)
            print(f"generated {args.rows:,} subscribers over {len(zones)} zones "
                  f"in {time.perf_counter() - t:.1f} s")
            campaign = store.start_campaign("bench", {})
            sql_times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                n_zones, due = choose_in_sql(store, campaign.id)
                sql_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            due_py = choose_in_python(store, campaign.id)
            py_time = time.perf_counter() - t
    assert due == due_py, (due, due_py)
    best = min(sql_times)
    print(f"due now: {due:,} of {args.rows:,} in {n_zones} zones")
    print(f"choose in SQL (GROUP BY zone + rules per zone + COUNT of due zones): "
          f"{best:.2f} s (rounds: {', '.join(f'{x:.2f}' for x in sql_times)}); goal < 2 s")
    print(f"peer, every row read and decided in Python: {py_time:.2f} s "
          f"({py_time / best:.1f}x the SQL way)")


if __name__ == "__main__":
    main()
