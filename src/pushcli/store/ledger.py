"""Campaign and delivery-ledger queries: campaign runs, the pending audience, shared
sends (queue, claims, leases), the intent log, outcomes and their counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import and_, func, not_, null, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from pushcli.messages import DeliveryRecord
from pushcli.pushservices import Outcome
from pushcli.store.database import Database, dialect_insert, retry_deadlocks, store_error
from pushcli.store.rows import (
    SUB_COLUMNS,
    CampaignInfo,
    StoredSubscription,
    campaign_info,
    dumps,
    stored,
)
from pushcli.store.schema import (
    INFLIGHT,
    MAX_RUN_HISTORY,
    PENDING,
    RETRY,
    RUN_COUNTS,
    UNFINAL,
    campaign_runs,
    campaigns,
    deliveries,
    intents,
    subscriptions,
)


class Ledger(Database):
    """The campaign and delivery-ledger queries of ``Store``."""

    #: Seconds the current run's clock is ahead of the real one. A send at an injected
    #: ``now`` (tests simulating cron runs: PUSHCLI_NOW) sets it, so the outcomes it
    #: records are stamped at that moment and a later run's frequency cap, which counts
    #: ``sent`` rows by ``updated_at``, sees them where that run's ``now`` expects them.
    #: Leases and locks keep the real clock: they coordinate live processes.
    clock_offset: float = 0.0

    def run_clock(self) -> float:
        """Now on the current run's clock (Unix time): what campaign and outcome rows
        are stamped with."""
        return time.time() + self.clock_offset

    @retry_deadlocks
    def start_campaign(self, name: str, spec: Mapping[str, Any], *,
                       test_send: bool = False) -> CampaignInfo:
        """Create the campaign on its first run, or mark a re-run; returns its row.

        ``started_at`` is the first run that is not a ``test_send`` (``send --to``): an
        A/B test's ``decide_after`` counts from it, so previewing a campaign on one device
        hours before the real send does not start the experiment's clock.
        """
        now = self.run_clock()
        started = None if test_send else now
        for attempt in (1, 2):
            try:
                with self._write(passthrough=(IntegrityError,)) as conn:
                    row = conn.execute(select(campaigns.c.id)
                                       .where(campaigns.c.name == name)).first()
                    if row is None:
                        conn.execute(campaigns.insert().values(
                            name=name, created_at=now, started_at=started, status="running",
                            runs=1, spec=dumps(dict(spec)),
                        ))
                    else:
                        conn.execute(update(campaigns).where(campaigns.c.id == row[0]).values(
                            status="running", runs=campaigns.c.runs + 1, finished_at=None,
                            spec=dumps(dict(spec)),
                            started_at=func.coalesce(campaigns.c.started_at, started),
                        ))
                break
            except IntegrityError as exc:
                # shared senders starting at the same moment both found no row: the
                # other one created it, so this one is a re-run of it
                if attempt == 2:
                    raise store_error(exc, self.display_url, action="write") from None
        info = self.get_campaign(name)
        assert info is not None
        return info

    @retry_deadlocks
    def finish_campaign(self, campaign_id: int, status: str,
                        run: Mapping[str, Any] | None = None,
                        history: Mapping[str, Any] | None = None) -> None:
        """Mark a run's end; ``run`` (its figures) is kept for later reports.

        ``history`` (``campaign_runs`` columns but the keys) adds this run to the campaign's
        run history, numbered by ``campaigns.runs``; the history keeps the newest
        ``MAX_RUN_HISTORY`` runs. Shared senders that ended the same run number add up.
        """
        extra = {} if run is None else {"last_run": dumps(dict(run))}
        with self._write() as conn:
            conn.execute(update(campaigns).where(campaigns.c.id == campaign_id).values(
                status=status, finished_at=self.run_clock(), **extra))
            if history is not None:
                self._add_run(conn, campaign_id, history)

    def _add_run(self, conn: Connection, campaign_id: int, history: Mapping[str, Any]) -> None:
        runs = int(conn.execute(select(campaigns.c.runs)
                                .where(campaigns.c.id == campaign_id)).scalar_one())
        r = campaign_runs
        values = {k: history[k] for k in RUN_COUNTS + ("at", "status")}
        values["scheduled"] = int(bool(history.get("scheduled")))
        stmt = dialect_insert(self.engine)(r).values(campaign_id=campaign_id, run=runs,
                                                     **values)
        # each shared sender counts its own messages; due and waiting are the whole run's
        added = {k: getattr(r.c, k) + getattr(stmt.excluded, k)
                 for k in ("attempted", "sent", "capped", "missed")}
        conn.execute(stmt.on_conflict_do_update(
            index_elements=[r.c.campaign_id, r.c.run],
            set_={**added, **{k: getattr(stmt.excluded, k)
                              for k in ("at", "status", "scheduled", "due", "waiting")}}))
        conn.execute(r.delete().where(r.c.campaign_id == campaign_id,
                                      r.c.run <= runs - MAX_RUN_HISTORY))

    def run_history(self, campaign_id: int, *,
                    limit: int = MAX_RUN_HISTORY) -> list[dict[str, Any]]:
        """The campaign's newest ``limit`` runs, oldest first: ``run``, ``at``, ``status``,
        ``scheduled`` and the ``RUN_COUNTS`` (what the results page draws over time)."""
        r = campaign_runs
        with self._read() as conn:
            rows = conn.execute(select(r.c.run, r.c.at, r.c.status, r.c.scheduled,
                                       *(getattr(r.c, k) for k in RUN_COUNTS))
                                .where(r.c.campaign_id == campaign_id)
                                .order_by(r.c.run.desc()).limit(limit)).all()
        return [{"run": int(run), "at": float(at), "status": status,
                 "scheduled": bool(scheduled),
                 **{k: int(v) for k, v in zip(RUN_COUNTS, counts, strict=True)}}
                for run, at, status, scheduled, *counts in reversed(rows)]

    def get_campaign(self, name: str) -> CampaignInfo | None:
        with self._read() as conn:
            row = conn.execute(select(campaigns).where(campaigns.c.name == name)).first()
        return campaign_info(row) if row else None

    def list_campaigns(self) -> list[CampaignInfo]:
        with self._read() as conn:
            rows = conn.execute(select(campaigns).order_by(campaigns.c.id)).all()
        return [campaign_info(r) for r in rows]

    def pending(
        self,
        campaign_id: int,
        *,
        retry_failed: bool = False,
        batch_size: int = 500,
        match: Callable[[StoredSubscription], bool] | None = None,
        limit: int | None = None,
        id_range: tuple[int, int | None] | None = None,
        zones: Sequence[str] | None = None,
        default_zone: str = "UTC",
    ) -> Iterator[list[StoredSubscription]]:
        """Stream batches of active subscribers with no final outcome in this campaign.

        One short keyset query per batch, so the whole audience is never in
        memory and no read transaction stays open across the send.
        ``id_range=(lo, hi)`` keeps the subscribers with ``lo < id <= hi`` (no upper
        end when ``hi`` is None; the share ``workers.Dealer`` gave one sender
        process), starting the scan at ``lo``.
        ``zones`` keeps the subscribers whose time zone (``default_zone`` when
        they have none) is one of them: the due zones of a scheduled send.
        """
        s = subscriptions
        part = _in_zones(zones, default_zone)
        after = 0
        if id_range is not None:
            after = id_range[0]
            if id_range[1] is not None:
                part.append(s.c.id <= id_range[1])
        given = 0
        while True:
            stmt = (
                _pending_query(select(*SUB_COLUMNS), campaign_id, retry_failed)
                .where(s.c.id > after, *part)
                .order_by(s.c.id)
                .limit(batch_size)
            )
            with self._read() as conn:
                rows = conn.execute(stmt).all()
            if not rows:
                return
            after = rows[-1][0]
            batch = [stored(r) for r in rows]
            if match is not None:
                batch = [b for b in batch if match(b)]
            if limit is not None:
                batch = batch[: max(0, limit - given)]
            if batch:
                given += len(batch)
                yield batch
            if limit is not None and given >= limit:
                return

    def count_pending(self, campaign_id: int, *, retry_failed: bool = False,
                      zones: Sequence[str] | None = None, default_zone: str = "UTC") -> int:
        """How many active subscribers have no final outcome in this campaign (one query)."""
        stmt = _pending_query(select(func.count()), campaign_id, retry_failed).where(
            *_in_zones(zones, default_zone))
        with self._read() as conn:
            return int(conn.execute(stmt).scalar_one())

    def pending_by_zone(self, campaign_id: int, *, default_zone: str = "UTC",
                        retry_failed: bool = False) -> dict[str, int]:
        """{time zone: pending subscribers} in one GROUP BY: a few hundred rows, however
        large the audience, so a scheduled send decides per zone who is due."""
        tz = subscriptions.c.timezone  # grouped as stored: NULL joins the default zone below
        stmt = _pending_query(select(tz, func.count()), campaign_id, retry_failed).group_by(tz)
        out: dict[str, int] = {}
        with self._read() as conn:
            for z, n in conn.execute(stmt):
                key = default_zone if z is None else str(z)
                out[key] = out.get(key, 0) + int(n)
        return out

    def over_cap(self, campaign_id: int, *, since: float, most: int,
                 zones: Sequence[str] | None = None, default_zone: str = "UTC",
                 retry_failed: bool = False) -> list[tuple[StoredSubscription, int]]:
        """Pending subscribers (of ``zones``) with at least ``most`` messages ``sent`` in
        any campaign since ``since`` (Unix time), with that count: the frequency cap,
        counted in SQL over the ledger. Only the capped rows come back."""
        d = deliveries
        recent = (select(d.c.subscription_id.label("sid"), func.count().label("n"))
                  .where(d.c.outcome == Outcome.SENT.value, d.c.updated_at >= since)
                  .group_by(d.c.subscription_id)
                  .having(func.count() >= most).subquery())
        s = subscriptions
        stmt = (select(*SUB_COLUMNS, recent.c.n)
                .select_from(s.outerjoin(d, and_(d.c.subscription_id == s.c.id,
                                                 d.c.campaign_id == campaign_id))
                             .join(recent, recent.c.sid == s.c.id))
                .where(s.c.status == "active", _unresolved(retry_failed),
                       *_in_zones(zones, default_zone))
                .order_by(s.c.id))
        with self._read() as conn:
            return [(stored(r[:-1]), int(r[-1])) for r in conn.execute(stmt)]

    # --- shared sends (several processes or hosts on one campaign) -----------------------

    @property
    def supports_shared_work(self) -> bool:
        """PostgreSQL can hand out work with FOR UPDATE SKIP LOCKED; SQLite cannot."""
        return self.engine.dialect.name == "postgresql"

    @retry_deadlocks
    def enqueue(self, campaign_id: int, ids: Sequence[int]) -> None:
        """Queue subscribers as ``pending`` work; rows already in the ledger are left alone."""
        if not ids:
            return
        insert = dialect_insert(self.engine)
        now = time.time()
        stmt = insert(deliveries).on_conflict_do_nothing(
            index_elements=[deliveries.c.campaign_id, deliveries.c.subscription_id])
        with self._write() as conn:
            conn.execute(stmt, [
                {"campaign_id": campaign_id, "subscription_id": i, "outcome": PENDING,
                 "service": "", "attempts": 0, "updated_at": now} for i in ids])

    @retry_deadlocks
    def claim(self, campaign_id: int, owner: str, *, size: int, lease: float,
              retry_failed: bool = False, zones: Sequence[str] | None = None,
              default_zone: str = "UTC") -> list[StoredSubscription]:
        """Claim up to ``size`` queued subscribers for ``lease`` seconds.

        ``FOR UPDATE SKIP LOCKED`` lets concurrent senders take disjoint rows
        without waiting for each other; the lease (re-checked by PostgreSQL on
        the locked row) keeps a claimed row from being handed out again while
        its owner lives, and returns it to the pool once the owner is gone.
        """
        d, s = deliveries, subscriptions
        wanted = [*UNFINAL, *RETRY] if retry_failed else [*UNFINAL]
        now = time.time()
        free = _claimable(now)
        pick = (
            select(d.c.subscription_id)
            .join(s, s.c.id == d.c.subscription_id)
            .where(d.c.campaign_id == campaign_id, d.c.outcome.in_(wanted), free,
                   s.c.status == "active", *_in_zones(zones, default_zone))
            .order_by(d.c.subscription_id)
            .limit(size)
        )
        if self.supports_shared_work:
            pick = pick.with_for_update(of=d, skip_locked=True)
        with self._write() as conn:
            # a dead sender's intent rows first: what it left in flight becomes
            # ``inflight`` before anyone can claim it, so the resend is counted
            self._adopt(conn, campaign_id, now)
            ids = [r[0] for r in conn.execute(pick)]
            if not ids:
                return []
            conn.execute(update(d).where(d.c.campaign_id == campaign_id,
                                         d.c.subscription_id.in_(ids))
                         .values(lease_owner=owner, lease_until=now + lease))
            rows = conn.execute(select(*SUB_COLUMNS).where(s.c.id.in_(ids))
                                .order_by(s.c.id)).all()
        return [stored(r) for r in rows]

    @retry_deadlocks
    def renew_leases(self, campaign_id: int, owner: str, lease: float) -> int:
        """Extend every lease this sender holds on unfinished work."""
        d = deliveries
        until = time.time() + lease
        with self._write() as conn:
            # its intent rows with them: an intent never outlives its rows' leases
            conn.execute(update(intents).where(intents.c.campaign_id == campaign_id,
                                               intents.c.sender == owner,
                                               intents.c.lease_until.is_not(None))
                         .values(lease_until=until))
            return int(conn.execute(
                update(d).where(d.c.campaign_id == campaign_id, d.c.lease_owner == owner,
                                d.c.outcome.in_([*UNFINAL, *RETRY]))
                .values(lease_until=until)).rowcount or 0)

    def queued(self, campaign_id: int, *, retry_failed: bool = False,
               zones: Sequence[str] | None = None, default_zone: str = "UTC") -> int:
        """Queued work left in a shared send (claimed by someone or not), of ``zones``."""
        d, s = deliveries, subscriptions
        wanted = [*UNFINAL, *RETRY] if retry_failed else [*UNFINAL]
        unfinished = or_(d.c.outcome.in_(UNFINAL), d.c.lease_owner.is_(None),
                         d.c.lease_until.is_not(None))
        stmt = (select(func.count()).select_from(d.join(s, s.c.id == d.c.subscription_id))
                .where(d.c.campaign_id == campaign_id, d.c.outcome.in_(wanted),
                       s.c.status == "active", unfinished, *_in_zones(zones, default_zone)))
        with self._read() as conn:
            return int(conn.execute(stmt).scalar_one())

    @retry_deadlocks
    def reset_failed_claims(self, campaign_id: int) -> None:
        """Make failed rows claimable again for a --retry-failed run, except those a live
        sender holds: a row it is posting again stays ``failed`` in the ledger until
        answered (its intent row says it is in flight), and taking it would resend it."""
        d = deliveries
        held = and_(d.c.lease_until.is_not(None), d.c.lease_until >= time.time())
        with self._write() as conn:
            conn.execute(update(d).where(d.c.campaign_id == campaign_id,
                                         d.c.outcome.in_(RETRY), not_(held))
                         .values(lease_owner=None, lease_until=None))

    @retry_deadlocks
    def record(self, campaign_id: int, records: Sequence[DeliveryRecord], *,
               variant_of: Callable[[int], str | None] | None = None) -> None:
        """Commit a batch of outcomes in one transaction; mark expired subscribers.

        ``variant_of`` names each subscriber's A/B variant (``deliveries.variant``); it
        is a pure function of the subscriber id (``campaign.variants.Assigner``), so
        the engine's records need not carry it.
        """
        if not records:
            return
        now = self.run_clock()
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
                "variant": variant_of(r.subscription_id) if variant_of is not None else None,
            }
            for r in records
        ]
        expired = [r.subscription_id for r in records if r.outcome is Outcome.EXPIRED]
        moved = [r for r in records if r.moved is not None]
        insert = dialect_insert(self.engine)
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
                "variant": stmt.excluded.variant,
                # lease_owner stays: a failed row retried in this run is not retried again
                "lease_until": null(),
            },
        )
        with self._write() as conn:
            if self.is_sqlite:
                # the same statement, compiled once and run by the driver's executemany:
                # SQLAlchemy's per-row parameter processing cost more than SQLite's work
                sql, order = self._compiled(stmt, tuple(rows[0]))
                conn.exec_driver_sql(sql, [tuple(r[k] for k in order) for r in rows])
            else:
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
    #
    # Before a chunk of requests goes out, one ``intents`` row lists its subscriber ids
    # (``open_intent``): one small insert per chunk, written while the previous chunk is
    # posted. The row is deleted once every id in it has a final outcome
    # (``close_intents``, riding on the next intent write). A row left by a sender that
    # died is turned into ``inflight`` ledger rows (``adopt_intents``) by the next run,
    # for the ids still without a final outcome: who may already have the message.

    def intent_log(self, campaign_id: int, sender: str,
                   lease: float | None = None) -> IntentLog:
        """One sender's intent log for one run (``lease``: a shared send's lease length)."""
        return IntentLog(self, campaign_id, sender, lease)

    @retry_deadlocks
    def open_intent(self, campaign_id: int, sender: str, ids: Sequence[int], *,
                    lease: float | None = None, closed: Sequence[int] = ()) -> int:
        """Commit ``ids`` as in flight (one row); delete the ``closed`` intent rows in the
        same transaction. Returns the new row's id.

        In a shared send the row's lease is the earliest of its ledger rows' leases, and
        ``renew_leases`` renews both together, so whenever another sender may claim one
        of these subscribers (its lease ran out) it first adopts this row (``claim``).
        """
        now = time.time()
        with self._write() as conn:
            lease_until: float | None = None
            if lease is not None:
                d = deliveries
                lease_until = conn.execute(
                    select(func.min(d.c.lease_until))
                    .where(d.c.campaign_id == campaign_id, d.c.subscription_id.in_(ids))
                ).scalar() or now + lease
            if closed:
                conn.execute(intents.delete().where(intents.c.id.in_(list(closed))))
            # on the run's clock, as outcomes are stamped: ``_superseded`` compares them
            return int(conn.execute(intents.insert().values(
                campaign_id=campaign_id, sender=sender, ids=_pack(ids),
                lease_until=lease_until,
                created_at=self.run_clock())).inserted_primary_key[0])

    @retry_deadlocks
    def close_intents(self, closed: Sequence[int], keep: Mapping[int, Sequence[int]]) -> None:
        """At a run's end: delete the ``closed`` rows and shrink each ``keep`` row to the
        ids that may still have been delivered (a request cut short); empty ones go."""
        gone = [*closed, *(row for row, ids in keep.items() if not ids)]
        with self._write() as conn:
            if gone:
                conn.execute(intents.delete().where(intents.c.id.in_(gone)))
            for row, ids in keep.items():
                if ids:
                    conn.execute(update(intents).where(intents.c.id == row)
                                 .values(ids=_pack(sorted(ids))))

    @retry_deadlocks
    def adopt_intents(self, campaign_id: int, *, everything: bool = False) -> int:
        """Turn the intent rows no live sender owns into ``inflight`` ledger rows.

        ``everything``: a run holding the campaign's lock adopts every row (no other
        sender of this campaign can be alive). Otherwise (shared sends) rows whose lease
        ran out, and rows with none: a --to/--limit run's (PostgreSQL), which no shared
        sender coordinates with, so only adopting counts a resend of what it left. Only
        ids without a final outcome become ``inflight``; returns how many ids the
        adopted rows named.
        """
        with self._write() as conn:
            return self._adopt(conn, campaign_id, None if everything else time.time())

    def _adopt(self, conn: Connection, campaign_id: int, expired_before: float | None) -> int:
        i = intents
        where = [i.c.campaign_id == campaign_id]
        if expired_before is not None:
            where.append(or_(i.c.lease_until.is_(None), i.c.lease_until < expired_before))
        rows = conn.execute(select(i.c.id, i.c.ids, i.c.created_at).where(*where)).all()
        if not rows:
            return 0
        now = time.time()
        named: set[int] = set()
        for _, packed, created_at in rows:  # each row against its own moment
            ids = sorted(_unpack(packed))
            named.update(ids)
            stmt = dialect_insert(self.engine)(deliveries)
            stmt = stmt.on_conflict_do_update(
                index_elements=[deliveries.c.campaign_id, deliveries.c.subscription_id],
                set_={"outcome": INFLIGHT, "updated_at": stmt.excluded.updated_at},
                where=_superseded(created_at),  # never over an outcome that came after
            )
            for k in range(0, len(ids), 5000):
                conn.execute(stmt, [
                    {"campaign_id": campaign_id, "subscription_id": sid, "outcome": INFLIGHT,
                     "service": "", "attempts": 0, "ambiguous": 0, "updated_at": now}
                    for sid in ids[k:k + 5000]])
        conn.execute(i.delete().where(i.c.id.in_([r[0] for r in rows])))
        return len(named)

    def in_flight(self, campaign_id: int) -> set[int]:
        """Who may already have this campaign's message without an outcome saying so:
        ``inflight`` rows, and the ids of intent rows not yet adopted that have no final
        outcome (what ``adopt_intents`` would mark)."""
        d = deliveries
        with self._read() as conn:
            out = {int(r[0]) for r in conn.execute(
                select(d.c.subscription_id).where(d.c.campaign_id == campaign_id,
                                                  d.c.outcome == INFLIGHT))}
            for packed, created_at in conn.execute(
                    select(intents.c.ids, intents.c.created_at)
                    .where(intents.c.campaign_id == campaign_id)).all():
                listed = _unpack(packed)
                final = {int(r[0]) for r in conn.execute(
                    select(d.c.subscription_id).where(
                        d.c.campaign_id == campaign_id, d.c.subscription_id.in_(listed),
                        not_(_superseded(created_at))))}
                out |= listed - final
        return out

    def inflight_among(self, campaign_id: int, ids: Sequence[int]) -> set[int]:
        """Which of ``ids`` an earlier run left in flight (adopted) and never recorded."""
        if not ids:
            return set()
        d = deliveries
        with self._read() as conn:
            return {r[0] for r in conn.execute(
                select(d.c.subscription_id).where(d.c.campaign_id == campaign_id,
                                                  d.c.outcome == INFLIGHT,
                                                  d.c.subscription_id.in_(ids)))}

    def _compiled(self, stmt: Any, keys: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        """``stmt`` as the driver's SQL and the order of its parameters, once per store
        (the statement and its column keys are the same at every call)."""
        cache: dict[tuple[str, ...], tuple[str, tuple[str, ...]]] = self.__dict__.setdefault(
            "_record_sql", {})
        cached = cache.get(keys)
        if cached is None:
            compiled = stmt.compile(dialect=self.engine.dialect, column_keys=list(keys))
            assert compiled.positiontup is not None  # SQLite's qmark style
            cached = cache[keys] = (str(compiled), tuple(compiled.positiontup))
        return cached

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
                   deliveries.c.outcome.not_in(UNFINAL))
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
                       d.c.outcome.not_in(UNFINAL))
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

def _pending_query(stmt: Any, campaign_id: int, retry_failed: bool) -> Any:
    """Restrict ``stmt`` to the active subscribers who still need this campaign's message.

    The one definition of "pending" that streaming and counting share.
    """
    d, s = deliveries, subscriptions
    return (stmt.select_from(s.outerjoin(d, and_(d.c.subscription_id == s.c.id,
                                                 d.c.campaign_id == campaign_id)))
            .where(s.c.status == "active", _unresolved(retry_failed)))


def _in_zones(zones: Sequence[str] | None, default_zone: str) -> list[Any]:
    """The filter for subscribers of ``zones`` (None: no filter; empty: nobody).

    Means ``COALESCE(timezone, default) IN zones``, spelled so that the
    (status, timezone) index answers it instead of a scan of every row.
    """
    if zones is None:
        return []
    tz = subscriptions.c.timezone
    named = tz.in_(list(zones))
    return [or_(named, tz.is_(None)) if default_zone in zones else named]


def _unresolved(retry_failed: bool) -> Any:
    """Ledger state of a subscriber who still needs this campaign's message."""
    d = deliveries
    states = [*UNFINAL, *RETRY] if retry_failed else [*UNFINAL]
    return or_(d.c.outcome.is_(None), d.c.outcome.in_(states))


