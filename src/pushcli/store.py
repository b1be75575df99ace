"""The only module that speaks SQL: schema and migrations, subscriber upsert,
streamed audience queries, the delivery ledger, prune and cross-process locks.

SQLAlchemy Core keeps the SQL portable (SQLite now, PostgreSQL later). On
SQLite the database runs in WAL mode with a busy timeout, and write
transactions start with ``BEGIN IMMEDIATE`` so two processes never deadlock
upgrading a read lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    SAWarning,
)

from pushcli.errors import Busy, InputError, PushcliError, StoreError
from pushcli.pushservices import RETRY_OUTCOMES, Fault, Outcome, canonical_endpoint
from pushcli.subscriptions import (
    Rejected,
    Subscription,
    stored_keys_valid,
    validate_auth,
    validate_p256dh,
)

DEFAULT_DB = "pushcli.db"
DB_ENV = "PUSHCLI_DB"
SCHEMA_VERSION = 3
BUSY_TIMEOUT_MS = 30_000
IMPORT_BATCH = 2000
#: A lock whose owner has not refreshed it for this long is considered dead
#: even when we cannot check its process (another host).
LOCK_STALE_AFTER = 120.0
#: PostgreSQL advisory lock key serializing schema creation/migration ("pushcli").
_MIGRATION_LOCK_KEY = 0x70757368636C69

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
)
Index("ix_subscriptions_status_id", subscriptions.c.status, subscriptions.c.id)

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
)
Index("ix_deliveries_queue", deliveries.c.campaign_id, deliveries.c.outcome,
      deliveries.c.subscription_id)
Index("ix_deliveries_subscription", deliveries.c.subscription_id)

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
}

#: Ledger outcome of queued, not yet final, work in a shared send.
PENDING = "pending"
#: Ledger outcome written just before a request goes out (the intent log) and
#: overwritten by the final one: a row still ``inflight`` after its run ended may
#: have been delivered (kill -9, power cut, failed ledger, second Ctrl-C).
INFLIGHT = "inflight"
#: Not final: queued or in flight. Reports never count these rows.
_UNFINAL = (PENDING, INFLIGHT)
#: Ledger outcomes ``--retry-failed`` sends again (pushservices.RETRY_OUTCOMES).
_RETRY = tuple(sorted(o.value for o in RETRY_OUTCOMES))
#: Ledger outcomes ``prune --failed-campaigns`` may count against a subscriber
#: (and then only answers about that subscriber: ``_repeatedly_failing``).
_COUNTABLE = (Outcome.FAILED.value, Outcome.REJECTED.value)
#: Stands in for a NULL ``updated_at`` in prune's re-check.
_NO_TIME = -1.0


def database_url(value: str | os.PathLike[str] | None = None) -> str:
    """A SQLAlchemy URL from ``--db``/``PUSHCLI_DB``: a URL as is, else a SQLite path."""
    raw = os.fspath(value) if value is not None else os.environ.get(DB_ENV) or DEFAULT_DB
    if "://" in raw:
        for plain in ("postgresql://", "postgres://"):
            if raw.startswith(plain):  # psycopg 3 is the driver we ship, not psycopg2
                raw = "postgresql+psycopg://" + raw[len(plain):]
        try:
            url = make_url(raw)
        except ArgumentError as exc:
            raise InputError(f"invalid database URL: {exc}", field="--db") from None
        except ValueError:  # make_url's int(port): "postgresql://u@h:abc/db"
            raise InputError("invalid database URL: the port must be a number "
                             "from 1 to 65535", field="--db") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise InputError(f"unsupported database {url.get_backend_name()!r} "
                             "(sqlite or postgresql)", field="--db")
        if url.port is not None and not 0 < url.port < 65536:
            raise InputError("invalid database URL: the port must be a number "
                             "from 1 to 65535", field="--db")
        return raw
    return f"sqlite:///{Path(raw).expanduser().absolute()}"


@dataclass
class ImportResult:
    """Counts of one import, and the rejected records (location + reason)."""

    read: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)
    committed: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "committed": self.committed,
            "errors": self.errors,
        }


@dataclass(frozen=True, slots=True)
class StoredSubscription:
    """A subscriber as the store holds it: its row id and its subscription."""

    id: int
    subscription: Subscription
    status: str = "active"
    #: Why this row cannot be used, for a row written straight into the table
    #: (bad base64 keys, a point off the curve, tags or attributes that are not
    #: the JSON we write). Such a row is never contacted: send records it
    #: ``rejected`` with this reason, dry-run and doctor count it, export skips it.
    problem: str | None = None

    @property
    def membership_unknown(self) -> bool:
        """Its tags or attributes are unreadable, so no audience filter can place it."""
        return self.problem is not None and self.problem.startswith(("tags", "attributes"))


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One ledger entry written by the delivery engine."""

    subscription_id: int
    outcome: Outcome
    service: str
    status_code: int | None = None
    reason: str = ""
    attempts: int = 1
    ambiguous: bool = False
    fault: Fault | None = None
    #: (old, new) endpoint: the push service accepted the message only at ``new``
    #: (FCM's /fcm/send/ -> /wp/); the store keeps ``new`` for later campaigns.
    moved: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class PruneCandidate:
    """A subscriber prune selected, with the state it was selected in, so the
    DELETE can re-check that nothing changed it in between (an import)."""

    id: int
    status: str
    updated_at: float | None


@dataclass(frozen=True)
class CampaignInfo:
    id: int
    name: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    status: str
    runs: int
    spec: dict[str, Any] | None


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _dumps(value: Any) -> str:
    """Canonical JSON (sorted, compact), so equal values compare equal as text."""
    if not value:
        return "[]" if isinstance(value, list | tuple) else "{}"
    return _ENCODER.encode(value)


def _row_values(sub: Subscription) -> dict[str, Any]:
    return {
        "endpoint": sub.endpoint,
        "p256dh": sub.p256dh,
        "auth": sub.auth,
        "tags": _dumps(list(sub.tags)),
        "locale": sub.locale,
        "attributes": _dumps(dict(sub.attributes)),
        "user_id": sub.user_id,
        "expiration_time": sub.expiration_time,
    }


