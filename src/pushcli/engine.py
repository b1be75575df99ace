"""The HTTP engine: encrypt, POST with bounded concurrency over one aiohttp
connection pool, classify, retry what the push service says is temporary, and
hand final outcomes to a sink in batches.

Store-agnostic: it takes rendered, policy-checked jobs; ``delivery`` feeds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import ssl
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import aiohttp
import http_ece
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from cryptography.hazmat.primitives.asymmetric import ec

from pushcli.keys import VapidSigner
from pushcli.messages import DeliveryOptions, Job, Stats
from pushcli.pushservices import Outcome, address_allowed, classify
from pushcli.store import DeliveryRecord

_CURVE = ec.SECP256R1()


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
                written = asyncio.get_running_loop().run_in_executor(None, self.sink, batch)
                try:
                    await asyncio.shield(written)
                except asyncio.CancelledError:
                    # Shutting down mid-flush: the batch has left the buffer, so it must
                    # still reach the ledger before we go (cancelling would drop it).
                    await written
                    raise
            if self.on_progress is not None:
                self.on_progress(self.stats)


# --- campaign orchestration ---------------------------------------------------------------
