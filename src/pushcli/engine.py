"""The HTTP engine: encrypt, POST with bounded concurrency per push-service origin
(libcurl for https, ``pushcli.transport``; aiohttp for plain-http test origins,
``pushcli.plainhttp``, imported only when one is reached), classify, retry what the
push service says is temporary, and hand final outcomes to a sink in batches.

Store-agnostic: it takes rendered, policy-checked jobs; ``delivery`` feeds it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

# encrypt: RFC 8291 aes128gcm with a fresh ephemeral key and salt per message.
from pushcli.ece import encrypt
from pushcli.errors import StoreError
from pushcli.eventloop import wait_event, waited_clock
from pushcli.keys import VapidSigner
from pushcli.limiter import INITIAL_LIMIT, ConcurrencyLimit, Pacer, Signal
from pushcli.messages import DeliveryOptions, DeliveryRecord, Job, Stats, service_rate_limits
from pushcli.pushservices import Fault, Outcome, classify, fcm_wp_endpoint
from pushcli.resolver import GuardedResolver, PrivateAddress
from pushcli.transport import Answer, CurlTransport, TransportError, describe

if TYPE_CHECKING:
    from pushcli.plainhttp import PlainTransport

UNCERTAIN_REASON = ("in flight when an earlier run stopped without recording it; may have "
                    "arrived; not resent (on_uncertain: skip)")


class _LedgerGaveUp(StoreError):
    """The ledger stayed unwritable past the retry budget: the send stops (exit 74)."""


async def _settled(future: asyncio.Future[None]) -> bool:
    """Wait for a ledger write already under way; whether it succeeded."""
    try:
        await future
    except Exception:  # noqa: BLE001 - any failure means: not written
        return False
    return True


def _why(exc: BaseException) -> str:
    """One line for a failed ledger write; never SQL parameters (endpoints, auth secrets)."""
    if isinstance(exc, StoreError):
        text = str(exc)
    else:
        orig = getattr(exc, "orig", None)  # SQLAlchemy DBAPIError: the driver's own words
        text = str(orig) if orig is not None else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:300]


class _HostState:
    """One push-service origin: its failure counters, Retry-After pause, adaptive
    in-flight limit, learnt pacing, and the jobs waiting for one of its workers."""

    __slots__ = ("service", "not_before", "transport_failures", "auth_failures", "stopped",
                 "limit", "pacer", "waiting", "workers", "resume", "auth", "headers",
                 "header_lines")

    def __init__(self, service: str, limit: ConcurrencyLimit, pacer: Pacer) -> None:
        self.service = service
        self.not_before = 0.0
        self.transport_failures = 0
        self.auth_failures = 0
        self.stopped: str | None = None
        self.limit = limit
        self.pacer = pacer
        self.waiting: deque[Job] = deque()
        self.workers = 0
        self.resume: asyncio.TimerHandle | None = None
        # the request headers, rebuilt only when the VAPID token changes (hours apart)
        self.auth = ""
        self.headers: dict[str, str] = {}
        self.header_lines: list[str] = []


class IntentLog(Protocol):
    """Where the engine commits chunks of jobs as in flight (``Store.intent_log``)."""

    def open(self, chunk: int, ids: Sequence[int], closed: Sequence[int]) -> None:
        """Commit chunk ``chunk``'s subscriber ids as in flight before any is posted, and
        forget the ``closed`` chunks (all settled, their outcomes committed)."""

    def close(self, closed: Sequence[int], keep: Mapping[int, Sequence[int]]) -> None:
        """The run's end: forget ``closed``; shrink each ``keep`` chunk to those ids."""


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
        intents: IntentLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``intents`` commits each chunk of jobs as in flight before any of them is posted
        and forgets it once all of them are settled (see ``_settle``).
        ``clock``/``sleep`` pace the ledger-write retries and time origin pauses and
        latencies (tests pass fakes)."""
        self.signer = signer
        self.intents = intents
        self._clock = clock
        self._sleep = sleep
        self.allowed_hosts = allowed_hosts
        self.options = options
        self._connect_timeout = min(options.timeout, 10.0)  # both transports
        self.sink = sink
        self.on_progress = on_progress
        self.stats = stats or Stats()
        self.rng = rng or random.Random()
        self._hosts: dict[str, _HostState] = {}
        self._waited: Callable[[], float] | None = None  # set by run, on the running loop
        self._pacer = Pacer(options.rate_limit, clock=clock)  # the whole run's rate_limit
        self._service_pacers = {name: Pacer(rate, clock=clock)
                                for name, rate in service_rate_limits(options).items()}
        self._workers: set[asyncio.Task[None]] = set()
        self._queued = 0  # jobs waiting in the origins' queues
        self._buffer: list[DeliveryRecord] = []
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._stopping = False
        self._delayed: dict[asyncio.TimerHandle, Job] = {}
        self._flush_lock = asyncio.Lock()
        self._flush_now = asyncio.Event()
        # the intent log: chunk -> its jobs not yet settled; chunks all settled whose
        # outcomes may still be in the buffer (closing), then committed (closed)
        self._chunks = 0
        self._open: dict[int, set[int]] = {}
        self._closing: list[int] = []
        self._closed: list[int] = []
        self._ledger_ok = asyncio.Event()  # cleared while ledger writes fail: start nothing new
        self._ledger_ok.set()
        self._ledger_error: StoreError | None = None
        self._static_headers = {"TTL": str(options.ttl), "Content-Encoding": "aes128gcm",
                                "Content-Type": "application/octet-stream"}
        if options.urgency:
            self._static_headers["Urgency"] = options.urgency
        if options.topic:
            self._static_headers["Topic"] = options.topic

    # --- public ---------------------------------------------------------------------

    def stop(self) -> None:
        """Stop taking new work; in-flight requests finish, delayed retries are dropped."""
        self._stopping = True
        for handle, job in self._delayed.items():
            handle.cancel()
            self._note_unsent(job)
        self._outstanding -= len(self._delayed)
        self._delayed.clear()
        self._drain_waiting()
        if self._outstanding <= 0:
            self._idle.set()

    async def run(self, batches: Iterator[list[Job]]) -> Stats:
        """Send every job from ``batches`` (pulled lazily, in a thread) and flush."""
        self._waited = waited_clock()  # how long the loop waits: is it CPU-bound?
        self._guard = GuardedResolver(self.allowed_hosts)  # one DNS guard for both transports
        self._h2 = self._curl_transport(self._guard)
        self._plain: PlainTransport | None = None  # opened at the first plain-http origin
        flusher = asyncio.create_task(self._flush_loop())
        try:
            await self._feed(batches)
            if self._outstanding > 0:
                self._idle.clear()
                await self._idle.wait()
        except asyncio.CancelledError:
            for w in list(self._workers):  # second Ctrl-C: abort in-flight requests too
                w.cancel()
            raise
        finally:
            self._stopping = self._stopping or self._outstanding > 0
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._drain_waiting()  # aborted: jobs no worker took never went out
            for host in self._hosts.values():
                if host.resume is not None:
                    host.resume.cancel()
            self._h2.close()
            if self._plain is not None:
                await self._plain.close()
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            await self._final_writes()
        self.stats.signatures = self.signer.signatures
        for host in self._hosts.values():  # was pushcli or the push service the bottleneck?
            self.stats.windows[host.service] += host.limit.windows
            self.stats.saturated_windows[host.service] += host.limit.saturated_windows
        if self._ledger_error is not None:
            raise self._ledger_error
        return self.stats

    # --- feeding --------------------------------------------------------------------

    async def _feed(self, batches: Iterator[list[Job]]) -> None:
        """Queue jobs chunk by chunk, each chunk committed as in flight (intent) first.

        The next batch loads in a thread while this one sends, and each chunk's
        intent is written while the previous chunk is being posted, so the intent
        log costs a write per chunk but no waiting. Only about two chunks plus the
        requests in flight are ever marked in flight at once: what a crash leaves
        uncertain.
        """
        loop = asyncio.get_running_loop()
        sentinel: list[Job] = []
        skip = self.options.on_uncertain == "skip"
        upcoming = loop.run_in_executor(None, next, batches, sentinel)
        try:
            while not self._stopping:
                batch = await upcoming
                if batch is sentinel:
                    return
                upcoming = loop.run_in_executor(None, next, batches, sentinel)
                ready: list[Job] = []
                for job in batch:
                    if job.blocked is not None:
                        self._outstanding += 1
                        self._finish(job, Outcome.BLOCKED, job.blocked, None)
                    elif job.rejected is not None:
                        self._outstanding += 1
                        self._finish(job, Outcome.REJECTED, job.rejected, None,
                                     job.rejected_fault)
                    elif job.uncertain and skip:
                        self._outstanding += 1
                        self._finish(job, Outcome.UNCERTAIN, UNCERTAIN_REASON, None)
                    else:
                        # resent after an earlier run may have delivered it: a possible
                        # duplicate, counted in the ledger like an ambiguous retry
                        job.ambiguous = job.ambiguous or job.uncertain
                        ready.append(job)
                i = 0
                while i < len(ready):
                    chunk = self._chunk()
                    while self._queued > chunk and not self._stopping:
                        await asyncio.sleep(0.005)
                    if not self._ledger_ok.is_set():
                        await self._ledger_ok.wait()  # the ledger is failing: queue nothing
                    if self._stopping:
                        return
                    part = ready[i:i + chunk]
                    i += chunk
                    if self.intents is not None:
                        try:
                            await self._commit_intent(part)
                        except StoreError as exc:
                            self._give_up(exc)
                            return
                    if self._stopping:
                        for job in part:
                            self._note_unsent(job)
                        return
                    self._outstanding += len(part)
                    for job in part:
                        self._enqueue(job)
        finally:
            upcoming.cancel()  # a batch loaded ahead and not fed is simply not sent

    async def _commit_intent(self, part: list[Job]) -> None:
        """One write: this chunk in flight, and the chunks closed since the last one gone."""
        assert self.intents is not None
        log = self.intents
        number = self._chunks
        self._chunks += 1
        ids = [job.subscription_id for job in part]
        closed = list(self._closed)

        def opened() -> None:
            del self._closed[:len(closed)]  # only appended to meanwhile
            self._open[number] = set(ids)
            for job in part:
                job.chunk = number

        receipt: list[bool] = []
        try:
            await self._ledger_write(lambda _: log.open(number, ids, closed), None,
                                     receipt=receipt)
        except BaseException:
            if receipt:  # committed, then cancelled while awaiting it (an abort)
                opened()
                for job in part:  # none of them is posted now: the log must not keep them
                    self._note_unsent(job)
            raise
        opened()

    def _settle(self, job: Job) -> None:
        """This job's message has its outcome buffered, or certainly never went out: once
        every job of its chunk is settled, the chunk closes (after the next flush)."""
        members = self._open.get(job.chunk)
        if members is not None:
            members.discard(job.subscription_id)
            if not members:
                del self._open[job.chunk]
                self._closing.append(job.chunk)

    def _chunk(self) -> int:
        """Jobs committed as in flight per intent write, and queued ahead of the workers:
        twice what the origins may have in flight now (at least 32), so the intent
        window follows the adaptive limits instead of their ceiling."""
        if self._hosts:
            window = sum(h.limit.limit for h in self._hosts.values())
        elif self.options.adaptive_concurrency:
            window = min(INITIAL_LIMIT, self.options.concurrency)
        else:
            window = self.options.concurrency
        return max(2 * window, 32)

    # --- workers --------------------------------------------------------------------

    def _host(self, job: Job) -> _HostState:
        host = self._hosts.get(job.origin)
        if host is None:
            opts = self.options
            host = self._hosts[job.origin] = _HostState(
                job.service,
                ConcurrencyLimit(opts.concurrency, adaptive=opts.adaptive_concurrency,
                                 clock=self._clock,
                                 # the loop's waits are real seconds: not comparable
                                 # with a test's fake clock
                                 waited=self._waited if self._clock is time.monotonic else None),
                Pacer(adaptive=opts.adaptive_concurrency, clock=self._clock))
        return host

    def _enqueue(self, job: Job) -> None:
        """Queue a job for its origin and start a worker for it if the limit allows."""
        host = self._host(job)
        host.waiting.append(job)
        self._queued += 1
        self._top_up(host)

    def _top_up(self, host: _HostState) -> None:
        """Run as many workers for ``host`` as its limit allows and its queue needs.

        Each origin has its own workers, so a paused or throttled service never
        holds up the others; none run while the origin is paused (Retry-After).
        """
        if self._stopping:
            return
        wait = host.not_before - self._clock()
        if wait > 0:
            if host.waiting and host.resume is None:
                host.resume = asyncio.get_running_loop().call_later(wait, self._resume, host)
            return
        while host.workers < min(host.limit.limit, len(host.waiting)):
            host.workers += 1
            task = asyncio.create_task(self._worker(host))
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    def _resume(self, host: _HostState) -> None:
        host.resume = None
        self._top_up(host)

    async def _worker(self, host: _HostState) -> None:
        """Send the origin's waiting jobs one at a time; leave when the queue is empty, the
        limit shrank below the workers running, or the origin was paused."""
        try:
            while (host.waiting and host.workers <= host.limit.limit
                   and host.not_before <= self._clock()):
                job = host.waiting.popleft()
                self._queued -= 1
                if not self._ledger_ok.is_set():
                    await self._ledger_ok.wait()  # start nothing while outcomes cannot be written
                try:
                    await self._attempt(job)
                except Exception as exc:  # noqa: BLE001 - one bad job must not kill the run
                    self._finish(job, Outcome.FAILED,
                                 f"internal error: {type(exc).__name__}: {exc}",
                                 job.last_status, Fault.SENDER)
                self._top_up(host)  # the limit may have grown
        finally:
            host.workers -= 1
        if host.waiting and not self._stopping:
            self._top_up(host)  # paused: resume when the pause ends

    def _drain_waiting(self) -> None:
        """Stopping: jobs still waiting for a worker never went out (the next run sends them)."""
        for host in self._hosts.values():
            while host.waiting:
                job = host.waiting.popleft()
                self._queued -= 1
                self._note_unsent(job)
                self._outstanding -= 1

    async def _pace(self, host: _HostState, service: str) -> None:
        """Wait for a start slot: the run's rate_limit, the service's ceiling (FCM's quota
        unless the campaign says otherwise), and the rate this origin was found to take."""
        service_pacer = self._service_pacers.get(service)
        for pacer in (self._pacer, service_pacer, host.pacer):
            if pacer is not None:
                delay = pacer.reserve()
                if delay > 0:
                    await asyncio.sleep(delay)

    def _curl_transport(self, guard: GuardedResolver) -> CurlTransport:
        """The https transport: libcurl multiplexing HTTP/2 streams (fewer connections and
        less CPU per message than aiohttp, see bench/http_clients.py)."""
        return CurlTransport(guard.resolve, timeout=self.options.timeout,
                             connect_timeout=self._connect_timeout)

    def _plain_transport(self) -> PlainTransport:
        """The plain-http transport (aiohttp, HTTP/1.1), the first time one is needed."""
        if self._plain is None:
            from pushcli.plainhttp import PlainTransport

            self._plain = PlainTransport(self._guard, timeout=self.options.timeout,
                                         connect_timeout=self._connect_timeout,
                                         per_origin=self.options.concurrency)
        return self._plain

    async def _attempt(self, job: Job) -> None:
        host = self._host(job)
        if host.stopped:
            # Held back, never asked: ``failed`` so --retry-failed sends it, marked
            # ``held`` so prune never counts it against the subscriber.
            self._finish(job, Outcome.FAILED, host.stopped, job.last_status, Fault.HELD)
            return
        if self._stopping:
            self._drop(job)
            return
        wait = host.not_before - self._clock()
        if wait > 0:
            self._later(job, wait)
            return
        try:
            await self._pace(host, job.service)
        except asyncio.CancelledError:  # aborted while waiting for a slot: never posted
            self._note_unsent(job)
            raise
        if host.not_before > self._clock() and not self._stopping:
            self._later(job, host.not_before - self._clock())  # paused while pacing
            return
        job.attempts += 1
        body = encrypt(job.payload, job.p256dh, job.auth)
        auth = self.signer.header(job.origin)  # cached: re-signed only near expiry
        if auth != host.auth:
            host.auth = auth
            host.headers = {**self._static_headers, "Authorization": auth}
            host.header_lines = [f"{k}: {v}" for k, v in host.headers.items()]
        signal = Signal.NONE
        started = host.limit.start()
        self.stats.in_flight[job.service] += 1
        in_flight = self.stats.in_flight[job.service]
        if in_flight > self.stats.concurrency.get(job.service, 0):
            self.stats.concurrency[job.service] = in_flight
        try:
            answer: Answer
            if job.url.startswith("https:"):  # libcurl: HTTP/2 where ALPN offers it
                answer = await self._h2.post(job.url, body, host.header_lines)
            else:  # plain http (emulator, web-push-testing): aiohttp, HTTP/1.1
                answer = await self._plain_transport().post(job.url, body, host.headers)
            status, resp_headers = answer.status, answer.headers
            text = b"" if status in (201, 202) else answer.body
        except PrivateAddress as exc:  # the DNS guard: never contacted
            self._finish(job, Outcome.BLOCKED, str(exc), None, Fault.SENDER)
            return
        except TransportError as exc:  # the transport knows whether the request went out
            if isinstance(exc, TimeoutError):
                signal = Signal.TIMEOUT
            self._transport_error(job, host, exc, exc.ambiguous)
            return
        except OSError as exc:  # the resolver's own failure: nothing was sent
            self._transport_error(job, host, exc, False)
            return
        else:
            self.stats.note_latency(job.service, self._clock() - started)
            verdict = classify(status, resp_headers, text)
            signal = Signal.THROTTLED if verdict.throttled else Signal.OK
            if verdict.throttled:
                host.pacer.throttled()
            else:
                host.pacer.accepted()
        finally:
            host.limit.finish(started, signal)
            self.stats.in_flight[job.service] -= 1
        host.transport_failures = 0
        job.last_status = status
        if verdict.outcome is None:
            self._retry(job, host, verdict.reason, verdict.retry_after)
            return
        if verdict.wrong_path:
            wp = fcm_wp_endpoint(job.url) if job.moved_from is None else None
            if wp is not None:
                # FCM's "use /wp/<token>" 404 is not an expiry: resend once to that form
                # at once (same origin, so the same VAPID token).
                job.moved_from, job.url = job.url, wp
                self._later(job, 0.0)
                return
            if job.moved_from is not None:  # the /wp/ form answered 404 too: gone
                verdict = replace(verdict, outcome=Outcome.EXPIRED, fault=Fault.SUBSCRIBER)
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
        self._finish(job, verdict.outcome, verdict.reason, status, verdict.fault)

    def _transport_error(self, job: Job, host: _HostState, exc: BaseException,
                         ambiguous: bool) -> None:
        host.transport_failures += 1
        reason = describe(exc)
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
                         f"{reason} (gave up after {job.attempts} attempts)", job.last_status,
                         Fault.SERVICE)
            return
        self.stats.retries += 1
        backoff = min(self.options.backoff_max,
                      self.options.backoff_base * 2 ** (job.attempts - 1))
        delay = backoff * (0.5 + self.rng.random())
        if retry_after is not None:
            capped = min(retry_after, self.options.backoff_max * 10)
            host.not_before = max(host.not_before, self._clock() + capped)
            host.pacer.pause(host.not_before)
            delay = max(delay, capped)
        self._later(job, delay)

    def _later(self, job: Job, delay: float) -> None:
        if self._stopping:
            self._drop(job)
            return
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def requeue() -> None:
            self._delayed.pop(handle, None)
            self._enqueue(job)

        handle = loop.call_later(delay, requeue)
        self._delayed[handle] = job

    def _drop(self, job: Job) -> None:
        """Leave a job unrecorded (stopping): the next run picks it up again."""
        self._note_unsent(job)
        self._outstanding -= 1
        if self._outstanding <= 0:
            self._idle.set()

    def _finish(self, job: Job, outcome: Outcome, reason: str, status: int | None,
                fault: Fault | None = None) -> None:
        """Buffer a final outcome; ``fault`` tells prune whose problem it was.

        A job that was accepted at FCM's /wp/ form carries the move, so the store
        keeps that form for the next campaign.
        """
        if job.ambiguous and outcome is Outcome.SENT:
            self.stats.ambiguous += 1
        moved = (job.moved_from, job.url) if (
            job.moved_from is not None and outcome is Outcome.SENT) else None
        self._buffer.append(DeliveryRecord(
            subscription_id=job.subscription_id, outcome=outcome, service=job.service,
            status_code=status, reason=reason, attempts=max(job.attempts, 1) if
            outcome is not Outcome.BLOCKED and job.rejected is None else 0,
            ambiguous=job.ambiguous,
            fault=fault, moved=moved,
        ))
        self.stats.outcomes[outcome.value] += 1
        self._settle(job)
        if len(self._buffer) >= self.options.flush_size:
            self._flush_now.set()  # bound what a crash can lose, whatever the send rate
        self._outstanding -= 1
        if self._outstanding <= 0:
            self._idle.set()

    # --- flushing -------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await wait_event(self._flush_now, self.options.flush_interval)
            self._flush_now.clear()
            try:
                await self._flush()
            except StoreError as exc:
                self._give_up(exc)
                return
            except Exception as exc:  # noqa: BLE001 - a dead flusher would stall the run
                self._give_up(_LedgerGaveUp(f"recording outcomes failed ({_why(exc)}); "
                                            "nothing lost: re-run the same command to finish"))
                return

    async def _flush(self, *, once: bool = False) -> None:
        async with self._flush_lock:
            closing, self._closing = self._closing, []  # their outcomes are in this batch
            if self._buffer:
                batch, self._buffer = self._buffer, []
                receipt: list[bool] = []
                try:
                    await self._ledger_write(self.sink, batch, once=once, receipt=receipt)
                except BaseException:  # failed, or cancelled while retrying (shutdown)
                    if receipt:  # written after all (cancelled while awaiting it)
                        self._closed.extend(closing)
                    else:
                        # never drop outcomes: back in front of those that finished meanwhile
                        self._buffer[:0] = batch
                        self._closing[:0] = closing
                    raise
            self._closed.extend(closing)
            if self.on_progress is not None:
                self.on_progress(self.stats)

    async def _final_writes(self) -> None:
        """At shutdown: the last outcomes, then the intent log's last word: closed chunks
        go, and each open one keeps only the jobs whose request may have arrived
        (ambiguous, or cut short by an abort); a job that never went out is not kept.

        After the ledger has already failed for the whole budget, one attempt each.
        """
        once = self._ledger_error is not None
        try:
            await self._flush(once=once)
            log = self.intents
            if log is not None and (self._closed or self._open):
                closed = list(self._closed)
                keep = {c: sorted(m) for c, m in self._open.items()}
                await self._ledger_write(lambda _: log.close(closed, keep), None, once=once)
                self._closed.clear()
        except StoreError as exc:
            if self._ledger_error is None:
                self._ledger_error = exc

    def _note_unsent(self, job: Job) -> None:
        """A job committed in flight whose message certainly did not go out (never posted,
        or answered without delivery): settled, so no later run counts it. An ambiguous
        one (a request may have arrived) stays in flight on purpose."""
        if not job.ambiguous:
            self._settle(job)

    def _give_up(self, exc: StoreError) -> None:
        """The ledger stayed unwritable: stop; in-flight requests finish, a last flush follows."""
        if self._ledger_error is None:
            self._ledger_error = exc
        self.stop()
        self._ledger_ok.set()  # waiting workers wake, see the stop and drop their jobs

    async def _ledger_write(self, write: Callable[[Any], None], arg: Any, *,
                            once: bool = False, receipt: list[bool] | None = None) -> None:
        """Run one ledger write in a thread, retrying with exponential backoff while it fails.

        While it fails no new request starts (workers and the feed wait on
        ``_ledger_ok``). After ``ledger_retry_budget`` seconds of failing (at once
        with ``once``) it raises StoreError. A write under way when the task is
        cancelled (shutdown) is still awaited: its rows must reach the ledger;
        ``receipt`` gets True once written, so a caller cancelled afterwards knows.
        """
        loop = asyncio.get_running_loop()
        opts = self.options
        started = self._clock()
        delay = opts.ledger_backoff_base
        while True:
            written = loop.run_in_executor(None, write, arg)
            try:
                try:
                    await asyncio.shield(written)
                except asyncio.CancelledError:
                    # shutting down mid-write: let it finish. Without a receipt the caller
                    # keeps the rows (the final flush retries them).
                    if await _settled(written) and receipt is not None:
                        receipt.append(True)
                    raise
            except Exception as exc:  # noqa: BLE001 - StoreError, OperationalError, OSError...
                failure = exc
            else:
                if receipt is not None:
                    receipt.append(True)
                self._ledger_ok.set()
                return
            self._ledger_ok.clear()
            self.stats.ledger_retries += 1
            elapsed = self._clock() - started
            if once or elapsed >= opts.ledger_retry_budget:
                self._ledger_ok.set()  # nobody may wait on it any more: we are stopping
                during = "" if once else f" for {elapsed:.0f} s"
                raise _LedgerGaveUp(
                    f"the ledger could not be written{during} ({_why(failure)}); "
                    "sending stopped; nothing lost: re-run the same command to finish")
            await self._sleep(delay)
            delay = min(delay * 2, opts.ledger_backoff_max)