_SUB_COLUMNS = (
    subscriptions.c.id,
    subscriptions.c.endpoint,
    subscriptions.c.p256dh,
    subscriptions.c.auth,
    subscriptions.c.tags,
    subscriptions.c.locale,
    subscriptions.c.attributes,
    subscriptions.c.user_id,
    subscriptions.c.expiration_time,
    subscriptions.c.status,
)


def _stored(row: Sequence[Any]) -> StoredSubscription:
    """Decode one row: the quick path for rows as import writes them."""
    try:
        tags = _json_tags(row[4])
        attributes = _json_attributes(row[6])
        exp = row[8]
        expiration = int(exp) if exp is not None else None
    except (ValueError, TypeError, OverflowError, RecursionError):
        return _checked(row)
    if not stored_keys_valid(row[2], row[3]):
        return _checked(row)
    return StoredSubscription(
        id=row[0],
        subscription=Subscription(row[1], row[2], row[3], tags, row[5], attributes, row[7],
                                  expiration),
        status=row[9],
    )


def _checked(row: Sequence[Any]) -> StoredSubscription:
    """Decode one row field by field; a row pushcli did not write may be malformed.

    Each field is checked on its own, so one bad field is named in
    ``problem`` (never with its value: keys are secrets) while the fields that
    do decode are kept: the audience can still be matched on good tags.
    """
    problems: list[str] = []

    def decoded(name: str, decode: Callable[[], Any], default: Any) -> Any:
        try:
            return decode()
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            problems.append(str(exc) if str(exc).startswith(name) else f"{name}: {exc}")
            return default

    tags = decoded("tags", lambda: _json_tags(row[4]), ())
    attributes = decoded("attributes", lambda: _json_attributes(row[6]), {})
    decoded("keys.p256dh", lambda: validate_p256dh(row[2]), None)
    decoded("keys.auth", lambda: validate_auth(row[3]), None)
    exp = row[8]
    expiration = decoded("expiration_time",
                       lambda: int(exp) if exp is not None else None, None)
    return StoredSubscription(
        id=row[0],
        subscription=Subscription(
            endpoint=row[1],
            p256dh=row[2],
            auth=row[3],
            tags=tags,
            locale=row[5],
            attributes=attributes,
            user_id=row[7],
            expiration_time=expiration,
        ),
        status=row[9],
        problem="; ".join(problems) or None,
    )


def _json_tags(text: str | None) -> tuple[str, ...]:
    """The tags column: a JSON array of strings."""
    if not text or text == "[]":
        return ()
    try:
        value = json.loads(text or "[]")
    except json.JSONDecodeError as exc:
        raise ValueError(f"tags: not valid JSON ({exc.msg})") from None
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError("tags: not a JSON array of strings")
    return tuple(value)


def _json_attributes(text: str | None) -> dict[str, Any]:
    """The attributes column: a JSON object of names to scalars (what import accepts)."""
    if not text or text == "{}":
        return {}
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"attributes: not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict) or not all(
            v is None or isinstance(v, str | int | float | bool) for v in value.values()):
        raise ValueError("attributes: not a JSON object of strings, numbers and booleans")
    return value


#: Errors caused by one record's values, not by the database: the driver cannot
#: encode a string (a lone surrogate), or the server refuses a value (DataError).
_RECORD_ERRORS = (ValueError, TypeError, DataError)


def _unstorable(exc: BaseException) -> str:
    """Why a record could not be stored, without its values (they may be secrets)."""
    if isinstance(exc, UnicodeError):
        return "cannot be stored: a value is not valid Unicode text"
    return f"cannot be stored: the database refused a value ({type(exc).__name__})"


class _RollBack(Exception):
    """Unwinds a strict import's transaction."""


