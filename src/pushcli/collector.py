"""``pushcli events serve``: a small HTTP collector for the service worker's events.

``POST /events`` takes one event document (``pushcli.events``) as
``application/json`` or as the ``text/plain`` that ``navigator.sendBeacon``
sends, at most ``MAX_BODY`` bytes (413 beyond), verifies its token at once (400
for a bad document or token, with the reason) and answers 202. Accepted events
wait in memory and are written in batches, by one store thread, every
``FLUSH_EVERY`` seconds or as soon as ``FLUSH_AT`` are waiting; SIGINT and
SIGTERM stop accepting, then write what is waiting, so Ctrl-C loses nothing.
Events about a subscriber no longer in the store are dropped at the write (counted).

CORS: with ``--allow-origin``, a request from any other ``Origin`` is refused
(403) and the allowed ones get ``Access-Control-Allow-Origin`` (and their
preflight an answer); ``*`` allows every origin, only when asked for. Without
it no CORS header is sent: the collector then runs on the site's own origin
behind its reverse proxy (which also terminates TLS).

Connections: a public collector must not be exhaustible by sockets that hold a
slot and send nothing (slowloris). Three bounds, counted in the stop line:

* at most ``max_connections`` at once (``MAX_CONNECTIONS``, ``--max-connections``);
  one more is answered ``503`` and closed as soon as it is accepted, before it can
  send a byte, so the ones being served never wait for it;
* a connection must deliver a complete request head within ``head_timeout`` of
  opening or of its previous answer: one sending half its headers and an idle
  keep-alive connection are the same thing seen from here, and both are closed;
* from a complete head to the answer (the body included) at most ``body_timeout``.

Why a counting layer of our own (``ConnectionCap``, a protocol factory wrapped
around aiohttp's): aiohttp has no connection limit (``TCPSite(backlog=...)`` only
sizes the kernel's queue of connections not yet accepted), its
``keepalive_timeout`` closes a connection that has no complete head, but silently,
so it cannot be counted, and it has nothing for a slow body (``handler_cancellation``
acts only once the client is gone). Each accepted connection gets a ``_Slot`` that
counts itself and hands every byte to aiohttp's own ``RequestHandler``; one timer
per slot carries the deadline of the phase it is in (a middleware tells it when a
head is complete and when the answer is ready). Counting where the connection is
made and lost, on the event loop, needs no lock and cannot drift: the count is
taken in ``connection_made`` (not when the factory is called, as several accepts
can be made before any of them is connected) and given back in ``connection_lost``.

Library code: it reports through the callbacks it is given and never prints.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from pushcli.errors import InputError, PushcliError, StoreError
from pushcli.eventloop import wait_event
from pushcli.events import EventProblem, decode_event
from pushcli.store import EventRow, Store

__all__ = ["BODY_TIMEOUT", "FLUSH_AT", "FLUSH_EVERY", "HEAD_TIMEOUT", "MAX_BODY",
           "MAX_CONNECTIONS", "Collector", "CollectorStats", "ConnectionCap", "build_app",
           "check_max_connections", "check_origins", "serve", "serve_forever"]

#: The largest request body accepted (an event is about 150 bytes).
MAX_BODY = 16 * 1024
#: Seconds between writes of the waiting events.
FLUSH_EVERY = 0.5
#: Waiting events that trigger a write at once.
FLUSH_AT = 500
#: Events kept waiting while the store cannot be written; beyond it, 503.
MAX_WAITING = 100_000
#: Seconds between re-reads of the token secrets (``events rotate-secret`` meanwhile).
SECRETS_EVERY = 30.0
#: Connections served at once unless ``--max-connections`` says otherwise.
MAX_CONNECTIONS = 512
#: Seconds from a connection's opening, or from its previous answer, to a complete
#: request head (also how long an idle keep-alive connection stays open).
HEAD_TIMEOUT = 10.0
#: Seconds from a complete request head to the answer (reading the body included).
BODY_TIMEOUT = 10.0
#: File descriptors left under the open-file limit for everything but connections
#: (the store, the listening socket, the event loop's own).
FD_RESERVE = 64
#: What a connection beyond the cap gets before it is closed.
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
        b"Retry-After: 5\r\nConnection: close\r\nContent-Length: 21\r\n\r\n"
        b"too many connections\n")
CONTENT_TYPES = ("application/json", "text/plain")
PATH = "/events"


def check_origins(origins: Iterable[str]) -> frozenset[str]:
    """``--allow-origin`` values as the browser spells an ``Origin``: ``scheme://host[:port]``
    (lower case, no path), or ``*``. Raises InputError for anything else."""
    out = set()
    for raw in origins:
        origin = raw.strip().rstrip("/")
        if origin == "*":
            out.add(origin)
            continue
        parts = urlsplit(origin.lower())
        try:
            port = parts.port  # ValueError: not a number, or out of range
        except ValueError:
            port = -1
        if (parts.scheme not in ("http", "https") or not parts.hostname or parts.path
                or parts.query or parts.fragment or parts.username or parts.password
                or port == -1):
            raise InputError(f"{raw!r} is not an origin (scheme://host[:port], e.g. "
                             "https://shop.example.com)", field="--allow-origin")
        # a browser's Origin never spells the scheme's default port
        default = {"http": 80, "https": 443}[parts.scheme]
        netloc = parts.netloc.rsplit(":", 1)[0] if port == default else parts.netloc
        out.add(f"{parts.scheme}://{netloc}")
    return frozenset(out)


def _open_files_limit() -> int | None:
    """The soft open-file limit (``ulimit -n``), or None where there is none to ask."""
    if sys.platform == "win32":
        return None
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def check_max_connections(value: int | None) -> int:
    """``--max-connections``: at least 1, and within the open-file limit (each connection
    is a file descriptor; beyond the limit the server could not accept at all and the cap
    would never engage). None: ``MAX_CONNECTIONS``, or fewer under a lower limit."""
    limit = _open_files_limit()
    ceiling = None if limit is None else max(1, limit - FD_RESERVE)
    if value is None:
        return MAX_CONNECTIONS if ceiling is None else min(MAX_CONNECTIONS, ceiling)
    if value < 1:
        raise InputError(f"{value} is not a connection count (at least 1)",
                         field="--max-connections")
    if ceiling is not None and value > ceiling:
        raise InputError(f"{value} is more than this process may keep open (open-file "
                         f"limit {limit}: at most {ceiling}; raise `ulimit -n` first)",
                         field="--max-connections")
    return value


@dataclass
class CollectorStats:
    """What a collector did: requests accepted (202) and refused (4xx/5xx), events
    stored, already stored (``duplicates``) and dropped for an unknown subscriber;
    connections refused at the cap and closed for being too slow (``timed_out``: mid-request
    or before any; an idle keep-alive connection closed after an answer is not counted)."""

    accepted: int = 0
    refused: int = 0
    stored: int = 0
    duplicates: int = 0
    unknown: int = 0
    connections_refused: int = 0
    timed_out: int = 0


class Collector:
    """The accepted-but-not-yet-written events and the one thread that writes them.

    Every store call runs on that thread (SQLite connections stay with the thread
    that opened them; the event loop never waits on the disk).
    """

    def __init__(self, store: Store, *, allow_origins: frozenset[str] = frozenset(),
                 clock: Callable[[], float] = time.time,
                 on_problem: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.allow_origins = allow_origins
        self.clock = clock
        self.on_problem = on_problem
        self.stats = CollectorStats()
        self.secrets: tuple[bytes, ...] = ()
        self._secrets_at = float("-inf")
        self._waiting: list[EventRow] = []
        self._full = asyncio.Event()
        self._writing = asyncio.Lock()
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="events")

    async def _on_store(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def refresh_secrets(self) -> None:
        """Re-read the token secrets (at start, then every ``SECRETS_EVERY`` s)."""
        self.secrets = await self._on_store(self.store.token_secrets)
        self._secrets_at = time.monotonic()

    # --- CORS ---------------------------------------------------------------------------

    def _cors(self, origin: str | None) -> dict[str, str] | None:
        """Headers for a request from ``origin``, or None when it must be refused."""
        if origin is None or not self.allow_origins:
            return {}
        if "*" in self.allow_origins:
            return {"Access-Control-Allow-Origin": "*"}
        if origin.lower() in self.allow_origins:
            return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        return None

    def _refuse(self, status: int, reason: str, headers: dict[str, str] | None = None
                ) -> web.Response:
        self.stats.refused += 1
        return web.Response(status=status, text=reason + "\n", headers=headers)

    async def preflight(self, request: web.Request) -> web.Response:
        """``OPTIONS /events``: what an allowed origin may send (a JSON POST)."""
        cors = self._cors(request.headers.get("Origin"))
        if not cors:
            return self._refuse(403, "origin not allowed")
        return web.Response(status=204, headers={
            **cors, "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type", "Access-Control-Max-Age": "86400"})

    async def post(self, request: web.Request) -> web.Response:
        """``POST /events``: verify one event now, store it with the next batch."""
        cors = self._cors(request.headers.get("Origin"))
        if cors is None:
            return self._refuse(403, "origin not allowed")
        if request.content_type not in CONTENT_TYPES:
            return self._refuse(415, "send application/json or text/plain", cors)
        if request.content_length is not None and request.content_length > MAX_BODY:
            return self._refuse(413, f"an event is at most {MAX_BODY // 1024} KiB", cors)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:  # chunked, without a Content-Length
            return self._refuse(413, f"an event is at most {MAX_BODY // 1024} KiB", cors)
        except ConnectionError:  # gone mid-body (the client, or its deadline): nobody reads
            return self._refuse(400, "the body was cut off", cors)  # aiohttp would log a 500
        if len(self._waiting) >= MAX_WAITING:
            return self._refuse(503, "the store cannot be written; try later",
                                {**cors, "Retry-After": "30"})
        try:
            row = decode_event(body, self.secrets, self.clock())
        except EventProblem as exc:
            return self._refuse(400, str(exc), cors)
        self._waiting.append(row)
        self.stats.accepted += 1
        if len(self._waiting) >= FLUSH_AT:
            self._full.set()
        return web.Response(status=202, headers=cors)

    # --- writing ------------------------------------------------------------------------

    def _write(self, rows: Sequence[EventRow]) -> tuple[int, int, int]:
        known = self.store.known_subscribers(r.subscription_id for r in rows)
        keep = [r for r in rows if r.subscription_id in known]
        added = self.store.record_events(keep)
        return added, len(keep) - added, len(rows) - len(keep)

    async def flush(self) -> None:
        """Write every waiting event; on a store error they stay waiting (and it raises)."""
        async with self._writing:
            rows, self._waiting = self._waiting, []
            self._full.clear()
            if not rows:
                return
            try:
                added, duplicates, unknown = await self._on_store(self._write, rows)
            except BaseException:
                self._waiting[:0] = rows
                raise
            self.stats.stored += added
            self.stats.duplicates += duplicates
            self.stats.unknown += unknown

    async def run(self) -> None:
        """Write batches until cancelled: every ``FLUSH_EVERY`` s, or when ``FLUSH_AT`` wait."""
        while True:
            await wait_event(self._full, FLUSH_EVERY)  # full, or the timer ran out: write
            try:
                await self.flush()
                if time.monotonic() - self._secrets_at >= SECRETS_EVERY:
                    await self.refresh_secrets()
            except PushcliError as exc:  # the store is down: keep the events, say so, retry
                if self.on_problem is not None:
                    self.on_problem(f"{exc}; {len(self._waiting)} events kept, retrying")
                await asyncio.sleep(FLUSH_EVERY)

    async def close(self) -> None:
        """Write what is still waiting, then stop the store thread. A store that
        still cannot be written is a StoreError naming how many events were lost."""
        try:
            await self.flush()
        except PushcliError as exc:
            raise StoreError(f"{exc}; {len(self._waiting)} accepted events were not "
                             "stored") from None
        finally:
            self._thread.shutdown(wait=True)


# --- connections ----------------------------------------------------------------------


class ConnectionCap:
    """The protocol factory for the listening socket: at most ``limit`` connections
    at once (each a ``_Slot`` around a ``RequestHandler`` from aiohttp's ``server``),
    with the head and body deadlines; refusals and timeouts counted in ``stats``."""

    def __init__(self, server: Callable[[], asyncio.Protocol], stats: CollectorStats, *,
                 limit: int, head_timeout: float, body_timeout: float) -> None:
        self.server = server
        self.stats = stats
        self.limit = limit
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.open = 0

    def __call__(self) -> _Slot:
        return _Slot(self)


class _Slot(asyncio.Protocol):
    """One accepted connection. Admitted, it hands every call to aiohttp's handler;
    beyond the cap it answers ``BUSY`` and closes (aiohttp never sees it). Its one
    timer closes the connection when the deadline of its phase passes; that counts as
    ``timed_out`` unless the connection was only idle after an answer (keep-alive)."""

    __slots__ = ("cap", "inner", "transport", "timer", "closed", "idle")

    def __init__(self, cap: ConnectionCap) -> None:
        self.cap = cap
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.idle = False  # answered, and no byte of another request since

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        cap = self.cap
        if cap.open >= cap.limit:
            cap.stats.connections_refused += 1
            self.closed = True
            transport.write(BUSY)
            transport.close()  # after BUSY is written; nothing it sends is read
            return
        cap.open += 1
        self.inner = cap.server()
        self.inner.connection_made(transport)
        self.deadline(cap.head_timeout)

    def deadline(self, seconds: float) -> None:
        """Close the connection unless its next phase ends within ``seconds``."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.closed:
            self.timer = asyncio.get_running_loop().call_later(seconds, self._expire)

    def _expire(self) -> None:
        self.timer = None
        if not self.closed and self.transport is not None:
            if not self.idle:  # mid-request, or never sent one: slow, not just kept alive
                self.cap.stats.timed_out += 1
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.idle = False
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is None:  # refused at the cap
            return
        self.closed = True
        self.deadline(0)  # cancels the timer
        self.cap.open -= 1
        inner, self.inner = self.inner, None
        inner.connection_lost(exc)


@web.middleware
async def _deadlines(request: web.Request,
                     handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """A request head is complete: the slot's deadline becomes the body's; once the
    answer is ready, the next head's. (Under aiohttp's own server, as in tests that
    drive ``build_app`` through its ``TestServer``, there is no slot: nothing to do.)"""
    slot = request.transport.get_protocol() if request.transport is not None else None
    if not isinstance(slot, _Slot):
        return await handler(request)
    slot.deadline(slot.cap.body_timeout)
    try:
        return await handler(request)
    finally:
        slot.idle = True
        slot.deadline(slot.cap.head_timeout)


def build_app(collector: Collector) -> web.Application:
    """The aiohttp application: ``POST``/``OPTIONS /events`` (tests drive it directly)."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_deadlines])
    app.router.add_post(PATH, collector.post)
    app.router.add_route("OPTIONS", PATH, collector.preflight)
    return app


async def serve(store: Store, host: str, port: int, *,
                allow_origins: frozenset[str] = frozenset(),
                max_connections: int = MAX_CONNECTIONS,
                head_timeout: float = HEAD_TIMEOUT, body_timeout: float = BODY_TIMEOUT,
                on_ready: Callable[[str], None] | None = None,
                on_problem: Callable[[str], None] | None = None,
                stop: asyncio.Event | None = None) -> CollectorStats:
    """Collect events until SIGINT/SIGTERM (or ``stop``), then write what waits.

    ``on_ready`` receives ``http://HOST:PORT`` once the socket is bound, with the
    port the system chose for ``port=0``. ``max_connections`` (checked by
    ``check_max_connections``) and the two timeouts: see the module docstring.
    """
    collector = Collector(store, allow_origins=allow_origins, on_problem=on_problem)
    await collector.refresh_secrets()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(build_app(collector), access_log=None)
    await runner.setup()
    writer: asyncio.Task[None] | None = None
    listener: asyncio.Server | None = None
    cap = ConnectionCap(runner.server, collector.stats, limit=max_connections,
                        head_timeout=head_timeout, body_timeout=body_timeout)
    try:
        # not a TCPSite: it would hand aiohttp's factory to the socket, without the cap
        listener = await loop.create_server(cap, host, port, backlog=128)
        bound = listener.sockets[0].getsockname()[1]
        writer = asyncio.create_task(collector.run())
        if on_ready is not None:
            shown = f"[{host}]" if ":" in host else host
            on_ready(f"http://{shown}:{bound}")
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if listener is not None:
            listener.close()  # no new connections
        await runner.cleanup()  # those in progress have finished; idle ones are closed
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        await collector.close()
    return collector.stats


def serve_forever(store: Store, host: str, port: int, **kwargs: Any) -> CollectorStats:
    """Blocking ``serve``: returns its figures once stopped (Ctrl-C or SIGTERM)."""
    return asyncio.run(serve(store, host, port, **kwargs))
