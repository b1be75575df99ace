"""A deleted subscriber's id is never given to a new one (issue 10: nothing pruned by
mistake). The ledger and the events keep a deleted subscriber's history by id; had
SQLite reused the id (``INTEGER PRIMARY KEY`` without ``AUTOINCREMENT`` hands out
max(id)+1), the next import would inherit that history: reports misattributed, a
frequency cap or ``prune --failed-campaigns`` applied to someone who was never sent
anything. New SQLite stores use ``AUTOINCREMENT``; older ones are rebuilt in place
(``schema.rebuild_subscriptions_autoincrement``). PostgreSQL sequences never go back.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from pushcli.errors import StoreError
from pushcli.messages import DeliveryRecord
from pushcli.pushservices import Fault, Outcome
from pushcli.store import SCHEMA_VERSION, Store, database_url, metadata
from pushcli.subscriptions import make_subscription
from tests.support import fresh_database, real_subscription

#: The schema version that gave SQLite's ``subscriptions`` AUTOINCREMENT.
AUTOINCREMENT_VERSION = 9


@pytest.fixture(params=["sqlite", "postgresql"])
def st(request, tmp_path: Path):
    """An empty store on each backend."""
    url = (str(tmp_path / "store.db") if request.param == "sqlite"
           else fresh_database(request.getfixturevalue("pg_admin")))
    with Store.open(url) as s:
        yield s


def _load(store: Store, n: int) -> list[int]:
    """Import ``n`` new subscribers; their ids."""
    batch = [make_subscription(real_subscription()) for _ in range(n)]
    store.import_subscriptions(("f", s) for s in batch)
    return sorted(store.find_by_endpoint(s.endpoint).id for s in batch)


def test_a_pruned_subscribers_ledger_never_reaches_the_next_import(st: Store) -> None:
    """Sent twice, then expired and pruned: the newcomer has no history, no cap."""
    ids = _load(st, 3)
    last = ids[-1]
    for n in range(2):
        c = st.start_campaign(f"c{n}", {})
        st.record(c.id, [DeliveryRecord(i, Outcome.SENT, "fcm", 201) for i in ids])
    gone = st.start_campaign("gone", {})
    st.record(gone.id, [DeliveryRecord(last, Outcome.EXPIRED, "fcm", 410)])
    assert st.delete_subscriptions(st.prune_candidates()) == 1

    (new,) = _load(st, 1)
    assert new > last
    # the old subscriber's rows stay its own: no endpoint, not the newcomer's
    assert [r["endpoint"] for r in st.delivery_rows(gone.id)] == [None]
    # a frequency cap of 2 messages caps the two who got them, not the newcomer
    c = st.start_campaign("next", {})
    capped = st.over_cap(c.id, since=0.0, most=2)
    assert [(s.id, n) for s, n in capped] == [(ids[0], 2), (ids[1], 2)]


def test_prune_failed_campaigns_never_deletes_the_next_import(st: Store) -> None:
    """Rejected by name in two campaigns and pruned: the newcomer is not prunable."""
    ids = _load(st, 3)
    last = ids[-1]
    for n in range(2):
        c = st.start_campaign(f"c{n}", {})
        st.record(c.id, [DeliveryRecord(i, Outcome.SENT, "fcm", 201) for i in ids[:-1]]
                  + [DeliveryRecord(last, Outcome.REJECTED, "fcm", 400, "BadDeviceToken",
                                    fault=Fault.SUBSCRIBER)])
    assert st.prunable(failed_campaigns=2) == [last]
    assert st.delete_subscriptions(st.prune_candidates(failed_campaigns=2)) == 1
    (new,) = _load(st, 1)
    assert new > last
    assert st.prunable(failed_campaigns=2) == []
    assert st.prunable(failed_campaigns=1) == []


def _old_store(path: Path) -> sa.Engine:
    """A SQLite store as the version before AUTOINCREMENT made it: same tables, plain
    INTEGER PRIMARY KEY ids."""
    old = sa.MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(old)
    old.tables["subscriptions"].dialect_options["sqlite"]["autoincrement"] = False
    engine = sa.create_engine(database_url(path))
    with engine.begin() as conn:
        old.create_all(conn)
        conn.execute(old.tables["pushcli_meta"].insert().values(
            key="schema_version", value=str(AUTOINCREMENT_VERSION - 1)))
    return engine


def _shape(conn: sqlite3.Connection) -> tuple:
    """What SQLite says of ``subscriptions``: columns (name, type, not null, default,
    pk) and indexes (name, unique, columns)."""
    columns = conn.execute("PRAGMA table_info(subscriptions)").fetchall()
    indexes = sorted(
        (name if origin == "c" else origin, unique,
         [r[2] for r in conn.execute(f"PRAGMA index_info('{name}')")])
        for _s, name, unique, origin, _p in conn.execute("PRAGMA index_list(subscriptions)"))
    return columns, indexes


def test_an_older_sqlite_store_is_rebuilt_in_place_and_never_reuses_an_id(
        tmp_path: Path) -> None:
    """The store before AUTOINCREMENT, whose two newest subscribers were already
    deleted (one with ledger rows, one with only an event): migrating keeps every
    row, index, trigger and view, and the next id is past every id ever seen."""
    assert SCHEMA_VERSION >= AUTOINCREMENT_VERSION
    path = tmp_path / "old.db"
    engine = _old_store(path)
    with engine.begin() as conn:
        for i in range(1, 6):
            conn.exec_driver_sql(
                "INSERT INTO subscriptions (endpoint, p256dh, auth, status, updated_at) "
                "VALUES (?, 'k', 'a', ?, ?)", (f"https://push.example/{i}",
                                               "expired" if i == 3 else "active", float(i)))
        conn.exec_driver_sql("INSERT INTO campaigns (name, created_at) VALUES ('c', 1.0)")
        for i in range(1, 5):
            conn.exec_driver_sql(
                "INSERT INTO deliveries (campaign_id, subscription_id, outcome, service, "
                "updated_at) VALUES (1, ?, 'sent', 'fcm', 1.0)", (i,))
        conn.exec_driver_sql("INSERT INTO events (campaign_id, subscription_id, kind, at, "
                             "received_at) VALUES (1, 5, 'clicked', 2.0, 2.0)")
        conn.exec_driver_sql("DELETE FROM subscriptions WHERE id IN (4, 5)")
        # the README invites SQL of one's own: a view and a trigger naming the table
        conn.exec_driver_sql("CREATE VIEW active_ids AS SELECT id FROM subscriptions "
                             "WHERE status = 'active'")
        conn.exec_driver_sql("CREATE TABLE audit (sid INTEGER)")
        conn.exec_driver_sql("CREATE TRIGGER audit_delete AFTER DELETE ON subscriptions "
                             "BEGIN INSERT INTO audit VALUES (old.id); END")
        before = conn.exec_driver_sql("SELECT * FROM subscriptions ORDER BY id").all()
    engine.dispose()
    with sqlite3.connect(path) as raw:
        old_sql = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'subscriptions'"
                              ).fetchone()[0]
        old_shape = _shape(raw)
    assert "AUTOINCREMENT" not in old_sql
    # without the migration this store would give the next import id 4: subscriber 4's
    # ledger row (and, one import later, subscriber 5's click) would become theirs

    with Store.open(path) as st:
        assert st.schema_version() == SCHEMA_VERSION
        assert st.integrity_ok()
        with st.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT * FROM subscriptions ORDER BY id").all() \
                == before
            assert conn.exec_driver_sql("SELECT id FROM active_ids ORDER BY id").scalars() \
                .all() == [1, 2]
        (new,) = _load(st, 1)
        assert new == 6
        st.delete_subscriptions(st.prune_candidates())  # subscriber 3 was expired
        assert [r["endpoint"] for r in st.delivery_rows(1)] == [
            "https://push.example/1", "https://push.example/2", None, None]
    with sqlite3.connect(path) as raw:
        assert "AUTOINCREMENT" in raw.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'subscriptions'").fetchone()[0]
        assert raw.execute("SELECT sid FROM audit").fetchall() == [(3,)]  # trigger kept
        migrated = _shape(raw)
    assert migrated == old_shape
    fresh_path = tmp_path / "fresh.db"
    Store.open(fresh_path).close()
    with sqlite3.connect(fresh_path) as raw:
        assert _shape(raw) == migrated  # the same table a new store gets
        assert "AUTOINCREMENT" in raw.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'subscriptions'").fetchone()[0]


def test_an_empty_older_store_migrates_and_counts_from_one(tmp_path: Path) -> None:
    _old_store(tmp_path / "old.db").dispose()
    with Store.open(tmp_path / "old.db") as st:
        assert _load(st, 2) == [1, 2]


def test_a_failed_rebuild_leaves_the_older_store_as_it_was(tmp_path: Path) -> None:
    """One transaction: a rebuild that fails half-way (here its work table's name is
    taken) rolls back to the old table, rows and version, with a one-line error."""
    path = tmp_path / "old.db"
    engine = _old_store(path)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO subscriptions (endpoint, p256dh, auth) "
                             "VALUES ('https://push.example/1', 'k', 'a')")
        conn.exec_driver_sql("CREATE TABLE subscriptions_v9 (x INTEGER)")
    engine.dispose()
    with pytest.raises(StoreError, match="subscriptions_v9 already exists") as failed:
        Store.open(path)
    assert "\n" not in str(failed.value)
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT value FROM pushcli_meta WHERE key = 'schema_version'"
                           ).fetchone() == (str(AUTOINCREMENT_VERSION - 1),)
        assert "AUTOINCREMENT" not in raw.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'subscriptions'").fetchone()[0]
        assert raw.execute("SELECT id, endpoint FROM subscriptions").fetchall() == [
            (1, "https://push.example/1")]
        assert {r[0] for r in raw.execute("SELECT name FROM sqlite_master")} >= {
            "ix_subscriptions_status_id", "ix_subscriptions_status_timezone"}
