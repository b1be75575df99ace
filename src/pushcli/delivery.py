"""Sending a campaign: lock it, queue or deal out its audience, render,
block refused endpoints, run the engine in one or more processes, and record
every outcome in the ledger as it happens.

The HTTP side lives in ``engine`` (imported only where messages are sent);
the values both sides exchange live in ``messages``; what is checked before a
send (audience, duplicates, payloads that render, refusals) lives in ``audience``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from pushcli import eventloop, heap
from pushcli.abrun import open_arms, sendable, winner_dropped
from pushcli.audience import duplicate_endpoints, validate_variants, winner_dropped_line
from pushcli.campaign import Campaign, Renderer, RenderError
from pushcli.campaign.variants import Arm, Assigner
from pushcli.due import Gate, audience_matcher, current_time, open_gate, waiting_summary
from pushcli.encoding import b64_decode
from pushcli.errors import InputError, PushcliError, StoreError
from pushcli.keys import VapidSigner
from pushcli.messages import CONCURRENCY_RANGE, DeliveryOptions, Job, Stats
from pushcli.pushservices import (
    EndpointRefused,
    Fault,
    Outcome,
    check_endpoint,
)
from pushcli.spawn import WORKERS_RANGE, Spares, senders_for
from pushcli.store import Lock, Store, StoredSubscription, campaign_lock, is_prune_lock
from pushcli.tokens import TokenSigner
from pushcli.workers import Control, IdRange, run_workers, stop_on_signals

#: How long a send waits for a running prune (prunes are short) before refusing.
PRUNE_WAIT = 10.0
#: Seconds a claimed batch stays reserved for its sender without renewal (shared sends).
DEFAULT_LEASE = 60.0
CLAIM_SIZE = 500
#: bench/send_bench.py --paired only: send without the intent log, to measure its cost.
#: Never set it otherwise: a crash would then leave duplicates nobody counts.
BENCH_NO_INTENT = "PUSHCLI_BENCH_NO_INTENT"


@dataclass
class SendResult:
    """What a send did; the report module turns the ledger into the full report."""

    campaign_id: int
    stats: Stats
    duration: float
    interrupted: bool = False
    schedule: dict[str, Any] | None = None  # who waits, what it closed (due.waiting_summary)
    ab_test: dict[str, Any] | None = None  # holdout, who waits for the winner (abrun.ArmGate)

    def run_summary(self) -> dict[str, Any]:
        """This run's figures, the ``run`` section of the report (``build_report(run=...)``)."""
        stats = self.stats
        return {"duration_s": round(self.duration, 3),
                "rate_per_s": round(stats.done / self.duration, 1) if self.duration else 0.0,
                "attempted": stats.done, "retries": stats.retries,
                "vapid_signatures": stats.signatures, "interrupted": self.interrupted,
                # per push service: latency p50/p95 and the concurrency the limit reached
                "by_service": stats.per_service(),
                **({"schedule": self.schedule} if self.schedule else {}),
                **({"ab_test": self.ab_test} if self.ab_test else {})}

    def warnings(self) -> list[str]:
        """Lines for stderr after the summary (as ``audience.DryRun.warnings``)."""
        dropped = (self.ab_test or {}).get("winner_dropped", 0)
        return [winner_dropped_line(dropped)] if dropped else []

    def history(self, at: datetime, status: str) -> dict[str, Any]:
        """This run's entry in the campaign's run history (``Store.finish_campaign``):
        the send-window chart's due, sent, waiting, capped and missed at ``at``."""
        sched = self.schedule or {}
        return {"at": at.timestamp(), "status": status, "scheduled": self.schedule is not None,
                "due": self.stats.total, "attempted": self.stats.done,
                "sent": self.stats.outcomes.get(Outcome.SENT.value, 0),
                "waiting": sched.get("waiting", 0), "capped": sched.get("capped_now", 0),
                "missed": sched.get("missed_now", 0)}


