"""HTTP/2 transport for https push-service origins: libcurl's multi interface on asyncio.

Why: measured by ``bench/http_clients.py`` (README, "Performance"), libcurl
with nghttp2 multiplexing many streams over a few connections carries a push
POST for a fraction of aiohttp's CPU and, against a push service tens of
milliseconds away, with more requests in flight per connection. aiohttp keeps
plain-http origins (the emulator, web-push-testing) and is the fallback.

The rules every transport keeps (the engine relies on them):
- verified TLS against the system store, honouring ``SSL_CERT_FILE`` /
  ``SSL_CERT_DIR`` (libcurl is told the CA file and directory explicitly: the
  pycurl wheel's own OpenSSL does not know Debian's paths);
- the DNS guard: the host name is resolved by ``GuardedResolver`` (no private
  address unless the host is allowed) and the answer is pinned with
  ``CURLOPT_RESOLVE``, so libcurl never resolves on its own;
- no redirects, no proxies from the environment, https only;
- a total and a connect timeout;
- ambiguity: a failure after the request may have left (anything past the TLS
  handshake) is reported as ambiguous; a failure while connecting is not.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import pycurl
from multidict import CIMultiDict

#: libcurl errors that mean: no byte of the request went out.
_BEFORE_SEND = frozenset({
    pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_CONNECT, pycurl.E_SSL_CONNECT_ERROR,
    pycurl.E_PEER_FAILED_VERIFICATION, pycurl.E_SSL_CACERT_BADFILE,
    pycurl.E_UNSUPPORTED_PROTOCOL, pycurl.E_URL_MALFORMAT,
})
_DNS_TTL = 300.0

#: libcurl's socket wishes that include reading / writing (``_on_socket``).
_READS = frozenset({pycurl.POLL_IN, pycurl.POLL_INOUT})
_WRITES = frozenset({pycurl.POLL_OUT, pycurl.POLL_INOUT})


@dataclass(frozen=True)
class Answer:
    """What the push service said: status, headers (case-insensitive), start of the body."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    http2: bool


class TransportError(OSError):
    """The request failed without an answer; ``ambiguous``: it may have been delivered."""

    def __init__(self, message: str, *, ambiguous: bool) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous


