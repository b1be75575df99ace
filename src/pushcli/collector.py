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

Library code: it reports through the callbacks it is given and never prints.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
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

__all__ = ["FLUSH_AT", "FLUSH_EVERY", "MAX_BODY", "Collector", "CollectorStats", "build_app",
           "check_origins", "serve", "serve_forever"]

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


@dataclass
class CollectorStats:
    """What a collector did: requests accepted (202) and refused (4xx/5xx), events
    stored, already stored (``duplicates``) and dropped for an unknown subscriber."""

    accepted: int = 0
    refused: int = 0
    stored: int = 0
    duplicates: int = 0
    unknown: int = 0


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


def build_app(collector: Collector) -> web.Application:
    """The aiohttp application: ``POST``/``OPTIONS /events`` (tests drive it directly)."""
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post(PATH, collector.post)
    app.router.add_route("OPTIONS", PATH, collector.preflight)
    return app


async def serve(store: Store, host: str, port: int, *,
                allow_origins: frozenset[str] = frozenset(),
                on_ready: Callable[[str], None] | None = None,
                on_problem: Callable[[str], None] | None = None,
                stop: asyncio.Event | None = None) -> CollectorStats:
    """Collect events until SIGINT/SIGTERM (or ``stop``), then write what waits.

    ``on_ready`` receives ``http://HOST:PORT`` once the socket is bound, with the
    port the system chose for ``port=0``.
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
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        writer = asyncio.create_task(collector.run())
        if on_ready is not None:
            shown = f"[{host}]" if ":" in host else host
            on_ready(f"http://{shown}:{bound}")
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()  # no new requests; those in progress have finished
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        await collector.close()
    return collector.stats


def serve_forever(store: Store, host: str, port: int, **kwargs: Any) -> CollectorStats:
    """Blocking ``serve``: returns its figures once stopped (Ctrl-C or SIGTERM)."""
    return asyncio.run(serve(store, host, port, **kwargs))
