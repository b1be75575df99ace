"""The store suite: the same tests on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pushcli.errors import Busy, InputError
from pushcli.messages import DeliveryRecord
from pushcli.pushservices import Fault, Outcome
from pushcli.store import (
    PRUNE_LOCK,
    SCHEMA_VERSION,
    Store,
    campaign_lock,
    is_campaign_lock,
    locks,
)
from pushcli.subscriptions import make_subscription
from tests.support import fresh_database, real_subscription, wait_for


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    """A URL for an empty store on each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return fresh_database(request.getfixturevalue("pg_admin"))


@pytest.fixture
def st(backend):
    s = Store.open(backend)
    yield s
    s.close()


def subs(n: int, **extra) -> list:
    return [make_subscription(real_subscription(**extra)) for _ in range(n)]


def load(store: Store, items, strict: bool = False):
    return store.import_subscriptions((("f", s) for s in items), strict=strict)


def test_schema_is_created_and_versioned(st: Store, backend: str) -> None:
    assert st.schema_version() == SCHEMA_VERSION
    assert st.integrity_ok()
    st.close()
    again = Store.open(backend)  # re-opening migrates nothing and keeps the version
    assert again.schema_version() == SCHEMA_VERSION
    again.close()


def test_upsert_counts_added_updated_unchanged(st: Store) -> None:
    batch = subs(2500)
    r = load(st, batch)
    assert (r.added, r.updated, r.unchanged) == (2500, 0, 0)
    r = load(st, batch)
    assert (r.added, r.updated, r.unchanged) == (0, 0, 2500)
    changed = make_subscription(real_subscription(batch[0].endpoint, tags=["vip"]))
    r = load(st, [changed])
    assert r.updated == 1
    assert st.find_by_endpoint(batch[0].endpoint).subscription.tags == ("vip",)
    assert st.count() == 2500


def test_strict_import_rolls_back_everything(st: Store) -> None:
    from pushcli.subscriptions import Rejected

    load(st, subs(3))
    items = [("f", s) for s in subs(2100)] + [("f", Rejected("[9]", "bad"))]
    r = st.import_subscriptions(iter(items), strict=True)
    assert r.committed is False and r.rejected == 1
    assert st.count(status="all") == 3


def test_tags_filter_is_exact_even_with_like_wildcards(st: Store) -> None:
    load(st, subs(2, tags=["a_b"]) + subs(3, tags=["axb"]) + subs(1, tags=["a_b", "vip"]))
    assert st.count(tags=["a_b"]) == 3
    assert st.count(tags=["axb"]) == 3
    assert st.count(tags=["vip", "axb"]) == 4
    assert st.count(tags=["a"]) == 0


def test_may_hold_hosts_is_false_only_when_no_active_endpoint_is_there(st: Store) -> None:
    import sqlalchemy as sa

    from pushcli.store import subscriptions

    load(st, subs(3))  # fcm
    assert not st.may_hold_hosts(["push.apple.com"])
    assert not st.may_hold_hosts([])
    with st.engine.begin() as conn:  # a row written by hand, host in capitals
        conn.execute(sa.insert(subscriptions).values(
            endpoint="https://WEB.PUSH.APPLE.COM/x", p256dh="k", auth="a", status="active"))
    assert st.may_hold_hosts(["push.apple.com"])
    with st.engine.begin() as conn:
        conn.execute(sa.update(subscriptions).values(status="expired")
                     .where(subscriptions.c.endpoint.like("%APPLE%")))
    assert not st.may_hold_hosts(["push.apple.com"])


def test_iter_subscriptions_pages_in_id_order(st: Store) -> None:
    load(st, subs(250))
    ids = [s.id for s in st.iter_subscriptions(batch_size=60)]
    assert len(ids) == 250 and ids == sorted(ids) and len(set(ids)) == 250


