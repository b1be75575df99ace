"""The results page (``report NAME --html``, ``send --report FILE.html``): its numbers are
``report --json``'s, it fetches nothing, it is private, and it stays small for a large ledger.
A real Chromium opens it from disk with every request blocked; PUSHCLI_SCREENSHOTS=1 also
writes docs/img/report.png, the README's picture.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from pushcli.htmlreport import render, render_campaign
from pushcli.messages import DeliveryRecord
from pushcli.pushservices import Outcome
from pushcli.report import build_report
from pushcli.store import Store, Timeline, campaign_runs, deliveries, events
from pushcli.store.charts import MAX_BUCKETS
from pushcli.subscriptions import make_subscription
from tests.support import Workspace, emulator, fresh_database, invoke, real_subscription
from tests.test_web import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parent.parent
BASE = 1_790_000_040.0  # a fixed minute boundary (UTC): the timeline is the same on every run

# (outcome, service, status, reason, ambiguous) per subscriber, recorded at BASE + minute
LEDGER: list[tuple[Outcome, str, int | None, str, bool, int]] = [
    *[(Outcome.SENT, "fcm.googleapis.com", 201, "", False, 0)] * 6,
    *[(Outcome.SENT, "updates.push.services.mozilla.com", 201, "", True, 1)] * 2,
    *[(Outcome.EXPIRED, "fcm.googleapis.com", 410, "HTTP 410", False, 1)] * 3,
    (Outcome.REJECTED, "fcm.googleapis.com", 400, "HTTP 400 bad payload", False, 1),
    (Outcome.AUTH, "updates.push.services.mozilla.com", 403, "HTTP 403 VAPID", False, 4),
    (Outcome.BLOCKED, "evil.example", None, "host not allowed", False, 4),
    *[(Outcome.FAILED, "fcm.googleapis.com", 503, "HTTP 503", False, 4)] * 2,
    (Outcome.UNCERTAIN, "fcm.googleapis.com", None, "in flight when stopped", False, 4),
    (Outcome.CAPPED, "fcm.googleapis.com", None, "frequency cap", False, 4),
]


class Tables(HTMLParser):
    """Each ``<table id=...>``'s body rows as lists of cell text, and ``data-field`` values."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.fields: dict[str, str] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._field: str | None = None
        self._in_body = False
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a["id"] or ""
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table is not None:
            self.tables[self._table].append([])
        elif tag == "td" and self._in_body:
            self._cell = []
        elif tag == "dd":
            self._field = a.get("data-field")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None
        elif tag == "dd":
            self._field = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._field is not None:
            self.fields[self._field] = self.fields.get(self._field, "") + data


def n(text: str) -> int:
    return int(text.replace(",", ""))


def make_ledger(path: Path | str, name: str = "spring") -> Store:
    """A store whose campaign ``name`` ended with every kind of outcome, over five
    minutes with a two-minute pause (minutes 2 and 3 are empty); an A/B test of
    variants "short" and "long" (alternating), 3 clicks, "short" the recorded winner;
    a run history of three scheduled runs (``RUNS``)."""
    store = Store.open(path)
    store.import_subscriptions(("f", make_subscription(real_subscription()))
                               for _ in range(len(LEDGER) + 2))
    info = store.start_campaign(name, {"name": name, "variants": [
        {"name": "short", "weight": 1}, {"name": "long", "weight": 1}]})
    ids = [s.id for b in store.pending(info.id) for s in b]
    store.record(info.id, [
        DeliveryRecord(sid, o, svc, code, reason, ambiguous=amb)
        for sid, (o, svc, code, reason, amb, _) in zip(ids, LEDGER, strict=False)])
    with store.engine.begin() as conn:
        for i, (sid, (*_, minute)) in enumerate(zip(ids, LEDGER, strict=False)):
            conn.execute(update(deliveries).where(deliveries.c.subscription_id == sid)
                         .values(updated_at=BASE + 60 * minute + 7,
                                 variant=("short", "long")[i % 2]))
        conn.execute(events.insert(), [
            {"campaign_id": info.id, "subscription_id": sid, "kind": "clicked",
             "at": BASE + 200, "received_at": BASE + 200} for sid in ids[:3]])
    store.set_winner(info.id, "short", BASE + 240, "short leads long by 16.67 points, "
                     "not significant at 95 %")
    store.finish_campaign(info.id, "done", {"duration_s": 300.0, "rate_per_s": 0.1,
                                            "retries": 3})
    with store.engine.begin() as conn:
        conn.execute(campaign_runs.insert(), [{"campaign_id": info.id, **r} for r in RUNS])
    return store


