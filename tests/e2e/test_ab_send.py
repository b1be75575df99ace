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


def _arms(campaign, ids: dict[str, int]) -> dict[str, list[str]]:
    """Endpoints by arm (``holdout``, ``waiting`` or the variant) under the campaign's rule."""
    rule = Assigner.for_campaign(load_campaign(campaign))
    assert rule is not None
    found: dict[str, list[str]] = {}
    for endpoint, sid in ids.items():
        arm = rule.assign(sid)
        kind = "holdout" if arm.holdout else "waiting" if arm.waiting else str(arm.variant)
        found.setdefault(kind, []).append(endpoint)
    return found


def test_a_test_send_never_changes_the_experiment(e2e) -> None:
    subs = e2e.subscribe(60)
    e2e.import_subs(subs)
    campaign = e2e.campaign(name="ab", extra=AB + "holdout: 20%\n"
                            "winner: {test_share: 50%, decide_after: 2h}\n")
    ids = _ids(e2e.db)
    arms = _arms(campaign, ids)
    held, waits = arms["holdout"][0], arms["waiting"][0]
    # a holdout subscriber: refused (send and dry run alike), nothing recorded or sent
    for argv, endpoint, line in ((("--to", held), held, 13), (("--to", waits), waits, 14)):
        for dry in ((), ("--dry-run",)):
            proc = e2e.pushcli("send", str(campaign), *argv, *dry)
            assert proc.returncode == 2, proc.stderr
            [message] = proc.stderr.strip().splitlines()
            assert message.startswith(f"error: {campaign}:{line}: ")
            assert endpoint not in message and "Traceback" not in message
            assert ("holdout: --to: this subscriber is in the A/B test's holdout" in message
                    if endpoint == held else
                    "winner: --to: this subscriber is outside the A/B test's 50% test share"
                    in message)
    assert _ledger(e2e.db) == {} and e2e.emu.stats()["total_requests"] == 0
    with Store.open(e2e.db) as store:
        assert store.get_campaign("ab") is None  # decide_after's clock has not started
    # a subscriber in variant a or b: its own variant, recorded and counted as the real send
    tried = arms["a"][0]
    code, report = e2e.send(campaign, "--to", tried)
    assert code == 0, report
    [raw] = e2e.emu.messages(tried)
    assert json.loads(raw)["notification"]["title"] == "Title A"
    assert _ledger(e2e.db) == {ids[tried]: ("sent", "a")}
    assert report["variants"]["a"]["sent"] == 1 and report["holdout"] == 0
    with Store.open(e2e.db) as store:  # decide_after's clock starts with the real send
        assert store.get_campaign("ab").started_at is None
    # the real send: the holdout recorded, the test share sent once, the rest waiting
    code, report = e2e.send(campaign)
    assert code == 0 and report["status"] == "waiting", report
    with Store.open(e2e.db) as store:
        assert store.get_campaign("ab").started_at is not None
    ledger = _ledger(e2e.db)
    assert {e for e in ids if ledger.get(ids[e], ("",))[0] == "holdout"} == set(arms["holdout"])
    assert {e for e in ids if ledger.get(ids[e], ("",))[0] == "sent"} == set(arms["a"] + arms["b"])
    assert e2e.emu.messages(held) == [] and e2e.emu.messages(waits) == []
    assert len(e2e.emu.messages(tried)) == 1  # not sent again
    # after decide_after, a test send to a new test-share subscriber decides nothing
    later = {"PUSHCLI_NOW": (datetime.now(UTC) + timedelta(hours=3)).isoformat()}
    e2e.import_subs(e2e.subscribe(20))
    ids = _ids(e2e.db)
    late = next(e for e in _arms(campaign, ids)["b"] if ids[e] not in ledger)
    code, report = e2e.send(campaign, "--to", late, **later)
    assert code == 0 and report.get("winner") is None, report
    assert _ledger(e2e.db)[ids[late]] == ("sent", "b")
    code, report = e2e.send(campaign, **later)  # the real run decides it
    assert code == 0 and report["winner"]["variant"] in ("a", "b"), report
    # the winner decided, a rest subscriber is sent the winner: no longer refused
    code, _ = e2e.send(campaign, "--to", waits)
    assert code == 0 and len(e2e.emu.messages(waits)) == 1


def test_removing_winner_while_subscribers_wait_is_refused_unless_confirmed(e2e) -> None:
    subs = e2e.subscribe(80)
    e2e.import_subs(subs)
    winner = "winner: {test_share: 25%, decide_after: 2h}\n"
    campaign = e2e.campaign(name="drop", extra=AB + winner)
    code, first = e2e.send(campaign)
    assert code == 0 and first["status"] == "waiting", first
    tested = _ledger(e2e.db)
    waiting = 80 - len(tested)
    assert 0 < len(tested) < 80
    requests = e2e.emu.stats()["total_requests"]
    campaign.write_text(campaign.read_text().replace(winner, ""))  # the edit
    for dry in ((), ("--dry-run",)):
        proc = e2e.pushcli("send", str(campaign), *dry)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"error: {campaign}:9: winner: removed while {waiting} subscribers outside its test "
            "share have not been sent the A/B test's winner; they would get variants by "
            "weight instead: put winner: back, or confirm with --drop-winner"]
    # refused before anything: nothing recorded or sent, and the next run still refuses
    assert _ledger(e2e.db) == tested and e2e.emu.stats()["total_requests"] == requests
    assert e2e.pushcli("send", str(campaign)).returncode == 2
    # a test send is refused too: it would store the edited file and end the guard
    sent_one = next(e for e, sid in _ids(e2e.db).items() if sid in tested)
    proc = e2e.pushcli("send", str(campaign), "--to", sent_one)
    assert proc.returncode == 2 and f"removed while {waiting} subscribers" in proc.stderr
    assert e2e.pushcli("send", str(campaign)).returncode == 2
    line = (f"winner: removed (--drop-winner): {waiting} subscribers who waited for the A/B "
            "test's winner {} variants by weight instead")
    proc = e2e.pushcli("send", str(campaign), "--dry-run", "--drop-winner", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["winner_dropped"] == waiting
    assert proc.stderr.strip().splitlines() == [line.format("would get")]
    proc = e2e.pushcli("send", str(campaign), "--drop-winner", "--json")
    assert proc.returncode == 0, proc.stderr
    # after the progress lines (stderr is no terminal here), once
    assert proc.stderr.strip().splitlines()[-1] == line.format("get")
    assert proc.stderr.count("winner: removed") == 1
    report = json.loads(proc.stdout)
    assert report["run"]["ab_test"]["winner_dropped"] == waiting
    assert report["status"] == "finished" and report["sent"] == 80
    rule = Assigner.for_campaign(load_campaign(campaign))
    assert rule is not None
    ledger = _ledger(e2e.db)
    assert {v for sid, (_, v) in ledger.items() if sid not in tested} == {"a", "b"}
    assert all(ledger[sid] == ("sent", rule.variant_of(sid)) for sid in ledger)
    assert e2e.emu.stats()["total_requests"] == requests + waiting
    # confirmed once: nobody waits any more, so the next run has nothing to refuse
    code, again = e2e.send(campaign)
    assert code == 0 and again["sent"] == 80
