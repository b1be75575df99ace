"""Prune's queries: which subscribers it may delete (expired, answered about in
each of their last N campaigns, or sent K messages without a click in D days), and
the DELETE that re-checks each row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Exists, and_, delete, exists, func, select, tuple_
from sqlalchemy.engine import Connection

from pushcli.pushservices import Fault, Outcome
from pushcli.store.database import Database
from pushcli.store.schema import COUNTABLE, PENDING, deliveries, events, subscriptions

#: Push services whose browsers show pushcli's payloads without running a service
#: worker (Safari's Declarative Web Push), so they never post engagement events.
NO_SERVICE_WORKER = ("apple",)
#: Stands in for a NULL ``updated_at`` in prune's re-check.
_NO_TIME = -1.0


@dataclass(frozen=True, slots=True)
class PruneCandidate:
    """A subscriber prune selected, with the state it was selected in, so the
    DELETE can re-check that nothing changed it in between (an import)."""

    id: int
    status: str
    updated_at: float | None
    #: Unengaged candidates only: the DELETE also re-checks that no ``clicked``
    #: event at or after this time arrived in between (``events serve`` runs on).
    clicked_since: float | None = None


@dataclass(frozen=True, slots=True)
class Unengaged:
    """``prune --unengaged-days D --min-sent K`` as a query: subscribers sent at least
    ``min_sent`` messages (ledger ``sent``, across campaigns) with no ``clicked``
    event at or after ``since`` (now - D days)."""

    since: float
    min_sent: int


def _clicked_since(since: float) -> Exists:
    """SQL: this subscriber has a ``clicked`` event at or after ``since``."""
    e = events
    return exists().where(e.c.subscription_id == subscriptions.c.id, e.c.kind == "clicked",
                          e.c.at >= since)


class Pruning(Database):
    """The prune queries of ``Store``: select candidates, then delete with a re-check."""

    def prunable(self, *, failed_campaigns: int | None = None,
                 unengaged: Unengaged | None = None) -> list[int]:
        """Ids of subscriptions that prune would delete (see ``prune_candidates``)."""
        return [c.id for c in self.prune_candidates(failed_campaigns=failed_campaigns,
                                                    unengaged=unengaged)]

    def prune_candidates(self, *, failed_campaigns: int | None = None,
                         unengaged: Unengaged | None = None) -> list[PruneCandidate]:
        """Subscribers prune would delete, with the state they were selected in.

        Expired ones always; with ``failed_campaigns=N`` also active ones whose
        last N campaigns each ended with an answer about that subscriber (see
        ``_about_subscriber``). Never for auth, blocked, held back (a stopped push
        service), uncertain or anything else that says nothing about them. With
        ``unengaged``, also active ones sent at least ``min_sent`` messages and
        without a click since ``since`` (``_unengaged``).
        """
        s = subscriptions
        with self._read() as conn:
            found = {r[0]: PruneCandidate(r[0], r[1], r[2]) for r in conn.execute(
                select(s.c.id, s.c.status, s.c.updated_at).where(s.c.status == "expired"))}
            if failed_campaigns:
                for c in self._repeatedly_failing(conn, failed_campaigns):
                    found.setdefault(c.id, c)
            if unengaged is not None:
                for c in self._unengaged(conn, unengaged):
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
            .where(d.c.outcome.in_(COUNTABLE))
            .group_by(d.c.campaign_id, d.c.service, d.c.outcome, d.c.status_code))}

        def about_subscriber(row: Any) -> bool:
            _sid, campaign, service, outcome, code, fault = row[:6]
            if outcome not in COUNTABLE or fault in (Fault.SENDER.value, Fault.HELD.value):
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

    def _unengaged(self, conn: Connection, rule: Unengaged) -> Iterator[PruneCandidate]:
        """Active subscribers with ``min_sent`` ``sent`` ledger rows (in campaigns that
        reported events) and no recent click:
        one query (a grouped count joined to the subscribers, an anti-join on the
        events' (subscriber, kind, at) index), so nothing is filtered in Python."""
        d, s = deliveries, subscriptions
        # Only campaigns that reported any event count: a campaign sent without tracking
        # (or before it) cannot show a click, and must not make everyone look unengaged.
        # Nor do sends through Apple: Safari 18.4+ shows Declarative Web Push itself, no
        # service worker runs, and its subscribers can never report a click.
        tracked = select(events.c.campaign_id).distinct()
        sent = (select(d.c.subscription_id, func.count().label("n"))
                .where(d.c.outcome == Outcome.SENT.value, d.c.campaign_id.in_(tracked),
                       d.c.service.not_in(NO_SERVICE_WORKER))
                .group_by(d.c.subscription_id)
                .having(func.count() >= rule.min_sent)
                .subquery())
        stmt = (select(s.c.id, s.c.status, s.c.updated_at)
                .join(sent, sent.c.subscription_id == s.c.id)
                .where(s.c.status == "active", ~_clicked_since(rule.since))
                .order_by(s.c.id))
        for sid, status, updated_at in conn.execute(stmt):
            yield PruneCandidate(sid, status, updated_at, rule.since)

    def delete_subscriptions(self, candidates: Sequence[PruneCandidate]) -> int:
        """Delete what prune selected; ledger rows stay so old reports still print.

        The DELETE itself re-checks that each row is still in the state it was
        selected in (same status, same ``updated_at``): a subscriber an import
        reactivated or changed between the selection and the delete survives, and
        so does an unengaged one whose click arrived in between.
        """
        s = subscriptions
        groups: dict[tuple[str, float | None], list[PruneCandidate]] = {}
        for c in candidates:
            groups.setdefault((c.status, c.clicked_since), []).append(c)
        n = 0
        with self._write() as conn:
            for (status, clicked_since), group in groups.items():
                for i in range(0, len(group), 500):
                    seen = [(c.id, _NO_TIME if c.updated_at is None else c.updated_at)
                            for c in group[i:i + 500]]
                    still = and_(
                        s.c.status == status,
                        tuple_(s.c.id, func.coalesce(s.c.updated_at, _NO_TIME)).in_(seen))
                    if clicked_since is not None:
                        still = and_(still, ~_clicked_since(clicked_since))
                    n += conn.execute(delete(s).where(still)).rowcount
        return n

