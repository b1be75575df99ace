"""Sending a campaign: lock it, queue or partition its audience, render,
block refused endpoints, run the engine in one or more processes, and record
every outcome in the ledger as it happens.

The HTTP side lives in ``engine`` (imported only where messages are sent);
the values both sides exchange live in ``messages``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import multiprocessing.connection as mp_connection
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from pushcli.campaign import Campaign, Renderer, RenderError
from pushcli.encoding import b64_decode
from pushcli.errors import InputError, PushcliError, StoreError
from pushcli.keys import VapidSigner
from pushcli.messages import DeliveryOptions, Job, Stats
from pushcli.pushservices import EndpointRefused, Fault, canonical_endpoint, check_endpoint
from pushcli.store import Lock, Store, StoredSubscription

#: How long a send waits for a running prune (prunes are short) before refusing.
PRUNE_WAIT = 10.0
#: Seconds a claimed batch stays reserved for its sender without renewal (shared sends).
DEFAULT_LEASE = 60.0
CLAIM_SIZE = 500
#: Below this many pending messages one process is quicker than spawning more.
AUTO_WORKERS_FROM = 20_000


@dataclass
class SendResult:
    """What a send did; the report module turns the ledger into the full report."""

    campaign_id: int
    stats: Stats
    duration: float
    interrupted: bool = False


def audience_matcher(campaign: Campaign, to: str | None = None
                     ) -> Callable[[StoredSubscription], bool] | None:
    """The subscribers a send reaches: the campaign's audience, narrowed to ``--to``.

    None means everyone, so callers can skip the per-row check (and count in SQL).
    """
    aud = campaign.audience
    targeted = bool(aud.tags or aud.exclude_tags or aud.where)

    def in_audience(s: StoredSubscription) -> bool:
        # A row whose tags or attributes cannot be read might belong: it is kept, so
        # that send records it rejected (never contacted) instead of losing it silently.
        return s.membership_unknown or aud.matches(s.subscription.tags,
                                                   s.subscription.attributes)

    if to is None:
        return in_audience if targeted else None
    wanted = canonical_endpoint(to)

    def is_to(s: StoredSubscription) -> bool:
        endpoint = s.subscription.endpoint
        return endpoint == wanted or canonical_endpoint(endpoint) == wanted

    return lambda s: is_to(s) and (not targeted or in_audience(s))


def _audience(store: Store, campaign: Campaign,
              to: str | None) -> Iterator[StoredSubscription]:
    """Stream the active subscribers a send reaches."""
    match = audience_matcher(campaign, to)
    for s in store.iter_subscriptions(status="active"):
        if match is None or match(s):
            yield s


@dataclass
class VariantCheck:
    """What rendering the audience's payloads before a send found."""

    variants: int = 0  # distinct payloads that render
    unrenderable: int = 0  # subscribers whose payload does not render: rejected at send
    example: str | None = None  # the first such error, naming its subscriber


def check_variants(store: Store, campaign: Campaign, renderer: Renderer,
                   *, to: str | None = None) -> VariantCheck:
    """Render (and size-check) every distinct variant the audience needs, before sending.

    The campaign is refused (the RenderError is raised) only when the fault
    is the template's: a template without placeholders that fails, or one
    that renders for nobody in the audience. Otherwise a subscriber whose own
    attributes do not render is that subscriber's outcome: counted here, for
    dry-run and doctor, and recorded ``rejected`` at send while the rest goes
    out, the same as when the attributes change in the middle of a send.
    """
    result = VariantCheck()
    if not renderer.placeholders and to is None:
        # Without placeholders a variant is a locale: render each one the store holds.
        seen: set[Any] = set()
        for locale in [None, *store.distinct_locales()]:
            key = renderer.variant_key(locale, {})
            if key not in seen:
                renderer.render(locale, {})
                seen.add(key)
        result.variants = len(seen)
        return result
    outcome: dict[Any, InputError | None] = {}  # variant key -> its error, None if it renders
    first: InputError | None = None
    for s in _audience(store, campaign, to):
        if s.problem is not None:
            continue  # rejected at send for its stored row, whatever it renders
        key = renderer.variant_key(s.subscription.locale, s.subscription.attributes)
        if key not in outcome:
            try:
                renderer.render(s.subscription.locale, s.subscription.attributes)
                outcome[key] = None
            except InputError as exc:
                outcome[key] = _for_subscriber(exc, s.id)
        error = outcome[key]
        if error is not None:
            result.unrenderable += 1
            if first is None:
                first = error
                result.example = str(error)
    result.variants = sum(1 for e in outcome.values() if e is None)
    if result.variants == 0 and first is not None:
        raise first
    return result