@dataclass(frozen=True)
class Plan:
    """What one sender process sends: the campaign, its share and how to pick it up.

    Local worker processes (SQLite) split the audience by id ranges that
    ``workers.Dealer`` deals out while they send; ``lease`` (set on stores that
    support shared work) makes this sender claim batches from the campaign's queue
    instead, cooperating with any number of others.
    """

    campaign: Campaign
    campaign_id: int
    allowed_hosts: frozenset[str]
    options: DeliveryOptions
    retry_failed: bool = False
    limit: int | None = None
    to: str | None = None
    lease: float | None = None
    #: subscriber id -> the subscriber whose endpoint it repeats (duplicate_endpoints)
    duplicates: Mapping[int, int] = field(default_factory=dict)
    #: the due-zone filter of the store's pending/claim/queued queries (``Gate.where``)
    where: Mapping[str, Any] = field(default_factory=dict)
    #: A/B variants and holdout (None: one notification for everyone)
    arms: Assigner | None = None
    #: signs the engagement token of every payload (``Store.token_secrets()[0]``)
    token_secret: bytes = field(default=b"", repr=False)
    #: ``Store.clock_offset`` of the run (worker processes open their own store)
    clock_offset: float = 0.0

    def wanted(self, keep: dict[int, Arm] | None = None
               ) -> Callable[[StoredSubscription], bool] | None:
        """Who this run sends: the audience (``--to``), minus the holdout and those
        waiting for an A/B test's winner (their arms into ``keep``: ``abrun.sendable``)."""
        return sendable(audience_matcher(self.campaign, self.to), self.arms, keep)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _batches(store: Store, plan: Plan, control: Control, keep: dict[int, Arm],
             ranges: Callable[[], IdRange | None] | None = None,
             ) -> Iterator[list[StoredSubscription]]:
    """This sender's work: the whole audience, the id ranges ``ranges`` deals it one
    after another (None: no more), or batches claimed from the shared queue
    (``keep``: the arms the audience filter drew, ``Plan.wanted``).

    In shared mode a sender that finds nothing to claim keeps polling while
    others still hold leases: if one of them dies, its work returns to the
    pool when the lease runs out and is finished here.
    """
    if plan.lease is None:
        if ranges is None:
            yield from store.pending(plan.campaign_id, retry_failed=plan.retry_failed,
                                     match=plan.wanted(keep), limit=plan.limit, **plan.where)
            return
        while not control.stop and (dealt := ranges()) is not None:
            yield from store.pending(plan.campaign_id, retry_failed=plan.retry_failed,
                                     match=plan.wanted(keep), id_range=dealt, **plan.where)
        return
    owner = _owner()
    while not control.stop:
        batch = store.claim(plan.campaign_id, owner, size=CLAIM_SIZE, lease=plan.lease,
                            retry_failed=plan.retry_failed, **plan.where)
        if batch:
            yield batch
        elif store.queued(plan.campaign_id, retry_failed=plan.retry_failed,
                          **plan.where) == 0:
            return
        else:
            time.sleep(min(1.0, plan.lease / 4))


def iter_jobs(store: Store, plan: Plan, renderer: Renderer, control: Control,
              ranges: Callable[[], IdRange | None] | None = None,
              ) -> Iterator[list[Job]]:
    """Batches of jobs for pending subscribers (of the id ranges ``ranges`` deals, when
    given: see ``_batches``); refused endpoints are finished as blocked.

    Every payload gets its subscriber's token (the variant's cached payload, the
    token spliced in); with A/B variants, each subscriber its variant's payload.
    """
    rule, campaign_id = plan.arms, plan.campaign_id
    signer = TokenSigner(plan.token_secret)
    arm: str | None = None
    index = 0
    kept: dict[int, Arm] = {}  # drawn by the store's filter, taken here once each
    for batch in _batches(store, plan, control, kept, ranges):
        jobs: list[Job] = []
        for s in batch:
            if rule is not None:
                assigned = kept.pop(s.id, None) or rule.assign(s.id)
                if not assigned.sendable:
                    continue  # plan.wanted() leaves them out: only a race gets here
                arm, index = assigned.variant, assigned.index
            sub = s.subscription
            try:
                ep = check_endpoint(sub.endpoint, plan.allowed_hosts)
            except EndpointRefused as exc:
                jobs.append(Job(s.id, sub.endpoint, "", "blocked", b"", b"", b"",
                                blocked=str(exc)))
                continue
            rejected, fault = _unsendable(s, plan)
            if rejected is None:
                try:
                    payload = renderer.render(sub.locale, sub.attributes, arm,
                                              token=signer.token(campaign_id, index, s.id))
                except PushcliError as exc:
                    # its attributes changed since validation: this subscriber's outcome;
                    # the sender's fault (template or data), so prune never counts it
                    rejected, fault = str(exc), Fault.SENDER
            if rejected is not None:
                jobs.append(Job(s.id, ep.url, ep.origin, ep.service, b"", b"", b"",
                                rejected=rejected, rejected_fault=fault))
                continue
            jobs.append(Job(
                subscription_id=s.id, url=ep.url, origin=ep.origin, service=ep.service,
                p256dh=b64_decode(sub.p256dh), auth=b64_decode(sub.auth), payload=payload,
            ))
        # marked in flight by an earlier run that never recorded them: may already have it
        if uncertain := store.inflight_among(plan.campaign_id, [s.id for s in batch]):
            for job in jobs:
                job.uncertain = job.subscription_id in uncertain
        yield jobs


