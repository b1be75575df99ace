"""A/B tests on the campaign side: the campaign fields, deterministic assignment, UTM tags,
and rendering per variant with the token spliced in."""

from __future__ import annotations

import json
import math
import random

import pytest

from pushcli.campaign import Renderer, parse_campaign
from pushcli.campaign.render import TOKEN_SENTINEL
from pushcli.campaign.variants import Arm, Assigner, utm_params, with_utm
from pushcli.errors import InputError, PayloadTooLarge
from pushcli.tokens import MAX_TOKEN_LEN, make_token, read_token

HEAD = """\
name: sale
notification:
  title: "Hi {{ first | default('there') }}"
  body: Base body
  url: "https://shop.example.com/p?x=1#top"
  actions: [{action: go, title: Go, url: "https://shop.example.com/go?utm_source=mail"}]
locales:
  fr: {title: Salut, body: Corps}
"""
AB = HEAD + """\
variants:
  - {name: a, weight: 70, notification: {title: "A title"}}
  - {name: b, weight: 30}
"""


def error_of(text: str) -> str:
    with pytest.raises(InputError) as info:
        parse_campaign(text, source="c.yml")
    return str(info.value)


# --------------------------------------------------------------------------- model


def test_fields_and_accessors() -> None:
    c = parse_campaign(AB + "holdout: 10%\ntracking: {events_url: https://shop.example.com/ev}\n"
                       "winner: {decide_after: 2h}\n")
    assert c.variant_names() == ("a", "b")
    assert (c.variant_index(None), c.variant_index("a"), c.variant_index("b")) == (0, 1, 2)
    assert c.notification_for("a").title == "A title"
    assert c.notification_for("b").title == c.notification.title
    assert c.holdout == "10%" and c.tracking.utm is True
    assert c.winner is not None and c.winner.test_share == "20%"
    assert parse_campaign(HEAD).variant_index(None) == 0


@pytest.mark.parametrize(("extra", "expected"), [
    ("variants: [{name: a, weight: 1}]\n", "c.yml:9: variants: must list 2 to 8 variants (has 1)"),
    ("variants:\n" + "".join(f"  - {{name: v{i}, weight: 1}}\n" for i in range(9)),
     "c.yml:9: variants: must list 2 to 8 variants (has 9)"),
    ("variants:\n  - {name: a, weight: 1}\n  - {name: a, weight: 2}\n",
     "c.yml:11: variants[1].name: duplicate variant name 'a'"),
    ("variants:\n  - {name: a, weight: 0}\n  - {name: b, weight: 2}\n",
     "c.yml:10: variants[0].weight: must be between 1 and 1000000"),
    ("variants:\n  - {name: a, weight: 1.5}\n  - {name: b, weight: 2}\n",
     "c.yml:10: variants[0].weight: must be an integer"),
    ("variants:\n  - {name: a, weight: 1}\n  - {name: 'b c', weight: 2}\n",
     "c.yml:11: variants[1].name: must be 1-100 letters, digits, '.', '_' or '-', "
     "starting with a letter or digit"),
    ("variants:\n  - {name: a, weight: 1, notification: {renotify: true}}\n"
     "  - {name: b, weight: 2}\n", "c.yml:10: variants[0].notification.renotify: requires a tag"),
    ("variants:\n  - {name: a, weight: 1, notification: {url: 'http://x'}}\n"
     "  - {name: b, weight: 2}\n",
     "c.yml:10: variants[0].notification.url: must be an absolute https URL"),
    ("variants:\n  - {name: a, weight: 1, notification: {titel: x}}\n  - {name: b, weight: 2}\n",
     "c.yml:10: variants[0].notification.titel: unknown field (did you mean 'title'?)"),
    ("holdout: 60%\n", "c.yml:9: holdout: must be between 0% and 50%"),
    ("holdout: 10\n", "c.yml:9: holdout: '10' is not a percentage like '10%'"),
    ("tracking: {events_url: http://x.example.com}\n",
     "c.yml:9: tracking.events_url: must be an absolute https URL"),
    ("tracking: {utm: maybe}\n", "c.yml:9: tracking.utm: must be true or false"),
    ("winner: {decide_after: 2h}\n",
     "c.yml:9: winner: needs variants (at least two) to pick a winner from"),
])
def test_bad_values_name_file_line_field(extra: str, expected: str) -> None:
    assert error_of(HEAD + extra) == expected