def _like_escape(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, with its wildcards escaped."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """A subscriber store and delivery ledger behind one SQLAlchemy engine."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url

    # --- opening ------------------------------------------------------------------------

    @classmethod
    def open(cls, db: str | os.PathLike[str] | None = None, *, create: bool = True) -> Store:
        """Open (and on first use create, mode 0600) the store at a path or URL."""
        url = database_url(db)
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            # the URL's options are checked (engine) before any file is made
            engine = _create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
            path = parsed.database
            if path and path != ":memory:":
                p = Path(path)
                if not p.exists():
                    if not create:
                        raise InputError("no such database (import subscribers first)",
                                         file=str(p))
                    if not p.parent.is_dir():
                        raise InputError("directory does not exist", file=str(p.parent))
                    # another process may create it first: fine, it is 0600 too
                    try:
                        with contextlib.suppress(FileExistsError):
                            os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                    except OSError as exc:  # a read-only directory, a full disk
                        raise StoreError(f"cannot create the store {p}: {exc.strerror}") \
                            from None
                elif p.is_dir():
                    raise InputError("is a directory, not a database", file=str(p))
            _configure_sqlite(engine)
        else:
            engine = _create_engine(url, pool_pre_ping=True)
        store = cls(engine, url)
        try:
            # Connecting is where a wrong --db shows (refused, bad option, not a
            # database): exit 2. Past it, failures are the store's (74) or a lock (75).
            try:
                engine.connect().close()
            except DBAPIError as exc:
                raise _open_error(exc, store.display_url) from None
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

    @property
    def display_url(self) -> str:
        """Where the store is, fit to print: a file path, or the URL without its password."""
        url = make_url(self.url)
        if url.get_backend_name() == "sqlite":
            return url.database or ":memory:"
        # the query may carry secrets too (?password=, ?sslpassword=)
        return url.set(query={}).render_as_string(hide_password=True)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def _write(self, *, passthrough: tuple[type[Exception], ...] = ()) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite).

        The store boundary: a database error leaves as one-line StoreError
        (exit 74) or Busy (75), never as SQLAlchemy's text with its SQL
        parameters (endpoints, auth secrets). ``passthrough`` lists errors the
        caller handles itself (a unique clash it retries).
        """
        try:
            with self.engine.connect().execution_options(pushcli_write=True) as conn, conn.begin():
                yield conn
        except passthrough:
            raise
        except DBAPIError as exc:
            raise store_error(exc, self.display_url, action="write") from None

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read transaction; database errors leave as in ``_write``."""
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except DBAPIError as exc:
            raise store_error(exc, self.display_url, action="read") from None

    def _migrate(self) -> None:
        with self._write() as conn:
            if self.engine.dialect.name == "postgresql":
                # Two first runs at once must not both create the tables.
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")
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
                        conn.exec_driver_sql(ddl)
                if version < SCHEMA_VERSION:
                    conn.execute(update(meta_table).where(meta_table.c.key == "schema_version")
                                 .values(value=str(SCHEMA_VERSION)))

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

    # --- subscriptions ------------------------------------------------------------------

    def import_subscriptions(
        self,
        records: Iterable[tuple[str, Subscription | Rejected]],
        *,
        strict: bool = False,
        on_reject: Callable[[str], None] | None = None,
        max_errors_kept: int = 1000,
    ) -> ImportResult:
        """Upsert records by endpoint; ``records`` yields (source name, record).

        Default: valid records are stored in batches, rejected ones counted and
        described. ``strict``: one transaction for everything, rolled back if
        any record was rejected, so the store is untouched.
        """
        result = ImportResult()

        def note(source: str, rej: Rejected) -> None:
            result.rejected += 1
            msg = rej.describe(source)
            if len(result.errors) < max_errors_kept:
                result.errors.append(msg)
            if on_reject is not None:
                on_reject(msg)

        if strict:
            try:
                with self._write() as conn:
                    batch: list[Subscription] = []
                    for source, rec in records:
                        result.read += 1
                        if isinstance(rec, Rejected):
                            note(source, rec)
                        elif not result.rejected:
                            batch.append(rec)
                            if len(batch) >= IMPORT_BATCH:
                                self._upsert_batch(conn, batch, result)
                                batch = []
                    if result.rejected:
                        raise _RollBack
                    self._upsert_batch(conn, batch, result)
            except _RollBack:
                result.added = result.updated = result.unchanged = 0
                result.committed = False
            return result

        batch = []
        where: list[tuple[str, int]] = []  # (source, ordinal of the record in it) per batch entry
        ordinal: dict[str, int] = {}

        def store_batch() -> None:
            try:
                self._upsert_with_retry(batch, result)
            except _RECORD_ERRORS:
                # A value the database cannot take (validation should have caught it):
                # store the batch one record at a time so only that record is lost.
                for sub, (source, n) in zip(batch, where, strict=True):
                    try:
                        self._upsert_with_retry([sub], result)
                    except _RECORD_ERRORS as exc:
                        note(source, Rejected(f": record {n}", _unstorable(exc)))

        for source, rec in records:
            result.read += 1
            ordinal[source] = ordinal.get(source, 0) + 1
            if isinstance(rec, Rejected):
                note(source, rec)
                continue
            batch.append(rec)
            where.append((source, ordinal[source]))
            if len(batch) >= IMPORT_BATCH:
                store_batch()
                batch, where = [], []
        store_batch()
        return result

    def _upsert_with_retry(self, batch: list[Subscription], result: ImportResult) -> None:
        if not batch:
            return
        for attempt in range(3):
            partial = ImportResult()
            try:
                with self._write(passthrough=(IntegrityError, DataError)) as conn:
                    self._upsert_batch(conn, batch, partial)
            except IntegrityError as exc:
                if attempt == 2:
                    raise store_error(exc, self.display_url) from None
                continue  # a concurrent import inserted one of these endpoints; redo
            result.added += partial.added
            result.updated += partial.updated
            result.unchanged += partial.unchanged
            return

    def _upsert_batch(self, conn: Connection, batch: list[Subscription],
                      result: ImportResult) -> None:
        if not batch:
            return
        latest: dict[str, Subscription] = {}
        for sub in batch:
            if sub.endpoint in latest:
                result.unchanged += 1  # a repeat inside this batch; the later one wins
            latest[sub.endpoint] = sub
        existing = {
            row[1]: row
            for row in conn.execute(
                select(*_SUB_COLUMNS).where(subscriptions.c.endpoint.in_(list(latest)))
            )
        }
        now = time.time()
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for endpoint, sub in latest.items():
            values = _row_values(sub)
            row = existing.get(endpoint)
            if row is None:
                values.update(status="active", created_at=now, updated_at=now)
                inserts.append(values)
                continue
            stored = dict(zip((c.name for c in _SUB_COLUMNS), row, strict=True))
            changed = any(stored[k] != v for k, v in values.items() if k != "expiration_time")
            changed |= (stored["expiration_time"] or None) != (sub.expiration_time or None)
            if changed or stored["status"] != "active":
                values.update(status="active", expired_at=None, updated_at=now,
                              b_id=stored["id"])
                updates.append(values)
            else:
                result.unchanged += 1
        if inserts:
            conn.execute(subscriptions.insert(), inserts)
            result.added += len(inserts)
        if updates:
            stmt = (
                update(subscriptions)
                .where(subscriptions.c.id == bindparam("b_id"))
                .values({k: bindparam(k) for k in updates[0] if k != "b_id"})
            )
            conn.execute(stmt, updates)
            result.updated += len(updates)

    def count(self, *, status: str = "active", tags: Sequence[str] = ()) -> int:
        """Subscribers with ``status`` (active|expired|all) having any of ``tags``."""
        stmt = select(func.count()).select_from(subscriptions)
        stmt = stmt.where(*self._filters(status, tags))
        with self._read() as conn:
            return int(conn.execute(stmt).scalar_one())

    def count_by_status(self) -> dict[str, int]:
        stmt = select(subscriptions.c.status, func.count()).group_by(subscriptions.c.status)
        with self._read() as conn:
            return {row[0]: int(row[1]) for row in conn.execute(stmt)}

    @staticmethod
    def _filters(status: str, tags: Sequence[str]) -> list[Any]:
        where: list[Any] = []
        if status != "all":
            if status not in ("active", "expired"):
                raise InputError(f"unknown status {status!r} (active, expired or all)",
                                 field="--status")
            where.append(subscriptions.c.status == status)
        if tags:
            where.append(or_(*(
                subscriptions.c.tags.like(_like_escape(json.dumps(t)), escape="\\") for t in tags
            )))
        return where

    def iter_subscriptions(
        self,
        *,
        status: str = "active",
        tags: Sequence[str] = (),
        batch_size: int = 1000,
    ) -> Iterator[StoredSubscription]:
        """Stream subscribers in id order, one short query per batch (keyset paging)."""
        after = 0
        filters = self._filters(status, tags)
        while True:
            with self._read() as conn:
                rows = conn.execute(
                    select(*_SUB_COLUMNS)
                    .where(subscriptions.c.id > after, *filters)
                    .order_by(subscriptions.c.id)
                    .limit(batch_size)
                ).all()
            if not rows:
                return
            for row in rows:
                yield _stored(row)
            after = rows[-1][0]

    def find_by_endpoint(self, endpoint: str) -> StoredSubscription | None:
        """The subscriber with this endpoint, in any spelling of it.

        Import stores the canonical spelling; a row written directly may hold
        another one, so the canonical form is looked up as well.
        """
        canonical = canonical_endpoint(endpoint)
        wanted = list(dict.fromkeys((canonical, endpoint)))
        with self._read() as conn:
            rows = conn.execute(
                select(*_SUB_COLUMNS).where(subscriptions.c.endpoint.in_(wanted))
                .order_by(subscriptions.c.id)
            ).all()
        by_endpoint = {r[1]: r for r in rows}
        row = by_endpoint.get(canonical) or by_endpoint.get(endpoint)
        return _stored(row) if row else None

    def iter_endpoints(self, *, batch_size: int = 5000) -> Iterator[tuple[int, str]]:
        """(id, endpoint) of every active subscriber in id order: a light scan for send's
        duplicate check, which needs nothing else from the row."""
        s = subscriptions
        after = 0
        while True:
            with self._read() as conn:
                rows = conn.execute(select(s.c.id, s.c.endpoint)
                                    .where(s.c.id > after, s.c.status == "active")
                                    .order_by(s.c.id).limit(batch_size)).all()
            if not rows:
                return
            yield from ((r[0], r[1]) for r in rows)
            after = rows[-1][0]

    def active_with_endpoints(self, endpoints: Sequence[str]) -> Iterator[StoredSubscription]:
        """Active subscribers whose stored endpoint is exactly one of ``endpoints``."""
        for i in range(0, len(endpoints), 500):
            with self._read() as conn:
                rows = conn.execute(select(*_SUB_COLUMNS).where(
                    subscriptions.c.endpoint.in_(list(endpoints[i:i + 500])),
                    subscriptions.c.status == "active")).all()
            yield from (_stored(r) for r in rows)

    # --- campaigns and ledger -----------------------------------------------------------

    def start_campaign(self, name: str, spec: Mapping[str, Any]) -> CampaignInfo:
        """Create the campaign on its first run, or mark a re-run; returns its row."""
        now = time.time()
        with self._write() as conn:
            row = conn.execute(select(campaigns.c.id).where(campaigns.c.name == name)).first()
            if row is None:
                conn.execute(campaigns.insert().values(
                    name=name, created_at=now, started_at=now, status="running", runs=1,
                    spec=_dumps(dict(spec)),
                ))
            else:
                conn.execute(update(campaigns).where(campaigns.c.id == row[0]).values(
                    status="running", runs=campaigns.c.runs + 1, finished_at=None,
                    spec=_dumps(dict(spec)),
                ))
        info = self.get_campaign(name)
        assert info is not None
        return info

    def finish_campaign(self, campaign_id: int, status: str) -> None:
        with self._write() as conn:
            conn.execute(update(campaigns).where(campaigns.c.id == campaign_id).values(
                status=status, finished_at=time.time()))

    def get_campaign(self, name: str) -> CampaignInfo | None:
        with self._read() as conn:
            row = conn.execute(select(campaigns).where(campaigns.c.name == name)).first()
        return self._campaign_info(row) if row else None

    def list_campaigns(self) -> list[CampaignInfo]:
        with self._read() as conn:
            rows = conn.execute(select(campaigns).order_by(campaigns.c.id)).all()
        return [self._campaign_info(r) for r in rows]

    @staticmethod
    def _campaign_info(row: Any) -> CampaignInfo:
        m = row._mapping
        return CampaignInfo(
            id=m["id"], name=m["name"], created_at=m["created_at"], started_at=m["started_at"],
            finished_at=m["finished_at"], status=m["status"], runs=m["runs"],
            spec=json.loads(m["spec"]) if m["spec"] else None,
        )

    def pending(
        self,
        campaign_id: int,
        *,
        retry_failed: bool = False,
        batch_size: int = 500,
        match: Callable[[StoredSubscription], bool] | None = None,
        limit: int | None = None,
        partition: tuple[int, int] | None = None,
    ) -> Iterator[list[StoredSubscription]]:
        """Stream batches of active subscribers with no final outcome in this campaign.

        One short keyset query per batch, so the whole audience is never in
        memory and no read transaction stays open across the send.
        ``partition=(i, k)`` keeps the subscribers with ``id % k == i``, so k
        sender processes split a campaign without ever sharing a subscriber.
        """
        s = subscriptions
        part = [] if partition is None else [s.c.id % partition[1] == partition[0]]
        after = 0
        given = 0
        while True:
            stmt = (
                _pending_query(select(*_SUB_COLUMNS), campaign_id, retry_failed)
                .where(s.c.id > after, *part)
                .order_by(s.c.id)
                .limit(batch_size)
            )
            with self._read() as conn:
                rows = conn.execute(stmt).all()
            if not rows:
                return
            after = rows[-1][0]
            batch = [_stored(r) for r in rows]
            if match is not None:
                batch = [b for b in batch if match(b)]
            if limit is not None:
                batch = batch[: max(0, limit - given)]
            if batch:
                given += len(batch)
                yield batch
            if limit is not None and given >= limit:
                return

    def count_pending(self, campaign_id: int, *, retry_failed: bool = False) -> int:
        """How many active subscribers have no final outcome in this campaign (one query)."""
        stmt = _pending_query(select(func.count()), campaign_id, retry_failed)
        with self._read() as conn:
            return int(conn.execute(stmt).scalar_one())

    def distinct_locales(self) -> list[str]:
        """The locales of active subscribers (a campaign renders one payload per locale)."""
        stmt = (select(subscriptions.c.locale).where(subscriptions.c.status == "active",
                                                     subscriptions.c.locale.is_not(None))
                .distinct())
        with self._read() as conn:
            return sorted(r[0] for r in conn.execute(stmt))

    # --- shared sends (several processes or hosts on one campaign) -----------------------

    @property
    def supports_shared_work(self) -> bool:
        """PostgreSQL can hand out work with FOR UPDATE SKIP LOCKED; SQLite cannot."""
        return self.engine.dialect.name == "postgresql"

    def enqueue(self, campaign_id: int, ids: Sequence[int]) -> None:
        """Queue subscribers as ``pending`` work; rows already in the ledger are left alone."""
        if not ids:
            return
        insert = _dialect_insert(self.engine)
        now = time.time()
        stmt = insert(deliveries).on_conflict_do_nothing(
            index_elements=[deliveries.c.campaign_id, deliveries.c.subscription_id])
        with self._write() as conn:
            conn.execute(stmt, [
                {"campaign_id": campaign_id, "subscription_id": i, "outcome": PENDING,
                 "service": "", "attempts": 0, "updated_at": now} for i in ids])

    def claim(self, campaign_id: int, owner: str, *, size: int, lease: float,
              retry_failed: bool = False) -> list[StoredSubscription]:
        """Claim up to ``size`` queued subscribers for ``lease`` seconds.

        ``FOR UPDATE SKIP LOCKED`` lets concurrent senders take disjoint rows
        without waiting for each other; the lease (re-checked by PostgreSQL on
        the locked row) keeps a claimed row from being handed out again while
        its owner lives, and returns it to the pool once the owner is gone.
        """
        d, s = deliveries, subscriptions
        wanted = [*_UNFINAL, *_RETRY] if retry_failed else [*_UNFINAL]
        now = time.time()
        free = _claimable(now)
        pick = (
            select(d.c.subscription_id)
            .join(s, s.c.id == d.c.subscription_id)
            .where(d.c.campaign_id == campaign_id, d.c.outcome.in_(wanted), free,
                   s.c.status == "active")
            .order_by(d.c.subscription_id)
            .limit(size)
        )
        if self.supports_shared_work:
            pick = pick.with_for_update(of=d, skip_locked=True)
        with self._write() as conn:
            ids = [r[0] for r in conn.execute(pick)]
            if not ids:
                return []
            conn.execute(update(d).where(d.c.campaign_id == campaign_id,
                                         d.c.subscription_id.in_(ids))
                         .values(lease_owner=owner, lease_until=now + lease))
            rows = conn.execute(select(*_SUB_COLUMNS).where(s.c.id.in_(ids))
                                .order_by(s.c.id)).all()
        return [_stored(r) for r in rows]

    def renew_leases(self, campaign_id: int, owner: str, lease: float) -> int:
        """Extend every lease this sender holds on unfinished work."""
        d = deliveries
        with self._write() as conn:
            return int(conn.execute(
                update(d).where(d.c.campaign_id == campaign_id, d.c.lease_owner == owner,
                                d.c.outcome.in_([*_UNFINAL, *_RETRY]))
                .values(lease_until=time.time() + lease)).rowcount or 0)

    def queued(self, campaign_id: int, *, retry_failed: bool = False) -> int:
        """Queued work left in a shared send (claimed by someone or not)."""
        d, s = deliveries, subscriptions
        wanted = [*_UNFINAL, *_RETRY] if retry_failed else [*_UNFINAL]
        unfinished = or_(d.c.outcome.in_(_UNFINAL), d.c.lease_owner.is_(None),
                         d.c.lease_until.is_not(None))
        stmt = (select(func.count()).select_from(d.join(s, s.c.id == d.c.subscription_id))
                .where(d.c.campaign_id == campaign_id, d.c.outcome.in_(wanted),
                       s.c.status == "active", unfinished))
        with self._read() as conn:
            return int(conn.execute(stmt).scalar_one())

    def reset_failed_claims(self, campaign_id: int) -> None:
        """Make failed rows claimable again for a --retry-failed run."""
        d = deliveries
        with self._write() as conn:
            conn.execute(update(d).where(d.c.campaign_id == campaign_id,
                                         d.c.outcome.in_(_RETRY))
                         .values(lease_owner=None, lease_until=None))

    def record(self, campaign_id: int, records: Sequence[DeliveryRecord]) -> None:
        """Commit a batch of outcomes in one transaction; mark expired subscribers."""
        if not records:
            return
        now = time.time()
        rows = [
            {
                "campaign_id": campaign_id,
                "subscription_id": r.subscription_id,
                "outcome": r.outcome.value,
                "status_code": r.status_code,
                "reason": r.reason[:500] if r.reason else None,
                "service": r.service,
                "attempts": r.attempts,
                "ambiguous": 1 if r.ambiguous else 0,
                "updated_at": now,
                "fault": r.fault.value if r.fault is not None else None,
            }
            for r in records
        ]
        expired = [r.subscription_id for r in records if r.outcome is Outcome.EXPIRED]
        moved = [r for r in records if r.moved is not None]
        insert = _dialect_insert(self.engine)
        stmt = insert(deliveries)
        stmt = stmt.on_conflict_do_update(
            index_elements=[deliveries.c.campaign_id, deliveries.c.subscription_id],
            set_={
                "outcome": stmt.excluded.outcome,
                "status_code": stmt.excluded.status_code,
                "reason": stmt.excluded.reason,
                "attempts": deliveries.c.attempts + stmt.excluded.attempts,
                "ambiguous": deliveries.c.ambiguous + stmt.excluded.ambiguous,
                "updated_at": stmt.excluded.updated_at,
                "service": stmt.excluded.service,
                "fault": stmt.excluded.fault,
                # lease_owner stays: a failed row retried in this run is not retried again
                "lease_until": None,
            },
        )
        with self._write() as conn:
            conn.execute(stmt, rows)
            if expired:
                conn.execute(
                    update(subscriptions)
                    .where(subscriptions.c.id.in_(expired), subscriptions.c.status == "active")
                    .values(status="expired", expired_at=now, updated_at=now)
                )
            for r in moved:
                self._move_endpoint(conn, r, now)

    # --- the intent log ------------------------------------------------------------------

    def mark_inflight(self, campaign_id: int, targets: Sequence[tuple[int, str]]) -> None:
        """Commit ``(subscription_id, service)`` pairs as in flight, in one transaction.

        Called for each small batch just before its requests go out, so whatever
        happens to this process, the next run knows who may already have the
        message. The final outcome (``record``) overwrites the row.
        """
        if not targets:
            return
        now = time.time()
        insert = _dialect_insert(self.engine)
        stmt = insert(deliveries)
        stmt = stmt.on_conflict_do_update(
            index_elements=[deliveries.c.campaign_id, deliveries.c.subscription_id],
            set_={"outcome": INFLIGHT, "updated_at": stmt.excluded.updated_at},
        )
        with self._write() as conn:
            conn.execute(stmt, [
                {"campaign_id": campaign_id, "subscription_id": sid, "outcome": INFLIGHT,
                 "service": service, "attempts": 0, "ambiguous": 0, "updated_at": now}
                for sid, service in targets])

    def inflight_among(self, campaign_id: int, ids: Sequence[int]) -> set[int]:
        """Which of ``ids`` an earlier run marked in flight and never recorded."""
        if not ids:
            return set()
        d = deliveries
        with self._read() as conn:
            return {r[0] for r in conn.execute(
                select(d.c.subscription_id).where(d.c.campaign_id == campaign_id,
                                                  d.c.outcome == INFLIGHT,
                                                  d.c.subscription_id.in_(ids)))}

    def release_inflight(self, campaign_id: int, ids: Sequence[int]) -> None:
        """Return in-flight rows whose request never went out to the queue (a graceful stop)."""
        if not ids:
            return
        d = deliveries
        with self._write() as conn:
            conn.execute(update(d).where(d.c.campaign_id == campaign_id,
                                         d.c.outcome == INFLIGHT,
                                         d.c.subscription_id.in_(ids))
                         .values(outcome=PENDING, lease_until=None))

    @staticmethod
    def _move_endpoint(conn: Connection, r: DeliveryRecord, now: float) -> bool:
        """Keep the endpoint form the push service accepted (FCM /wp/) for later sends.

        Only while the row still holds the old form; if another row already
        holds the new one (imported meanwhile), both stay as they are (False):
        a unique clash must never cost the ledger batch it rides in.
        """
        assert r.moved is not None
        old, new = r.moved
        s, other = subscriptions, subscriptions.alias("other")
        taken = select(other.c.id).where(other.c.endpoint == new).exists()
        try:
            with conn.begin_nested():
                n = conn.execute(update(s).where(s.c.id == r.subscription_id,
                                                 s.c.endpoint == old, ~taken)
                                 .values(endpoint=new, updated_at=now)).rowcount
        except IntegrityError:  # an import stored the /wp/ form between our check and write
            return False
        return bool(n)

    def outcome_counts(self, campaign_id: int) -> dict[str, dict[str, int]]:
        """{service: {outcome: count}} plus the ambiguous re-sends under ``"_ambiguous"``."""
        stmt = (
            select(deliveries.c.service, deliveries.c.outcome, func.count(),
                   func.sum(deliveries.c.ambiguous))
            .where(deliveries.c.campaign_id == campaign_id,
                   deliveries.c.outcome.not_in(_UNFINAL))
            .group_by(deliveries.c.service, deliveries.c.outcome)
        )
        out: dict[str, dict[str, int]] = {}
        with self._read() as conn:
            for service, outcome, n, amb in conn.execute(stmt):
                out.setdefault(service, {})[outcome] = int(n)
                if amb:
                    out.setdefault("_ambiguous", {})[service] = (
                        out.get("_ambiguous", {}).get(service, 0) + int(amb))
        return out

    def delivery_rows(self, campaign_id: int) -> Iterator[dict[str, Any]]:
        """Every ledger row of a campaign with the endpoint while it is still stored."""
        d, s = deliveries, subscriptions
        after = 0
        while True:
            stmt = (
                select(d.c.subscription_id, s.c.endpoint, d.c.service, d.c.outcome,
                       d.c.status_code, d.c.reason, d.c.attempts, d.c.updated_at,
                       d.c.ambiguous)
                .select_from(d.outerjoin(s, s.c.id == d.c.subscription_id))
                .where(d.c.campaign_id == campaign_id, d.c.subscription_id > after,
                       d.c.outcome.not_in(_UNFINAL))
                .order_by(d.c.subscription_id)
                .limit(2000)
            )
            with self._read() as conn:
                rows = conn.execute(stmt).all()
            if not rows:
                return
            for r in rows:
                yield dict(r._mapping)
            after = rows[-1][0]

    # --- prune --------------------------------------------------------------------------

    def prunable(self, *, failed_campaigns: int | None = None) -> list[int]:
        """Ids of subscriptions that prune would delete (see ``prune_candidates``)."""
        return [c.id for c in self.prune_candidates(failed_campaigns=failed_campaigns)]

    def prune_candidates(self, *, failed_campaigns: int | None = None) -> list[PruneCandidate]:
        """Subscribers prune would delete, with the state they were selected in.

        Expired ones always; with ``failed_campaigns=N`` also active ones whose
        last N campaigns each ended with an answer about that subscriber (see
        ``_about_subscriber``). Never for auth, blocked, held back (a stopped push
        service), uncertain or anything else that says nothing about them.
        """
        s = subscriptions
        with self._read() as conn:
            found = {r[0]: PruneCandidate(r[0], r[1], r[2]) for r in conn.execute(
                select(s.c.id, s.c.status, s.c.updated_at).where(s.c.status == "expired"))}
            if failed_campaigns:
                for c in self._repeatedly_failing(conn, failed_campaigns):
                    found.setdefault(c.id, c)
        return [found[i] for i in sorted(found)]

    def _repeatedly_failing(self, conn: Connection, n: int) -> Iterator[PruneCandidate]:
        d, s = deliveries, subscriptions
        final = d.c.outcome != PENDING
        # Per campaign and push service: how many recipients got a final answer,
        # and how many got each (outcome, status) answer. One that hit most of them
        # is about the campaign (the sender's or the service's), not any subscriber.
        totals = {(c, svc): int(k) for c, svc, k in conn.execute(
            select(d.c.campaign_id, d.c.service, func.count()).where(final)
            .group_by(d.c.campaign_id, d.c.service))}
        answers = {(c, svc, o, code): int(k) for c, svc, o, code, k in conn.execute(
            select(d.c.campaign_id, d.c.service, d.c.outcome, d.c.status_code, func.count())
            .where(d.c.outcome.in_(_COUNTABLE))
            .group_by(d.c.campaign_id, d.c.service, d.c.outcome, d.c.status_code))}

        def about_subscriber(row: Any) -> bool:
            _sid, campaign, service, outcome, code, fault = row[:6]
            if outcome not in _COUNTABLE or fault in (Fault.SENDER.value, Fault.HELD.value):
                return False
            if fault == Fault.SUBSCRIBER.value:
                return True  # the service's reason names this subscription
            hit = answers.get((campaign, service, outcome, code), 0)
            return 2 * hit <= totals.get((campaign, service), 0)

        stmt = (
            select(d.c.subscription_id, d.c.campaign_id, d.c.service, d.c.outcome,
                   d.c.status_code, d.c.fault, s.c.status, s.c.updated_at)
            .join(s, s.c.id == d.c.subscription_id)
            .where(s.c.status == "active", final)
            .order_by(d.c.subscription_id, d.c.campaign_id.desc())
        )
        current: int | None = None
        last: list[Any] = []
        for row in conn.execute(stmt):
            if row[0] != current:
                if len(last) == n and all(about_subscriber(r) for r in last):
                    yield PruneCandidate(last[0][0], last[0][6], last[0][7])
                current, last = row[0], []
            if len(last) < n:
                last.append(row)
        if len(last) == n and all(about_subscriber(r) for r in last):
            yield PruneCandidate(last[0][0], last[0][6], last[0][7])

    def delete_subscriptions(self, candidates: Sequence[PruneCandidate]) -> int:
        """Delete what prune selected; ledger rows stay so old reports still print.

        The DELETE itself re-checks that each row is still in the state it was
        selected in (same status, same ``updated_at``): a subscriber an import
        reactivated or changed between the selection and the delete survives.
        """
        s = subscriptions
        by_status: dict[str, list[PruneCandidate]] = {}
        for c in candidates:
            by_status.setdefault(c.status, []).append(c)
        n = 0
        with self._write() as conn:
            for status, group in by_status.items():
                for i in range(0, len(group), 500):
                    seen = [(c.id, _NO_TIME if c.updated_at is None else c.updated_at)
                            for c in group[i:i + 500]]
                    n += conn.execute(delete(s).where(
                        s.c.status == status,
                        tuple_(s.c.id, func.coalesce(s.c.updated_at, _NO_TIME)).in_(seen),
                    )).rowcount
        return n

    # --- locks --------------------------------------------------------------------------

    def acquire_lock(self, name: str, *, wait: float = 0.0, poll: float = 0.2,
                     blocked_by: Sequence[str] = ()) -> Lock:
        """Take a named cross-process lock, or raise Busy naming the holder.

        ``blocked_by`` lists name prefixes of other locks that must not be held
        either (prune waits for every ``campaign:`` lock). A lock whose process
        is gone (same host) or whose heartbeat is older than LOCK_STALE_AFTER is
        taken over: kill -9 never blocks the next run. ``wait`` applies only to
        blockers: the same name held elsewhere refuses at once.
        """
        deadline = time.monotonic() + wait
        host = socket.gethostname()
        pid = os.getpid()
        owner = f"pid {pid} on {host}"
        while True:
            now = time.time()
            holder: str | None = None
            same_name = False
            with self._write() as conn:
                for row in conn.execute(select(locks)).all():
                    m = row._mapping
                    if m["name"] != name and not m["name"].startswith(tuple(blocked_by)):
                        continue
                    stale = now - m["heartbeat_at"] > LOCK_STALE_AFTER or (
                        m["host"] == host and not _pid_alive(m["pid"]))
                    if stale:
                        conn.execute(delete(locks).where(locks.c.name == m["name"]))
                    elif holder is None or m["name"] == name:
                        since = time.strftime("%H:%M:%S", time.localtime(m["acquired_at"]))
                        holder = f"{m['name']} is locked by {m['owner']}, since {since}"
                        same_name = m["name"] == name
                if holder is None:
                    try:
                        with conn.begin_nested():
                            conn.execute(locks.insert().values(
                                name=name, owner=owner, pid=pid, host=host, acquired_at=now,
                                heartbeat_at=now))
                    except IntegrityError:  # another process took it between our read and write
                        holder = f"{name} is locked by another process"
                        same_name = True
                    else:
                        return Lock(self, name, pid, host)
            if same_name or time.monotonic() >= deadline:
                raise Busy(f"{holder}; try again when it has finished")
            time.sleep(poll)

    def running_senders(self, campaign: str) -> int:
        """Live holders of this campaign's lock(s): one on SQLite, one per sender on PostgreSQL."""
        now = time.time()
        host = socket.gethostname()
        n = 0
        with self._read() as conn:
            for row in conn.execute(select(locks)):
                m = row._mapping
                if m["name"] != f"campaign:{campaign}" and \
                        not m["name"].startswith(f"campaign:{campaign}#"):
                    continue
                dead = now - m["heartbeat_at"] > LOCK_STALE_AFTER or (
                    m["host"] == host and not _pid_alive(m["pid"]))
                n += not dead
        return n

    def _heartbeat(self, lock: Lock) -> None:
        with self._write() as conn:
            conn.execute(update(locks).where(
                locks.c.name == lock.name, locks.c.pid == lock.pid,
                locks.c.host == lock.host).values(heartbeat_at=time.time()))

    def _release(self, lock: Lock) -> None:
        with self._write() as conn:
            conn.execute(delete(locks).where(
                locks.c.name == lock.name, locks.c.pid == lock.pid, locks.c.host == lock.host))