def _unsendable(s: StoredSubscription, plan: Plan) -> tuple[str | None, Fault | None]:
    """Why this subscriber's row gets ``rejected`` without being contacted, and whose fault.

    One subscriber's problem is its own outcome and never stops the send: a
    malformed stored row, or a second spelling of an endpoint already in the
    audience (both the row's own, so prune may count them).
    """
    if s.problem is not None:
        return f"stored subscription is invalid: {s.problem}", Fault.SUBSCRIBER
    original = plan.duplicates.get(s.id)
    if original is not None:
        return (f"duplicate of subscriber {original} (the same endpoint spelled "
                "differently)"), Fault.SUBSCRIBER
    return None, None


def send_campaign(
    store: Store,
    campaign: Campaign,
    signer: VapidSigner,
    *,
    allowed_hosts: frozenset[str],
    options: DeliveryOptions,
    retry_failed: bool = False,
    limit: int | None = None,
    to: str | None = None,
    workers: int | None = 1,
    lease: float = DEFAULT_LEASE,
    on_progress: Callable[[Stats], None] | None = None,
    handle_signals: bool = False,
    now: datetime | None = None,
    spares: Spares | None = None,
    drop_winner: bool = False,
) -> SendResult:
    """Send a campaign to every pending subscriber in its audience.

    On SQLite a send takes the campaign's lock (Busy if another run holds it);
    ``workers > 1`` deals the audience out in subscriber-id ranges to that many
    sender processes as they ask (``workers.Dealer``; encryption and HTTP are
    CPU-bound: one process tops out on one core). On PostgreSQL the audience is
    queued in the ledger and any number of senders, here or on other hosts,
    claim batches of it with leases of ``lease`` seconds, so none sends to a
    subscriber another live one holds.
    Every outcome is recorded as it happens. On Ctrl-C (when
    ``handle_signals``) it stops taking new work, lets in-flight requests
    finish and returns ``interrupted=True``; a second Ctrl-C aborts them too.
    A ``schedule`` sends only who is due at ``now`` (``due.open_gate``; not ``--to``).
    ``spares``: child senders started before the audience was counted
    (``spawn.Spares``); those this send does not use are killed once it knows.
    ``drop_winner`` confirms that ``winner:`` was removed while some of the rest
    were unsent (``abrun.winner_dropped``: refused without it, before anything is
    recorded).
    """
    renderer = Renderer(campaign)
    validate_variants(store, campaign, renderer, to=to)
    shared = store.supports_shared_work and limit is None and to is None
    lock_name = campaign_lock(campaign.name, _owner() if shared else None)
    lock = store.acquire_lock(lock_name, wait=PRUNE_WAIT, blocked_by=is_prune_lock)
    ledger_failed: StoreError | None = None
    try:
        now = now or current_time()
        # before start_campaign stores this run's spec over the last one's winner:
        dropped = winner_dropped(store, campaign, match=audience_matcher(campaign),
                                 confirmed=drop_winner)
        # the run's clock stamps what it records (the frequency cap counts by those stamps)
        plan_clock = store.clock_offset = now.timestamp() - time.time()
        info = store.start_campaign(campaign.name, campaign.model_dump(mode="json"),
                                    test_send=to is not None)
        if not shared:  # holding the campaign's lock: what a dead run left in flight
            store.adopt_intents(info.id, everything=True)
        gate = Gate() if to is not None else open_gate(
            store, campaign, info.id, now, match=audience_matcher(campaign),
            allowed_hosts=allowed_hosts, retry_failed=retry_failed)
        arms = open_arms(store, campaign, info.id, now, match=audience_matcher(campaign, to),
                         allowed_hosts=allowed_hosts, test_send=to is not None,
                         dropped=dropped)
        plan = Plan(campaign, info.id, allowed_hosts, options, retry_failed, limit, to,
                    lease=lease if shared else None,
                    duplicates=duplicate_endpoints(store, campaign, to),
                    where=gate.where(), arms=arms.rule,
                    token_secret=store.token_secrets()[0], clock_offset=plan_clock)
        stats = Stats()
        if shared:
            _enqueue_audience(store, plan)
            stats.total = store.queued(info.id, retry_failed=retry_failed, **plan.where)
        else:
            stats.total = _pending_count(store, plan)
        workers = senders_for(stats.total, workers, limit=limit, to=to)
        if spares is not None and workers <= 1:
            spares.close()  # not needed: free the cores they use now
        control = Control()
        started = time.monotonic()
        with stop_on_signals(control, handle_signals):
            try:
                if workers <= 1:
                    _run_partition(store, plan, renderer, signer, stats, on_progress, control,
                                   lock.heartbeat)
                else:
                    run_workers(store, plan, signer, workers, stats, on_progress, control,
                                lock.heartbeat, _run_partition, renderer, spares)
            except StoreError as exc:
                ledger_failed = exc
                _mark_interrupted(store, info.id)
                raise
        unfinished = control.stop or (shared and store.queued(info.id, **plan.where) > 0)
        waits = waiting_summary(store, info.id, gate, match=plan.wanted(),
                                retry_failed=retry_failed)
        result = SendResult(info.id, stats, time.monotonic() - started, control.stop, waits,
                            arms.summary())
        status = ("interrupted" if control.stop else "running" if unfinished else
                  "waiting" if (waits and waits["waiting"]) or arms.waiting else "finished")
        store.finish_campaign(info.id, status, result.run_summary(),
                              result.history(now, status))
        return result
    finally:
        if ledger_failed is None:
            lock.release()
        else:
            _release_after_store_failure(lock)


