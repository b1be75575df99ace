"""Notification events: one document's parsing and token check, the store's event
rows (SQLite and PostgreSQL), ``events import`` and ``prune --unengaged-days``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pushcli import prune as pruning
from pushcli.errors import InputError
from pushcli.events import EventProblem, decode_event, import_events, parse_event
from pushcli.messages import DeliveryRecord
from pushcli.pushservices import Outcome
from pushcli.store import EventRow, Store
from pushcli.subscriptions import describe_rejection, make_subscription
from pushcli.tokens import make_token
from tests.support import fresh_database, invoke, real_subscription

NOW = 1_800_000_000.0
DAY = 86400.0


@pytest.fixture(params=["sqlite", "postgresql"])
def st(request, tmp_path):
    """A store on each backend."""
    url = (str(tmp_path / "store.db") if request.param == "sqlite"
           else fresh_database(request.getfixturevalue("pg_admin")))
    s = Store.open(url)
    yield s
    s.close()


def add_subscribers(store: Store, n: int) -> list[int]:
    before = {s.id for s in store.iter_subscriptions(status="all")}
    subs = [make_subscription(real_subscription()) for _ in range(n)]
    store.import_subscriptions(("f", s) for s in subs)
    return sorted({s.id for s in store.iter_subscriptions(status="all")} - before)


def token(store: Store, campaign: int, subscriber: int, variant: int = 0) -> str:
    return make_token(store.token_secrets()[0], campaign, variant, subscriber)


def doc(tok: str, event: str = "clicked", **extra: object) -> dict:
    return {"token": tok, "event": event, **extra}


# --- one document ------------------------------------------------------------------------


def test_parse_event_reads_the_token_and_defaults_at_to_now(store: Store) -> None:
    row = parse_event(doc(token(store, 3, 7, variant=2), action="buy", at=NOW - 5),
                      store.token_secrets(), NOW)
    assert row == EventRow(3, 7, "clicked", 2, "buy", NOW - 5, NOW)
    row = parse_event(doc(token(store, 3, 7), "shown", action="", extra="ignored"),
                      store.token_secrets(), NOW)
    assert (row.kind, row.action, row.at, row.variant) == ("shown", None, NOW, 0)


@pytest.mark.parametrize(("document", "problem"), [
    ([], "an event must be a JSON object"),
    ({"event": "clicked"}, "token: missing"),
    ({"event": "opened"}, "event: must be one of shown, clicked, closed"),
    ({"event": "clicked", "action": 5}, "action: must be a string"),
    ({"event": "clicked", "action": "x" * 129}, "action: longer than 128 characters"),
    ({"event": "clicked", "action": "a\nb"}, "action: contains control characters"),
    ({"event": "clicked", "action": "\ud800"}, "action: contains control characters"),
    ({"event": "clicked", "at": True}, "at: must be a number"),
    ({"event": "clicked", "at": "1800000000"}, "at: must be a number"),
    ({"event": "clicked", "at": float("nan")}, "at: must be a positive number"),
    ({"event": "clicked", "at": -1}, "at: must be a positive number"),
    ({"event": "clicked", "at": NOW + 2 * DAY}, "at: more than a day in the future"),
    ({"event": "clicked", "at": NOW * 1000}, "(milliseconds? send Unix seconds)"),
    ({"event": "clicked", "token": 12}, "token: not signed by this store"),
    ({"event": "clicked", "token": "A" * 40}, "token: not signed by this store"),
])
def test_parse_event_names_the_field_at_fault(store: Store, document: object,
                                               problem: str) -> None:
    with pytest.raises(EventProblem, match=None) as info:
        parse_event(document, store.token_secrets(), NOW)
    assert problem in str(info.value)


def test_forged_and_rotated_tokens_are_refused(store: Store, tmp_path: Path) -> None:
    other = Store.open(tmp_path / "other.db")
    forged = make_token(other.token_secrets()[0], 1, 0, 1)  # another store's secret
    other.close()
    with pytest.raises(EventProblem, match="not signed by this store"):
        parse_event(doc(forged), store.token_secrets(), NOW)
    good = token(store, 1, 1)
    tampered = good[:-1] + ("A" if good[-1] != "A" else "B")
    with pytest.raises(EventProblem, match="not signed by this store"):
        parse_event(doc(tampered), store.token_secrets(), NOW)
    store.rotate_token_secret()  # the previous secret still verifies...
    assert parse_event(doc(good), store.token_secrets(), NOW).subscription_id == 1
    store.rotate_token_secret()  # ...but not the one before it
    with pytest.raises(EventProblem, match="not signed by this store"):
        parse_event(doc(good), store.token_secrets(), NOW)


def test_decode_event_refuses_bad_bytes_and_json(store: Store) -> None:
    secrets = store.token_secrets()
    with pytest.raises(EventProblem, match="not valid UTF-8"):
        decode_event(b"\xff{}", secrets, NOW)
    with pytest.raises(EventProblem, match="invalid JSON"):
        decode_event(b"{", secrets, NOW)
    body = json.dumps(doc(token(store, 1, 2))).encode()
    assert decode_event(body, secrets, NOW).subscription_id == 2


def test_decode_event_refuses_absurd_numbers_in_one_line(store: Store) -> None:
    secrets = store.token_secrets()
    tok = token(store, 1, 2)
    with pytest.raises(EventProblem, match="at: must be a positive number"):
        decode_event(b'{"token": "%s", "event": "shown", "at": 1%s}' % (
            tok.encode(), b"0" * 400), secrets, NOW)  # an int no float can hold
    with pytest.raises(EventProblem, match="at: must be a positive number"):
        decode_event(b'{"token": "%s", "event": "shown", "at": -1%s}' % (
            tok.encode(), b"0" * 400), secrets, NOW)
    with pytest.raises(EventProblem, match="invalid JSON: a number with too many digits"):
        decode_event(b'{"event": "shown", "at": ' + b"1" * 5000 + b"}", secrets, NOW)


# --- the store ---------------------------------------------------------------------------


def test_record_events_counts_each_event_once(st: Store) -> None:
    rows = [EventRow(1, sid, kind, 0, None, NOW, NOW) for sid in range(1, 801)
            for kind in ("shown", "clicked")]
    assert st.record_events(rows + rows[:10]) == 1600  # repeated in one call: once
    assert st.record_events(rows) == 0
    assert st.record_events([EventRow(1, 1, "closed", 0, None, NOW, NOW),
                             EventRow(2, 1, "clicked", 1, "buy", NOW, NOW)]) == 2
    assert st.record_events([]) == 0
    ids = add_subscribers(st, 3)
    assert st.known_subscribers([ids[0], ids[2], 10_000_000]) == {ids[0], ids[2]}


# --- import ------------------------------------------------------------------------------


def write_ndjson(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n"
                            for x in lines))
    return path


def test_import_counts_added_duplicates_and_rejected_with_line_numbers(
        store: Store, tmp_path: Path) -> None:
    a, b = add_subscribers(store, 2)
    gone = b + 1000  # a well-signed token about a subscriber this store does not have
    forged = make_token(b"\x00" * 32, 1, 0, a)
    path = write_ndjson(tmp_path / "events.ndjson", [
        doc(token(store, 1, a), "shown"),            # 1
        doc(token(store, 1, a), "clicked", action="buy"),  # 2
        doc(forged),                                 # 3 forged
        "",                                          # blank: skipped, not counted
        "{not json",                                 # 5
        doc(token(store, 1, a), "shown"),            # 6 duplicate of line 1
        doc(token(store, 1, gone)),                  # 7 subscriber no longer there
        doc(token(store, 1, b), "closed", at=NOW * 1000),  # 8 milliseconds
        doc(token(store, 1, b), "closed"),           # 9
    ])
    seen = []
    result = import_events(store, [str(path)], NOW, on_reject=seen.append)
    assert result.to_json() == {"read": 8, "added": 3, "duplicates": 1, "rejected": 4}
    lines = sorted(describe_rejection(r.source, r.location, r.reason) for r in seen)
    assert [line.split(": ")[0] for line in lines] == [f"{path}:{n}" for n in (3, 5, 7, 8)]
    assert "not signed by this store" in lines[0]
    assert "no longer in this store" in lines[2]
    assert seen == result.rejections
    again = import_events(store, [str(path)], NOW + 60)
    assert (again.added, again.duplicates, again.rejected) == (0, 4, 4)


def test_import_skips_a_line_over_one_mebibyte(store: Store, tmp_path: Path) -> None:
    (a,) = add_subscribers(store, 1)
    path = tmp_path / "big.ndjson"
    path.write_text(json.dumps(doc(token(store, 1, a), action="x" * (1 << 20))) + "\n"
                    + json.dumps(doc(token(store, 1, a))) + "\n")
    result = import_events(store, [str(path)], NOW)
    assert (result.added, result.rejected) == (1, 1)
    assert result.rejections[0].location == "line 1"
    assert "longer than 1 MiB (an event is under 1 KiB)" in result.rejections[0].reason


def test_import_refuses_a_missing_file_before_storing_anything(store: Store,
                                                               tmp_path: Path) -> None:
    (a,) = add_subscribers(store, 1)
    good = write_ndjson(tmp_path / "good.ndjson", [doc(token(store, 1, a))])
    with pytest.raises(InputError, match="no such file"):
        import_events(store, [str(good), str(tmp_path / "typo.ndjson")], NOW)
    assert import_events(store, [str(good)], NOW).added == 1


# --- prune --unengaged-days ---------------------------------------------------------------


def sent(store: Store, campaign: str, ids: list[int]) -> int:
    c = store.start_campaign(campaign, {"name": campaign})
    store.record(c.id, [DeliveryRecord(i, Outcome.SENT, "fcm", 201) for i in ids])
    return c.id


def test_unengaged_rule_needs_both_options() -> None:
    assert pruning.unengaged_rule(None, None, NOW) is None
    for days, k in ((30, None), (None, 3)):
        with pytest.raises(InputError, match="go together"):
            pruning.unengaged_rule(days, k, NOW)
    with pytest.raises(InputError, match="positive"):
        pruning.unengaged_rule(0, 3, NOW)
    with pytest.raises(InputError, match="at least 1"):
        pruning.unengaged_rule(30, 0, NOW)
    assert pruning.unengaged_rule(2, 3, NOW).since == NOW - 2 * DAY


def test_prune_rules_check_every_option_before_the_store_is_opened() -> None:
    assert pruning.rules(None, None, None, NOW) == {"failed_campaigns": None, "unengaged": None}
    rules = pruning.rules(2, 30, 3, NOW)
    assert rules["failed_campaigns"] == 2 and rules["unengaged"] is not None
    assert rules["unengaged"].since == NOW - 30 * DAY and rules["unengaged"].min_sent == 3
    with pytest.raises(InputError, match="--failed-campaigns"):
        pruning.rules(0, None, None, NOW)
    with pytest.raises(InputError, match="go together"):
        pruning.rules(None, 30, None, NOW)


def test_prune_unengaged_lists_then_deletes_only_unclicked_heavy_recipients(st: Store) -> None:
    clicked_recently, clicked_long_ago, never, few, expired_elsewhere = add_subscribers(st, 5)
    everyone = [clicked_recently, clicked_long_ago, never, few]
    c1 = sent(st, "c1", everyone)
    c2 = sent(st, "c2", [clicked_recently, clicked_long_ago, never])
    c3 = st.start_campaign("c3", {"name": "c3"}).id
    st.record(c3, [DeliveryRecord(i, Outcome.SENT, "fcm", 201)
                   for i in (clicked_recently, clicked_long_ago)]
              + [DeliveryRecord(never, Outcome.FAILED, "fcm", 503)])  # not a sent message
    st.record_events([
        EventRow(c1, clicked_recently, "clicked", 0, None, NOW - 3 * DAY, NOW),
        EventRow(c1, clicked_long_ago, "clicked", 0, None, NOW - 40 * DAY, NOW),
        EventRow(c1, never, "shown", 0, None, NOW - DAY, NOW),  # shown is not engagement
        # every campaign here was tracked: it reported events
        EventRow(c2, clicked_recently, "shown", 0, None, NOW - DAY, NOW),
        EventRow(c3, clicked_recently, "shown", 0, None, NOW - DAY, NOW),
    ])
    rule = pruning.unengaged_rule(30, 2, NOW)
    dry = pruning.prune(st, unengaged=rule, dry_run=True)
    assert dry.ids == sorted([clicked_long_ago, never]) and dry.deleted == 0
    assert pruning.prune(st, unengaged=pruning.unengaged_rule(30, 3, NOW),
                         dry_run=True).ids == [clicked_long_ago]
    assert pruning.prune(st, unengaged=pruning.unengaged_rule(50, 2, NOW),
                         dry_run=True).ids == [never]
    assert expired_elsewhere not in dry.ids  # never sent anything
    done = pruning.prune(st, unengaged=rule, wait=0)
    assert done.deleted == 2
    left = {s.id for s in st.iter_subscriptions(status="all")}
    assert left == {clicked_recently, few, expired_elsewhere}


def test_prune_unengaged_counts_only_campaigns_that_reported_events(st: Store) -> None:
    """Without tracking nobody can click: untracked sends never make anyone unengaged."""
    heavy, other = add_subscribers(st, 2)
    for i in range(4):
        sent(st, f"untracked-{i}", [heavy, other])
    rule = pruning.unengaged_rule(30, 2, NOW)
    assert pruning.prune(st, unengaged=rule, dry_run=True).ids == []
    tracked = [sent(st, f"tracked-{i}", [heavy, other]) for i in range(2)]
    st.record_events([EventRow(c, other, "clicked", 0, None, NOW - DAY, NOW) for c in tracked])
    assert pruning.prune(st, unengaged=rule, dry_run=True).ids == [heavy]


def test_prune_unengaged_never_counts_sends_to_apple(st: Store) -> None:
    """Safari 18.4+ shows Declarative Web Push itself, with no service worker: an Apple
    subscriber can never report a click, so tracked sends to one prove nothing."""
    safari, chrome, clicker = add_subscribers(st, 3)
    for i in range(3):
        c = st.start_campaign(f"tracked-{i}", {"name": f"tracked-{i}"}).id
        st.record(c, [DeliveryRecord(safari, Outcome.SENT, "apple", 201),
                      DeliveryRecord(chrome, Outcome.SENT, "fcm", 201),
                      DeliveryRecord(clicker, Outcome.SENT, "fcm", 201)])
        st.record_events([EventRow(c, clicker, "clicked", 0, None, NOW - DAY, NOW)])
    rule = pruning.unengaged_rule(30, 2, NOW)
    assert pruning.prune(st, unengaged=rule, dry_run=True).ids == [chrome]


def test_prune_unengaged_spares_a_click_that_arrives_after_selection(st: Store) -> None:
    a, b = add_subscribers(st, 2)
    c = sent(st, "c1", [a, b])
    st.record_events([EventRow(c, a, "shown", 0, None, NOW - DAY, NOW)])  # a tracked campaign
    rule = pruning.unengaged_rule(30, 1, NOW)
    selected = st.prune_candidates(unengaged=rule)
    assert [x.id for x in selected] == [a, b]
    st.record_events([EventRow(c, b, "clicked", 0, None, NOW, NOW)])  # events serve, meanwhile
    assert st.delete_subscriptions(selected) == 1
    assert [s.id for s in st.iter_subscriptions(status="all")] == [b]


def test_prune_cli_unengaged_dry_run_lists_them(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    with Store.open(db) as store:
        a, b = add_subscribers(store, 2)
        c = sent(store, "c1", [a, b])
        store.record_events([EventRow(c, b, "clicked", 0, None, 1.0, 1.0)])  # long ago
    res = invoke("prune", "--unengaged-days", "30", "--min-sent", "1", "--dry-run", "--json",
                 db=db)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"dry_run": True, "count": 2, "deleted": 0,
                                      "ids": [a, b]}
    res = invoke("prune", "--unengaged-days", "30", db=db)
    assert res.exit_code == 2 and "go together" in res.stderr
    res = invoke("prune", "--unengaged-days", "30", "--min-sent", "1", "--json", db=db)
    assert res.exit_code == 0 and json.loads(res.stdout)["deleted"] == 2


# --- events serve ----------------------------------------------------------------------


def collect(store: Store, requests: list[tuple[str, dict, bytes]],
            origins: tuple[str, ...] = ()) -> tuple[list[tuple[int, dict, str]], object]:
    """Send ``(method, headers, body)`` requests to a collector on an in-process test
    server, stop it (which writes what waits), and return the answers and its stats."""
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from pushcli.collector import Collector, build_app, check_origins

    async def run() -> tuple[list[tuple[int, dict, str]], object]:
        collector = Collector(store, allow_origins=check_origins(origins), clock=lambda: NOW)
        await collector.refresh_secrets()
        answers = []
        async with TestClient(TestServer(build_app(collector))) as client:
            for method, headers, body in requests:
                resp = await client.request(method, "/events", headers=headers, data=body)
                answers.append((resp.status, dict(resp.headers), await resp.text()))
        await collector.close()
        return answers, collector.stats

    return asyncio.run(run())


def post(body: object, content_type: str = "application/json", **headers: str
         ) -> tuple[str, dict, bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return ("POST", {"Content-Type": content_type, **headers}, raw)


def stored_events(store: Store) -> set[tuple[int, int, str, str | None]]:
    from pushcli.store import events

    with store._read() as conn:
        return {tuple(r) for r in conn.execute(
            events.select().with_only_columns(events.c.campaign_id, events.c.subscription_id,
                                              events.c.kind, events.c.action))}


def test_serve_accepts_json_and_sendbeacon_text_and_stores_them(store: Store) -> None:
    a, b = add_subscribers(store, 2)
    answers, stats = collect(store, [
        post(doc(token(store, 4, a), "shown")),
        post(doc(token(store, 4, a), action="buy"), "text/plain;charset=UTF-8"),
        post(doc(token(store, 4, a), "shown")),  # a re-post: accepted, stored once
        post(doc(token(store, 4, b + 1000), "closed")),  # unknown subscriber: dropped
    ])
    assert [s for s, _, _ in answers] == [202, 202, 202, 202]
    assert stored_events(store) == {(4, a, "shown", None), (4, a, "clicked", "buy")}
    assert (stats.accepted, stats.stored, stats.duplicates, stats.unknown) == (4, 2, 1, 1)


def test_serve_refuses_bad_documents_tokens_types_and_sizes(store: Store) -> None:
    (a,) = add_subscribers(store, 1)
    forged = make_token(b"\x01" * 32, 4, 0, a)
    answers, stats = collect(store, [
        post(doc(forged)),
        post(b"{oops"),
        post({"token": token(store, 4, a), "event": "opened"}),
        post(doc(token(store, 4, a)), "application/x-www-form-urlencoded"),
        post(doc(token(store, 4, a), action="x" * (17 * 1024))),
        ("GET", {}, b""),
    ])
    status = [s for s, _, _ in answers]
    assert status == [400, 400, 400, 415, 413, 405]
    assert "token: not signed by this store" in answers[0][2]
    assert "invalid JSON" in answers[1][2] and "event: must be one of" in answers[2][2]
    assert forged not in answers[0][2]
    assert stored_events(store) == set() and stats.accepted == 0


def test_serve_cors_answers_only_allowed_origins(store: Store) -> None:
    (a,) = add_subscribers(store, 1)
    shop = "https://shop.example.com"
    preflight = {"Origin": shop, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    answers, _ = collect(store, [
        ("OPTIONS", preflight, b""),
        ("OPTIONS", {**preflight, "Origin": "https://evil.example"}, b""),
        post(doc(token(store, 4, a)), Origin=shop),
        post(doc(token(store, 4, a), "shown"), Origin="https://evil.example"),
    ], origins=(shop + "/",))
    (ok_pre, _, _), (bad_pre, bad_headers, _), (ok, ok_headers, _), (bad, _, _) = answers
    assert ok_pre == 204 and answers[0][1]["Access-Control-Allow-Origin"] == shop
    assert "content-type" in answers[0][1]["Access-Control-Allow-Headers"].lower()
    assert bad_pre == 403 and "Access-Control-Allow-Origin" not in bad_headers
    assert ok == 202 and ok_headers["Access-Control-Allow-Origin"] == shop
    assert bad == 403
    assert stored_events(store) == {(4, a, "clicked", None)}
    # without --allow-origin: no CORS headers at all (same origin, behind the proxy)
    answers, _ = collect(store, [post(doc(token(store, 5, a)), Origin=shop)])
    assert answers[0][0] == 202 and "Access-Control-Allow-Origin" not in answers[0][1]


def test_check_origins_refuses_what_is_not_an_origin() -> None:
    from pushcli.collector import check_origins

    assert check_origins(["https://Shop.example.com/", "*"]) == {"https://shop.example.com", "*"}
    # a browser never spells the default port: "https://shop.example.com:443" would
    # refuse the very site it names
    assert check_origins(["https://shop.example.com:443", "http://localhost:80",
                          "https://shop.example.com:8443"]) == {
        "https://shop.example.com", "http://localhost", "https://shop.example.com:8443"}
    for bad in ("shop.example.com", "https://shop.example.com/path", "ftp://x",
                "https://shop.example.com:99999", "https://shop.example.com:https"):
        with pytest.raises(InputError, match="not an origin"):
            check_origins([bad])


# --- events serve: connections --------------------------------------------------------
# A real server (``serve``) on 127.0.0.1, port 0, and raw sockets on the same event loop.
# The timeouts are small so a test waits for a close, never sleeps for one; the
# ``wait_for`` bounds only turn a server that never closes into a failure.


async def serving(store: Store, body, **limits: float) -> object:
    """Run ``body(host, port)`` against ``serve(...)`` with ``limits``; the stats."""
    import asyncio

    from pushcli.collector import serve

    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    server = asyncio.create_task(serve(store, "127.0.0.1", 0, stop=stop,
                                       on_ready=ready.set_result, **limits))
    url = await asyncio.wait_for(ready, 30)
    try:
        await body("127.0.0.1", int(url.rsplit(":", 1)[1]))
    finally:
        stop.set()
    return await asyncio.wait_for(server, 30)


def raw_post(tok: str, *, close: bool = False) -> bytes:
    body = json.dumps(doc(tok)).encode()
    return (b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + (b"Connection: close\r\n" if close else b"")
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


async def answer(reader) -> int:
    """The status of one HTTP/1.1 answer, read to its end (the connection stays open)."""
    import asyncio

    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")
    length = next(int(h.split(":")[1]) for h in lines if h.lower().startswith("content-length"))
    await asyncio.wait_for(reader.readexactly(length), 10)
    return int(lines[0].split()[1])


async def closed_by_server(reader) -> bytes:
    """Everything the server sends until it closes the connection."""
    import asyncio

    return await asyncio.wait_for(reader.read(), 10)


def test_serve_refuses_connections_beyond_the_cap_and_serves_the_admitted(
        store: Store) -> None:
    import asyncio

    a, b = add_subscribers(store, 2)

    async def body(host: str, port: int) -> None:
        first = await asyncio.open_connection(host, port)
        first[1].write(raw_post(token(store, 4, a)))
        assert await answer(first[0]) == 202  # admitted, and kept alive
        second = await asyncio.open_connection(host, port)
        second[1].write(raw_post(token(store, 4, b)))
        assert await answer(second[0]) == 202
        third = await asyncio.open_connection(host, port)  # one more than the cap
        refused = await closed_by_server(third[0])
        assert refused.startswith(b"HTTP/1.1 503 ") and b"too many connections" in refused
        # the admitted connection is still served, on the same socket
        first[1].write(raw_post(token(store, 5, a)))
        assert await answer(first[0]) == 202
        # a slot given back is a slot for the next connection (once the server saw the close)
        second[1].close()
        for _ in range(1000):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(raw_post(token(store, 6, b), close=True))
            try:
                got = await closed_by_server(reader)
            except ConnectionResetError:  # refused while our request was on its way
                got = b""
            writer.close()
            if got.startswith(b"HTTP/1.1 202 "):
                break
        else:
            raise AssertionError("the closed connection's slot never came back")
        first[1].close()

    stats = asyncio.run(serving(store, body, max_connections=2))
    assert stats.accepted == 4 and stats.stored == 4
    assert stats.connections_refused >= 1 and stats.timed_out == 0
    assert stored_events(store) == {(4, a, "clicked", None), (4, b, "clicked", None),
                                    (5, a, "clicked", None), (6, b, "clicked", None)}


def test_serve_closes_a_connection_that_sends_half_its_head(store: Store) -> None:
    import asyncio

    (a,) = add_subscribers(store, 1)

    async def body(host: str, port: int) -> None:
        slow = await asyncio.open_connection(host, port)
        served = await asyncio.open_connection(host, port)
        half = raw_post(token(store, 4, a))
        slow[1].write(half[:40])  # half the head, then nothing
        served[1].write(raw_post(token(store, 5, a), close=True))
        assert (await closed_by_server(served[0])).startswith(b"HTTP/1.1 202 ")
        assert await closed_by_server(slow[0]) == b""  # closed, no answer
        slow[1].close()

    stats = asyncio.run(serving(store, body, head_timeout=0.2))
    assert (stats.timed_out, stats.accepted, stats.refused) == (1, 1, 0)
    assert stored_events(store) == {(5, a, "clicked", None)}


def test_serve_closes_an_idle_keep_alive_connection_and_a_slow_body(store: Store) -> None:
    import asyncio

    (a,) = add_subscribers(store, 1)

    async def body(host: str, port: int) -> None:
        idle = await asyncio.open_connection(host, port)
        idle[1].write(raw_post(token(store, 4, a)))
        assert await answer(idle[0]) == 202
        assert await closed_by_server(idle[0]) == b""  # kept alive, then idle too long
        idle[1].close()
        slow = await asyncio.open_connection(host, port)
        whole = raw_post(token(store, 5, a))
        slow[1].write(whole[:-10])  # the head and most of the body; the rest never comes
        assert await closed_by_server(slow[0]) == b""
        slow[1].close()

    stats = asyncio.run(serving(store, body, head_timeout=0.2, body_timeout=0.2))
    # the idle keep-alive close is not a timeout; the slow body is, and its request refused
    assert (stats.timed_out, stats.accepted, stats.refused) == (1, 1, 1)
    assert stored_events(store) == {(4, a, "clicked", None)}


def test_check_max_connections_takes_counts_the_process_can_open() -> None:
    from pushcli.collector import MAX_CONNECTIONS, check_max_connections

    assert check_max_connections(1) == 1 and check_max_connections(100) == 100
    assert 1 <= check_max_connections(None) <= MAX_CONNECTIONS
    for bad, reason in ((0, "at least 1"), (-3, "at least 1"),
                        (10**9, "more than this process may keep open")):
        with pytest.raises(InputError, match=reason):
            check_max_connections(bad)


# --- the commands ------------------------------------------------------------------------


def test_events_import_command_reports_lines_and_exits_1(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    with Store.open(db) as store:
        (a,) = add_subscribers(store, 1)
        good = token(store, 1, a)
    forged = make_token(b"\x02" * 32, 1, 0, a)
    path = write_ndjson(tmp_path / "ev.ndjson", [doc(good), doc(forged), doc(good, "shown")])
    res = invoke("events", "import", str(path), "--json", db=db)
    assert res.exit_code == 1, res.output
    assert json.loads(res.stdout) == {
        "read": 3, "added": 2, "duplicates": 0, "rejected": 1,
        "errors": [f"{path}:2: token: not signed by this store (forged, damaged, or older "
                   "than the last two secret rotations)"]}
    assert f"rejected: {path}:2: token: not signed" in res.stderr and forged not in res.stderr
    res = invoke("events", "import", str(path), db=db)
    assert res.exit_code == 1
    assert "events: 3 read, 0 added, 2 duplicates, 1 rejected" in res.stdout


def test_rotate_secret_command_never_prints_the_secret(tmp_path: Path) -> None:
    import base64

    db = tmp_path / "cli.db"
    with Store.open(db) as store:
        before = store.token_secrets()
    res = invoke("events", "rotate-secret", db=db)
    assert res.exit_code == 0 and "previous rotation no longer" in res.stdout
    with Store.open(db) as store:
        after = store.token_secrets()
    assert after[1] == before[0] and after[0] != before[0]
    printed = res.stdout + res.stderr
    assert not any(base64.urlsafe_b64encode(s).decode() in printed for s in after)


def test_events_serve_process_stores_everything_on_ctrl_c(tmp_path: Path) -> None:
    import signal
    import urllib.request

    from tests.support import pushcli_env, read_line, start_pushcli

    db = tmp_path / "serve.db"
    with Store.open(db) as store:
        ids = add_subscribers(store, 3)
        tokens = [token(store, 9, i) for i in ids]
    proc = start_pushcli("events", "serve", "--port", "0", "--allow-origin",
                         "https://shop.example.com", cwd=tmp_path, env=pushcli_env(db=db))
    try:
        assert proc.stdout is not None
        line = read_line(proc.stdout, 30, "pushcli events serve")
        assert line.startswith("listening on http://127.0.0.1:"), line
        url = line.split()[-1] + "/events"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for tok in tokens:  # what sendBeacon sends, from the allowed origin
            req = urllib.request.Request(url, data=json.dumps(doc(tok)).encode(), headers={
                "Content-Type": "text/plain;charset=UTF-8",
                "Origin": "https://shop.example.com"})
            with opener.open(req, timeout=10) as resp:
                assert resp.status == 202
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "3 events accepted, 3 stored" in err
    assert "0 connections refused (over --max-connections), 0 timed out" in err
    with Store.open(db) as store:
        assert stored_events(store) == {(9, i, "clicked", None) for i in ids}


def test_events_serve_refuses_a_bad_origin_or_port_before_listening(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    Store.open(db).close()
    res = invoke("events", "serve", "--allow-origin", "shop.example.com", db=db)
    assert res.exit_code == 2 and "--allow-origin: 'shop.example.com' is not an origin" in \
        res.stderr
    res = invoke("events", "serve", "--port", "70000", db=db)
    assert res.exit_code == 2 and "--port" in res.stderr
    for bad in ("0", "-1", str(10**9)):
        res = invoke("events", "serve", "--max-connections", bad, db=db)
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1, res.stderr
        assert lines[0].startswith("error: --max-connections: " + bad), lines
        assert res.stdout == ""


def test_events_serve_help_names_the_connection_cap_and_its_default() -> None:
    from pushcli.collector import BODY_TIMEOUT, HEAD_TIMEOUT, MAX_CONNECTIONS

    res = invoke("events", "serve", "--help", env={"COLUMNS": "250"})
    assert res.exit_code == 0
    text = " ".join(res.stdout.split())
    assert "--max-connections" in text and f"(default {MAX_CONNECTIONS}," in text
    assert f"{HEAD_TIMEOUT:g} s for its request head" in text
    assert f"{BODY_TIMEOUT:g} s more for its body" in text