@dataclass
class Lock:
    """A held lock; refresh with heartbeat() during long runs, release() at the end."""

    store: Store
    name: str
    pid: int
    host: str
    released: bool = False

    def heartbeat(self) -> None:
        self.store._heartbeat(self)

    def release(self) -> None:
        if not self.released:
            self.store._release(self)
            self.released = True

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _pending_query(stmt: Any, campaign_id: int, retry_failed: bool) -> Any:
    """Restrict ``stmt`` to the active subscribers who still need this campaign's message.

    The one definition of "pending" that streaming and counting share.
    """
    d, s = deliveries, subscriptions
    return (stmt.select_from(s.outerjoin(d, and_(d.c.subscription_id == s.c.id,
                                                 d.c.campaign_id == campaign_id)))
            .where(s.c.status == "active", _unresolved(retry_failed)))


def _unresolved(retry_failed: bool) -> Any:
    """Ledger state of a subscriber who still needs this campaign's message."""
    d = deliveries
    states = [*_UNFINAL, *_RETRY] if retry_failed else [*_UNFINAL]
    return or_(d.c.outcome.is_(None), d.c.outcome.in_(states))


def _claimable(now: float) -> Any:
    """Queued work nobody holds: pending with no live lease, or failed (for
    --retry-failed) not yet retried in this run or whose retrier died."""
    d = deliveries
    expired_lease = and_(d.c.lease_until.is_not(None), d.c.lease_until < now)
    return or_(
        # in flight under a lease that ran out: its sender died (uncertain, see INFLIGHT)
        and_(d.c.outcome.in_(_UNFINAL), or_(d.c.lease_until.is_(None), expired_lease)),
        and_(d.c.outcome.in_(_RETRY), or_(d.c.lease_owner.is_(None),
                                                      expired_lease)),
    )


