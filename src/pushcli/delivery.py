"""The delivery engine: batches from the store -> encrypt -> POST with bounded
concurrency -> classify -> outcomes back to the store in batches.

Two layers:
- ``Engine`` is store-agnostic asyncio: it takes jobs (already rendered and
  policy-checked), sends them over one shared aiohttp connection pool, retries
  what the push service says is temporary, and hands final outcomes to a sink.
- ``send_campaign`` wires a campaign, a store and an engine together: locks the
  campaign, streams pending subscribers, renders, blocks refused endpoints,
  and records every outcome in the ledger as it happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import random
import signal
import socket
import ssl
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import http_ece
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from cryptography.hazmat.primitives.asymmetric import ec

from pushcli.campaign import Campaign, Renderer, RenderError
from pushcli.encoding import b64_decode
from pushcli.errors import InputError, PushcliError
from pushcli.keys import VapidSigner
from pushcli.pushservices import (
    EndpointRefused,
    Outcome,
    address_allowed,
    check_endpoint,
    classify,
)
from pushcli.store import DeliveryRecord, Store, StoredSubscription

_CURVE = ec.SECP256R1()
#: How long a send waits for a running prune (prunes are short) before refusing.
PRUNE_WAIT = 10.0
#: Seconds a claimed batch stays reserved for its sender without renewal (shared sends).
DEFAULT_LEASE = 60.0
CLAIM_SIZE = 500
#: Below this many pending messages one process is quicker than spawning more.
AUTO_WORKERS_FROM = 20_000


@dataclass(frozen=True)
class DeliveryOptions:
    """How to send: protocol headers from the campaign plus engine limits."""

    ttl: int = 86400
    urgency: str | None = None
    topic: str | None = None
    concurrency: int = 64
    rate_limit: float | None = None  # messages per second, whole run
    timeout: float = 10.0  # seconds per request
    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 60.0
    auth_failure_limit: int = 20  # consecutive 401/403 per service before we stop
    circuit_failure_limit: int = 50  # consecutive transport failures per host
    flush_interval: float = 0.25
    flush_size: int = 500


@dataclass(slots=True)
class Job:
    """One message to one subscriber, ready to encrypt and post."""

    subscription_id: int
    url: str
    origin: str
    service: str
    p256dh: bytes
    auth: bytes
    payload: bytes
    attempts: int = 0
    ambiguous: bool = False
    last_reason: str = ""
    last_status: int | None = None
    blocked: str | None = None  # endpoint refused by policy: finish without contacting


@dataclass
class Stats:
    """Live counters the progress display reads."""

    total: int = 0
    started: float = field(default_factory=time.monotonic)
    outcomes: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    ambiguous: int = 0
    signatures: int = 0

    @property
    def done(self) -> int:
        return sum(self.outcomes.values())

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0


class _HostState:
    __slots__ = ("not_before", "transport_failures", "auth_failures", "stopped")

    def __init__(self) -> None:
        self.not_before = 0.0
        self.transport_failures = 0
        self.auth_failures = 0
        self.stopped: str | None = None


class _RateLimiter:
    """A token bucket shared by all workers; None rate means unlimited."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.next_at = time.monotonic()

    async def wait(self) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        slot = max(now, self.next_at)
        self.next_at = slot + 1.0 / self.rate
        if slot > now:
            await asyncio.sleep(slot - now)


def encrypt(payload: bytes, p256dh: bytes, auth: bytes) -> bytes:
    """RFC 8291 aes128gcm body with a fresh ephemeral key and salt per message."""
    server_key = ec.generate_private_key(_CURVE)
    return http_ece.encrypt(
        payload,
        salt=os.urandom(16),
        private_key=server_key,
        dh=p256dh,
        auth_secret=auth,
        version="aes128gcm",
    )