#: Three cron runs of a scheduled send (``campaign_runs`` rows): who was due, sent, waiting.
RUNS = [{"run": i + 1, "at": BASE + 3600 * i, "status": status, "scheduled": 1, "due": due,
         "attempted": due, "sent": sent, "waiting": waiting, "capped": capped, "missed": 0}
        for i, (status, due, sent, waiting, capped) in enumerate([
            ("waiting", 0, 0, 18, 0), ("waiting", 9, 8, 9, 1), ("done", 9, 0, 0, 0)])]


def check_page_against(page: str, doc: dict[str, Any]) -> Tables:
    """Every number of the page's tables against the report document."""
    t = Tables(page)
    outcomes = {row[0]: n(row[1]) for row in t.tables["outcomes"]}
    for key in ("sent", "expired", "rejected", "auth", "blocked", "failed"):
        assert outcomes[key] == doc[key], key
    for key in ("uncertain", "capped", "missed"):  # newer outcomes: shown when present
        assert outcomes.get(key, 0) == doc.get(key, 0), key
    assert outcomes["possible duplicates"] == doc["possible_duplicates"]
    assert n(t.fields["final outcomes"]) == doc["total"]
    assert t.fields["status"] == doc["status"] and n(t.fields["runs"]) == doc["runs"]
    services = t.tables["services"]
    assert [r[0] for r in services] == sorted(doc["by_service"])
    head = [o for o in outcomes if o != "possible duplicates"]
    for row in services:
        want = doc["by_service"][row[0]]
        assert [n(c) for c in row[1:]] == [want.get(o, 0) for o in head] + [want["total"]]
    # the timeline counts every final outcome once
    timeline = t.tables["timeline"]
    assert sum(n(r[-1]) for r in timeline) == doc["total"]
    variants = t.tables.get("variants", [])
    assert [r[0] for r in variants] == list(doc.get("variants") or {})
    for row in variants:
        want = doc["variants"][row[0]]
        assert [n(c) for c in row[1:8]] == [want[k] for k in (
            "sent", "expired", "rejected", "failed", "shown", "clicked", "closed")]
        assert row[8].startswith(f"{want['click_rate']:.2%} (")
    # the send-window chart's table: one row per run of the history
    history = doc.get("run_history") or []
    if any(r["scheduled"] for r in history):
        assert [[n(c) for c in (r[0], *r[3:])] for r in t.tables["runs"]] == [
            [r["run"], *(r[k] for k in ("due", "sent", "waiting", "capped", "missed"))]
            for r in history]
        assert [r[2] for r in t.tables["runs"]] == [r["status"] for r in history]
    else:
        assert "runs" not in t.tables
    return t


def html_and_json(tmp_path: Path, *command: str) -> tuple[Path, Any]:
    """``pushcli COMMAND --json --html FILE`` on :func:`make_ledger`'s store: (FILE, the JSON)."""
    db = tmp_path / "s.db"
    make_ledger(db).close()
    page_path = tmp_path / "page.html"
    result = invoke(*command, "--json", "--html", str(page_path), db=db)
    assert result.exit_code == 0, result.output
    return page_path, json.loads(result.stdout)


def test_page_numbers_are_report_json_numbers(tmp_path: Path) -> None:
    page_path, doc = html_and_json(tmp_path, "report", "spring")
    t = check_page_against(page_path.read_text(), doc)
    assert doc["expired"] == 3 and doc["uncertain"] == 1 and doc["capped"] == 1
    assert doc["possible_duplicates"] == 2
    # minutes 0..4 with the pause at 2 and 3 kept as empty rows
    assert [n(r[-1]) for r in t.tables["timeline"]] == [6, 6, 0, 0, 6]
    # failure reasons: commonest first, with status codes and subscriber counts
    reasons = t.tables["reasons"]
    assert reasons[0] == ["expired", "410", "HTTP 410", "3"]
    assert reasons[1] == ["failed", "503", "HTTP 503", "2"]
    assert sum(n(r[3]) for r in reasons) == doc["total"] - doc["sent"]
    assert n(dict(t.tables["schedule"])["capped"]) == doc["capped"]
    # ids 1..3 clicked: "short" got 1 and 3 (4 sent), "long" got 2 (4 sent)
    assert [(r[0], r[6]) for r in t.tables["variants"]] == [("short", "2"), ("long", "1")]
    assert doc["winner"]["variant"] == "short" and "Winner: <b>short</b>" in page_path.read_text()
    assert stat.S_IMODE(os.stat(page_path).st_mode) == 0o600


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store on each backend (the bucket arithmetic differs: CAST vs floor)."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return fresh_database(request.getfixturevalue("pg_admin"))