def _create_engine(url: str, **kwargs: Any) -> Engine:
    """An engine whose errors never quote SQL parameters (endpoints, auth secrets).

    A URL option the driver would ignore (SQLAlchemy only warns) or cannot
    parse is refused as bad input: a typo must not silently change the store.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", SAWarning)
            return create_engine(url, hide_parameters=True, **kwargs)
    # NoSuchModuleError is an ArgumentError; ValueError/TypeError: "?timeout=abc"
    except (ArgumentError, ImportError, SAWarning, ValueError, TypeError) as exc:
        reason = _one_line(str(exc))
        if isinstance(exc, SAWarning):  # "... are not accepted by the pysqlite driver and
            reason = reason.split(";")[0].replace(" and are being ignored", "")  # are ignored;"
        raise InputError(f"cannot use this database URL: {reason}", field="--db") from None


#: sqlite3 primary result codes (``sqlite_errorcode & 0xff``).
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
_SQLITE_STORE_FAULTS = {
    3: "permission denied",  # SQLITE_PERM
    8: "the store is read-only (pushcli needs to write the file and, for SQLite's "
       "-wal and -shm files, its directory)",  # SQLITE_READONLY
    10: "disk I/O error",  # SQLITE_IOERR
    11: "the database file is corrupt",  # SQLITE_CORRUPT
    13: "the disk or the database is full",  # SQLITE_FULL
    14: "cannot open the database file (check the permissions of the file and its "
        "directory)",  # SQLITE_CANTOPEN
}
#: PostgreSQL SQLSTATEs meaning "someone else holds what we need": lock_not_available,
#: deadlock_detected.
_PG_BUSY = {"55P03", "40P01"}
_URL_RE = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+")
_QUOTED_RE = re.compile(r'"([^"]*)"|\'([^\']*)\'')
_IDENTIFIER_RE = re.compile(r"[a-z_][a-z0-9_$.]*")


def _one_line(text: str) -> str:
    """A driver's or SQLAlchemy's message on one line, without the help link."""
    text = re.sub(r"\s*\(Background on this \w+ at: \S+\)", "", text)
    return " ".join(text.split())


def _sqlite_code(orig: BaseException) -> int | None:
    code = getattr(orig, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _is_busy(orig: BaseException) -> bool:
    code = _sqlite_code(orig)
    if code is not None:
        return code in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return getattr(orig, "sqlstate", None) in _PG_BUSY or "database is locked" in str(orig)


def _reason(orig: BaseException) -> str:
    """Why the database refused, fit to print: no SQL parameters, values or URLs.

    SQLite's messages carry none; PostgreSQL's primary message may quote a
    value (``invalid input syntax for type integer: "..."``) and its DETAIL
    does (``Key (endpoint)=(https://...)``), so only the primary message is
    kept and any quoted text that is not a plain SQL name is elided.
    """
    code = _sqlite_code(orig)
    if code in _SQLITE_STORE_FAULTS:
        return _SQLITE_STORE_FAULTS[code]
    diag = getattr(orig, "diag", None)
    text = getattr(diag, "message_primary", None) or str(orig)
    lines = text.strip().splitlines()
    text = _URL_RE.sub("<url>", lines[0] if lines else "")
    text = _QUOTED_RE.sub(
        lambda m: m.group(0) if _IDENTIFIER_RE.fullmatch(m.group(1) or m.group(2) or "")
        else "\"…\"", text)
    return " ".join(text.split()) or type(orig).__name__


def store_error(exc: DBAPIError, where: str | None, *, action: str = "write") -> PushcliError:
    """The one-line error for a failed database call at the store boundary.

    A lock still held after the busy wait is Busy (75: try later); anything
    else is StoreError (74: what was not written is still to do, re-run).
    The message names the store and the reason, never SQL or its parameters.
    """
    orig = exc.orig if exc.orig is not None else exc
    store = f"the store {where}" if where else "the store"
    if _is_busy(orig):
        return Busy(f"{store} is locked by another process (still locked after "
                    f"{BUSY_TIMEOUT_MS / 1000:g} s); try again when it has finished")
    if action == "write":
        return StoreError(f"cannot write {store}: {_reason(orig)}; what was not "
                          "written is still to do: re-run once fixed")
    return StoreError(f"cannot {action} {store}: {_reason(orig)}")


def _open_error(exc: DBAPIError, where: str) -> PushcliError:
    """A failure to connect: the store's fault (74/75) or a wrong ``--db`` (2)."""
    orig = exc.orig if exc.orig is not None else exc
    if _is_busy(orig) or _sqlite_code(orig) in _SQLITE_STORE_FAULTS:
        return store_error(exc, where, action="open")
    # refused, unknown host or database, bad credentials, a bad driver option,
    # not a database: the connection parameters are wrong
    return InputError(f"cannot open database: {_one_line(str(orig))}", field="--db")


def _dialect_insert(engine: Engine) -> Any:
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("pushcli_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")
