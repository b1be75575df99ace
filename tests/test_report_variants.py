"""The results side of A/B tests: ``report --json``'s ``holdout``, ``variants``, ``engagement``
and ``winner`` from a store filled directly, the summary's variant table, the results page's
variant section (escaped: variant names and reasons are operator text)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from pushcli.abtest import wilson_interval
from pushcli.console import summary_tables
from pushcli.htmlreport import render_campaign
from pushcli.report import build_report
from pushcli.store import Store, deliveries, events
from tests.support import invoke
from tests.test_html_report import Tables, check_page_against, n

HOSTILE = '<img src=x onerror="alert(1)">'


def fill(store: Store, *, variants: bool = True) -> int:
    """Campaign ``ab``: variant b (file order first) 200 sent, 30 clicked; variant a 180 sent,
    2 expired, 1 failed, 9 clicked; ``HOSTILE`` 20 sent; 40 held out. Returns its id."""
    spec = {"name": "ab", "variants": [{"name": "b", "weight": 1}, {"name": "a", "weight": 1},
                                       {"name": HOSTILE, "weight": 1},
                                       {"name": "unsent", "weight": 1}]} if variants else {}
    cid = store.start_campaign("ab", spec).id
    plan = [("b", "sent", 200, 30), ("a", "sent", 180, 9), ("a", "expired", 2, 0),
            ("a", "failed", 1, 0), (HOSTILE, "sent", 20, 1), (None, "holdout", 40, 0)]
    rows, evs, sid = [], [], 0
    for variant, outcome, count, clickers in plan:
        for i in range(count):
            sid += 1
            rows.append({"campaign_id": cid, "subscription_id": sid, "outcome": outcome,
                         "service": "fcm", "updated_at": 1.0,
                         "variant": variant if variants else None})
            kinds = ["shown", "clicked"] if i < clickers else ["shown", "closed"] if i % 2 else []
            evs += [{"campaign_id": cid, "subscription_id": sid, "kind": k, "action": None,
                     "at": 2.0, "received_at": 2.0} for k in kinds]
    with store.engine.begin() as conn:
        conn.execute(deliveries.insert(), rows)
        conn.execute(events.insert(), evs)
    store.finish_campaign(cid, "done")
    return cid


@pytest.fixture
def ab(tmp_path: Path) -> tuple[Path, int]:
    db = tmp_path / "s.db"
    with Store.open(db) as store:
        cid = fill(store)
        store.set_winner(cid, "b", 1_790_000_000.0, "b leads a by 10.00 points <significant>")
    return db, cid


def test_report_json_per_variant(ab: tuple[Path, int]) -> None:
    db, _ = ab
    result = invoke("report", "ab", "--json", db=db)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["holdout"] == 40 and doc["sent"] == 400 and doc["total"] == 443
    assert list(doc["variants"]) == ["b", "a", HOSTILE, "unsent"]  # the campaign file's order
    b, a = doc["variants"]["b"], doc["variants"]["a"]
    assert {k: b[k] for k in ("sent", "expired", "failed", "clicked")} == {
        "sent": 200, "expired": 0, "failed": 0, "clicked": 30}
    assert {k: a[k] for k in ("sent", "expired", "failed", "rejected", "clicked")} == {
        "sent": 180, "expired": 2, "failed": 1, "rejected": 0, "clicked": 9}
    # shown: every clicker plus every other non-clicker; closed: the latter
    assert (b["shown"], b["closed"]) == (30 + 85, 85)
    assert b["click_rate"] == 0.15 and a["click_rate"] == 0.05
    assert b["click_rate_ci95"] == pytest.approx(list(wilson_interval(30, 200)), abs=1e-6)
    assert doc["variants"]["unsent"] == {
        "sent": 0, "expired": 0, "rejected": 0, "failed": 0, "shown": 0, "clicked": 0,
        "closed": 0, "click_rate": 0.0, "click_rate_ci95": [0.0, 1.0]}
    assert doc["engagement"]["clicked"] == 40 and doc["engagement"]["sent"] == 400
    assert doc["winner"] == {"variant": "b", "decided_at": 1_790_000_000.0,
                             "reason": "b leads a by 10.00 points <significant>"}


def test_campaign_without_variants_has_empty_variants_and_engagement_totals(
        tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        fill(store, variants=False)
        doc = build_report(store, "ab")
        page = render_campaign(store, doc, now=1_790_000_100.0)
    assert doc["variants"] == {} and "winner" not in doc
    assert doc["engagement"]["sent"] == 400 and doc["engagement"]["clicked"] == 40
    assert doc["engagement"]["click_rate"] == 0.1
    text = render_text(doc)
    assert "Engagement" in text and "10.00%" in text and "Variants" not in text
    (row,) = Tables(page).tables["engagement"]
    # shown: clickers and every other non-clicker of the sent rows (115 + 95 + 11)
    assert [n(c) for c in row[:4]] == [400, 221, 40, 181] and row[4].startswith("10.00% (")
    assert "variants-t" not in page


def render_text(doc: dict) -> str:
    console = Console(record=True, width=200, color_system=None)
    for table in summary_tables(doc):
        console.print(table)
    return console.export_text()


def test_summary_shows_the_variant_table_and_the_winner(ab: tuple[Path, int]) -> None:
    db, _ = ab
    with Store.open(db) as store:
        text = render_text(build_report(store, "ab"))
    lines = {line.split("│")[1].strip(): line for line in text.splitlines()
             if line.count("│") > 5}
    assert "holdout (control group, not sent)" in text
    b = lines["b (winner)"]
    lo, hi = wilson_interval(30, 200)
    assert "200" in b and "30" in b and f"15.00% ({lo:.2%}–{hi:.2%})" in b
    assert "5.00%" in lines["a"]
    assert HOSTILE in text  # printed as text, not read as rich markup
    assert "winner: b (b leads a by 10.00 points <significant>)" in text


def test_page_variant_section_matches_json_and_escapes(ab: tuple[Path, int]) -> None:
    db, _ = ab
    with Store.open(db) as store:
        doc = build_report(store, "ab")
        page = render_campaign(store, doc, now=1_790_000_100.0)
    t = check_page_against(page, doc)
    rows = {r[0]: r for r in t.tables["variants"]}
    assert list(rows) == list(doc["variants"])
    for name, figures in doc["variants"].items():
        cells = rows[name]
        assert [n(c) for c in cells[1:8]] == [figures[k] for k in (
            "sent", "expired", "rejected", "failed", "shown", "clicked", "closed")]
        lo, hi = figures["click_rate_ci95"]
        assert cells[8] == f"{figures['click_rate']:.2%} ({lo:.2%}–{hi:.2%})"
    assert "<img" not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert "&lt;significant&gt;" in page and "<significant>" not in page
    assert 'id="winner">Winner: <b>b</b>' in page
    assert "<b>40</b> subscribers" in page  # the holdout
    # one bar and one whisker per variant sent to anyone ("unsent" is only in the table)
    assert page.count('class="o-click"') == 3 and page.count('class="ci"') == 9
    assert "b 15.00% (" in page