def validate_variants(store: Store, campaign: Campaign, renderer: Renderer,
                      *, to: str | None = None) -> int:
    """The number of distinct payloads; raises when the template renders for nobody
    (see check_variants)."""
    return check_variants(store, campaign, renderer, to=to).variants


def _for_subscriber(exc: InputError, subscriber_id: int) -> InputError:
    """The render error, naming the subscriber whose attributes caused it."""
    if f"subscriber id {subscriber_id}" in exc.message:
        return exc
    return type(exc)(f"{exc.message} (subscriber id {subscriber_id})", file=exc.file,
                     line=exc.line, field=exc.field)


def duplicate_endpoints(store: Store, campaign: Campaign | None,
                        to: str | None = None) -> dict[int, int]:
    """{subscriber id: id of the subscriber it duplicates} within a send's audience
    (among all active subscribers without a campaign: doctor).

    Import stores one row per canonical endpoint, but a store filled by an
    older pushcli or written directly may hold several spellings of one
    endpoint. Of each such group the lowest id is sent and the others are
    recorded ``rejected`` "duplicate of subscriber N": one message per browser.
    The rule depends only on the store, so re-runs, worker processes and
    shared senders all keep the same row. Only rows not stored in canonical
    form can collide, so the scan keeps nothing else in memory.
    """
    match = audience_matcher(campaign, to) if campaign is not None else None
    rows: Iterable[tuple[int, str]]
    if match is None:
        rows = store.iter_endpoints()
    else:
        rows = ((s.id, s.subscription.endpoint) for s in store.iter_subscriptions()
                if match(s))
    groups: dict[str, list[int]] = {}
    for sid, endpoint in rows:
        canonical = canonical_endpoint(endpoint)
        if canonical != endpoint:
            groups.setdefault(canonical, []).append(sid)
    if not groups:
        return {}
    for s in store.active_with_endpoints(list(groups)):
        if match is None or match(s):
            groups[s.subscription.endpoint].append(s.id)
    duplicates: dict[int, int] = {}
    for ids in groups.values():
        keep = min(ids)
        duplicates.update((sid, keep) for sid in ids if sid != keep)
    return duplicates


@dataclass(frozen=True)
class Plan:
    """What one sender process sends: the campaign, its share and how to pick it up.

    ``partition`` splits the audience by id (local workers on SQLite); ``lease``
    (set on stores that support shared work) makes this sender claim batches
    from the campaign's queue instead, cooperating with any number of others.
    """

    campaign: Campaign
    campaign_id: int
    allowed_hosts: frozenset[str]
    options: DeliveryOptions
    retry_failed: bool = False
    limit: int | None = None
    to: str | None = None
    partition: tuple[int, int] | None = None
    lease: float | None = None
    #: subscriber id -> the subscriber whose endpoint it repeats (duplicate_endpoints)
    duplicates: Mapping[int, int] = field(default_factory=dict)

    def wanted(self) -> Callable[[StoredSubscription], bool] | None:
        return audience_matcher(self.campaign, self.to)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _batches(store: Store, plan: Plan, control: _Control) -> Iterator[list[StoredSubscription]]:
    """This sender's work: its id partition, or batches claimed from the shared queue.

    In shared mode a sender that finds nothing to claim keeps polling while
    others still hold leases: if one of them dies, its work returns to the
    pool when the lease runs out and is finished here.
    """
    if plan.lease is None:
        yield from store.pending(plan.campaign_id, retry_failed=plan.retry_failed,
                                 match=plan.wanted(), limit=plan.limit,
                                 partition=plan.partition)
        return
    owner = _owner()
    while not control.stop:
        batch = store.claim(plan.campaign_id, owner, size=CLAIM_SIZE, lease=plan.lease,
                            retry_failed=plan.retry_failed)
        if batch:
            yield batch
        elif store.queued(plan.campaign_id, retry_failed=plan.retry_failed) == 0:
            return
        else:
            time.sleep(min(1.0, plan.lease / 4))


