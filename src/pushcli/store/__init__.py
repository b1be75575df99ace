"""The only package that speaks SQL: schema and migrations (``schema``), where the
store is and its errors (``database``), row decoding (``rows``), subscriber queries
(``subscribers``), the campaign ledger (``ledger``), the results page's bounded
aggregates (``charts``), prune's queries (``pruning``), token secrets (``engagement``),
notification events (``eventlog``) and cross-process locks with their names (``locks``).

``Store`` composes them behind one SQLAlchemy engine. SQLAlchemy Core keeps the
SQL portable (SQLite and PostgreSQL). On SQLite the database runs in WAL mode
with a busy timeout, and write transactions start with ``BEGIN IMMEDIATE`` so
two processes never deadlock upgrading a read lock.
"""

from __future__ import annotations

import os

from sqlalchemy import select, update

from pushcli.errors import InputError, PushcliError
from pushcli.messages import DeliveryRecord
from pushcli.store.charts import Charts, Timeline
from pushcli.store.database import (
    BUSY_TIMEOUT_MS,
    Database,
    database_url,
    known_error,
    open_engine,
    store_error,
)
from pushcli.store.engagement import Engagement, ensure_token_secret
from pushcli.store.eventlog import EventLog, EventRow
from pushcli.store.ledger import Ledger
from pushcli.store.locks import (
    LOCK_STALE_AFTER,
    PRUNE_LOCK,
    Lock,
    Locks,
    campaign_lock,
    is_campaign_lock,
    is_prune_lock,
)
from pushcli.store.pruning import PruneCandidate, Pruning, Unengaged
from pushcli.store.rows import CampaignInfo, StoredSubscription
from pushcli.store.schema import (
    INFLIGHT,
    MAX_RUN_HISTORY,
    MIGRATION_LOCK_KEY,
    MIGRATIONS,
    PENDING,
    RUN_COUNTS,
    SCHEMA_VERSION,
    campaign_runs,
    campaigns,
    deliveries,
    events,
    intents,
    locks,
    meta_table,
    metadata,
    subscriptions,
)
from pushcli.store.subscribers import IMPORT_BATCH, ImportResult, Rejection, Subscribers

__all__ = [
    "BUSY_TIMEOUT_MS", "IMPORT_BATCH", "INFLIGHT", "LOCK_STALE_AFTER",
    "MAX_RUN_HISTORY", "MIGRATIONS", "PENDING", "PRUNE_LOCK", "RUN_COUNTS", "SCHEMA_VERSION",
    "CampaignInfo", "DeliveryRecord", "EventRow", "Unengaged",
    "ImportResult", "Lock", "PruneCandidate", "Rejection", "Store", "StoredSubscription",
    "Timeline", "campaign_lock", "campaign_runs", "campaigns", "database_url", "deliveries",
    "events", "intents", "is_campaign_lock", "known_error",
    "is_prune_lock", "locks", "metadata", "store_error", "subscriptions",
]


class Store(Subscribers, Ledger, Charts, Pruning, Engagement, EventLog, Locks, Database):
    """A subscriber store and delivery ledger behind one SQLAlchemy engine."""

    @classmethod
    def open(cls, db: str | os.PathLike[str] | None = None, *, create: bool = True) -> Store:
        """Open (and on first use create, mode 0600) the store at a path or URL."""
        engine, url = open_engine(db, create=create)
        store = cls(engine, url)
        try:
            store._migrate()
        except PushcliError:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        with self._write() as conn:
            if self.engine.dialect.name == "postgresql":
                # Two first runs at once must not both create the tables.
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
            metadata.create_all(conn)
            row = conn.execute(
                select(meta_table.c.value).where(meta_table.c.key == "schema_version")
            ).first()
            if row is None:
                conn.execute(meta_table.insert().values(key="schema_version",
                                                        value=str(SCHEMA_VERSION)))
            elif int(row[0]) > SCHEMA_VERSION:
                raise InputError(
                    f"database schema version {row[0]} is newer than this pushcli "
                    f"({SCHEMA_VERSION}); upgrade pushcli",
                    field="--db",
                )
            else:
                version = int(row[0])
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for ddl in MIGRATIONS[step]:
                        if callable(ddl):
                            ddl(conn)
                        else:
                            conn.exec_driver_sql(ddl)
                if version < SCHEMA_VERSION:
                    conn.execute(update(meta_table).where(meta_table.c.key == "schema_version")
                                 .values(value=str(SCHEMA_VERSION)))
            ensure_token_secret(conn)

    def schema_version(self) -> int:
        with self._read() as conn:
            return int(conn.execute(
                select(meta_table.c.value).where(meta_table.c.key == "schema_version")
            ).scalar_one())

    def integrity_ok(self) -> bool:
        if not self.is_sqlite:
            return True
        with self._read() as conn:
            return conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
