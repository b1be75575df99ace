"""The store's tables, their migrations and the ledger's outcome values.

One definition of the schema: ``create_all`` makes a new store current, and
``MIGRATIONS`` takes an older one there step by step (see ``Store._migrate``).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
)
from sqlalchemy.engine import Connection

from pushcli.errors import StoreError
from pushcli.pushservices import RETRY_OUTCOMES, Outcome

SCHEMA_VERSION = 9
#: PostgreSQL advisory lock key serializing schema creation/migration ("pushcli").
MIGRATION_LOCK_KEY = 0x70757368636C69

metadata = MetaData()

meta_table = Table(
    "pushcli_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

subscriptions = Table(
    "subscriptions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("endpoint", Text, nullable=False, unique=True),
    Column("p256dh", String(128), nullable=False),
    Column("auth", String(64), nullable=False),
    Column("tags", Text, nullable=False, server_default="[]"),  # JSON array, sorted
    Column("locale", String(64)),
    Column("attributes", Text, nullable=False, server_default="{}"),  # JSON object
    Column("user_id", String(256)),
    Column("expiration_time", Float),
    Column("status", String(16), nullable=False, server_default="active"),
    Column("expired_at", Float),
    Column("created_at", Float),
    Column("updated_at", Float),
    # v5: IANA zone for send windows (``schedule``); NULL means the campaign's default
    Column("timezone", String(64)),
    # v9: ids are never handed out twice. The ledger and the events keep a deleted
    # subscriber's history by id; SQLite's plain INTEGER PRIMARY KEY would give the next
    # import max(id)+1, i.e. a pruned newest subscriber's id and history (MIGRATIONS[9]).
    sqlite_autoincrement=True,
)
Index("ix_subscriptions_status_id", subscriptions.c.status, subscriptions.c.id)
# v5: a send window groups the pending audience by zone and reads the due zones' rows
# from this index alone (bench/schedule_bench.py)
Index("ix_subscriptions_status_timezone", subscriptions.c.status, subscriptions.c.timezone)

campaigns = Table(
    "campaigns",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("status", String(16), nullable=False, server_default="new"),
    Column("runs", Integer, nullable=False, server_default="0"),
    Column("spec", Text),  # JSON of the campaign as last sent
    # JSON of the last run's figures (duration, rate, per-service latency p50/p95 and the
    # concurrency reached) for ``report``: a summary per run, not samples per message
    Column("last_run", Text),
    # v6: A/B tests. JSON {variant, decided_at, reason} once ``winner:`` has picked one.
    Column("winner", Text),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("campaign_id", Integer, primary_key=True),
    Column("subscription_id", Integer, primary_key=True),
    Column("outcome", String(16), nullable=False),
    Column("status_code", Integer),
    Column("reason", Text),
    Column("service", String(255), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="1"),
    Column("ambiguous", Integer, nullable=False, server_default="0"),
    Column("updated_at", Float, nullable=False),
    # v2: shared sends. A ``pending`` row is queued work; a sender claims it by
    # setting a lease, which it renews while alive and which others may take
    # over once it has run out.
    Column("lease_owner", String(255)),
    Column("lease_until", Float),
    # v3: whose fault an unsuccessful outcome is (pushservices.Fault); prune
    # counts only answers about the subscriber, never ``held`` (not attempted).
    Column("fault", String(16)),
    # v6: the campaign variant this subscriber was assigned (``variants:``), or NULL
    Column("variant", String(64)),
)
Index("ix_deliveries_queue", deliveries.c.campaign_id, deliveries.c.outcome,
      deliveries.c.subscription_id)
Index("ix_deliveries_subscription", deliveries.c.subscription_id)

#: v7: one row per run of a campaign (``Ledger.finish_campaign``), the results page's
#: send-window chart: who was due, sent, still waiting, capped and missed at each cron run.
#: ``campaigns.last_run`` keeps only the last run; the ledger has no ``waiting`` at all.
#: Bounded: the newest ``MAX_RUN_HISTORY`` runs per campaign are kept.
campaign_runs = Table(
    "campaign_runs",
    metadata,
    Column("campaign_id", Integer, primary_key=True),
    Column("run", Integer, primary_key=True),  # campaigns.runs when the run ended
    Column("at", Float, nullable=False),  # the run's moment (its ``now``: PUSHCLI_NOW in tests)
    Column("status", String(16), nullable=False),  # what the run left: waiting, finished...
    Column("scheduled", Integer, nullable=False, server_default="0"),  # schedule or cap applied
    Column("due", Integer, nullable=False, server_default="0"),  # pending and due at its start
    Column("attempted", Integer, nullable=False, server_default="0"),
    Column("sent", Integer, nullable=False, server_default="0"),
    Column("waiting", Integer, nullable=False, server_default="0"),  # left for a later run
    Column("capped", Integer, nullable=False, server_default="0"),  # closed by this run
    Column("missed", Integer, nullable=False, server_default="0"),  # closed by this run
)
MAX_RUN_HISTORY = 500
#: The counts of a ``campaign_runs`` row, in the order the run history lists them.
RUN_COUNTS = ("due", "attempted", "sent", "waiting", "capped", "missed")

#: v6: notification events posted back by service workers (``events``): one row per
#: (campaign, subscriber, kind), so a duplicate post or a re-imported file counts once.
events = Table(
    "events",
    metadata,
    Column("campaign_id", Integer, primary_key=True),
    Column("subscription_id", Integer, primary_key=True),
    Column("kind", String(16), primary_key=True),  # shown | clicked | closed
    Column("variant", Integer, nullable=False, server_default="0"),  # token's variant index
    Column("action", String(128)),  # the notification action clicked, if any
    Column("at", Float, nullable=False),  # when it happened (the event's ``at``, else received)
    Column("received_at", Float, nullable=False),
)
Index("ix_events_subscription_kind_at", events.c.subscription_id, events.c.kind, events.c.at)

#: v8: the intent log. Before a chunk of requests goes out, one row lists its subscriber
#: ids (comma-separated): one small insert per chunk instead of a ledger row per message.
#: A row is deleted once every id in it has a final outcome; whatever a dead sender left
#: is turned into ``inflight`` ledger rows by the next run (``Ledger.adopt_intents``).
intents = Table(
    "intents",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("campaign_id", Integer, nullable=False),
    Column("sender", String(255), nullable=False),  # the lease owner that wrote it
    Column("ids", Text, nullable=False),
    # shared sends: renewed with the sender's leases, never later than its rows' leases;
    # NULL for a run holding the campaign's lock (the next such run, or a claim, adopts it)
    Column("lease_until", Float),
    Column("created_at", Float, nullable=False),
)
Index("ix_intents_campaign", intents.c.campaign_id)

locks = Table(
    "locks",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("owner", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("host", String(255), nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def rebuild_subscriptions_autoincrement(conn: Connection) -> None:
    """v9: rebuild SQLite's ``subscriptions`` with AUTOINCREMENT, keeping every row.

    Without it SQLite gives a new row max(id)+1: once the newest subscriber is deleted
    (prune), the next import gets its id and with it the ledger rows and events still
    kept under that id (misattributed reports, its failures counted by ``prune
    --failed-campaigns``, its sends by frequency caps). SQLite's own procedure for
    schema changes ALTER TABLE cannot make (lang_altertable.html#otheralter), inside
    the migration's one transaction so a failure leaves the store as it was: copy
    into a new table declared as before (columns, types, defaults, UNIQUE) plus
    AUTOINCREMENT, drop the old one, rename, re-create its indexes and every trigger
    and view by their saved SQL. pushcli never enables foreign keys and no table
    declares one, so nothing cascades. The high-water mark (``sqlite_sequence``) is
    the largest subscriber id any table still mentions, so an id deleted before this
    migration is not given out either. PostgreSQL: a sequence never goes back.
    """
    if conn.dialect.name != "sqlite":
        return
    master = "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'subscriptions'"
    if "AUTOINCREMENT" not in conn.exec_driver_sql(master).scalar_one().upper():
        columns, pk = [], []
        for _cid, name, type_, notnull, default, in_pk in conn.exec_driver_sql(
                "PRAGMA table_info(subscriptions)"):
            column = f"{_quoted(name)} {type_}" + (" NOT NULL" if notnull else "")
            if default is not None:  # the expression as written, parentheses stripped
                column += f" DEFAULT ({default})"
            pk += [(name, type_)] if in_pk else []
            columns.append((name, column))
        if pk != [("id", "INTEGER")]:
            raise StoreError("cannot migrate the store: subscriptions.id is not its "
                             "INTEGER PRIMARY KEY")
        defs = [c + " PRIMARY KEY AUTOINCREMENT" if n == "id" else c for n, c in columns]
        for _seq, index, unique, origin, _partial in conn.exec_driver_sql(
                "PRAGMA index_list(subscriptions)").all():
            if unique and origin == "u":
                cols = [r[2] for r in conn.exec_driver_sql(
                    f"PRAGMA index_info({_quoted(index)})")]
                defs.append(f"UNIQUE ({', '.join(map(_quoted, cols))})")
        # explicit indexes go with the table; triggers and views anywhere may name it
        saved = conn.exec_driver_sql(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND "
            "(type IN ('trigger', 'view') OR (type = 'index' AND tbl_name = 'subscriptions'))"
        ).all()
        for kind, name, _sql in saved:
            if kind != "index":
                conn.exec_driver_sql(f"DROP {kind.upper()} {_quoted(name)}")
        names = ", ".join(_quoted(n) for n, _c in columns)
        conn.exec_driver_sql(f"CREATE TABLE subscriptions_v9 ({', '.join(defs)})")
        conn.exec_driver_sql(f"INSERT INTO subscriptions_v9 ({names}) "
                             f"SELECT {names} FROM subscriptions")
        conn.exec_driver_sql("DROP TABLE subscriptions")
        conn.exec_driver_sql("ALTER TABLE subscriptions_v9 RENAME TO subscriptions")
        for kind in ("index", "trigger", "view"):
            for _kind, _name, sql in (row for row in saved if row[0] == kind):
                conn.exec_driver_sql(sql)
    highest = max([conn.execute(select(func.max(subscriptions.c.id))).scalar() or 0] + [
        conn.execute(select(func.max(t.c.subscription_id))).scalar() or 0
        for t in metadata.sorted_tables if "subscription_id" in t.c])
    conn.exec_driver_sql("DELETE FROM sqlite_sequence WHERE name = 'subscriptions'")
    conn.exec_driver_sql("INSERT INTO sqlite_sequence (name, seq) VALUES ('subscriptions', ?)",
                         (highest,))


#: DDL that takes a store from version N-1 to N (create_all makes new stores current),
#: or a function of the migration's connection for what plain DDL cannot say.
MIGRATIONS: dict[int, list[str | Callable[[Connection], None]]] = {
    2: [
        "ALTER TABLE deliveries ADD COLUMN lease_owner VARCHAR(255)",
        "ALTER TABLE deliveries ADD COLUMN lease_until FLOAT",
        "CREATE INDEX IF NOT EXISTS ix_deliveries_queue "
        "ON deliveries (campaign_id, outcome, subscription_id)",
    ],
    3: [
        "ALTER TABLE deliveries ADD COLUMN fault VARCHAR(16)",
        # v2 recorded subscribers held back by a stopped push service (auth
        # failures, circuit breaker) as plain ``failed``: mark them, so prune
        # never counts them.
        "UPDATE deliveries SET fault = 'held' "
        "WHERE outcome = 'failed' AND substr(reason, 1, 10) = 'not sent: '",
    ],
    4: ["ALTER TABLE campaigns ADD COLUMN last_run TEXT"],
    5: ["ALTER TABLE subscriptions ADD COLUMN timezone VARCHAR(64)",
        "CREATE INDEX IF NOT EXISTS ix_subscriptions_status_timezone "
        "ON subscriptions (status, timezone)"],
    # the events table and its index come from create_all (it runs before these steps)
    6: ["ALTER TABLE campaigns ADD COLUMN winner TEXT",
        "ALTER TABLE deliveries ADD COLUMN variant VARCHAR(64)"],
    7: [],  # the campaign_runs table comes from create_all
    8: [],  # the intents table comes from create_all
    9: [rebuild_subscriptions_autoincrement],  # SQLite: subscriber ids never reused
}

#: Ledger outcome of queued, not yet final, work in a shared send.
PENDING = "pending"
#: Ledger outcome of a subscriber an earlier run committed in flight (the intent log,
#: ``intents``) and never recorded: it may have been delivered (kill -9, power cut,
#: failed ledger, second Ctrl-C). The next run writes it when it adopts that run's
#: intent rows; the final outcome overwrites it.
INFLIGHT = "inflight"
#: Not final: queued or in flight. Reports never count these rows.
UNFINAL = (PENDING, INFLIGHT)
#: Ledger outcomes ``--retry-failed`` sends again (pushservices.RETRY_OUTCOMES).
RETRY = tuple(sorted(o.value for o in RETRY_OUTCOMES))
#: Ledger outcomes ``prune --failed-campaigns`` may count against a subscriber
#: (and then only answers about that subscriber: ``Pruning._repeatedly_failing``).
COUNTABLE = (Outcome.FAILED.value, Outcome.REJECTED.value)