def _mark_interrupted(store: Store, campaign_id: int) -> None:
    """Best effort after the ledger failed: if even this write fails the campaign stays
    ``running`` with no live sender, which reports already show as interrupted."""
    with contextlib.suppress(PushcliError, SQLAlchemyError):  # StoreError, Busy
        store.finish_campaign(campaign_id, "interrupted")


def _release_after_store_failure(lock: Lock) -> None:
    """Release the campaign lock if the store lets us; if not, the lock names a dead
    process once we exit and the next run takes it over, so the StoreError being
    raised (the real cause, exit 74) must not be replaced by this one."""
    with contextlib.suppress(PushcliError, SQLAlchemyError):  # StoreError, Busy
        lock.release()


def _enqueue_audience(store: Store, plan: Plan) -> None:
    """Queue every pending audience member of the due zones (idempotent across senders:
    rows already in the ledger are left alone)."""
    if plan.retry_failed:
        store.reset_failed_claims(plan.campaign_id)
    for batch in store.pending(plan.campaign_id, match=plan.wanted(), batch_size=5000,
                               **plan.where):
        store.enqueue(plan.campaign_id, [s.id for s in batch])


def _run_partition(
    store: Store, plan: Plan, renderer: Renderer, signer: VapidSigner, stats: Stats,
    on_progress: Callable[[Stats], None] | None, control: Control,
    heartbeat: Callable[[], None] | None, poll: Callable[[], None] | None = None,
    ranges: Callable[[], IdRange | None] | None = None,
) -> None:
    """Send one share of the campaign in this process, on a fresh event loop: the
    whole audience, or the id ranges ``ranges`` deals (``workers.Dealer``).

    Every ``beat`` seconds it refreshes the campaign lock (when it holds one)
    and, in shared mode, the leases on the work it has claimed.
    """
    from pushcli.engine import Engine  # aiohttp only where messages are sent

    store.clock_offset = plan.clock_offset  # a worker's store stamps on the run's clock
    variant_of = plan.arms.variant_of if plan.arms is not None and plan.arms.names else None
    engine = Engine(signer, plan.options,
                    lambda recs: store.record(plan.campaign_id, recs, variant_of=variant_of),
                    on_progress=on_progress, stats=stats, allowed_hosts=plan.allowed_hosts,
                    intents=None if os.environ.get(BENCH_NO_INTENT) else store.intent_log(
                        plan.campaign_id, _owner(), plan.lease))
    jobs = iter_jobs(store, plan, renderer, control, ranges)
    beat = 15.0 if plan.lease is None else min(15.0, plan.lease / 3)
    owner = _owner()

    def keep_alive() -> None:
        if heartbeat is not None:
            heartbeat()
        if plan.lease is not None:
            store.renew_leases(plan.campaign_id, owner, plan.lease)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        run = asyncio.ensure_future(engine.run(jobs))
        last_beat = time.monotonic()
        stopped = False
        try:
            while not run.done():
                await asyncio.wait([run], timeout=0.1)
                if poll is not None:
                    poll()
                if control.stop and not stopped:
                    stopped = True
                    engine.stop()
                if control.abort and not run.done():
                    run.cancel()
                if time.monotonic() - last_beat > beat:
                    last_beat = time.monotonic()
                    await loop.run_in_executor(None, keep_alive)
            if not run.cancelled():
                run.result()
        except BaseException:
            # failed (the ledger gave up): asyncio joins the thread loading the next
            # batch before this returns, and that thread may be waiting for what only
            # ``poll`` reads (a child's next id range) or polling a shared queue: stop it
            control.stop = True
            raise

    try:
        with heap.sending():  # the imported world out of the collector's walks
            eventloop.run(main())  # asyncio, or uvloop with PUSHCLI_EVENT_LOOP=uvloop
    except asyncio.CancelledError:
        control.stop = True


