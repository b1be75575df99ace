"""Subscriber queries: import (upsert by endpoint, in batches or all-or-nothing),
counts, streamed audience queries and endpoint lookups."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DataError, IntegrityError

from pushcli.errors import InputError
from pushcli.pushservices import canonical_endpoint
from pushcli.store.database import Database, store_error
from pushcli.store.rows import SUB_COLUMNS, StoredSubscription, row_values, stored
from pushcli.store.schema import subscriptions
from pushcli.subscriptions import Rejected, Subscription

IMPORT_BATCH = 2000


_FIELD = re.compile(r"[A-Za-z_][\w.\[\]-]*")


@dataclass(frozen=True, slots=True)
class Rejection:
    """One record import did not store: where it was and why, as data.

    Reporting is the caller's (``subscriptions.describe_rejection`` makes the
    one line the CLI prints); the store only says what happened.
    """

    source: str
    #: ``line 12`` (CSV, NDJSON), ``[3]`` (a JSON array's index) or ``record 2``
    #: (the record's ordinal in its source, when the database refused it).
    location: str
    #: Why, starting with the field when one field is at fault (``user_id: ...``).
    reason: str

    @property
    def field(self) -> str | None:
        """The field at fault (``keys.auth``, ``attributes.plan``), if the reason names one."""
        name, sep, _ = self.reason.partition(": ")
        return name if sep and _FIELD.fullmatch(name) else None


@dataclass
class ImportResult:
    """Counts of one import, and the first rejected records (``rejections``)."""

    read: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    committed: bool = True

    def to_json(self) -> dict[str, Any]:
        """The counts; the caller adds the rejections in the words it reports them in."""
        return {
            "read": self.read,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "committed": self.committed,
        }


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


class Subscribers(Database):
    """The subscriber queries of ``Store``: import (upsert), counts, streams, lookups."""

    def import_subscriptions(
        self,
        records: Iterable[tuple[str, Subscription | Rejected]],
        *,
        strict: bool = False,
        on_reject: Callable[[Rejection], None] | None = None,
        max_errors_kept: int = 1000,
    ) -> ImportResult:
        """Upsert records by endpoint; ``records`` yields (source name, record).

        Default: valid records are stored in batches, rejected ones counted and
        handed to ``on_reject`` as ``Rejection`` values (the first
        ``max_errors_kept`` are kept in the result). ``strict``: one transaction
        for everything, rolled back if any record was rejected, so the store is
        untouched.
        """
        result = ImportResult()

        def note(source: str, rej: Rejected) -> None:
            result.rejected += 1
            rejection = Rejection(source, rej.location, rej.reason)
            if len(result.rejections) < max_errors_kept:
                result.rejections.append(rejection)
            if on_reject is not None:
                on_reject(rejection)

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
                        note(source, Rejected(f"record {n}", _unstorable(exc)))

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
                select(*SUB_COLUMNS).where(subscriptions.c.endpoint.in_(list(latest)))
            )
        }
        now = time.time()
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for endpoint, sub in latest.items():
            values = row_values(sub)
            row = existing.get(endpoint)
            if row is None:
                values.update(status="active", created_at=now, updated_at=now)
                inserts.append(values)
                continue
            stored = dict(zip((c.name for c in SUB_COLUMNS), row, strict=True))
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
                    select(*SUB_COLUMNS)
                    .where(subscriptions.c.id > after, *filters)
                    .order_by(subscriptions.c.id)
                    .limit(batch_size)
                ).all()
            if not rows:
                return
            for row in rows:
                yield stored(row)
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
                select(*SUB_COLUMNS).where(subscriptions.c.endpoint.in_(wanted))
                .order_by(subscriptions.c.id)
            ).all()
        by_endpoint = {r[1]: r for r in rows}
        row = by_endpoint.get(canonical) or by_endpoint.get(endpoint)
        return stored(row) if row else None

    def may_hold_hosts(self, hosts: Iterable[str]) -> bool:
        """Whether an active subscriber's endpoint might be at one of ``hosts``.

        A superset test (the host text anywhere in the endpoint, any case), so
        False is certain: a send skips a whole-audience scan that only matters
        for those hosts (``audience.preflight``). One indexed-free scan in SQL,
        far cheaper than decoding every row in Python.
        """
        patterns = [f"%{h.lower()}%" for h in hosts]
        if not patterns:
            return False
        endpoint = func.lower(subscriptions.c.endpoint)
        with self._read() as conn:
            return conn.execute(select(subscriptions.c.id).where(
                subscriptions.c.status == "active",
                or_(*(endpoint.like(p) for p in patterns))).limit(1)).first() is not None

    def id_span(self) -> tuple[int, int]:
        """(lowest, highest) subscriber id ((0, 0) in an empty store): the id space
        ``workers.Dealer`` deals out to sender processes. Two primary-key lookups (any
        status: the pending query filters, and rows at the edges only cost an empty scan)."""
        s = subscriptions
        with self._read() as conn:
            low, high = conn.execute(select(func.min(s.c.id), func.max(s.c.id))).one()
        return (int(low), int(high)) if low is not None else (0, 0)

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
                rows = conn.execute(select(*SUB_COLUMNS).where(
                    subscriptions.c.endpoint.in_(list(endpoints[i:i + 500])),
                    subscriptions.c.status == "active")).all()
            yield from (stored(r) for r in rows)

    def distinct_locales(self) -> list[str]:
        """The locales of active subscribers (a campaign renders one payload per locale)."""
        stmt = (select(subscriptions.c.locale).where(subscriptions.c.status == "active",
                                                     subscriptions.c.locale.is_not(None))
                .distinct())
        with self._read() as conn:
            return sorted(r[0] for r in conn.execute(stmt))