def _pack(ids: Iterable[int]) -> str:
    """``intents.ids``: the subscriber ids, comma-separated (``_unpack`` reads them)."""
    return ",".join(map(str, ids))


def _unpack(packed: str) -> set[int]:
    """An intent row's subscriber ids (``intents.ids``)."""
    return {int(x) for x in packed.split(",") if x}


def _superseded(created_at: float) -> Any:
    """Ledger rows an intent written at ``created_at`` (run clock) makes ``inflight`` when
    adopted: queued work, and a failed or blocked outcome recorded before it (a
    --retry-failed run posted that subscriber again). Any outcome recorded after it is
    that request's answer, and final."""
    d = deliveries
    # equalities, not IN: an upsert's WHERE under executemany takes no expanding list
    return or_(*(d.c.outcome == o for o in UNFINAL),
               and_(or_(*(d.c.outcome == o for o in RETRY)), d.c.updated_at < created_at))


def _claimable(now: float) -> Any:
    """Queued work nobody holds: pending with no live lease, or failed (for
    --retry-failed) not yet retried in this run or whose retrier died."""
    d = deliveries
    expired_lease = and_(d.c.lease_until.is_not(None), d.c.lease_until < now)
    return or_(
        # in flight under a lease that ran out: its sender died (uncertain, see INFLIGHT)
        and_(d.c.outcome.in_(UNFINAL), or_(d.c.lease_until.is_(None), expired_lease)),
        and_(d.c.outcome.in_(RETRY), or_(d.c.lease_owner.is_(None),
                                                      expired_lease)),
    )