@pytest.mark.parametrize(("winner", "expected"), [
    ("{decide_after: 2x}", "winner.decide_after: '2x' is not a duration like"),
    ("{decide_after: 0m}", "winner.decide_after: must be between 1m and 30d"),
    ("{decide_after: 2h, test_share: 95%}", "winner.test_share: must be between 1% and 90%"),
    ("{decide_after: 2h, metric: opens}", "winner.metric: must be one of: click_rate"),
    ("{test_share: 20%}", "winner.decide_after: is required"),
])
def test_bad_winner(winner: str, expected: str) -> None:
    assert error_of(AB + f"winner: {winner}\n").startswith(f"c.yml:12: {expected}")


# --------------------------------------------------------------------------- assignment


def _within(count: int, n: int, p: float) -> bool:
    """Within 5 standard deviations of the binomial mean (fails about once in 3.5 million)."""
    return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p))


def test_split_follows_weights_and_holdout() -> None:
    c = parse_campaign(AB + "holdout: 10%\n")
    rule = Assigner.for_campaign(c)
    assert rule is not None
    ids = range(1, 20_001)
    arms = [rule.assign(i) for i in ids]
    holdout = sum(a.holdout for a in arms)
    a = sum(x.variant == "a" for x in arms)
    b = sum(x.variant == "b" for x in arms)
    assert _within(holdout, 20_000, 0.10)
    assert _within(a, 20_000 - holdout, 0.70) and a + b + holdout == 20_000
    assert all(x.index == c.variant_index(x.variant) for x in arms)
    assert not any(x.waiting for x in arms)


def test_assignment_is_stable_and_depends_on_campaign() -> None:
    c = parse_campaign(AB)
    rng = random.Random(7)
    ids = [rng.randrange(1, 10**9) for _ in range(2000)]
    first = [Assigner.for_campaign(c).assign(i) for i in ids]  # type: ignore[union-attr]
    again = [Assigner.for_campaign(c).assign(i) for i in ids]  # type: ignore[union-attr]
    assert first == again
    other = Assigner.for_campaign(parse_campaign(AB.replace("name: sale", "name: other")))
    assert [other.assign(i) for i in ids] != first  # type: ignore[union-attr]
    # a fixed point, so a change of hash (which would reshuffle live tests) cannot go unseen
    assert Assigner.for_campaign(c).assign(1) == Arm("a", 1)  # type: ignore[union-attr]


def test_winner_routing() -> None:
    c = parse_campaign(AB + "holdout: 10%\nwinner: {test_share: 20%, decide_after: 2h}\n")
    before = Assigner.for_campaign(c)
    after = Assigner.for_campaign(c, winner="b")
    assert before is not None and after is not None
    n = 20_000
    pairs = [(before.assign(i), after.assign(i)) for i in range(1, n + 1)]
    holdout = sum(x.holdout for x, _ in pairs)
    waiting = sum(x.waiting for x, _ in pairs)
    assert _within(holdout, n, 0.10)
    assert _within(waiting, n - holdout, 0.80)
    for x, y in pairs:
        if x.waiting:  # the rest get the winner once decided
            assert y == Arm("b", 2)
        else:  # holdout and test group are where they were
            assert x == y
    with pytest.raises(KeyError):
        Assigner.for_campaign(c, winner="zzz")


def test_no_rule_without_variants_or_holdout() -> None:
    assert Assigner.for_campaign(parse_campaign(HEAD)) is None
    only_holdout = Assigner.for_campaign(parse_campaign(HEAD + "holdout: 50%\n"))
    assert only_holdout is not None
    arms = {only_holdout.assign(i) for i in range(100)}
    assert arms == {Arm(None, 0), Arm(None, 0, holdout=True)}


# --------------------------------------------------------------------------- UTM


@pytest.mark.parametrize(("url", "expected"), [
    ("https://a.example.com", "https://a.example.com?utm_source=pushcli&utm_medium=web_push"
     "&utm_campaign=c&utm_content=v"),
    ("https://a.example.com/p?x=1&y=%20#frag", "https://a.example.com/p?x=1&y=%20&utm_source="
     "pushcli&utm_medium=web_push&utm_campaign=c&utm_content=v#frag"),
    ("https://a.example.com/p?UTM_Source=news&utm_content=", "https://a.example.com/p?"
     "UTM_Source=news&utm_content=&utm_medium=web_push&utm_campaign=c"),
    ("https://a.example.com/p?", "https://a.example.com/p?utm_source=pushcli&utm_medium=web_push"
     "&utm_campaign=c&utm_content=v"),
])
def test_utm(url: str, expected: str) -> None:
    assert with_utm(url, utm_params("c", "v")) == expected


def test_utm_content_only_with_variants() -> None:
    assert [k for k, _ in utm_params("c", None)] == ["utm_source", "utm_medium", "utm_campaign"]


# --------------------------------------------------------------------------- rendering


def _doc(payload: bytes) -> dict:
    return json.loads(payload)["notification"]


