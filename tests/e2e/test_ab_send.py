"""A/B tests end to end against the emulator: variants, holdout, UTM, tokens, the winner.

The emulator decrypts every body, so what is checked here is what a browser gets.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from pushcli.campaign import load_campaign
from pushcli.campaign.variants import Assigner
from pushcli.store import Store, deliveries
from pushcli.tokens import read_token

AB = """\
variants:
  - {name: a, weight: 50, notification: {title: "Title A"}}
  - {name: b, weight: 50, notification: {title: "Title B"}}
tracking: {events_url: "https://shop.example.com/push-events"}
"""


def _ledger(db) -> dict[int, tuple[str, str | None]]:
    with Store.open(db) as store, store.engine.connect() as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute(
            select(deliveries.c.subscription_id, deliveries.c.outcome, deliveries.c.variant))}


def _ids(db) -> dict[str, int]:
    with Store.open(db) as store:
        return {s.subscription.endpoint: s.id for s in store.iter_subscriptions()}


def _within(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p))


def test_variants_holdout_utm_and_tokens(e2e) -> None:
    subs = e2e.subscribe(400)
    e2e.import_subs(subs)
    campaign = e2e.campaign(name="ab", extra=AB + "holdout: 20%\n")
    code, report = e2e.send(campaign)
    assert code == 0, report
    ledger, ids = _ledger(e2e.db), _ids(e2e.db)
    rule = Assigner.for_campaign(load_campaign(campaign))
    assert rule is not None
    holdout = {sid for sid, (outcome, _) in ledger.items() if outcome == "holdout"}
    assert holdout == {sid for sid in ids.values() if rule.assign(sid).holdout}
    assert _within(len(holdout), 400, 0.20)
    assert report["holdout"] == len(holdout) and report["sent"] == 400 - len(holdout)
    with Store.open(e2e.db) as store:
        secrets, campaign_id = store.token_secrets(), store.get_campaign("ab").id  # type: ignore[union-attr]
    per_variant = {"a": 0, "b": 0}
    for s in subs:
        sid = ids[s["endpoint"]]
        messages = e2e.emu.messages(s["endpoint"])
        if sid in holdout:
            assert messages == []  # the control group receives nothing
            assert ledger[sid] == ("holdout", None)
            continue
        [raw] = messages
        n = json.loads(raw)["notification"]
        outcome, variant = ledger[sid]
        assert outcome == "sent" and variant in ("a", "b")
        per_variant[variant] += 1
        assert n["title"] == f"Title {variant.upper()}"
        assert n["navigate"] == ("https://shop.example.com/news?utm_source=pushcli&utm_medium="
                                 f"web_push&utm_campaign=ab&utm_content={variant}")
        assert n["data"]["pushcli_events"] == "https://shop.example.com/push-events"
        claims = read_token(secrets, n["data"]["pushcli_token"])
        assert claims is not None
        assert (claims.campaign_id, claims.variant, claims.subscriber_id) == (
            campaign_id, 1 if variant == "a" else 2, sid)
    assert _within(per_variant["a"], 400 - len(holdout), 0.5)


def test_winner_goes_to_the_rest_after_decide_after(e2e) -> None:
    subs = e2e.subscribe(300)
    e2e.import_subs(subs)
    campaign = e2e.campaign(name="win", extra=AB + "winner: {test_share: 30%, decide_after: 2h}\n")
    code, first = e2e.send(campaign)
    assert code == 0, first
    ledger, ids = _ledger(e2e.db), _ids(e2e.db)
    tested = set(ledger)
    assert _within(len(tested), 300, 0.30)
    assert first["sent"] == len(tested) and first["status"] == "waiting"
    # clicks come back for b's subscribers only: b wins
    clicks = []
    for s in subs:
        for raw in e2e.emu.messages(s["endpoint"]):
            n = json.loads(raw)["notification"]
            if n["title"] == "Title B":
                clicks.append({"token": n["data"]["pushcli_token"], "event": "clicked"})
    assert clicks
    events = e2e.dir / "events.ndjson"
    events.write_text("".join(json.dumps(c) + "\n" for c in clicks))
    e2e.pushcli("events", "import", str(events), check=True)
    # a run before decide_after sends nobody new
    code, again = e2e.send(campaign)
    assert code == 0 and set(_ledger(e2e.db)) == tested and again["status"] == "waiting"
    later = (datetime.now(UTC) + timedelta(hours=3)).isoformat()
    code, final = e2e.send(campaign, PUSHCLI_NOW=later)
    assert code == 0, final
    assert final["status"] == "finished" and final["sent"] == 300
    assert final["winner"]["variant"] == "b"
    ledger = _ledger(e2e.db)
    for s in subs:
        sid = ids[s["endpoint"]]
        titles = [json.loads(m)["notification"]["title"] for m in e2e.emu.messages(s["endpoint"])]
        assert len(titles) == 1  # the test group is not sent again
        if sid not in tested:
            assert titles == ["Title B"] and ledger[sid] == ("sent", "b")