def test_ledger_resume_retry_failed_and_expiry(st: Store) -> None:
    load(st, subs(10, locale="fr"))
    c = st.start_campaign("c1", {"name": "c1"})
    all_ids = [s.id for b in st.pending(c.id) for s in b]
    assert len(all_ids) == 10 and st.count_pending(c.id) == 10
    st.record(c.id, [DeliveryRecord(all_ids[0], Outcome.SENT, "fcm", 201),
                     DeliveryRecord(all_ids[1], Outcome.FAILED, "fcm", 503, "HTTP 503"),
                     DeliveryRecord(all_ids[2], Outcome.EXPIRED, "fcm", 410)])
    pending = [s.id for b in st.pending(c.id) for s in b]
    assert all_ids[0] not in pending and all_ids[1] not in pending and len(pending) == 7
    assert st.count_pending(c.id) == 7
    retry = [s.id for b in st.pending(c.id, retry_failed=True) for s in b]
    assert all_ids[1] in retry and len(retry) == 8
    assert st.count_pending(c.id, retry_failed=True) == 8
    assert st.count(status="expired") == 1 and st.count() == 9
    # a retried failure that now succeeds replaces the outcome and adds its attempts
    st.record(c.id, [DeliveryRecord(all_ids[1], Outcome.SENT, "fcm", 201, attempts=2)])
    counts = st.outcome_counts(c.id)
    assert counts["fcm"] == {"sent": 2, "expired": 1}
    rows = {r["subscription_id"]: r for r in st.delivery_rows(c.id)}
    assert rows[all_ids[1]]["attempts"] == 3 and rows[all_ids[1]]["outcome"] == "sent"
    assert st.distinct_locales() == ["fr"]


def test_id_ranges_split_the_audience_without_overlap(st: Store) -> None:
    load(st, subs(100))
    c = st.start_campaign("p", {})
    low, high = st.id_span()
    cuts = [low - 1, low + 20, low + 21, low + 70, high]
    ranges = list(itertools.pairwise(cuts))
    parts = [{s.id for b in st.pending(c.id, id_range=r, batch_size=7) for s in b}
             for r in ranges]
    assert [len(p) for p in parts] == [21, 1, 49, 29]
    assert set().union(*parts) == {s.id for b in st.pending(c.id) for s in b}
    assert all(a < sid <= b for (a, b), p in zip(ranges, parts, strict=True) for sid in p)
    load(st, subs(3))  # imported while the campaign is sent: above the span
    assert len([s for b in st.pending(c.id, id_range=(high, None)) for s in b]) == 3


def test_prune_candidates_and_ledger_survives_delete(st: Store) -> None:
    load(st, subs(6))
    ids = [s.id for s in st.iter_subscriptions()]
    history = {
        ids[0]: [Outcome.EXPIRED],
        ids[1]: [Outcome.FAILED, Outcome.REJECTED],
        ids[2]: [Outcome.FAILED, Outcome.SENT],
        ids[3]: [Outcome.AUTH, Outcome.AUTH],
        ids[4]: [Outcome.BLOCKED, Outcome.BLOCKED],
        ids[5]: [Outcome.FAILED],
    }
    for n in range(2):
        c = st.start_campaign(f"c{n}", {})
        st.record(c.id, [DeliveryRecord(sid, h[n], "fcm") for sid, h in history.items()
                         if len(h) > n])
    assert st.prunable() == [ids[0]]
    # ids[2]: last two are failed+sent -> kept; ids[5] has only one campaign -> kept
    assert st.prunable(failed_campaigns=2) == [ids[0], ids[1]]
    assert st.prunable(failed_campaigns=1) == [ids[0], ids[1], ids[5]]
    assert st.delete_subscriptions(st.prune_candidates(failed_campaigns=2)) == 2
    assert st.count(status="all") == 4
    c0 = st.get_campaign("c0")
    assert sum(st.outcome_counts(c0.id)["fcm"].values()) == 6
    assert {r["endpoint"] is None for r in st.delivery_rows(c0.id)} == {True, False}


def _two_campaigns(st: Store, answers: dict[int, tuple[Outcome, int | None, Fault | None]],
                   service: str = "apple") -> None:
    for n in range(2):
        c = st.start_campaign(f"c{n}", {})
        st.record(c.id, [DeliveryRecord(sid, o, service, code, "x", fault=f)
                         for sid, (o, code, f) in answers.items()])


def test_prune_never_counts_held_back_auth_or_the_senders_rejections(st: Store) -> None:
    """Issue 10 #1: wrong key / campaign-wide BadWebPushTopic twice must delete nobody."""
    load(st, subs(10))
    ids = [s.id for s in st.iter_subscriptions()]
    answers = {i: (Outcome.AUTH, 403, Fault.SENDER) for i in ids[:3]}
    answers.update({i: (Outcome.FAILED, None, Fault.HELD) for i in ids[3:6]})
    answers.update({i: (Outcome.REJECTED, 400, Fault.SENDER) for i in ids[6:]})
    _two_campaigns(st, answers)
    assert st.prunable(failed_campaigns=2) == []
    assert st.prunable(failed_campaigns=1) == []