class PrivateAddress(OSError):
    """A push-service host name resolved only to non-public addresses (DNS rebinding)."""


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default, but never hands out a private address.

    The endpoint policy vets host names at import; this closes the gap where a
    name resolves to 10.x, 127.x, 169.254.x ... at send time. Hosts that the
    operator allowed explicitly (the emulator, a staging service) are exempt.
    """

    def __init__(self, allowed_hosts: frozenset[str]) -> None:
        self._inner = ThreadedResolver()
        self._allowed = allowed_hosts

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        infos = await self._inner.resolve(host, port, family)
        public = [i for i in infos if address_allowed(host, i["host"], self._allowed)]
        if not public:
            addresses = ", ".join(sorted({i["host"] for i in infos}))
            raise PrivateAddress(f"{host} resolves to non-public address {addresses}; "
                                 "not contacted")
        return public

    async def close(self) -> None:
        await self._inner.close()


def make_ssl_context() -> ssl.SSLContext:
    """Verified TLS against the system store (honours SSL_CERT_FILE / SSL_CERT_DIR)."""
    return ssl.create_default_context()


class Engine:
    """Sends jobs with bounded concurrency over one connection pool.

    Final outcomes are buffered and passed to ``sink`` (a blocking callable, run
    in a thread) every ``flush_interval`` or ``flush_size`` records, so the
    ledger is at most a fraction of a second behind the network.
    """

    def __init__(
        self,
        signer: VapidSigner,
        options: DeliveryOptions,
        sink: Callable[[list[DeliveryRecord]], None],
        *,
        on_progress: Callable[[Stats], None] | None = None,
        stats: Stats | None = None,
        rng: random.Random | None = None,
        allowed_hosts: frozenset[str] = frozenset(),
    ) -> None:
        self.signer = signer
        self.allowed_hosts = allowed_hosts
        self.options = options
        self.sink = sink
        self.on_progress = on_progress
        self.stats = stats or Stats()
        self.rng = rng or random.Random()
        self._hosts: defaultdict[str, _HostState] = defaultdict(_HostState)
        self._limiter = _RateLimiter(options.rate_limit)
        self._buffer: list[DeliveryRecord] = []
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue()
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._stopping = False
        self._delayed: set[asyncio.TimerHandle] = set()
        self._flush_lock = asyncio.Lock()
        self._flush_now = asyncio.Event()

    # --- public ---------------------------------------------------------------------

    def stop(self) -> None:
        """Stop taking new work; in-flight requests finish, delayed retries are dropped."""
        self._stopping = True
        for handle in self._delayed:
            handle.cancel()
        self._outstanding -= len(self._delayed)
        self._delayed.clear()
        if self._outstanding <= 0:
            self._idle.set()

    async def run(self, batches: Iterator[list[Job]]) -> Stats:
        """Send every job from ``batches`` (pulled lazily, in a thread) and flush."""
        connector = aiohttp.TCPConnector(
            limit=self.options.concurrency,
            ssl=make_ssl_context(),
            resolver=GuardedResolver(self.allowed_hosts),
            ttl_dns_cache=300,
            enable_cleanup_closed=True,
        )
        timeout = aiohttp.ClientTimeout(total=self.options.timeout,
                                        connect=min(self.options.timeout, 10.0))
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False,
            skip_auto_headers=("User-Agent",), cookie_jar=aiohttp.DummyCookieJar(),
        ) as session:
            self._session = session
            workers = [asyncio.create_task(self._worker())
                       for _ in range(self.options.concurrency)]
            flusher = asyncio.create_task(self._flush_loop())
            try:
                await self._feed(batches)
                if self._outstanding > 0:
                    self._idle.clear()
                    await self._idle.wait()
            except asyncio.CancelledError:
                for w in workers:  # second Ctrl-C: abort in-flight requests too
                    w.cancel()
                raise
            finally:
                for _ in workers:
                    self._queue.put_nowait(None)
                await asyncio.gather(*workers, return_exceptions=True)
                flusher.cancel()
                await asyncio.gather(flusher, return_exceptions=True)
                await self._flush()
        self.stats.signatures = self.signer.signatures
        return self.stats

    # --- feeding --------------------------------------------------------------------

    async def _feed(self, batches: Iterator[list[Job]]) -> None:
        loop = asyncio.get_running_loop()
        sentinel: list[Job] = []
        high_water = self.options.concurrency * 8
        while not self._stopping:
            batch = await loop.run_in_executor(None, next, batches, sentinel)
            if batch is sentinel:
                return
            for job in batch:
                if self._stopping:
                    return
                self._outstanding += 1
                if job.blocked is not None:
                    self._finish(job, Outcome.BLOCKED, job.blocked, None)
                else:
                    self._queue.put_nowait(job)
            while self._queue.qsize() > high_water and not self._stopping:
                await asyncio.sleep(0.005)

    # --- workers --------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            job = await self._queue.get()
            if job is None:
                return
            try:
                await self._attempt(job)
            except Exception as exc:  # noqa: BLE001 - one bad job must not kill the run
                self._finish(job, Outcome.FAILED, f"internal error: {type(exc).__name__}: {exc}",
                             job.last_status)

    async def _attempt(self, job: Job) -> None:
        host = self._hosts[job.origin]
        if host.stopped:
            self._finish(job, Outcome.FAILED, host.stopped, job.last_status)
            return
        if self._stopping:
            self._drop(job)
            return
        wait = host.not_before - time.monotonic()
        if wait > 0:
            self._later(job, wait)
            return
        await self._limiter.wait()
        job.attempts += 1
        body = encrypt(job.payload, job.p256dh, job.auth)
        headers = {
            "TTL": str(self.options.ttl),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "Authorization": self.signer.header(job.origin),
        }
        if self.options.urgency:
            headers["Urgency"] = self.options.urgency
        if self.options.topic:
            headers["Topic"] = self.options.topic
        sent_body = False
        try:
            async with self._session.post(job.url, data=body, headers=headers,
                                          allow_redirects=False) as resp:
                sent_body = True
                status = resp.status
                text = b"" if status in (201, 202) else await resp.content.read(1024)
                resp_headers = resp.headers
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, PrivateAddress):
                self._finish(job, Outcome.BLOCKED, str(exc.os_error), None)
            else:
                self._transport_error(job, host, exc, False)
            return
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            ambiguous = sent_body or isinstance(
                exc, TimeoutError | aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError)
            self._transport_error(job, host, exc, ambiguous)
            return
        host.transport_failures = 0
        verdict = classify(status, resp_headers, text)
        job.last_status = status
        if verdict.outcome is None:
            self._retry(job, host, verdict.reason, verdict.retry_after)
            return
        if verdict.outcome is Outcome.AUTH:
            host.auth_failures += 1
            if host.auth_failures >= self.options.auth_failure_limit and not host.stopped:
                host.stopped = (
                    f"not sent: {job.service} answered 401/403 to "
                    f"{host.auth_failures} requests in a row (VAPID key or subject problem); "
                    "fix the key, then re-run with --retry-failed"
                )
        else:
            host.auth_failures = 0
        self._finish(job, verdict.outcome, verdict.reason, status)

    def _transport_error(self, job: Job, host: _HostState, exc: BaseException,
                         ambiguous: bool) -> None:
        host.transport_failures += 1
        name = type(exc).__name__
        reason = "timeout" if isinstance(exc, TimeoutError) else f"{name}: {exc}".strip(": ")
        job.last_status = None
        if ambiguous:
            job.ambiguous = True
        if host.transport_failures >= self.options.circuit_failure_limit and not host.stopped:
            host.stopped = (
                f"not sent: {job.service} unreachable ({host.transport_failures} failures in a "
                f"row, last: {reason}); re-run with --retry-failed later"
            )
        self._retry(job, host, reason[:300], None)

    def _retry(self, job: Job, host: _HostState, reason: str,
               retry_after: float | None) -> None:
        job.last_reason = reason
        if job.attempts >= self.options.max_attempts:
            self._finish(job, Outcome.FAILED,
                         f"{reason} (gave up after {job.attempts} attempts)", job.last_status)
            return
        self.stats.retries += 1
        backoff = min(self.options.backoff_max,
                      self.options.backoff_base * 2 ** (job.attempts - 1))
        delay = backoff * (0.5 + self.rng.random())
        if retry_after is not None:
            capped = min(retry_after, self.options.backoff_max * 10)
            host.not_before = max(host.not_before, time.monotonic() + capped)
            delay = max(delay, capped)
        self._later(job, delay)

    def _later(self, job: Job, delay: float) -> None:
        if self._stopping:
            self._drop(job)
            return
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def requeue() -> None:
            self._delayed.discard(handle)
            self._queue.put_nowait(job)

        handle = loop.call_later(delay, requeue)
        self._delayed.add(handle)

    def _drop(self, job: Job) -> None:
        """Leave a job unrecorded (stopping): the next run picks it up again."""
        self._outstanding -= 1
        if self._outstanding <= 0:
            self._idle.set()

    def _finish(self, job: Job, outcome: Outcome, reason: str, status: int | None) -> None:
        if job.ambiguous and outcome is Outcome.SENT:
            self.stats.ambiguous += 1
        self._buffer.append(DeliveryRecord(
            subscription_id=job.subscription_id, outcome=outcome, service=job.service,
            status_code=status, reason=reason, attempts=max(job.attempts, 1) if
            outcome is not Outcome.BLOCKED else 0, ambiguous=job.ambiguous,
        ))
        self.stats.outcomes[outcome.value] += 1
        if len(self._buffer) >= self.options.flush_size:
            self._flush_now.set()  # bound what a crash can lose, whatever the send rate
        self._outstanding -= 1
        if self._outstanding <= 0:
            self._idle.set()

    # --- flushing -------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), self.options.flush_interval)
            self._flush_now.clear()
            await self._flush()

    async def _flush(self) -> None:
        async with self._flush_lock:
            if self._buffer:
                batch, self._buffer = self._buffer, []
                await asyncio.get_running_loop().run_in_executor(None, self.sink, batch)
            if self.on_progress is not None:
                self.on_progress(self.stats)


# --- campaign orchestration ---------------------------------------------------------------


@dataclass
class SendResult:
    """What a send did; the report module turns the ledger into the full report."""

    campaign_id: int
    stats: Stats
    duration: float
    interrupted: bool = False


def audience_matcher(campaign: Campaign) -> Callable[[StoredSubscription], bool] | None:
    aud = campaign.audience
    if not (aud.tags or aud.exclude_tags or aud.where):
        return None
    return lambda s: aud.matches(s.subscription.tags, s.subscription.attributes)


def validate_variants(store: Store, campaign: Campaign, renderer: Renderer,
                      *, to: str | None = None) -> int:
    """Render (and size-check) every distinct variant the audience needs, before sending.

    Returns the number of distinct payloads. A subscriber whose attributes
    cannot render raises RenderError naming the subscriber.
    """
    match = audience_matcher(campaign)
    seen: set[Any] = set()
    if not renderer.placeholders and to is None:
        # Without placeholders a variant is a locale: render each one the store holds.
        for locale in [None, *store.distinct_locales()]:
            key = renderer.variant_key(locale, {})
            if key not in seen:
                renderer.render(locale, {})
                seen.add(key)
        return len(seen)
    for s in store.iter_subscriptions(status="active"):
        if to is not None and s.subscription.endpoint != to:
            continue
        if match is not None and not match(s):
            continue
        key = renderer.variant_key(s.subscription.locale, s.subscription.attributes)
        if key in seen:
            continue
        try:
            renderer.render(s.subscription.locale, s.subscription.attributes)
        except InputError as exc:
            raise type(exc)(f"{exc.message} (subscriber id {s.id})", file=exc.file,
                            line=exc.line, field=exc.field) from None
        seen.add(key)
    return len(seen)


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

    def wanted(self) -> Callable[[StoredSubscription], bool] | None:
        match = audience_matcher(self.campaign)
        if self.to is None:
            return match
        to = self.to
        return lambda s: s.subscription.endpoint == to and (match is None or match(s))


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
            jobs.append(Job(
                subscription_id=s.id, url=ep.url, origin=ep.origin, service=ep.service,
                p256dh=b64_decode(sub.p256dh), auth=b64_decode(sub.auth),
                payload=renderer.render(sub.locale, sub.attributes),
            ))
        yield jobs


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
    try:
        info = store.start_campaign(campaign.name, campaign.model_dump(mode="json"))
        plan = Plan(campaign, info.id, allowed_hosts, options, retry_failed, limit, to,
                    lease=lease if shared else None)
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
            if workers <= 1:
                _run_partition(store, plan, renderer, signer, stats, on_progress, control,
                               lock.heartbeat)
            else:
                _run_workers(store, plan, signer, workers, stats, on_progress, control,
                             lock.heartbeat)
        unfinished = control.stop or (shared and store.queued(info.id) > 0)
        store.finish_campaign(info.id, "interrupted" if control.stop else
                              "running" if unfinished else "finished")
        return SendResult(info.id, stats, time.monotonic() - started, control.stop)
    finally:
        lock.release()


def _enqueue_audience(store: Store, plan: Plan) -> None:
    """Queue every audience member without a ledger row (idempotent across senders)."""
    if plan.retry_failed:
        store.reset_failed_claims(plan.campaign_id)
    match = plan.wanted()
    ids: list[int] = []
    for s in store.iter_subscriptions(status="active", batch_size=5000):
        if match is None or match(s):
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
    engine = Engine(signer, plan.options, lambda recs: store.record(plan.campaign_id, recs),
                    on_progress=on_progress, stats=stats, allowed_hosts=plan.allowed_hosts)
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
    Workers ignore SIGINT; the parent relays stop/abort through events, so one
    Ctrl-C at a terminal (which signals the whole process group) counts once.
    A worker whose parent dies stops by itself: the lock died with the parent.
    """
    ctx = multiprocessing.get_context("spawn")
    stop_event, abort_event = ctx.Event(), ctx.Event()
    updates: Any = ctx.Queue()
    options = plan.options
    share = replace(options, concurrency=max(1, options.concurrency // workers),
                    rate_limit=options.rate_limit / workers if options.rate_limit else None)
    procs = [
        ctx.Process(target=_worker_main, name=f"pushcli-sender-{i}", daemon=True, args=(
            store.url,
            replace(plan, options=share,
                    partition=None if plan.lease is not None else (i, workers)),
            signer.private_pem(), signer.subject, i, updates, stop_event, abort_event,
            os.getpid()))
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    latest: dict[int, dict[str, Any]] = {}
    last_beat = time.monotonic()
    try:
        while any(p.is_alive() for p in procs) or not updates.empty():
            try:
                index, snapshot = updates.get(timeout=0.2)
                latest[index] = snapshot
            except queue.Empty:
                pass
            if control.stop:
                stop_event.set()
            if control.abort:
                abort_event.set()
            _merge(stats, latest.values())
            if on_progress is not None:
                on_progress(stats)
            if time.monotonic() - last_beat > 15:
                last_beat = time.monotonic()
                heartbeat()
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
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
    db_url: str, plan: Plan, private_pem: bytes, subject: str, index: int, updates: Any,
    stop_event: Any, abort_event: Any, parent_pid: int,
) -> None:
    """Entry point of one sender process (spawned, so it shares no state but its args)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from py_vapid import Vapid02

    signer = VapidSigner(Vapid02.from_pem(private_pem), subject)
    control = _Control()
    stats = Stats()
    last_sent = 0.0

    def report(s: Stats, force: bool = False) -> None:
        nonlocal last_sent
        orphaned = os.getppid() != parent_pid
        if stop_event.is_set() or orphaned:
            control.stop = True
        if abort_event.is_set() or orphaned:
            control.abort = True
        now = time.monotonic()
        if force or now - last_sent > 0.2:
            last_sent = now
            updates.put((index, {"outcomes": dict(s.outcomes), "retries": s.retries,
                                 "ambiguous": s.ambiguous, "signatures": signer.signatures}))

    if os.getppid() != parent_pid:
        return  # the parent (and its lock) died while we started: send nothing
    with Store.open(db_url) as store:
        _run_partition(store, plan, Renderer(plan.campaign), signer, stats, report, control,
                       None, poll=lambda: report(stats))
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
                     limit: int | None = None, to: str | None = None) -> Counter[str]:
    """Audience per push service (``blocked`` for refused endpoints), for --dry-run."""
    match = audience_matcher(campaign)
    counts: Counter[str] = Counter()
    n = 0
    for s in store.iter_subscriptions(status="active"):
        if to is not None and s.subscription.endpoint != to:
            continue
        if match is not None and not match(s):
            continue
        try:
            counts[check_endpoint(s.subscription.endpoint, allowed_hosts).service] += 1
        except EndpointRefused:
            counts["blocked"] += 1
        n += 1
        if limit is not None and n >= limit:
            break
    return counts


__all__ = [
    "DeliveryOptions",
    "Engine",
    "Job",
    "RenderError",
    "SendResult",
    "Stats",
    "count_by_service",
    "encrypt",
    "send_campaign",
    "validate_variants",
]