def describe(exc: BaseException) -> str:
    """One line for a failed request, as the ledger's reason keeps it: a transport's
    own message as it is, any other error with its type."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, TransportError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}".strip(": ")[:300]


class TransportTimeout(TransportError, TimeoutError):
    """No answer within the timeout (a TimeoutError, as aiohttp's timeouts are)."""


def ca_locations() -> tuple[str | None, str | None]:
    """The CA file and directory Python's ``ssl.create_default_context()`` would use."""
    paths = ssl.get_default_verify_paths()
    cafile = os.environ.get(paths.openssl_cafile_env) or paths.openssl_cafile
    capath = os.environ.get(paths.openssl_capath_env) or paths.openssl_capath
    return (cafile if cafile and os.path.isfile(cafile) else None,
            capath if capath and os.path.isdir(capath) else None)


Resolve = Callable[[str, int], Awaitable[list[str]]]


class _Handle:
    """One reusable easy handle and what it was last given.

    An easy handle keeps its options from one transfer to the next (nothing here
    calls ``curl_easy_reset``), so only what changed is set again: the URL and body
    every time; the header list, the pinned address and the two callbacks only
    when they differ, which on a send is once per handle and origin. Skipping
    those four ``setopt`` calls saves about 2 us a message (bench/send_path_micro.py).
    """

    __slots__ = ("curl", "head", "text", "lines", "pin")

    def __init__(self, curl: pycurl.Curl) -> None:
        self.curl = curl
        self.head: list[bytes] = []  # this transfer's response header lines
        self.text = bytearray()  # the start of this transfer's response body
        self.lines: list[str] | None = None  # a copy of the header lines libcurl has
        self.pin: tuple[float, str] | None = None  # the CURLOPT_RESOLVE entry it loaded
        curl.setopt(pycurl.HEADERFUNCTION, self.head.append)
        curl.setopt(pycurl.WRITEFUNCTION, self._keep)

    def _keep(self, chunk: bytes) -> None:
        text = self.text
        if len(text) < 1024:
            text.extend(chunk[:1024 - len(text)])

    def prepare(self, url: str, body: bytes, header_lines: list[str],
                pin: tuple[float, str]) -> None:
        """Set up the next transfer.

        ``pin`` is compared by identity: ``CurlTransport._pinned`` makes a new entry
        at every refresh, and libcurl loads a ``CURLOPT_RESOLVE`` list into its DNS
        cache (permanently) once per ``setopt``, so each handle loads each
        refreshed answer once and never connects anywhere the guard has not pinned.
        """
        curl = self.curl
        self.head.clear()
        self.text.clear()
        curl.setopt(pycurl.URL, url)
        if pin is not self.pin:
            curl.setopt(pycurl.RESOLVE, [pin[1]])
            self.pin = pin
        if header_lines != self.lines:
            curl.setopt(pycurl.HTTPHEADER, header_lines)
            self.lines = list(header_lines)  # a copy: the caller may reuse its list
        curl.setopt(pycurl.POSTFIELDS, body)


class CurlTransport:
    """POSTs over HTTP/2 (ALPN; HTTP/1.1 if the server offers only that) with libcurl.

    One ``CurlMulti`` drives all transfers from the asyncio loop through libcurl's
    socket callbacks. ``max_streams`` caps the streams per connection (FCM allows
    about 100; libcurl also honours the server's SETTINGS_MAX_CONCURRENT_STREAMS).
    ``resolve(host, port)`` returns the addresses allowed for ``host`` or raises
    (the engine passes its ``GuardedResolver``).
    """

    def __init__(self, resolve: Resolve, *, timeout: float, connect_timeout: float,
                 max_streams: int = 100, clock: Callable[[], float] = time.monotonic) -> None:
        self._resolve = resolve
        self._timeout_ms = int(timeout * 1000)
        self._connect_ms = int(min(connect_timeout, timeout) * 1000)
        self._clock = clock
        self._cafile, self._capath = ca_locations()
        self._dns: dict[tuple[str, int], tuple[float, str]] = {}
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_PIPELINING, pycurl.PIPE_MULTIPLEX)
        self._multi.setopt(pycurl.M_MAX_CONCURRENT_STREAMS, max_streams)
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.Handle | None = None
        self._timer_at = 0.0  # when ``_timer`` fires, in loop time (uvloop's handle for a
        # deadline already passed is a plain Handle, without ``when()``)
        self._deadline: float | None = None  # libcurl's last deadline, in loop time
        self._kicked: asyncio.Handle | None = None  # the ``_on_kick`` of the next loop turn
        self._pending: dict[pycurl.Curl, tuple[asyncio.Future[Answer], _Handle]] = {}
        self._idle: list[_Handle] = []
        self._targets: dict[str, tuple[str, int]] = {}  # origin -> (host, port)
        self._watching: dict[int, int] = {}  # fd -> the POLL_* the loop waits for

    # --- public ---------------------------------------------------------------------

    async def post(self, url: str, body: bytes, header_lines: list[str]) -> Answer:
        """POST ``body`` with ``header_lines`` (``"Name: value"``, libcurl's own form, which the
        engine builds once per origin); the answer, or ``TransportError`` (``PrivateAddress``
        from the guard)."""
        host, port = self._target(url)
        pin = await self._pinned(host, port)
        self._loop = asyncio.get_running_loop()
        handle = self._idle.pop() if self._idle else _Handle(self._new_handle())
        handle.prepare(url, body, header_lines, pin)
        curl = handle.curl
        future: asyncio.Future[Answer] = self._loop.create_future()
        try:
            self._multi.add_handle(curl)  # may call _on_socket/_on_timer, never _settle
        except pycurl.error as exc:  # a callback failed: nothing went out
            curl.close()  # in an unknown state: never reused
            raise TransportError(f"libcurl refused the request: {exc}"[:300],
                                 ambiguous=False) from exc
        self._pending[curl] = (future, handle)
        self._kick()
        try:
            return await future
        except asyncio.CancelledError:
            self._abandon(curl)
            raise

    def _target(self, url: str) -> tuple[str, int]:
        """Host and port of an https URL, parsed once per origin (a send has a handful)."""
        cut = url.find("/", 8)
        origin = url if cut < 0 else url[:cut]
        target = self._targets.get(origin)
        if target is None:
            try:
                parts = urlsplit(origin)
                port = parts.port or 443
            except ValueError:
                port = 0
                parts = None
            if parts is None or parts.scheme != "https" or not parts.hostname or not port:
                raise TransportError(f"not an https URL: {url[:80]}", ambiguous=False)
            target = self._targets[origin] = (parts.hostname, port)
        return target

    def close(self) -> None:
        """Drop every transfer and connection."""
        for curl in list(self._pending):
            self._abandon(curl)
        for scheduled in (self._timer, self._kicked):
            if scheduled is not None:
                scheduled.cancel()  # neither may act on the closed multi handle
        for handle in self._idle:
            handle.curl.close()
        self._idle.clear()
        self._multi.close()

    # --- handles --------------------------------------------------------------------

    def _new_handle(self) -> pycurl.Curl:
        curl = pycurl.Curl()
        curl.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_2TLS)
        curl.setopt(pycurl.PIPEWAIT, 1)
        curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTPS)
        curl.setopt(pycurl.FOLLOWLOCATION, 0)
        curl.setopt(pycurl.PROXY, "")  # no proxy from https_proxy/ALL_PROXY
        curl.setopt(pycurl.NOPROXY, "*")
        curl.setopt(pycurl.SSL_VERIFYPEER, 1)
        curl.setopt(pycurl.SSL_VERIFYHOST, 2)
        if self._cafile:
            curl.setopt(pycurl.CAINFO, self._cafile)
        if self._capath:
            curl.setopt(pycurl.CAPATH, self._capath)
        curl.setopt(pycurl.TIMEOUT_MS, self._timeout_ms)
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, self._connect_ms)
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.USERAGENT, "")
        # libcurl's smallest upload buffer (its default is 64 KB, allocated per handle for
        # the whole transfer): a push body is at most 4 KB, and over HTTP/1.1 a send keeps
        # one handle per request in flight (300 TLS transfers held open: 154.6 KB each
        # with the default, 113.1 KB with this; bench/conn_memory.py)
        curl.setopt(pycurl.UPLOAD_BUFFERSIZE, 16 * 1024)
        return curl

    async def _pinned(self, host: str, port: int) -> tuple[float, str]:
        """(expiry, ``host:port:addr,...`` for CURLOPT_RESOLVE) from the guard, cached
        ``_DNS_TTL``; a new tuple at every refresh (``_Handle.prepare`` relies on it)."""
        now = self._clock()
        cached = self._dns.get((host, port))
        if cached is not None and cached[0] > now:
            return cached
        addresses = await self._resolve(host, port)
        entry = f"{host}:{port}:" + ",".join(
            f"[{a}]" if ":" in a else a for a in addresses)
        pinned = self._dns[(host, port)] = (now + _DNS_TTL, entry)
        return pinned

    # --- libcurl <-> asyncio -----------------------------------------------------------

    def _on_socket(self, what: int, fd: int, _multi: object, _data: object) -> None:
        """libcurl says what to wait for on ``fd``; the loop's registration changes only where
        it differs from last time (an HTTP/2 connection asks again for every stream; an
        HTTP/1.1 request goes from nothing to reading to nothing, so one ``add_reader`` and
        one ``remove_reader``, not both removes before every add: ~5 % of a sender's CPU)."""
        loop = self._loop
        assert loop is not None
        before = self._watching.get(fd, 0)
        if what == pycurl.POLL_REMOVE:
            self._watching.pop(fd, None)
            what = 0
        elif before == what:
            return
        else:
            self._watching[fd] = what
        read_before, read_now = before in _READS, what in _READS
        if read_before and not read_now:
            loop.remove_reader(fd)
        elif read_now and not read_before:
            loop.add_reader(fd, self._act, fd, pycurl.CSELECT_IN)
        write_before, write_now = before in _WRITES, what in _WRITES
        if write_before and not write_now:
            loop.remove_writer(fd)
        elif write_now and not write_before:
            loop.add_writer(fd, self._act, fd, pycurl.CSELECT_OUT)

    def _on_timer(self, ms: int) -> None:
        """libcurl's next deadline (``ms`` from now; -1: none).

        About 98 % of these calls move the deadline later than the timer already
        armed (5,000 messages: 6,925 calls, 6,766 later), so that timer is kept
        instead of cancelled and armed again (a TimerHandle and two heap changes
        each). When it fires early, ``_on_deadline`` arms the deadline libcurl
        last gave: libcurl does not repeat a deadline it has not changed."""
        loop = self._loop
        if loop is None:
            return
        if ms < 0:
            self._deadline = None  # an armed timer that fires anyway only asks libcurl
            return
        self._deadline = deadline = loop.time() + ms / 1000
        timer = self._timer
        if timer is not None:
            if self._timer_at <= deadline:
                return
            timer.cancel()
        self._arm(loop, deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        self._act(pycurl.SOCKET_TIMEOUT, 0)
        deadline = self._deadline
        if self._timer is None and deadline is not None and self._loop is not None:
            self._arm(self._loop, deadline)

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Arm the timer for ``deadline`` (loop time), and remember when it fires."""
        self._timer_at = deadline
        self._timer = loop.call_at(deadline, self._on_deadline)

    def _kick(self) -> None:
        """After adding a handle: let libcurl start it on the next loop turn.

        Once per turn, however many handles were added in it: ``add_handle`` marks each
        due at once, and one ``socket_action(SOCKET_TIMEOUT)`` starts every handle due.
        The answers a turn takes start as many posts in the next: 30,000 messages over
        HTTP/1.1 made 15,293 posts in one process and 128 kicks, not one each."""
        if self._kicked is None:
            assert self._loop is not None
            self._kicked = self._loop.call_soon(self._on_kick)

    def _on_kick(self) -> None:
        self._kicked = None
        self._act(pycurl.SOCKET_TIMEOUT, 0)

    def _act(self, fd: int, event: int) -> None:
        while True:
            code, _running = self._multi.socket_action(fd, event)
            if code != pycurl.E_CALL_MULTI_PERFORM:
                break
        self._collect()

    def _collect(self) -> None:
        while True:
            queued, done, failed = self._multi.info_read()
            for curl in done:
                self._settle(curl, None, "")
            for curl, errno, message in failed:
                self._settle(curl, errno, message)
            if not queued:
                return

    def _settle(self, curl: pycurl.Curl, errno: int | None, message: str) -> None:
        entry = self._pending.pop(curl, None)
        status = curl.getinfo(pycurl.RESPONSE_CODE)
        self._multi.remove_handle(curl)
        if entry is None:
            return
        future, handle = entry
        self._idle.append(handle)  # its buffers are read below, before any reuse
        if future.done():
            return
        if errno is None:
            http2 = curl.getinfo(pycurl.INFO_HTTP_VERSION) == pycurl.CURL_HTTP_VERSION_2_0
            future.set_result(Answer(status, _HeaderLines(list(handle.head)),
                                     bytes(handle.text), http2))
        elif errno == pycurl.E_OPERATION_TIMEDOUT:
            # the transfer had begun (connection up, new or reused: pretransfer time set)
            # means the request may have been delivered; stuck connecting means it was not
            sent = curl.getinfo(pycurl.PRETRANSFER_TIME) > 0
            future.set_exception(TransportTimeout("timeout", ambiguous=sent))
        else:
            future.set_exception(TransportError(
                f"curl error {errno}: {message}"[:300], ambiguous=errno not in _BEFORE_SEND))

    def _abandon(self, curl: pycurl.Curl) -> None:
        """A cancelled caller: stop the transfer (no answer will be read)."""
        entry = self._pending.pop(curl, None)
        if entry is not None:
            self._multi.remove_handle(curl)
            curl.close()  # never reuse a handle whose transfer was cut off


class _HeaderLines(Mapping[str, str]):
    """A response's header lines, parsed (``_parse_headers``) on first look.

    Nothing looks at the headers of a 201, nearly every answer of a send; parsing them
    anyway was ~1.5 % of a sender's CPU (py-spy, 30,000 messages)."""

    __slots__ = ("_lines", "_parsed")

    def __init__(self, lines: list[bytes]) -> None:
        self._lines = lines
        self._parsed: CIMultiDict[str] | None = None

    def _headers(self) -> CIMultiDict[str]:
        if self._parsed is None:
            self._parsed = _parse_headers(self._lines)
        return self._parsed

    def __getitem__(self, name: str) -> str:
        return self._headers()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers())

    def __len__(self) -> int:
        return len(self._headers())

    def __repr__(self) -> str:
        return f"_HeaderLines({self._headers()!r})"


def _parse_headers(lines: list[bytes]) -> CIMultiDict[str]:
    """The last response's header lines (after any 100-continue) as a case-insensitive dict."""
    headers: CIMultiDict[str] = CIMultiDict()
    for raw in lines:
        line = raw.decode("latin-1").rstrip("\r\n")
        if line.startswith("HTTP/"):
            headers.clear()
        elif ":" in line:
            name, _, value = line.partition(":")
            headers.add(name.strip(), value.strip())
    return headers

