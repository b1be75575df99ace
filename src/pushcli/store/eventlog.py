"""Notification events as the store keeps them: one row per (campaign, subscriber,
kind), written in batches that count each event once however often it is posted
or imported. The token secret that signs what the events refer to lives next door
(``engagement``); verifying and parsing events is ``pushcli.events``'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import select

from pushcli.store.database import Database, dialect_insert, retry_deadlocks
from pushcli.store.schema import events, subscriptions

__all__ = ["EVENT_BATCH", "EventLog", "EventRow"]

#: Rows per INSERT statement of ``record_events`` (7 parameters each: far below
#: SQLite's and PostgreSQL's bound-parameter limits).
EVENT_BATCH = 500


@dataclass(frozen=True, slots=True)
class EventRow:
    """One verified notification event, as the ``events`` table holds it."""

    campaign_id: int
    subscription_id: int
    kind: str  # shown | clicked | closed
    variant: int  # the token's variant index
    action: str | None
    at: float  # when it happened (the event's ``at``, else when it was received)
    received_at: float


class EventLog(Database):
    """The event writes and look-ups of ``Store``."""

    @retry_deadlocks
    def record_events(self, rows: Sequence[EventRow]) -> int:
        """Store events, keeping the first of each (campaign, subscriber, kind); returns
        how many were new.

        ``INSERT ... ON CONFLICT DO NOTHING`` makes a re-posted event or a re-imported
        file count once; ``RETURNING`` names the rows it inserted, which counts them
        exactly on both SQLite and PostgreSQL (the row count of a multi-row INSERT
        is -1 on PostgreSQL here).
        Rows go in key order so two concurrent writers cannot deadlock on PostgreSQL.
        The caller checks the subscribers exist (``known_subscribers``): the table
        has no foreign key, so prune's deletes never wait on it.
        """
        if not rows:
            return 0
        ordered = sorted(rows, key=lambda r: (r.campaign_id, r.subscription_id, r.kind))
        insert = dialect_insert(self.engine)
        added = 0
        with self._write() as conn:
            for i in range(0, len(ordered), EVENT_BATCH):
                chunk = [asdict(r) for r in ordered[i:i + EVENT_BATCH]]
                stmt = insert(events).values(chunk).on_conflict_do_nothing(
                    index_elements=[events.c.campaign_id, events.c.subscription_id,
                                    events.c.kind]).returning(events.c.kind)
                added += len(conn.execute(stmt).all())
        return added

    def known_subscribers(self, ids: Iterable[int]) -> set[int]:
        """Which of ``ids`` are subscribers in this store: an event about one that
        prune deleted (or a token from a store restored without it) is refused."""
        wanted = sorted(set(ids))
        found: set[int] = set()
        with self._read() as conn:
            for i in range(0, len(wanted), EVENT_BATCH):
                found.update(conn.execute(select(subscriptions.c.id).where(
                    subscriptions.c.id.in_(wanted[i:i + EVENT_BATCH]))).scalars())
        return found