def test_prune_counts_an_unnamed_400_only_when_it_did_not_hit_most_recipients(st: Store) -> None:
    load(st, subs(10))
    ids = [s.id for s in st.iter_subscriptions()]
    # the same unexplained 400 to 6 of 10 Apple recipients: the campaign's problem
    _two_campaigns(st, {i: ((Outcome.REJECTED, 400, Fault.UNKNOWN) if k < 6 else
                            (Outcome.SENT, 201, None)) for k, i in enumerate(ids)})
    assert st.prunable(failed_campaigns=2) == []


def test_prune_counts_answers_about_the_subscriber(st: Store) -> None:
    load(st, subs(10))
    ids = [s.id for s in st.iter_subscriptions()]
    answers = {i: (Outcome.SENT, 201, None) for i in ids}
    answers[ids[0]] = (Outcome.REJECTED, 400, Fault.UNKNOWN)  # 1 in 10: about this one
    answers[ids[1]] = (Outcome.FAILED, 503, Fault.SERVICE)  # its own 5xx after all retries
    _two_campaigns(st, answers)
    assert st.prunable(failed_campaigns=2) == [ids[0], ids[1]]


def test_prune_counts_a_reason_naming_the_subscription_even_campaign_wide(st: Store) -> None:
    load(st, subs(4))
    ids = [s.id for s in st.iter_subscriptions()]
    _two_campaigns(st, {i: (Outcome.REJECTED, 400, Fault.SUBSCRIBER) for i in ids})
    assert st.prunable(failed_campaigns=2) == ids


def test_prune_delete_spares_a_subscriber_changed_after_selection(st: Store) -> None:
    """Issue 10 #10: the DELETE re-checks; an import between select and delete wins."""
    batch = subs(4)
    load(st, batch)
    ids = [s.id for s in st.iter_subscriptions()]
    c = st.start_campaign("c", {})
    st.record(c.id, [DeliveryRecord(ids[0], Outcome.EXPIRED, "fcm", 410),
                     DeliveryRecord(ids[1], Outcome.EXPIRED, "fcm", 410),
                     DeliveryRecord(ids[2], Outcome.REJECTED, "fcm", 400, fault=Fault.SUBSCRIBER),
                     DeliveryRecord(ids[3], Outcome.SENT, "fcm", 201)])
    selected = st.prune_candidates(failed_campaigns=1)
    assert [p.id for p in selected] == ids[:3]
    # updated_at (wall-clock seconds) must differ from the selected one
    wait_for(lambda: time.time() > max(p.updated_at or 0 for p in selected), 5,
             "the clock to pass the selection's updated_at")
    load(st, [batch[1]])  # the user subscribed again: reactivated
    load(st, [make_subscription(real_subscription(batch[2].endpoint))])  # new keys
    assert st.delete_subscriptions(selected) == 1
    assert [s.id for s in st.iter_subscriptions(status="all")] == ids[1:]
    assert st.find_by_endpoint(batch[1].endpoint).status == "active"


def test_retry_failed_sends_blocked_again(st: Store) -> None:
    load(st, subs(3))
    ids = [s.id for s in st.iter_subscriptions()]
    c = st.start_campaign("b", {})
    st.record(c.id, [DeliveryRecord(ids[0], Outcome.BLOCKED, "blocked", attempts=0),
                     DeliveryRecord(ids[1], Outcome.SENT, "fcm", 201),
                     DeliveryRecord(ids[2], Outcome.AUTH, "fcm", 403)])
    assert st.count_pending(c.id) == 0
    assert [s.id for b in st.pending(c.id, retry_failed=True) for s in b] == [ids[0]]
    st.enqueue(c.id, ids)  # the shared-send path too
    st.reset_failed_claims(c.id)
    assert [s.id for s in st.claim(c.id, "me", size=10, lease=60, retry_failed=True)] == [ids[0]]