def iter_jobs(store: Store, plan: Plan, renderer: Renderer,
              control: _Control) -> Iterator[list[Job]]:
    """Batches of jobs for pending subscribers; refused endpoints are finished as blocked."""
    for batch in _batches(store, plan, control):
        jobs: list[Job] = []
        for s in batch:
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
                    payload = renderer.render(sub.locale, sub.attributes)
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
) -> SendResult:
    """Send a campaign to every pending subscriber in its audience.

    On SQLite a send takes the campaign's lock (Busy if another run holds it);
    ``workers > 1`` splits the audience by subscriber id over that many sender
    processes (encryption and HTTP are CPU-bound: one process tops out on one
    core). On PostgreSQL the audience is queued in the ledger and any number
    of senders, here or on other hosts, claim batches of it with leases of
    ``lease`` seconds, so none sends to a subscriber another live one holds.
    Every outcome is recorded as it happens. On Ctrl-C (when
    ``handle_signals``) it stops taking new work, lets in-flight requests
    finish and returns ``interrupted=True``; a second Ctrl-C aborts them too.
    """
    renderer = Renderer(campaign)
    validate_variants(store, campaign, renderer, to=to)
    shared = store.supports_shared_work and limit is None and to is None
    lock_name = f"campaign:{campaign.name}" + (f"#{_owner()}" if shared else "")
    lock = store.acquire_lock(lock_name, wait=PRUNE_WAIT, blocked_by=("prune",))
    ledger_failed: StoreError | None = None
    try:
        info = store.start_campaign(campaign.name, campaign.model_dump(mode="json"))
        plan = Plan(campaign, info.id, allowed_hosts, options, retry_failed, limit, to,
                    lease=lease if shared else None,
                    duplicates=duplicate_endpoints(store, campaign, to))
        stats = Stats()
        if shared:
            _enqueue_audience(store, plan)
            stats.total = store.queued(info.id, retry_failed=retry_failed)
        else:
            stats.total = _pending_count(store, plan)
        if workers is None:
            workers = 1 if stats.total < AUTO_WORKERS_FROM else min(os.cpu_count() or 1, 4)
        if limit is not None or to is not None:
            workers = 1  # a handful of test sends is not worth splitting
        control = _Control()
        started = time.monotonic()
        with _signals(control, handle_signals):
            try:
                if workers <= 1:
                    _run_partition(store, plan, renderer, signer, stats, on_progress, control,
                                   lock.heartbeat)
                else:
                    _run_workers(store, plan, signer, workers, stats, on_progress, control,
                                 lock.heartbeat)
            except StoreError as exc:
                ledger_failed = exc
                _mark_interrupted(store, info.id)
                raise
        unfinished = control.stop or (shared and store.queued(info.id) > 0)
        store.finish_campaign(info.id, "interrupted" if control.stop else
                              "running" if unfinished else "finished")
        return SendResult(info.id, stats, time.monotonic() - started, control.stop)
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
    """Queue every audience member without a ledger row (idempotent across senders)."""
    if plan.retry_failed:
        store.reset_failed_claims(plan.campaign_id)
    ids: list[int] = []
    for s in _audience(store, plan.campaign, plan.to):
        ids.append(s.id)
        if len(ids) >= 5000:
            store.enqueue(plan.campaign_id, ids)
            ids = []
    store.enqueue(plan.campaign_id, ids)


class _Control:
    """Stop requests, from signals (in-process) or from the parent (in a worker)."""

    def __init__(self) -> None:
        self.stop = False
        self.abort = False
        self.presses = 0

    def press(self) -> None:
        self.presses += 1
        self.stop = True
        if self.presses > 1:
            self.abort = True


