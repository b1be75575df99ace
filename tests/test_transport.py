"""The HTTP/2 transport against a real h2 HTTPS sink on loopback (nginx, ALPN h2).

Proves a send works over HTTP/2 with TLS verified through SSL_CERT_FILE, and
that the rules the engine relies on hold: the DNS guard, no redirects,
timeouts, and which failures are ambiguous.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushcli import eventloop
from pushcli.defaults import EVENT_LOOP_ENV
from pushcli.resolver import GuardedResolver, PrivateAddress
from pushcli.testing import make_self_signed_cert
from pushcli.transport import Answer, CurlTransport, TransportError, TransportTimeout
from tests.support import echo_201, nginx_sink

LOCATIONS = {
    "/push/": echo_201(),
    "/gone/": 'return 410 "gone for good";',
    "/echo/": ('echo_read_request_body; echo_status 400; '
               'echo -n "$http_ttl $http_content_encoding $content_length:"; echo_request_body;'),
    "/moved/": "return 301 https://localhost:$server_port/push/1;",
    "/slow/": 'echo_read_request_body; echo_sleep 5; echo_status 201; echo "";',
    "/stall/": 'echo_read_request_body; echo_sleep 30; echo_status 201; echo "";',
}


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """nginx serving HTTPS with HTTP/2 on a port it picked; yields (base URL, cert path)."""
    with nginx_sink(tmp_path_factory.mktemp("h2sink"), LOCATIONS, http2=True,
                    worker_connections=256) as running:
        yield running.url("localhost"), running.cert


def _transport(allowed: frozenset[str] = frozenset({"localhost"}), *,
               timeout: float = 5.0) -> CurlTransport:
    """Built inside a running loop (the guard's resolver needs one)."""
    guard = GuardedResolver(allowed)

    async def resolve(host: str, port: int) -> list[str]:
        return await guard.resolve(host, port, socket.AF_INET)

    return CurlTransport(resolve, timeout=timeout, connect_timeout=timeout)


def _post(url: str, *, allowed: frozenset[str] = frozenset({"localhost"}),
          timeout: float = 5.0) -> Answer:
    """One POST through a fresh transport."""
    async def go() -> Answer:
        t = _transport(allowed, timeout=timeout)
        try:
            return await t.post(url, b"x" * 200, HEADERS)
        finally:
            t.close()

    return asyncio.run(go())


HEADERS = ["TTL: 60", "Content-Encoding: aes128gcm", "Content-Type: application/octet-stream"]


def test_posts_over_http2_with_tls_verified_through_ssl_cert_file(
        sink: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    base, cert = sink
    monkeypatch.setenv("SSL_CERT_FILE", cert)

    async def go() -> list:
        t = _transport()
        try:
            return await asyncio.gather(*(t.post(f"{base}/push/{i}", os.urandom(200), HEADERS)
                                          for i in range(50)),
                                        t.post(f"{base}/gone/1", b"x", HEADERS))
        finally:
            t.close()

    *answers, gone = asyncio.run(go())
    assert [a.status for a in answers] == [201] * 50
    assert all(a.http2 for a in answers)
    assert answers[0].headers["location"] == "/m/1"  # case-insensitive
    assert (gone.status, gone.body) == (410, b"gone for good")


def test_body_and_headers_arrive_byte_for_byte(sink: tuple[str, str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    base, cert = sink
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    body = b"\x00\x01binary\x00" + bytes(range(256))[:180]

    async def go() -> Answer:
        t = _transport()
        try:
            return await t.post(f"{base}/echo/1", body, HEADERS)
        finally:
            t.close()

    answer = asyncio.run(go())
    assert answer.status == 400 and answer.http2
    assert answer.body == f"60 aes128gcm {len(body)}:".encode() + body


def test_posts_on_uvloop_as_on_asyncio(sink: tuple[str, str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """PUSHCLI_EVENT_LOOP=uvloop: for a deadline already passed, uvloop's ``call_at`` gives
    a plain Handle, without ``when()``; libcurl's timer keeps its own deadline, so every
    request after the first is not refused (it was: "curl_multi_add_handle() failed")."""
    base, cert = sink
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    monkeypatch.setenv(EVENT_LOOP_ENV, "uvloop")

    async def go() -> tuple[str, list[Answer]]:
        t = _transport()
        try:
            answers = await asyncio.gather(*(t.post(f"{base}/push/{i}", os.urandom(200),
                                                    HEADERS) for i in range(50)))
        finally:
            t.close()
        return type(asyncio.get_running_loop()).__module__, answers

    module, answers = eventloop.run(go())
    assert module.startswith("uvloop")
    assert [a.status for a in answers] == [201] * 50 and all(a.http2 for a in answers)


def test_a_request_libcurl_refuses_to_start_fails_unsent(sink: tuple[str, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A callback of libcurl's that fails makes ``add_handle`` refuse: the request never
    went out (not ambiguous), and closing the transport after it still works."""
    base, cert = sink
    monkeypatch.setenv("SSL_CERT_FILE", cert)

    class TimerFails(CurlTransport):
        def _on_timer(self, ms: int) -> None:
            raise RuntimeError("the loop could not arm a timer")

    async def go() -> TransportError:
        guard = GuardedResolver(frozenset({"localhost"}))

        async def resolve(host: str, port: int) -> list[str]:
            return await guard.resolve(host, port, socket.AF_INET)

        t = TimerFails(resolve, timeout=5.0, connect_timeout=5.0)
        try:
            with pytest.raises(TransportError) as err:
                await t.post(f"{base}/push/1", b"x" * 200, HEADERS)
        finally:
            t.close()
        return err.value

    error = asyncio.run(go())
    assert error.ambiguous is False and "refused the request" in str(error)


def test_untrusted_certificate_fails_before_sending(
        sink: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    base, _ = sink
    other, _ = make_self_signed_cert(tmp_path)  # a CA that did not sign the sink
    monkeypatch.setenv("SSL_CERT_FILE", other)
    with pytest.raises(TransportError) as err:
        _post(f"{base}/push/1")
    assert err.value.ambiguous is False


def test_dns_guard_refuses_private_address_of_a_host_not_allowed(
        sink: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    base, cert = sink
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    with pytest.raises(PrivateAddress):  # localhost -> 127.0.0.1: private, not allowed
        _post(f"{base}/push/1", allowed=frozenset())


def test_connects_only_where_the_guard_pinned(sink: tuple[str, str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """libcurl never resolves on its own: it goes to the guard's answer or nowhere."""
    base, cert = sink
    monkeypatch.setenv("SSL_CERT_FILE", cert)

    async def go(address: str) -> Answer:
        async def resolve(host: str, port: int) -> list[str]:
            return [address]

        t = CurlTransport(resolve, timeout=5, connect_timeout=5)
        try:
            return await t.post(f"{base}/push/1", b"x", HEADERS)
        finally:
            t.close()

    assert asyncio.run(go("127.0.0.1")).status == 201
    with pytest.raises(TransportError) as err:  # nginx listens on 127.0.0.1 only
        asyncio.run(go("127.0.0.2"))
    assert err.value.ambiguous is False


def test_redirect_is_an_answer_not_followed(sink: tuple[str, str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    base, cert = sink
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    answer = _post(f"{base}/moved/1")
    assert answer.status == 301
    assert answer.headers["Location"].endswith("/push/1")


def test_timeout_after_sending_is_ambiguous(sink: tuple[str, str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    base, cert = sink
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    with pytest.raises(TransportTimeout) as err:
        _post(f"{base}/slow/1", timeout=0.5)
    assert isinstance(err.value, TimeoutError) and err.value.ambiguous

    async def on_a_reused_connection() -> list:
        t = _transport(timeout=0.5)
        try:
            first = await t.post(f"{base}/push/1", b"x", HEADERS)
            return [first, *await asyncio.gather(t.post(f"{base}/slow/2", b"x", HEADERS),
                                                 return_exceptions=True)]
        finally:
            t.close()

    first, second = asyncio.run(on_a_reused_connection())
    assert first.status == 201
    assert isinstance(second, TransportTimeout) and second.ambiguous


def test_refused_connection_is_not_ambiguous(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(TransportError) as err:
            _post(f"https://localhost:{port}/push/1")
    assert err.value.ambiguous is False and not isinstance(err.value, TimeoutError)


def test_plain_http_is_refused() -> None:
    with pytest.raises(TransportError):
        _post("http://localhost:1/push/1")


class _Signer:
    signatures = 0

    def header(self, origin: str) -> str:
        return "vapid t=e30.e30.sig, k=BPublicKey"


def test_engine_sends_https_over_http2_with_the_guard_and_no_redirects(
        sink: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's https call site goes through libcurl: sent, gone, a redirect recorded
    as the answer it is, and an address the guard refuses blocked without contact."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from pushcli.engine import Engine
    from pushcli.messages import DeliveryOptions, Job
    from pushcli.pushservices import Outcome

    base, cert = sink
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        Encoding.X962, PublicFormat.UncompressedPoint)
    port = base.rsplit(":", 1)[1]

    def job(i: int, url: str) -> Job:
        origin = url.split("/push")[0].split("/gone")[0].split("/moved")[0]
        return Job(i, url, origin, "test", point, os.urandom(16), b'{"title":"hi"}')

    jobs = [job(i, f"{base}/push/{i}") for i in range(1, 31)]
    jobs += [job(31, f"{base}/gone/31"), job(32, f"{base}/moved/32"),
             job(33, f"https://127.0.0.1:{port}/push/33")]  # 127.0.0.1 is not allowed
    records: list = []
    engine = Engine(_Signer(), DeliveryOptions(concurrency=8, max_attempts=1),  # type: ignore[arg-type]
                    records.extend, allowed_hosts=frozenset({"localhost"}))
    asyncio.run(engine.run(iter([jobs])))
    by_id = {r.subscription_id: r for r in records}
    assert sorted(by_id) == list(range(1, 34))
    assert {by_id[i].outcome for i in range(1, 31)} == {Outcome.SENT}
    assert (by_id[31].outcome, by_id[31].status_code) == (Outcome.EXPIRED, 410)
    assert by_id[32].status_code == 301 and by_id[32].outcome is not Outcome.SENT
    assert by_id[33].outcome is Outcome.BLOCKED and by_id[33].status_code is None
    assert "non-public" in by_id[33].reason


def test_a_reused_handle_sends_each_request_as_given_and_answers_only_its_own(
        sink: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """One handle carries every request here (one at a time): a header list changed in
    place, a new list, the same list again, bodies of every size, and answers whose
    headers and bodies differ; nothing of one transfer shows in the next."""
    base, cert = sink
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    lines = list(HEADERS)
    bodies = [b"a" * 300, b"b", bytes(range(256)) * 4, b"c" * 40]

    async def go() -> list[Answer]:
        t = _transport()
        try:
            answers = [await t.post(f"{base}/echo/1", bodies[0], lines)]
            lines[0] = "TTL: 30"  # the same list object, changed
            answers.append(await t.post(f"{base}/echo/2", bodies[1], lines))
            answers.append(await t.post(f"{base}/push/3", bodies[2], lines))
            answers.append(await t.post(f"{base}/echo/4", bodies[3], ["TTL: 5"] + HEADERS[1:]))
            answers.append(await t.post(f"{base}/gone/5", b"x", HEADERS))
            assert len(t._idle) == 1  # the one handle, reused every time
            return answers
        finally:
            t.close()

    first, second, pushed, fourth, gone = asyncio.run(go())
    assert first.body == f"60 aes128gcm {len(bodies[0])}:".encode() + bodies[0]
    assert second.body == f"30 aes128gcm {len(bodies[1])}:".encode() + bodies[1]
    assert (pushed.status, pushed.headers["location"]) == (201, "/m/1")
    assert fourth.body == f"5 aes128gcm {len(bodies[3])}:".encode() + bodies[3]
    assert "location" not in fourth.headers and "location" not in gone.headers
    assert (gone.status, gone.body) == (410, b"gone for good")


def test_requests_added_in_one_loop_turn_are_started_by_one_kick(
        sink: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Twenty posts begun in the same loop turn schedule one ``socket_action`` between
    them (one call starts every handle due), not one each, and all are answered."""
    base, cert = sink
    monkeypatch.setenv("SSL_CERT_FILE", cert)

    async def go() -> tuple[list[int], int]:
        t = _transport()
        try:
            await t.post(f"{base}/push/first", b"x", HEADERS)  # the guard's answer, cached
            kicks: list[None] = []
            kick = t._on_kick
            monkeypatch.setattr(t, "_on_kick", lambda: (kicks.append(None), kick()))
            answers = await asyncio.gather(*(t.post(f"{base}/push/{i}", os.urandom(200),
                                                    HEADERS) for i in range(20)))
            return [a.status for a in answers], len(kicks)
        finally:
            t.close()

    statuses, kicks = asyncio.run(go())
    assert statuses == [201] * 20
    assert kicks == 1


@pytest.mark.parametrize("others", [0, 1, 20])
def test_a_request_times_out_at_its_deadline_however_libcurl_moved_it(
        sink: tuple[str, str], monkeypatch: pytest.MonkeyPatch, others: int) -> None:
    """The transport keeps its armed timer when libcurl moves its deadline later, and arms
    the later deadline itself when that timer fires early (libcurl does not say an
    unchanged deadline twice). Whether the request is alone, follows one on the same
    connection or runs among a stream of fast ones, it times out at its 0.5 s, not when the
    server finally answers (30 s; the 10 s bound fails the test with a plain TimeoutError)."""
    base, cert = sink
    monkeypatch.setenv("SSL_CERT_FILE", cert)

    async def go() -> tuple[BaseException | Answer, list[Answer]]:
        t = _transport(timeout=0.5)
        try:
            fast = [await t.post(f"{base}/push/0", b"x", HEADERS)] if others else []
            stalled = asyncio.ensure_future(t.post(f"{base}/stall/{others}", b"x", HEADERS))
            while len(fast) < others and not stalled.done():
                fast.append(await t.post(f"{base}/push/{len(fast)}", b"x", HEADERS))
                await asyncio.sleep(0.02)
            await asyncio.wait_for(asyncio.wait([stalled]), 10)
            return (stalled.exception() or stalled.result()), fast
        finally:
            t.close()

    stalled, fast = asyncio.run(go())
    assert isinstance(stalled, TransportTimeout) and stalled.ambiguous
    assert all(a.status == 201 for a in fast)


class _RecordingLoop:
    """The four registration calls ``CurlTransport._on_socket`` makes, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def add_reader(self, fd: int, *_: object) -> None:
        self.calls.append(("add_reader", fd))

    def remove_reader(self, fd: int) -> bool:
        self.calls.append(("remove_reader", fd))
        return True

    def add_writer(self, fd: int, *_: object) -> None:
        self.calls.append(("add_writer", fd))

    def remove_writer(self, fd: int) -> bool:
        self.calls.append(("remove_writer", fd))
        return True


def test_socket_wishes_change_only_the_registrations_that_differ() -> None:
    """An HTTP/1.1 request (nothing, reading, nothing) costs one add and one remove; a
    repeated wish costs nothing; reading-and-writing to writing drops only the reader."""
    import pycurl

    t = _transport()
    loop = _RecordingLoop()
    t._loop = loop  # type: ignore[assignment]
    try:
        t._on_socket(pycurl.POLL_IN, 7, None, None)
        t._on_socket(pycurl.POLL_IN, 7, None, None)
        t._on_socket(pycurl.POLL_REMOVE, 7, None, None)
        assert loop.calls == [("add_reader", 7), ("remove_reader", 7)]
        loop.calls.clear()
        t._on_socket(pycurl.POLL_OUT, 8, None, None)
        t._on_socket(pycurl.POLL_INOUT, 8, None, None)
        t._on_socket(pycurl.POLL_OUT, 8, None, None)
        t._on_socket(pycurl.POLL_IN, 8, None, None)
        t._on_socket(pycurl.POLL_REMOVE, 8, None, None)
        assert loop.calls == [("add_writer", 8), ("add_reader", 8), ("remove_reader", 8),
                              ("add_reader", 8), ("remove_writer", 8), ("remove_reader", 8)]
        assert t._watching == {}
    finally:
        t._loop = None
        t.close()