def test_an_endpoint_moved_to_fcm_wp_form_is_kept_unless_taken(st: Store) -> None:
    old = "https://fcm.googleapis.com/fcm/send/tok1"
    load(st, [make_subscription(real_subscription(old)),
              make_subscription(real_subscription("https://fcm.googleapis.com/fcm/send/tok2")),
              make_subscription(real_subscription("https://fcm.googleapis.com/wp/tok2"))])
    a, b, _ = [s.id for s in st.iter_subscriptions()]
    c = st.start_campaign("m", {})
    st.record(c.id, [
        DeliveryRecord(a, Outcome.SENT, "fcm", 201,
                       moved=(old, "https://fcm.googleapis.com/wp/tok1")),
        DeliveryRecord(b, Outcome.SENT, "fcm", 201,  # the /wp/ form is another row already
                       moved=("https://fcm.googleapis.com/fcm/send/tok2",
                              "https://fcm.googleapis.com/wp/tok2")),
    ])
    assert st.find_by_endpoint("https://fcm.googleapis.com/wp/tok1").id == a
    assert st.find_by_endpoint("https://fcm.googleapis.com/fcm/send/tok2").id == b
    assert st.outcome_counts(c.id) == {"fcm": {"sent": 2}}


def test_locks_are_exclusive_blocking_and_recover_from_dead_owners(st: Store) -> None:
    lock = st.acquire_lock(campaign_lock("a"))
    with pytest.raises(Busy, match="campaign:a is locked by pid"):
        st.acquire_lock(campaign_lock("a"), wait=5)  # same name: refused at once, no waiting
    t = time.monotonic()
    with pytest.raises(Busy, match="campaign:a"):
        st.acquire_lock(PRUNE_LOCK, wait=0.5, blocked_by=is_campaign_lock)
    assert 0.4 < time.monotonic() - t < 5
    other = st.acquire_lock(campaign_lock("b"))  # different campaigns do not block each other
    other.release()
    lock.release()
    st.acquire_lock(PRUNE_LOCK, blocked_by=is_campaign_lock).release()


def test_a_dead_owners_lock_is_taken_over_at_once(st: Store) -> None:
    """kill -9 never blocks the next run: a lock whose process is gone is cleared by the
    next taker of the same name and by a taker it would block (prune, with no wait).
    (Merged from the e2e "prune right after kill -9 of a sender" test: same property.)"""
    import sqlalchemy as sa

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    now = time.time()
    with st.engine.begin() as conn:
        for name in (campaign_lock("a"), campaign_lock("killed", "sender-1")):
            conn.execute(locks.insert().values(name=name, owner=f"pid {dead}", pid=dead,
                                               host=socket.gethostname(), acquired_at=now,
                                               heartbeat_at=now))
    assert st.running_senders("a") == st.running_senders("killed") == 0
    st.acquire_lock(campaign_lock("a")).release()  # the same name
    # a taker it would block; wait=0: a live blocker would be refused at once
    with st.acquire_lock(PRUNE_LOCK, wait=0, blocked_by=is_campaign_lock), \
            st.engine.connect() as conn:
        assert [r.name for r in conn.execute(sa.select(locks))] == [PRUNE_LOCK], \
            "the dead sender's lock must be cleared"
    with st.engine.connect() as conn:
        assert conn.execute(sa.select(locks)).all() == []


def test_concurrent_imports_of_overlapping_files_lose_nothing(backend: str) -> None:
    shared = subs(1500)
    own = [subs(500), subs(500)]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with Store.open(backend) as s:
                load(s, shared + own[i])
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with Store.open(backend) as s:
        assert s.count() == 2500