@contextmanager
def _signals(control: _Control, enabled: bool) -> Iterator[None]:
    """Ctrl-C / SIGTERM set flags instead of raising, while a send runs."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: control.press())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_partition(
    store: Store, plan: Plan, renderer: Renderer, signer: VapidSigner, stats: Stats,
    on_progress: Callable[[Stats], None] | None, control: _Control,
    heartbeat: Callable[[], None] | None, poll: Callable[[], None] | None = None,
) -> None:
    """Send one share of the campaign in this process, on a fresh event loop.

    Every ``beat`` seconds it refreshes the campaign lock (when it holds one)
    and, in shared mode, the leases on the work it has claimed.
    """
    from pushcli.engine import Engine  # aiohttp only where messages are sent

    engine = Engine(signer, plan.options, lambda recs: store.record(plan.campaign_id, recs),
                    on_progress=on_progress, stats=stats, allowed_hosts=plan.allowed_hosts,
                    intent=lambda jobs: store.mark_inflight(
                        plan.campaign_id, [(j.subscription_id, j.service) for j in jobs]),
                    release=lambda ids: store.release_inflight(plan.campaign_id, ids))
    jobs = iter_jobs(store, plan, renderer, control)
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

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        control.stop = True


def _run_workers(
    store: Store, plan: Plan, signer: VapidSigner, workers: int, stats: Stats,
    on_progress: Callable[[Stats], None] | None, control: _Control,
    heartbeat: Callable[[], None],
) -> None:
    """Run the campaign in ``workers`` processes and aggregate their progress.

    Each gets an id partition (or, in shared mode, claims from the queue).
    Workers ignore SIGINT; the parent relays stop/abort down each worker's pipe,
    so one Ctrl-C at a terminal (which signals the whole process group) counts
    once. A worker whose parent dies stops by itself: the lock died with the parent.

    One plain pipe per worker carries progress up and stop/abort down. A
    multiprocessing Queue or Event would be named semaphores, which the resource
    tracker reports as "leaked" when a process holding them is killed.
    """
    ctx = multiprocessing.get_context("spawn")
    links = [ctx.Pipe(duplex=True) for _ in range(workers)]
    options = plan.options
    share = replace(options, concurrency=max(1, options.concurrency // workers),
                    rate_limit=options.rate_limit / workers if options.rate_limit else None)
    procs = [
        ctx.Process(target=_worker_main, name=f"pushcli-sender-{i}", daemon=True, args=(
            store.url,
            replace(plan, options=share,
                    partition=None if plan.lease is not None else (i, workers)),
            signer.private_pem(), signer.subject, i, links[i][1], os.getpid()))
        for i in range(workers)
    ]
    for p, (_, child_end) in zip(procs, links, strict=True):
        p.start()
        child_end.close()  # the worker has its copy; ours would hide its end-of-file
    conns = {i: parent_end for i, (parent_end, _) in enumerate(links)}
    latest: dict[int, dict[str, Any]] = {}
    store_errors: list[str] = []
    told: set[str] = set()
    last_beat = time.monotonic()

    def tell(command: str) -> None:
        if command in told:
            return
        told.add(command)
        for conn in conns.values():
            # a worker that is gone cannot be told; its end-of-file is read next round
            with contextlib.suppress(OSError):
                conn.send(command)

    try:
        while conns:  # each worker's pipe stays open until that worker exits
            for conn in mp_connection.wait(list(conns.values()), timeout=0.2):
                index = next(i for i, c in conns.items() if c is conn)
                try:
                    _, snapshot = conn.recv()
                except (EOFError, OSError):
                    conn.close()
                    del conns[index]
                    continue
                latest[index] = snapshot
                if snapshot.get("store_error"):
                    store_errors.append(snapshot["store_error"])
                    tell("stop")  # the others write to the same ledger: stop them too
            if control.stop:
                tell("stop")
            if control.abort:
                tell("abort")
            _merge(stats, latest.values())
            if on_progress is not None:
                on_progress(stats)
            if time.monotonic() - last_beat > 15:
                last_beat = time.monotonic()
                heartbeat()
    finally:
        for conn in conns.values():
            conn.close()
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
                p.join()
    if store_errors:
        raise StoreError(store_errors[0])
    failed = [p for p in procs if p.exitcode not in (0, None)]
    if failed and not control.stop:
        raise PushcliError(f"a sender process exited with code {failed[0].exitcode}; "
                           "re-run the same command to finish the campaign")


def _merge(stats: Stats, snapshots: Iterable[dict[str, Any]]) -> None:
    outcomes: Counter[str] = Counter()
    retries = ambiguous = signatures = 0
    for snap in snapshots:
        outcomes.update(snap["outcomes"])
        retries += snap["retries"]
        ambiguous += snap["ambiguous"]
        signatures += snap["signatures"]
    stats.outcomes = outcomes
    stats.retries, stats.ambiguous, stats.signatures = retries, ambiguous, signatures


def _worker_main(
    db_url: str, plan: Plan, private_pem: bytes, subject: str, index: int,
    link: mp_connection.Connection, parent_pid: int,
) -> None:
    """Entry point of one sender process (spawned, so it shares no state but its args)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from py_vapid import Vapid02

    signer = VapidSigner(Vapid02.from_pem(private_pem), subject)
    control = _Control()
    stats = Stats()
    last_sent = 0.0

    link_lock = threading.Lock()  # a Connection is not thread-safe; Queue.put was

    def report(s: Stats, force: bool = False, store_error: str | None = None) -> None:
        with link_lock:
            talk(s, force, store_error)

    def talk(s: Stats, force: bool, store_error: str | None) -> None:
        nonlocal last_sent
        orphaned = os.getppid() != parent_pid
        try:
            while not orphaned and link.poll():
                command = link.recv()
                control.stop = True
                control.abort = control.abort or command == "abort"
        except (EOFError, OSError):  # the parent's end closed: it died, and its lock with it
            orphaned = True
        if orphaned:
            control.stop = control.abort = True
            return
        now = time.monotonic()
        if force or now - last_sent > 0.2:
            last_sent = now
            try:
                link.send((index, {"outcomes": dict(s.outcomes), "retries": s.retries,
                                   "ambiguous": s.ambiguous, "signatures": signer.signatures,
                                   "store_error": store_error}))
            except OSError:  # the parent is gone
                control.stop = control.abort = True

    if os.getppid() != parent_pid:
        return  # the parent (and its lock) died while we started: send nothing
    try:
        with Store.open(db_url) as store:
            _run_partition(store, plan, Renderer(plan.campaign), signer, stats, report,
                           control, None, poll=lambda: report(stats))
    except StoreError as exc:  # the parent says it in one line and exits 74
        report(stats, force=True, store_error=str(exc))
        raise SystemExit(exc.exit_code) from None
    report(stats, force=True)