def test_variant_over_locale_and_token_spliced() -> None:
    c = parse_campaign(AB + "tracking: {events_url: https://shop.example.com/ev}\n")
    r = Renderer(c)
    token = make_token(b"s" * 32, 7, c.variant_index("a"), 42)
    a_fr = _doc(r.render("fr-FR", {}, "a", token=token))
    assert a_fr["title"] == "A title" and a_fr["body"] == "Corps"  # variant wins, locale fills
    assert a_fr["data"] == {"pushcli_token": token, "pushcli_events": "https://shop.example.com/ev"}
    claims = read_token((b"s" * 32,), a_fr["data"]["pushcli_token"])
    assert claims is not None and (claims.campaign_id, claims.variant, claims.subscriber_id) == (
        7, 1, 42)
    assert a_fr["navigate"].endswith("&utm_campaign=sale&utm_content=a#top")
    # an action URL's own utm_source stays
    assert a_fr["actions"][0]["navigate"] == ("https://shop.example.com/go?utm_source=mail"
                                              "&utm_medium=web_push&utm_campaign=sale"
                                              "&utm_content=a")
    b = _doc(r.render(None, {"first": "Jo"}, "b", token=token))
    assert b["title"] == "Hi Jo" and "utm_content=b" in b["navigate"]
    assert TOKEN_SENTINEL in _doc(r.render(None, {}, "b"))["data"]["pushcli_token"]
    with pytest.raises(KeyError):
        r.render(None, {}, "zzz")


def test_token_goes_into_data_even_when_an_attribute_spells_the_sentinel() -> None:
    # a subscriber's attribute (their name, from the site) is rendered into the title
    # before data.pushcli_token: the token must not land in the title instead
    r = Renderer(parse_campaign(HEAD))
    token = make_token(b"s" * 32, 7, 0, 42)
    doc = _doc(r.render(None, {"first": TOKEN_SENTINEL}, token=token))
    assert doc["title"] == "Hi " + TOKEN_SENTINEL
    assert doc["data"]["pushcli_token"] == token


def test_utm_off() -> None:
    r = Renderer(parse_campaign(AB + "tracking: {utm: false}\n"))
    doc = _doc(r.render(None, {}, "a", token="t"))
    assert doc["navigate"] == "https://shop.example.com/p?x=1#top"
    assert doc["actions"][0]["navigate"] == "https://shop.example.com/go?utm_source=mail"


def test_size_check_reserves_the_token_and_names_the_variant() -> None:
    base = len(Renderer(parse_campaign(AB)).render(None, {}, "b"))
    assert TOKEN_SENTINEL.encode() in Renderer(parse_campaign(AB)).render(None, {}, "b")
    assert len(TOKEN_SENTINEL) == MAX_TOKEN_LEN
    fill = 3993 - base + len("Base body") + 1  # one byte over with the sentinel in place
    text = AB.replace("{name: b, weight: 30}",
                      f"{{name: b, weight: 30, notification: {{body: {'x' * fill}}}}}")
    r = Renderer(parse_campaign(text))
    r.render(None, {}, "a")  # the other variant is fine
    with pytest.raises(PayloadTooLarge) as info:
        r.render(None, {}, "b")
    assert "campaign sale (variant b): payload is 3994 bytes" in str(info.value)
    assert "shorten variants[1].notification.body" in str(info.value)


def test_a_variant_too_large_for_everyone_refuses_a_personalised_campaign(tmp_path) -> None:
    # with a placeholder every subscriber's payloads are checked; a variant that fits
    # nobody (with the token's room reserved) must stop the send before the first
    # message, not reject half the audience one subscriber at a time
    from pushcli.keys import generate_keys
    from pushcli.store import Store
    from pushcli.subscriptions import make_subscription
    from tests.support import invoke, pushcli_env, real_subscription

    generate_keys(tmp_path)
    db = tmp_path / "s.db"
    with Store.open(db) as store:
        store.import_subscriptions(("f", make_subscription(real_subscription()))
                                   for _ in range(4))
    base = len(Renderer(parse_campaign(AB)).render(None, {}, "b"))
    fill = 3993 - base + len("Base body") + 1
    path = tmp_path / "c.yml"
    path.write_text(AB.replace("{name: b, weight: 30}",
                               f"{{name: b, weight: 30, notification: {{body: {'x' * fill}}}}}")
                    + "vapid: {subject: 'mailto:ops@shop.example.com'}\n")
    env = pushcli_env(db=db, key=tmp_path / "vapid_private.pem")
    for extra in ((), ("--dry-run",)):
        result = invoke("send", str(path), *extra, env=env)
        assert result.exit_code == 2, result.output
        assert "campaign sale (variant b): payload is 3994 bytes" in result.stderr
    with Store.open(db) as store:
        assert store.get_campaign("sale") is None or store.variant_results(
            store.get_campaign("sale").id) == {}


