"""The store's tables, their migrations and the ledger's outcome values.

One definition of the schema: ``create_all`` makes a new store current, and
``MIGRATIONS`` takes an older one there step by step (see ``Store._migrate``).
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table, Text

from pushcli.pushservices import RETRY_OUTCOMES, Outcome

SCHEMA_VERSION = 7
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


#: DDL that takes a store from version N-1 to N (create_all makes new stores current).
MIGRATIONS: dict[int, list[str]] = {
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
}

#: Ledger outcome of queued, not yet final, work in a shared send.
PENDING = "pending"
#: Ledger outcome written just before a request goes out (the intent log) and
#: overwritten by the final one: a row still ``inflight`` after its run ended may
#: have been delivered (kill -9, power cut, failed ledger, second Ctrl-C).
INFLIGHT = "inflight"
#: Not final: queued or in flight. Reports never count these rows.
UNFINAL = (PENDING, INFLIGHT)
#: Ledger outcomes ``--retry-failed`` sends again (pushservices.RETRY_OUTCOMES).
RETRY = tuple(sorted(o.value for o in RETRY_OUTCOMES))
#: Ledger outcomes ``prune --failed-campaigns`` may count against a subscriber
#: (and then only answers about that subscriber: ``Pruning._repeatedly_failing``).
COUNTABLE = (Outcome.FAILED.value, Outcome.REJECTED.value)
