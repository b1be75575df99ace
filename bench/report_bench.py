"""How long the results page takes for a large campaign, and how big it is.

Generates a ledger of N outcomes (default 1,000,000) straight into a scratch SQLite store
(no send: this measures the report, not delivery), then times, in the same run:
  - ``report --json``'s document (``build_report``), the peer every report pays for;
  - the HTML page (``htmlreport.render_campaign``: timeline and reasons GROUP BYs + render);
  - the per-subscriber CSV (``write_csv_rows``), the other report file.
and prints each time, the page's size and the ratios.

    .venv/bin/python bench/report_bench.py [--rows 1000000] [--hours 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pushcli.htmlreport import render_campaign  # noqa: E402
from pushcli.report import build_report, write_csv_rows  # noqa: E402
from pushcli.store import Store  # noqa: E402

SERVICES = ("fcm.googleapis.com", "updates.push.services.mozilla.com",
            "web.push.apple.com", "wns2-par02p.notify.windows.com")
START = 1_790_000_000.0


def generate(db: Path, rows: int, hours: float) -> int:
    """A finished campaign with ``rows`` outcomes spread over ``hours``: 88 % sent,
    6 % expired, the rest rejected/failed/auth with a few hundred distinct reasons."""
    with Store.open(db) as store:
        info = store.start_campaign("big", {"name": "big"})
        store.finish_campaign(info.id, "done", {"duration_s": hours * 3600,
                                                "rate_per_s": round(rows / (hours * 3600), 1)})
    span = hours * 3600

    def row(i: int) -> tuple[object, ...]:
        k = i % 100
        if k < 88:
            outcome, code, reason = "sent", 201, None
        elif k < 94:
            outcome, code, reason = "expired", 410, "HTTP 410"
        elif k < 97:
            outcome, code, reason = "failed", 503, f"HTTP 503 upstream {i % 300}"
        elif k < 99:
            outcome, code, reason = "rejected", 400, f"HTTP 400 {i % 40}"
        else:
            outcome, code, reason = "auth", 403, "HTTP 403 VAPID"
        return (info.id, i + 1, outcome, code, reason, SERVICES[i % 4], 1, int(i % 997 == 0),
                START + span * i / rows)

    with sqlite3.connect(db) as conn:
        for lo in range(0, rows, 100_000):
            conn.executemany(
                "INSERT INTO deliveries (campaign_id, subscription_id, outcome, status_code, "
                "reason, service, attempts, ambiguous, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (row(i) for i in range(lo, min(rows, lo + 100_000))))
    return info.id


def timed(fn: object) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()  # type: ignore[operator]
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--hours", type=float, default=2.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pushcli-report-bench-") as d:
        db = Path(d) / "big.db"
        gen_s, campaign_id = timed(lambda: generate(db, args.rows, args.hours))
        print(f"ledger: {args.rows:,} outcomes over {args.hours:g} h generated in {gen_s:.1f} s "
              f"(load {os.getloadavg()[0]:.1f})")
        with Store.open(db) as store:
            json_s, doc = timed(lambda: build_report(store, "big"))
            html_s, page = timed(lambda: render_campaign(store, doc))
            csv_s, _ = timed(lambda: write_csv_rows(store, campaign_id, io.StringIO()))
        assert isinstance(doc, dict) and isinstance(page, str)
        size = len(page.encode())
        print(f"report --json document: {json_s:.2f} s ({len(json.dumps(doc)):,} bytes)")
        print(f"HTML page:             {html_s:.2f} s ({size:,} bytes = {size / 1e6:.3f} MB, "
              f"{page.count('<rect'):,} SVG rects)")
        print(f"per-subscriber CSV:    {csv_s:.2f} s")
        print(f"ratios: page/json {html_s / json_s:.2f}x, page/csv {html_s / csv_s:.2f}x; "
              f"page under 1 MB: {size < 1_000_000}")


if __name__ == "__main__":
    main()