@pytest.mark.parametrize("limit", [None, 37])
def test_the_send_path_draws_each_arm_once_and_sends_what_it_did_before(
        tmp_path, monkeypatch: pytest.MonkeyPatch, limit: int | None) -> None:
    """The store's filter (holdout, waiting for the winner) and the job builder share one
    draw per subscriber; who is sent, in which order, with which variant's token, is what
    the rule says (``--limit`` counting only sendable subscribers, as before)."""
    from pushcli.delivery import Plan, iter_jobs
    from pushcli.messages import DeliveryOptions
    from pushcli.store import Store
    from pushcli.subscriptions import make_subscription
    from pushcli.workers import Control
    from tests.support import real_subscription

    c = parse_campaign(AB + "holdout: 10%\nwinner: {test_share: 50%, decide_after: 2h}\n")
    rule = Assigner.for_campaign(c)
    assert rule is not None and rule.excludes_some
    with Store.open(tmp_path / "s.db") as store:
        store.import_subscriptions(("f", make_subscription(real_subscription()))
                                   for _ in range(300))
        info = store.start_campaign(c.name, c.model_dump(mode="json"))
        secret = store.token_secrets()[0]
        ids = sorted(s.id for s in store.iter_subscriptions(status="all"))
        want = [(i, rule.assign(i).index) for i in ids if rule.assign(i).sendable][:limit]
        assert 0 < len(want) < len(ids) - 30  # holdout and waiting really left out

        calls: list[int] = []
        original = Assigner.assign

        def counted(self: Assigner, subscriber_id: int) -> Arm:
            calls.append(subscriber_id)
            return original(self, subscriber_id)
        monkeypatch.setattr(Assigner, "assign", counted)
        plan = Plan(c, info.id, frozenset(), DeliveryOptions(), limit=limit, arms=rule,
                    token_secret=secret)
        jobs = [j for batch in iter_jobs(store, plan, Renderer(c), Control()) for j in batch]

    got = []
    for job in jobs:
        claims = read_token((secret,), json.loads(job.payload)["notification"]["data"]
                            ["pushcli_token"])
        assert claims is not None and claims.subscriber_id == job.subscription_id
        got.append((job.subscription_id, claims.variant))
    assert got == want
    assert len(calls) == len(set(calls))  # nobody drawn twice
    assert set(calls) >= {i for i, _ in want}


def test_decide_after_counts_from_the_first_real_run_not_a_test_send(tmp_path) -> None:
    """A ``send --to`` preview hours before the real send starts neither the A/B test's
    clock nor the schedule's: both count from the first real run (``started_at``)."""
    import time
    from datetime import UTC, datetime, timedelta

    from pushcli.abrun import open_arms
    from pushcli.due import first_run_at
    from pushcli.store import Store
    from pushcli.subscriptions import make_subscription
    from tests.support import real_subscription

    c = parse_campaign(AB + "winner: {test_share: 50%, decide_after: 2h}\n")
    spec = c.model_dump(mode="json")
    preview = datetime(2026, 11, 2, 9, tzinfo=UTC)
    real = preview + timedelta(hours=3)  # past decide_after, counted from the preview

    def run(store: Store, at: datetime, *, test_send: bool) -> tuple[int, object]:
        store.clock_offset = at.timestamp() - time.time()  # what send_campaign does
        info = store.start_campaign(c.name, spec, test_send=test_send)
        return info.id, open_arms(store, c, info.id, at, match=None,
                                  allowed_hosts=frozenset(), test_send=test_send)

    with Store.open(tmp_path / "s.db") as store:
        store.import_subscriptions(("f", make_subscription(real_subscription()))
                                   for _ in range(20))
        cid, gate = run(store, preview, test_send=True)
        assert first_run_at(store, c, cid) is None and gate.winner is None
        cid, gate = run(store, real, test_send=False)
        assert first_run_at(store, c, cid) == pytest.approx(real.timestamp(), abs=1)
        assert gate.winner is None and gate.waiting > 0  # not decided: the clock just started
        assert gate.decide_at == pytest.approx((real + timedelta(hours=2)).timestamp(), abs=1)
        # a later preview moves nothing; the first real run after the window decides
        run(store, real + timedelta(hours=1), test_send=True)
        assert first_run_at(store, c, cid) == pytest.approx(real.timestamp(), abs=1)
        _, gate = run(store, real + timedelta(hours=2, minutes=1), test_send=False)
        assert gate.winner is not None and gate.winner["variant"] in ("a", "b")