class IntentLog:
    """What the engine calls to commit chunks as in flight and to close them.

    The engine numbers its chunks; this maps them to ``intents`` rows. Calls come
    one at a time from the engine's ledger-write thread.
    """

    def __init__(self, ledger: Ledger, campaign_id: int, sender: str,
                 lease: float | None) -> None:
        self._ledger = ledger
        self._campaign_id = campaign_id
        self._sender = sender
        self._lease = lease
        self._rows: dict[int, int] = {}

    def open(self, chunk: int, ids: Sequence[int], closed: Sequence[int]) -> None:
        """Commit chunk ``chunk`` (its subscriber ``ids``) as in flight; forget ``closed``
        chunks (every id in them has a committed final outcome, or never went out)."""
        self._rows[chunk] = self._ledger.open_intent(
            self._campaign_id, self._sender, ids, lease=self._lease,
            closed=[self._rows[c] for c in closed if c in self._rows])
        for c in closed:  # only once committed: a failed write is tried again whole
            self._rows.pop(c, None)

    def close(self, closed: Sequence[int], keep: Mapping[int, Sequence[int]]) -> None:
        """The run's end: forget ``closed`` chunks; keep only ``keep``'s ids of the others
        (requests that may have arrived); an open chunk not in ``keep`` stays whole."""
        rows = [self._rows[c] for c in closed if c in self._rows]
        kept = {self._rows[c]: ids for c, ids in keep.items() if c in self._rows}
        if rows or kept:
            self._ledger.close_intents(rows, kept)
        for c in closed:
            self._rows.pop(c, None)
