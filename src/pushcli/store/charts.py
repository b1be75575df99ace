"""Aggregates of a campaign's ledger for the results page (``htmlreport``): outcomes per
time bucket and the commonest failure reasons, each one GROUP BY whose output is bounded
(buckets, top N) however large the audience, so a page never holds a row per subscriber.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import Integer, cast, func, select

from pushcli.pushservices import Outcome
from pushcli.store.database import Database
from pushcli.store.schema import UNFINAL, deliveries

#: At most this many time buckets in a timeline: minutes while a send lasts under four
#: hours, then whole multiples of a minute (a 48 h send window gets 12-minute buckets).
MAX_BUCKETS = 240


@dataclass(frozen=True)
class Timeline:
    """Final outcomes per time bucket: ``counts[i]`` is ``{outcome: n}`` for the bucket
    starting at ``start + i * width_s`` (Unix time, UTC minute boundaries)."""

    start: float
    width_s: int
    counts: list[dict[str, int]]


class Charts(Database):
    """The bounded aggregates of ``Store`` behind the results page."""

    def outcome_timeline(self, campaign_id: int, *, max_buckets: int = MAX_BUCKETS) -> Timeline:
        """Final outcomes of a campaign by the minute they were recorded (``updated_at``).

        Two queries: the first and last time, then one GROUP BY (bucket, outcome), so the
        result has at most ``max_buckets`` x outcomes entries. Empty buckets stay in the
        list (zero counts): a pause (Retry-After, a closed send window) shows as a gap.
        """
        d = deliveries
        final = (d.c.campaign_id == campaign_id, d.c.outcome.not_in(UNFINAL))
        with self._read() as conn:
            first, last = conn.execute(
                select(func.min(d.c.updated_at), func.max(d.c.updated_at)).where(*final)).one()
            if first is None:
                return Timeline(start=0.0, width_s=60, counts=[])
            start = math.floor(first / 60) * 60
            minutes = int((last - start) // 60) + 1
            width = 60 * max(1, math.ceil(minutes / max_buckets))
            offset = (d.c.updated_at - start) / width
            # CAST truncates on SQLite; PostgreSQL's rounds, so it gets floor() first
            bucket = (cast(offset, Integer) if self.is_sqlite
                      else cast(func.floor(offset), Integer)).label("bucket")
            rows = conn.execute(select(bucket, d.c.outcome, func.count()).where(*final)
                                .group_by(bucket, d.c.outcome)).all()
        n = int((last - start) // width) + 1
        counts: list[dict[str, int]] = [{} for _ in range(n)]
        for b, outcome, c in rows:
            counts[min(max(int(b), 0), n - 1)][str(outcome)] = int(c)
        return Timeline(start=float(start), width_s=width, counts=counts)

    def failure_reasons(self, campaign_id: int, *, limit: int = 10) -> list[dict[str, object]]:
        """The ``limit`` commonest (outcome, status code, reason) among a campaign's
        subscribers not ``sent``, with how many subscribers each touched (one ledger row
        per subscriber), most first."""
        d = deliveries
        n = func.count().label("subscribers")
        stmt = (select(d.c.outcome, d.c.status_code, d.c.reason, n)
                .where(d.c.campaign_id == campaign_id,
                       d.c.outcome.not_in((*UNFINAL, Outcome.SENT.value)))
                .group_by(d.c.outcome, d.c.status_code, d.c.reason)
                .order_by(n.desc(), d.c.outcome, d.c.status_code)
                .limit(limit))
        with self._read() as conn:
            return [{"outcome": o, "status_code": code, "reason": reason or "",
                     "subscribers": int(c)} for o, code, reason, c in conn.execute(stmt)]