def test_aggregates_on_both_backends(backend: str) -> None:
    with make_ledger(backend) as store:
        info = store.get_campaign("spring")
        assert info is not None
        timeline = store.outcome_timeline(info.id)
        assert (timeline.start, timeline.width_s) == (BASE, 60)
        assert timeline.counts == [{"sent": 6}, {"sent": 2, "expired": 3, "rejected": 1}, {}, {},
                                   {"auth": 1, "blocked": 1, "failed": 2, "uncertain": 1,
                                    "capped": 1}]
        coarse = store.outcome_timeline(info.id, max_buckets=2)  # 5 minutes in 2 buckets
        assert coarse.width_s == 180 and [sum(c.values()) for c in coarse.counts] == [12, 6]
        reasons = store.failure_reasons(info.id, limit=3)
        assert [(r["outcome"], r["status_code"], r["subscribers"]) for r in reasons] == [
            ("expired", 410, 3), ("failed", 503, 2), ("auth", 403, 1)]


def test_page_fetches_nothing_and_escapes_input(tmp_path: Path) -> None:
    store = make_ledger(tmp_path / "s.db", name='<script>alert("x")</script>')
    with store:
        page = render_campaign(store, build_report(store, '<script>alert("x")</script>'),
                               now=BASE)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page
    assert not re.search(r"""(src|href|xlink:href)\s*=""", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert "@import" not in page and "url(" not in page
    assert "prefers-color-scheme:dark" in page and "@media print" in page
    # every chart has alt text
    assert page.count("<svg") == page.count("<title id=") == page.count("aria-labelledby")


def test_send_window_fields_are_shown_when_present() -> None:
    """A scheduled campaign's waiting, capped and missed counts (issue 13's fields)."""
    doc = {"campaign": "win", "status": "waiting", "runs": 2, "started_at": BASE,
           "finished_at": BASE + 60, "total": 7, "sent": 4, "expired": 0, "rejected": 0,
           "auth": 0, "blocked": 0, "failed": 0, "uncertain": 0, "capped": 2, "missed": 1,
           "pending": 30, "waiting": 30, "next_due_at": BASE + 3600,
           "waiting_by_reason": {"start": 0, "local_time": 25, "quiet_hours": 5},
           "possible_duplicates": 0, "by_service": {}}
    page = render(doc, Timeline(start=BASE, width_s=60, counts=[{"sent": 4, "capped": 2},
                                                                 {"missed": 1}]), [])
    t = Tables(page)
    assert dict(t.tables["schedule"]) == {"waiting: start": "0", "waiting: local_time": "25",
                                          "waiting: quiet_hours": "5", "capped": "2",
                                          "missed": "1"}
    outcomes = {row[0]: n(row[1]) for row in t.tables["outcomes"]}
    assert outcomes["capped"] == 2 and outcomes["missed"] == 1
    assert n(t.fields["audience"]) == 37
    assert "waiting 30; next due 2026-09-21 15:14:00 UTC" in page.replace("<b>", "").replace(
        "</b>", "")


def test_report_files_choose_html_by_extension(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    make_ledger(db).close()
    out = tmp_path / "r.HTML"
    result = invoke("report", "spring", "--report", str(out), "--json", db=db)
    assert result.exit_code == 0, result.output
    check_page_against(out.read_text(), json.loads(result.stdout))
    bad = invoke("report", "spring", "--report", str(tmp_path / "r.txt"), db=db)
    assert bad.exit_code == 2
    assert "must end in .json, .csv or .html" in bad.output and "Traceback" not in bad.output


def test_send_report_html_matches_its_json(tmp_path: Path) -> None:
    with emulator(seed=3) as emu:
        ws = Workspace.create(tmp_path, emu)
        subs = ws.subscribe(8)
        ws.add_subscribers(subs)
        for s in subs[:2]:
            emu.expire(s["endpoint"])
        emu.add_fault(400, client_hash=subs[2]["endpoint"])
        page, report = tmp_path / "send.html", tmp_path / "send.json"
        code, doc = ws.send(ws.campaign("e2e"), "--report", str(page), "--report", str(report))
    assert code == 1 and doc["sent"] == 5 and doc["expired"] == 2 and doc["rejected"] == 1
    check_page_against(page.read_text(), json.loads(report.read_text()))
    assert stat.S_IMODE(os.stat(page).st_mode) == 0o600


def test_scheduled_campaign_page_draws_each_run(tmp_path: Path) -> None:
    """Four cron runs of a send window (PUSHCLI_NOW): the run history in ``report --json``
    says who was due, sent, waiting and missed at each, and the page shows those numbers."""
    from datetime import datetime

    schedule = ('schedule:\n  start: 2026-12-01T00:00:00Z\n  end: 2026-12-02T12:00:00Z\n'
                '  local_time: "09:00"\n  window: 1h\n  timezone: Europe/Paris\n')
    moments = ["2026-12-01T03:00:00Z",  # Kolkata 08:30: nobody due
               "2026-12-01T03:45:00Z",  # Kolkata 09:15
               "2026-12-01T08:20:00Z",  # Paris 09:20
               "2026-12-02T12:00:00Z"]  # the schedule ends: Pago Pago missed
    with emulator(seed=5) as emu:
        ws = Workspace.create(tmp_path, emu)
        ws.add_subscribers([*ws.subscribe(2, timezone="Asia/Kolkata"),
                            *ws.subscribe(3, timezone="Europe/Paris"),
                            *ws.subscribe(2, timezone="Pacific/Pago_Pago")])
        campaign = ws.campaign("windows", extra=schedule)
        for moment in moments:
            code, _ = ws.send(campaign, PUSHCLI_NOW=moment)
            assert code == 0
        page_path = tmp_path / "windows.html"
        proc = ws.pushcli("report", "windows", "--json", "--html", str(page_path))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    history = doc["run_history"]
    assert [(r["run"], r["due"], r["sent"], r["waiting"], r["capped"], r["missed"], r["status"])
            for r in history] == [(1, 0, 0, 7, 0, 0, "waiting"), (2, 2, 2, 5, 0, 0, "waiting"),
                                  (3, 3, 3, 2, 0, 0, "waiting"), (4, 0, 0, 0, 0, 2, "finished")]
    assert [r["at"] for r in history] == [
        datetime.fromisoformat(m).timestamp() for m in moments]
    assert all(r["scheduled"] for r in history)
    assert doc["sent"] == 5 and doc["missed"] == 2
    page = page_path.read_text()
    t = check_page_against(page, doc)
    assert [r[1] for r in t.tables["runs"]] == ["2026-12-01 03:00", "2026-12-01 03:45",
                                                "2026-12-01 08:20", "2026-12-02 12:00"]
    assert "Send windows over 4 runs from 2026-12-01 03:00:00 UTC" in page


def test_run_history_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the newest MAX_RUN_HISTORY runs are kept (here 3, patched)."""
    from pushcli.store import ledger

    monkeypatch.setattr(ledger, "MAX_RUN_HISTORY", 3)
    with Store.open(tmp_path / "s.db") as store:
        for i in range(5):
            info = store.start_campaign("c", {"name": "c"})
            store.finish_campaign(info.id, "waiting", {}, {
                "at": BASE + i, "status": "waiting", "scheduled": True, "due": i,
                "attempted": i, "sent": i, "waiting": 10 - i, "capped": 0, "missed": 0})
        doc = build_report(store, "c")
    assert [r["run"] for r in doc["run_history"]] == [3, 4, 5]
    assert [r["waiting"] for r in doc["run_history"]] == [8, 7, 6]


def test_shared_senders_of_one_run_add_up(backend: str) -> None:
    """Two senders ending the same run number: their sends add up, due and waiting are the
    run's (each sender sees the whole queue), status is the last one's."""
    with Store.open(backend) as store:
        info = store.start_campaign("c", {"name": "c"})
        for sent, status in ((3, "running"), (4, "waiting")):
            store.finish_campaign(info.id, status, {}, {
                "at": BASE, "status": status, "scheduled": True, "due": 9, "attempted": sent,
                "sent": sent, "waiting": 5, "capped": 1, "missed": 0})
        (run,) = store.run_history(info.id)
    assert (run["due"], run["sent"], run["attempted"], run["waiting"], run["capped"],
            run["status"]) == (9, 7, 7, 5, 2, "waiting")


def test_campaigns_list_html(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    make_ledger(db).close()
    with Store.open(db) as store:  # a second campaign no event came back from
        quiet = store.start_campaign("quiet", {"name": "quiet"})
        store.record(quiet.id, [DeliveryRecord(1, Outcome.SENT, "fcm.googleapis.com", 201, "")])
        store.finish_campaign(quiet.id, "finished")
    out = tmp_path / "list.html"
    result = invoke("campaigns", "list", "--json", "--html", str(out), db=db)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    t = Tables(out.read_text())
    spring, quiet_row = t.tables["campaigns"]
    assert spring[0] == "spring" and n(spring[5]) == rows[0]["sent"] == 8
    assert n(spring[6]) == rows[0]["expired"]
    assert spring[7] == f"{100 * rows[0]['expired'] / rows[0]['total']:.1f} %"
    # click rate: 3 of the 8 sent clicked; "quiet" has no events, so no rate (not 0 %)
    assert rows[0]["clicked"] == 3 and rows[0]["click_rate"] == 0.375
    assert spring[9:] == ["3", "37.50%"]
    assert rows[1]["click_rate"] is None and quiet_row[9:] == ["0", "–"]
    assert "Click rate (clicked / sent) per campaign: spring 37.50 %" in out.read_text()
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600


def test_large_ledger_page_stays_small(tmp_path: Path) -> None:
    """200,000 outcomes over ten hours: bounded buckets and reasons, a page of kilobytes."""
    db = tmp_path / "big.db"
    store = Store.open(db)
    info = store.start_campaign("big", {"name": "big"})
    store.finish_campaign(info.id, "done")
    store.close()
    outcomes = ["sent"] * 7 + ["expired", "failed", "rejected"]
    rows = ((info.id, i, outcomes[i % 10], 201 if i % 10 < 7 else 400 + i % 37,
             None if i % 10 < 7 else f"reason {i % 53}", "fcm.googleapis.com", 1, 0,
             BASE + (i * 36_000 / 200_000)) for i in range(200_000))
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO deliveries (campaign_id, subscription_id, outcome, "
                         "status_code, reason, service, attempts, ambiguous, updated_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    with Store.open(db) as store:
        doc = build_report(store, "big")
        timeline = store.outcome_timeline(info.id)
        page = render_campaign(store, doc, now=BASE)
    assert doc["total"] == 200_000 and doc["sent"] == 140_000
    assert len(timeline.counts) <= MAX_BUCKETS + 1 and timeline.width_s == 180
    assert sum(sum(c.values()) for c in timeline.counts) == 200_000
    assert len(page.encode()) < 300_000
    t = check_page_against(page, doc)
    assert len(t.tables["reasons"]) == 10


# --- a real browser, offline -------------------------------------------------------------


def block_all_but(url: str, seen: list[str]) -> Any:
    """A route handler: the page's own file loads, any other request is noted and aborted."""
    def handle(route: Any) -> None:
        if route.request.url == url:
            route.continue_()
        else:
            seen.append(route.request.url)
            route.abort()
    return handle


@pytest.mark.browser
def test_chromium_opens_the_page_offline(tmp_path: Path) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"Chromium not found at {CHROMIUM} (apt-get install chromium)",
                    pytrace=False)
    from playwright.sync_api import sync_playwright

    db = tmp_path / "s.db"
    make_ledger(db).close()
    page_path = tmp_path / "page.html"
    assert invoke("report", "spring", "--html", str(page_path), db=db).exit_code == 0
    url = page_path.as_uri()
    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=CHROMIUM_ARGS, timeout=60_000)
        try:
            for scheme in ("light", "dark"):
                ctx = browser.new_context(viewport={"width": 1000, "height": 800},
                                          color_scheme=scheme)  # type: ignore[arg-type]
                ctx.route("**/*", block_all_but(url, requests))
                page = ctx.new_page()
                page.on("request", lambda r: requests.append(r.url) if r.url != url else None)
                page.on("console", lambda m: errors.append(m.text) if m.type == "error"
                        else None)
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(url, wait_until="load")
                assert page.locator("h1").inner_text() == "Campaign spring"
                # with the send-window (now and over the runs) and the variants charts
                assert page.locator("svg").count() == 7
                assert page.locator("#runs tbody tr").count() == len(RUNS)
                box = page.locator("svg").first.bounding_box()
                assert box is not None and box["width"] > 300 and box["height"] > 50
                background = page.evaluate("getComputedStyle(document.body).backgroundColor")
                assert background == ("rgb(255, 255, 255)" if scheme == "light"
                                      else "rgb(13, 17, 23)")
                shot = tmp_path / f"report-{scheme}.png"
                if scheme == "light" and os.environ.get("PUSHCLI_SCREENSHOTS") == "1":
                    shot = ROOT / "docs" / "img" / "report.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                ctx.close()
        finally:
            browser.close()
    assert requests == [] and errors == []