def test_concurrent_first_opens_of_a_new_sqlite_file_all_succeed(tmp_path) -> None:
    """SQLite answers a concurrent switch to WAL BUSY at once; opening waits it out."""
    errors: list[BaseException] = []

    def opener(db: Path, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            with Store.open(db) as s:
                load(s, subs(20))
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    for round_ in range(25):
        barrier = threading.Barrier(6)
        threads = [threading.Thread(target=opener, args=(tmp_path / f"new-{round_}.db", barrier))
                   for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors


def test_display_url_never_shows_a_password(tmp_path) -> None:
    from pushcli.store import database_url

    url = database_url("postgresql://pushcli:s3cret@db.internal:5432/push")
    assert url.startswith("postgresql+psycopg://")
    shown = Store(None, url).display_url  # type: ignore[arg-type]
    assert "s3cret" not in shown and "db.internal" in shown
    with Store.open(tmp_path / "x.db") as s:
        assert s.display_url == str(tmp_path / "x.db")


def test_a_version_1_store_is_migrated_in_place(backend: str) -> None:
    """A store written by schema v1 (no lease columns) opens, migrates and keeps its rows."""
    import sqlalchemy as sa

    from pushcli.store import database_url, deliveries, metadata

    url = database_url(backend)
    if url.startswith("sqlite"):
        os.close(os.open(backend, os.O_CREAT | os.O_WRONLY, 0o600))
    engine = sa.create_engine(url)
    v1 = sa.MetaData()
    for table in metadata.sorted_tables:
        cols = [sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable,
                          server_default=c.server_default.arg if c.server_default else None)
                for c in table.columns
                if c.name not in ("lease_owner", "lease_until", "fault", "last_run", "timezone",
                                  "winner", "variant")]
        if table.name not in ("events", "campaign_runs", "intents"):  # v6, v7, v8
            sa.Table(table.name, v1, *cols)
    with engine.begin() as conn:
        v1.create_all(conn)
        conn.execute(v1.tables["pushcli_meta"].insert().values(key="schema_version", value="1"))
        old = conn.execute(v1.tables["campaigns"].insert().values(
            name="old", created_at=1.0, status="finished", runs=1)).inserted_primary_key[0]
        conn.execute(v1.tables["deliveries"].insert().values(
            campaign_id=old, subscription_id=7, outcome="sent", service="fcm", attempts=1,
            ambiguous=0, updated_at=1.0))
        # held back by an auth stop before v3 knew the difference: plain "failed"
        conn.execute(v1.tables["deliveries"].insert().values(
            campaign_id=old, subscription_id=8, outcome="failed", service="fcm", attempts=1,
            ambiguous=0, updated_at=1.0, reason="not sent: fcm answered 401/403 to 20 requests"))
    engine.dispose()
    with Store.open(backend) as st:
        assert st.schema_version() == SCHEMA_VERSION == 9
        if st.is_sqlite:  # v9: ids never reused (tests/test_subscriber_ids.py)
            with st.engine.connect() as conn:
                assert "AUTOINCREMENT" in conn.exec_driver_sql(
                    "SELECT sql FROM sqlite_master WHERE name = 'subscriptions'").scalar_one()
        assert len(st.token_secrets()) == 1  # v6: a secret for engagement tokens
        assert st.outcome_counts(st.get_campaign("old").id) == {"fcm": {"sent": 1, "failed": 1}}
        with st.engine.connect() as conn:
            rows = conn.execute(sa.select(deliveries.c.subscription_id, deliveries.c.lease_owner,
                                          deliveries.c.lease_until, deliveries.c.fault)
                                .order_by(deliveries.c.subscription_id)).all()
        assert [tuple(r) for r in rows] == [(7, None, None, None), (8, None, None, "held")]
        load(st, subs(3))
        # v5: the subscriber's time zone is stored and read back
        zoned = make_subscription({**real_subscription(), "timezone": "Asia/Kolkata"})
        load(st, [zoned])
        assert st.find_by_endpoint(zoned.endpoint).subscription.timezone == "Asia/Kolkata"
        assert {s.subscription.timezone for s in st.iter_subscriptions()} == {
            None, "Asia/Kolkata"}
        c = st.start_campaign("new", {})
        st.enqueue(c.id, [s.id for s in st.iter_subscriptions()])
        assert st.queued(c.id) == 4
        assert len(st.claim(c.id, "me", size=10, lease=5)) == 4
        assert st.claim(c.id, "other", size=10, lease=5) == []  # leased: not handed out twice
        # v6: the variant column and the events table
        with st.engine.connect() as conn:
            assert conn.execute(sa.select(deliveries.c.variant)).scalars().all() == [None] * 6
        # v7: the run history, kept for the old campaign too
        old_id = st.get_campaign("old").id
        assert st.run_history(old_id) == []
        st.finish_campaign(old_id, "finished", {}, {
            "at": 5.0, "status": "finished", "scheduled": True, "due": 3, "attempted": 3,
            "sent": 2, "waiting": 1, "capped": 0, "missed": 0})
        assert st.run_history(old_id) == [{
            "run": 1, "at": 5.0, "status": "finished", "scheduled": True, "due": 3,
            "attempted": 3, "sent": 2, "waiting": 1, "capped": 0, "missed": 0}]


def test_the_token_secret_is_made_once_and_rotation_keeps_the_previous_one(
        st: Store, backend: str) -> None:
    from pushcli.tokens import make_token, read_token

    (first,) = st.token_secrets()
    assert len(first) == 32
    with Store.open(backend) as again:  # re-opening does not make another one
        assert again.token_secrets() == (first,)
    token = make_token(first, 3, 1, 42)
    st.rotate_token_secret()
    current, previous = st.token_secrets()
    assert previous == first and current != first
    assert read_token(st.token_secrets(), token) is not None  # still in notifications
    st.rotate_token_secret()
    assert read_token(st.token_secrets(), token) is None  # two rotations later: refused


def test_claims_are_disjoint_and_expired_leases_return_to_the_pool(st: Store) -> None:
    load(st, subs(5))
    c = st.start_campaign("q", {})
    st.enqueue(c.id, [s.id for s in st.iter_subscriptions()])
    st.enqueue(c.id, [s.id for s in st.iter_subscriptions()])  # a second sender: idempotent
    assert st.queued(c.id) == 5
    a = {s.id for s in st.claim(c.id, "a", size=3, lease=0.3)}
    b = {s.id for s in st.claim(c.id, "b", size=3, lease=60)}
    assert len(a) == 3 and len(b) == 2 and not a & b
    assert st.claim(c.id, "c", size=10, lease=60) == []
    assert st.renew_leases(c.id, "b", 60) == 2
    # a died: once its lease runs out its rows return to the pool; b's was renewed
    taken = wait_for(lambda: {s.id for s in st.claim(c.id, "c", size=10, lease=60)}, 10,
                     "a's lease to run out")
    assert taken == a
    st.record(c.id, [DeliveryRecord(i, Outcome.SENT, "fcm") for i in a | b])
    assert st.queued(c.id) == 0
    assert st.outcome_counts(c.id) == {"fcm": {"sent": 5}}  # queued rows never counted


def test_a_dead_senders_intent_is_adopted_before_its_work_is_claimed_again(st: Store) -> None:
    """Shared sends: what a sender committed in flight and never recorded becomes
    ``inflight`` (a counted resend) when its lease runs out, not while it may live."""
    load(st, subs(6))
    c = st.start_campaign("adopt", {})
    st.enqueue(c.id, [s.id for s in st.iter_subscriptions()])
    a = [s.id for s in st.claim(c.id, "a", size=3, lease=0.3)]
    b = [s.id for s in st.claim(c.id, "b", size=3, lease=0.3)]
    st.open_intent(c.id, "a", a, lease=0.3)  # a posts its three, then dies
    st.open_intent(c.id, "b", b[:1], lease=0.3)  # b lives and renews
    st.record(c.id, [DeliveryRecord(a[0], Outcome.SENT, "fcm")])  # recorded before a died
    assert st.in_flight(c.id) == {a[1], a[2], b[0]}
    assert st.inflight_among(c.id, a + b) == set()  # nothing adopted while leases hold
    assert st.renew_leases(c.id, "b", 60) == 3
    taken = wait_for(lambda: [s.id for s in st.claim(c.id, "c", size=10, lease=60)], 10,
                     "a's lease to run out")
    assert taken == a[1:]
    assert st.inflight_among(c.id, a + b) == {a[1], a[2]}  # resent, and counted
    assert st.in_flight(c.id) == {a[1], a[2], b[0]}  # b's intent row still stands


def test_a_shared_claim_adopts_what_a_dead_lock_holding_run_left(st: Store) -> None:
    """PostgreSQL: a --to/--limit run (campaign lock, intent rows without a lease) killed
    mid-send, then a plain shared send: its claims must count x's resend too."""
    load(st, subs(2))
    c = st.start_campaign("limit-then-shared", {})
    x, y = (s.id for s in st.iter_subscriptions())
    st.open_intent(c.id, "limit-run", [x])  # posted x, then kill -9
    st.enqueue(c.id, [x, y])  # the shared send queues the audience
    assert {s.id for s in st.claim(c.id, "a", size=10, lease=60)} == {x, y}
    assert st.inflight_among(c.id, [x, y]) == {x}
    assert st.in_flight(c.id) == {x}  # adopted once: no intent row left behind


def test_an_intent_of_a_retry_failed_run_supersedes_the_failed_rows_it_resent(
        st: Store) -> None:
    """--retry-failed posts ``failed`` rows again: if that run dies, those subscribers may
    have the message now. A failed (or blocked) answer recorded after the intent is
    final, though: that request was answered and did not deliver."""
    load(st, subs(3))
    c = st.start_campaign("retry-intent", {})
    x, y, z = (s.id for s in st.iter_subscriptions())
    st.record(c.id, [DeliveryRecord(x, Outcome.FAILED, "fcm", 503),
                     DeliveryRecord(y, Outcome.BLOCKED, "fcm"),
                     DeliveryRecord(z, Outcome.FAILED, "fcm", 503)])
    st.open_intent(c.id, "retrier", [x, y, z])  # the retry run posts all three, then dies
    st.record(c.id, [DeliveryRecord(z, Outcome.FAILED, "fcm", 503)])  # z answered first
    assert st.in_flight(c.id) == {x, y}
    assert st.adopt_intents(c.id, everything=True) == 3
    assert st.inflight_among(c.id, [x, y, z]) == {x, y}  # a resend of x or y is counted
    assert st.in_flight(c.id) == {x, y}


def test_retry_failed_claims_each_failed_row_once_per_run(st: Store) -> None:
    load(st, subs(2))
    c = st.start_campaign("r", {})
    ids = [s.id for s in st.iter_subscriptions()]
    st.enqueue(c.id, ids)
    st.claim(c.id, "a", size=10, lease=60)
    st.record(c.id, [DeliveryRecord(ids[0], Outcome.FAILED, "fcm", 503),
                     DeliveryRecord(ids[1], Outcome.SENT, "fcm", 201)])
    assert st.claim(c.id, "a", size=10, lease=60) == []  # failed is final without retry
    st.reset_failed_claims(c.id)
    assert st.queued(c.id, retry_failed=True) == 1
    [again] = st.claim(c.id, "b", size=10, lease=60, retry_failed=True)
    assert again.id == ids[0]
    st.record(c.id, [DeliveryRecord(ids[0], Outcome.FAILED, "fcm", 503)])
    assert st.claim(c.id, "b", size=10, lease=60, retry_failed=True) == []
    assert st.queued(c.id, retry_failed=True) == 0


def test_a_sender_joining_a_retry_failed_send_never_takes_a_failed_row_in_flight(
        st: Store) -> None:
    """A failed row stays ``failed`` in the ledger while a --retry-failed sender posts it
    again (its intent row says so). A second sender starting later resets failed claims:
    it must leave that live claim alone, or it resends the message, uncounted."""
    load(st, subs(2))
    c = st.start_campaign("r2", {})
    x, y = (s.id for s in st.iter_subscriptions())
    st.record(c.id, [DeliveryRecord(x, Outcome.FAILED, "fcm", 503),
                     DeliveryRecord(y, Outcome.FAILED, "fcm", 503)])
    st.reset_failed_claims(c.id)  # sender a starts
    [taken] = st.claim(c.id, "a", size=1, lease=60, retry_failed=True)
    st.open_intent(c.id, "a", [taken.id], lease=60)  # a posts it
    st.reset_failed_claims(c.id)  # sender b starts while a's request is in flight
    assert [s.id for s in st.claim(c.id, "b", size=10, lease=60, retry_failed=True)] == [
        ({x, y} - {taken.id}).pop()]


def _ab_ledger(st: Store) -> int:
    """A campaign with variants a/b: ledger rows by outcome, events by kind; returns its id."""
    from pushcli.store import deliveries, events

    cid = st.start_campaign("ab", {}).id
    rows, evs = [], []
    plan = {"a": {"sent": 50, "expired": 3, "rejected": 2, "failed": 1, "auth": 1},
            "b": {"sent": 40, "blocked": 2, "capped": 4, "holdout": 5}}
    sid = 0
    for variant, outcomes in plan.items():
        for outcome, n in outcomes.items():
            for _ in range(n):
                sid += 1
                rows.append({"campaign_id": cid, "subscription_id": sid, "outcome": outcome,
                             "service": "fcm", "updated_at": 1.0, "variant": variant})
                if outcome == "sent" and sid % 5 == 0:  # a: 10 clickers, b: 8
                    evs += [{"campaign_id": cid, "subscription_id": sid, "kind": k,
                             "at": 2.0, "received_at": 2.0} for k in ("shown", "clicked")]
                elif outcome == "sent" and sid % 5 == 1:  # shown and closed
                    evs += [{"campaign_id": cid, "subscription_id": sid, "kind": k,
                             "at": 2.0, "received_at": 2.0} for k in ("shown", "closed")]
    rows += [{"campaign_id": cid, "subscription_id": 1000 + i, "outcome": "sent",
              "service": "mozilla", "updated_at": 1.0, "variant": None} for i in range(3)]
    # an event of a subscriber recorded failed (a timeout that arrived) is not counted,
    # nor one of another campaign
    evs.append({"campaign_id": cid, "subscription_id": 53, "kind": "clicked", "at": 2.0,
                "received_at": 2.0})
    other = st.start_campaign("other", {}).id
    evs.append({"campaign_id": other, "subscription_id": 5, "kind": "clicked", "at": 2.0,
                "received_at": 2.0})
    with st.engine.begin() as conn:
        conn.execute(deliveries.insert(), rows)
        conn.execute(events.insert(), evs)
    return cid


def test_variant_results_count_outcomes_and_events_per_variant(st: Store) -> None:
    from pushcli.messages import VariantResult

    cid = _ab_ledger(st)
    results = st.variant_results(cid)
    assert list(results) == ["a", "b"]
    assert results["a"] == VariantResult("a", sent=50, expired=3, rejected=2, failed=2,
                                         shown=20, clicked=10, closed=10)
    # blocked folds into failed; capped and holdout rows are not part of any variant
    assert results["b"] == VariantResult("b", sent=40, failed=2, shown=16, clicked=8,
                                         closed=8)
    assert results["a"].click_rate == 0.2
    assert st.variant_results(cid, include_unassigned=True)[""] == VariantResult("", sent=3)
    assert st.variant_results(st.start_campaign("empty", {}).id) == {}


def test_winner_first_writer_wins(st: Store) -> None:
    cid = st.start_campaign("ab", {}).id
    other = st.start_campaign("other", {}).id
    assert st.get_winner(cid) is None
    first = st.set_winner(cid, "b", 100.0, "b leads")
    assert first == {"variant": "b", "decided_at": 100.0, "reason": "b leads"}
    assert st.set_winner(cid, "a", 200.0, "a leads") == first
    assert st.get_winner(cid) == first
    assert st.get_winner(other) is None
    with pytest.raises(InputError):
        st.set_winner(9999, "a", 1.0, "x")


def test_shared_senders_starting_the_same_campaign_at_once_all_start(backend: str) -> None:
    """Three shared senders began one campaign together on PostgreSQL: all found no row,
    and two failed on the unique name (exit 74) in a CI run."""
    stores = [Store.open(backend) for _ in range(4)]
    try:
        for k in range(15):
            gate = threading.Barrier(len(stores))
            errors: list[BaseException] = []

            def start(st: Store, name: str = f"race{k}", gate: threading.Barrier = gate,
                      errors: list[BaseException] = errors) -> None:
                gate.wait()
                try:
                    st.start_campaign(name, {})
                except BaseException as exc:  # noqa: BLE001 - collected, asserted below
                    errors.append(exc)

            threads = [threading.Thread(target=start, args=(st,)) for st in stores]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []
            info = stores[0].get_campaign(f"race{k}")
            assert info is not None and info.runs == len(stores)
    finally:
        for st in stores:
            st.close()


def test_a_tags_column_is_decoded_once_and_a_bad_one_refused_every_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pushcli.store import rows

    monkeypatch.setattr(rows, "_TAGS_SEEN", {})
    monkeypatch.setattr(rows, "_TAGS_SEEN_MAX", 2)
    first = rows._json_tags('["news","fr"]')
    assert first == ("news", "fr") and rows._json_tags('["news","fr"]') is first
    for _ in range(2):
        with pytest.raises(ValueError, match="tags: not a JSON array of strings"):
            rows._json_tags('["news", 1]')
    rows._json_tags('["a"]')
    rows._json_tags('["b"]')  # full: the seen ones are dropped, never more than the bound
    assert len(rows._TAGS_SEEN) <= 2 and rows._json_tags('["news","fr"]') == ("news", "fr")