def _pending_count(store: Store, plan: Plan) -> int:
    match = plan.wanted()
    if match is None:
        n = store.count_pending(plan.campaign_id, retry_failed=plan.retry_failed)
        return n if plan.limit is None else min(n, plan.limit)
    n = 0
    for batch in store.pending(plan.campaign_id, retry_failed=plan.retry_failed,
                               batch_size=5000, match=match, limit=plan.limit):
        n += len(batch)
    return n


def count_by_service(store: Store, campaign: Campaign, allowed_hosts: frozenset[str],
                     limit: int | None = None, to: str | None = None,
                     renderer: Renderer | None = None) -> Counter[str]:
    """Audience per push service, for --dry-run: ``blocked`` for refused endpoints,
    ``rejected`` for those send would reject without contacting (malformed stored
    rows, duplicate spellings of one endpoint and, given ``renderer``, attributes
    that do not render)."""
    counts: Counter[str] = Counter()
    duplicates = duplicate_endpoints(store, campaign, to)
    for s in itertools.islice(_audience(store, campaign, to), limit):
        try:
            service = check_endpoint(s.subscription.endpoint, allowed_hosts).service
        except EndpointRefused:
            counts["blocked"] += 1
            continue
        if s.problem is not None or s.id in duplicates:
            counts["rejected"] += 1
            continue
        if renderer is not None:
            try:
                renderer.render(s.subscription.locale, s.subscription.attributes)
            except PushcliError:
                counts["rejected"] += 1
                continue
        counts[service] += 1
    return counts


__all__ = [
    "DeliveryOptions",
    "Job",
    "Plan",
    "RenderError",
    "SendResult",
    "Stats",
    "VariantCheck",
    "count_by_service",
    "check_variants",
    "duplicate_endpoints",
    "send_campaign",
    "validate_variants",
]