def _pending_count(store: Store, plan: Plan) -> int:
    match = plan.wanted()
    if match is None:
        n = store.count_pending(plan.campaign_id, retry_failed=plan.retry_failed,
                                **plan.where)
        return n if plan.limit is None else min(n, plan.limit)
    n = 0
    for batch in store.pending(plan.campaign_id, retry_failed=plan.retry_failed,
                               batch_size=5000, match=match, limit=plan.limit,
                               **plan.where):
        n += len(batch)
    return n


def options_for(campaign: Campaign, *, concurrency: int | None = None, timeout: float = 10.0,
                on_uncertain: str | None = None) -> DeliveryOptions:
    """How to send this campaign: its ``delivery`` settings, overridden by the command line.

    The one place ``--concurrency`` is checked against the campaign's bounds
    (``CONCURRENCY_RANGE``, the same rule as ``delivery.concurrency``).
    """
    lo, hi = CONCURRENCY_RANGE
    if concurrency is not None and not lo <= concurrency <= hi:
        raise InputError(f"--concurrency must be between {lo} and {hi}")
    if timeout <= 0:
        raise InputError("--timeout must be positive")
    d = campaign.delivery
    # --concurrency N pins the in-flight limit; delivery.concurrency is the adaptive ceiling
    return DeliveryOptions(ttl=d.ttl, urgency=d.urgency, topic=d.topic,
                           concurrency=concurrency or d.concurrency,
                           adaptive_concurrency=concurrency is None,
                           rate_limit=d.rate_limit, rate_limits=dict(d.rate_limits),
                           timeout=timeout, on_uncertain=on_uncertain or d.on_uncertain)


def check_run(*, limit: int | None = None, workers: int | None = None,
              lease: float = DEFAULT_LEASE) -> None:
    """Refuse out-of-range ``--limit``, ``--workers`` and ``--lease`` before any work."""
    if limit is not None and limit < 1:
        raise InputError("--limit must be at least 1")
    lo, hi = WORKERS_RANGE
    if workers is not None and not lo <= workers <= hi:
        raise InputError(f"--workers must be between {lo} and {hi}")
    if not 1 <= lease <= 3600:
        raise InputError("--lease must be between 1 and 3600 seconds")


__all__ = [
    "DeliveryOptions",
    "Job",
    "Plan",
    "RenderError",
    "SendResult",
    "Stats",
    "check_run",
    "options_for",
    "send_campaign",
]
