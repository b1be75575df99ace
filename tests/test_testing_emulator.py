"""The loopback push-service emulator speaks the real protocol.

These tests send with independent code (pywebpush's encryption, py_vapid and
a hand-rolled ES256 signer) so the emulator is checked against the protocol,
not against pushcli's own sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import py_vapid
import pytest
import pywebpush
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pushcli.encoding import b64url_encode
from pushcli.testing import (
    PushServiceEmulator,
    VapidError,
    VapidVerifier,
    make_self_signed_cert,
    serve,
)

SUB = "mailto:t@example.com"


class Vapid:
    """A VAPID key pair plus a JWT signer that lets tests forge bad claims."""

    def __init__(self) -> None:
        self.v = py_vapid.Vapid02()
        self.v.generate_keys()
        self.key: ec.EllipticCurvePrivateKey = self.v.private_key
        raw = self.key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        self.public_b64 = b64url_encode(raw)

    def jwt(self, claims: dict[str, Any], alg: str = "ES256") -> str:
        """ES256 JWT with exactly these claims (no defaults, no validation)."""
        head = b64url_encode(json.dumps({"typ": "JWT", "alg": alg}).encode())
        body = b64url_encode(json.dumps(claims).encode())
        der = self.key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{head}.{body}.{b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def header(self, aud: str, *, exp: int | None = None, sub: str = SUB, sep: str = ", ") -> str:
        """``Authorization`` value for ``aud``."""
        exp = int(time.time()) + 3600 if exp is None else exp
        token = self.jwt({"aud": aud, "exp": exp, "sub": sub})
        return f"vapid t={token}{sep}k={self.public_b64}"


@pytest.fixture(scope="module")
def vapid() -> Vapid:
    return Vapid()


@pytest.fixture()
def emu() -> Iterator[PushServiceEmulator]:
    with PushServiceEmulator(port=0, seed=0) as e:
        yield e


def encrypt(sub: dict[str, Any], data: bytes) -> bytes:
    """aes128gcm body made by pywebpush, an independent implementation."""
    return bytes(pywebpush.WebPusher(sub).encode(data, content_encoding="aes128gcm")["body"])


def origin(endpoint: str) -> str:
    scheme, rest = endpoint.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def push(
    sub: dict[str, Any],
    vapid: Vapid,
    data: bytes | None = b'{"title": "hi"}',
    *,
    headers: dict[str, str | None] | None = None,
    body: bytes | None = None,
    timeout: float = 5,
    verify: str | bool = True,
) -> requests.Response:
    """POST a push with valid defaults; ``headers`` values of None delete a header."""
    hdrs: dict[str, str | None] = {
        "TTL": "60",
        "Content-Encoding": "aes128gcm",
        "Content-Type": "application/octet-stream",
        "Authorization": vapid.header(origin(sub["endpoint"])),
    }
    hdrs.update(headers or {})
    sent = {k: v for k, v in hdrs.items() if v is not None}
    if body is None:
        body = encrypt(sub, data) if data else b""
    return requests.post(sub["endpoint"], data=body, headers=sent, timeout=timeout, verify=verify)


# -- happy path ---------------------------------------------------------------


def test_pywebpush_round_trip(emu: PushServiceEmulator, vapid: Vapid) -> None:
    sub = emu.create_subscription(vapid.public_b64)
    assert set(sub) == {"endpoint", "expirationTime", "keys"}
    assert sub["endpoint"].startswith(emu.url + "/push/")
    resp = pywebpush.webpush(
        sub, '{"title": "hello"}', vapid_private_key=vapid.v, vapid_claims={"sub": SUB}, ttl=120
    )
    assert resp.status_code == 201
    assert resp.headers["Location"].startswith(emu.url + "/m/")
    assert emu.messages(sub["endpoint"]) == [b'{"title": "hello"}']
    rec = emu.message_records(emu.id_for(sub["endpoint"]))[0]
    assert rec.ttl == 120 and rec.content_type is None


def test_raw_push_records_headers(emu: PushServiceEmulator, vapid: Vapid) -> None:
    sub = emu.create_subscription(vapid.public_b64)
    payload = "é" * 1996  # 3992 bytes: near the 3993-byte plaintext limit
    resp = push(
        sub,
        vapid,
        payload.encode(),
        headers={"Urgency": "high", "Topic": "campaign-42", "TTL": "99999999"},
    )
    assert resp.status_code == 201, resp.text
    assert resp.headers["TTL"] == "2419200"  # capped like FCM, echoed
    rec = emu.message_records(sub["endpoint"])[0]
    assert rec.payload.decode() == payload
    assert (rec.urgency, rec.topic) == ("high", "campaign-42")
    assert rec.content_type == "application/octet-stream"


@pytest.mark.parametrize("sep", [",", ", ", " ,  "])
def test_authorization_spacing_tolerated(emu: PushServiceEmulator, vapid: Vapid, sep: str) -> None:
    sub = emu.create_subscription(vapid.public_b64)
    auth = vapid.header(origin(sub["endpoint"]), sep=sep)
    assert push(sub, vapid, headers={"Authorization": auth}).status_code == 201


def test_empty_push_without_encoding(emu: PushServiceEmulator, vapid: Vapid) -> None:
    sub = emu.create_subscription(vapid.public_b64)
    resp = push(sub, vapid, None, headers={"Content-Encoding": None})
    assert resp.status_code == 201
    assert emu.messages(sub["endpoint"]) == [b""]


# -- VAPID ----------------------------------------------------------------------


def test_wrong_vapid_key_is_403(emu: PushServiceEmulator, vapid: Vapid) -> None:
    sub = emu.create_subscription(vapid.public_b64)
    other = Vapid()
    resp = push(sub, vapid, headers={"Authorization": other.header(origin(sub["endpoint"]))})
    assert resp.status_code == 403
    assert resp.json()["reason"] == "VapidPkHashMismatch"
    assert emu.messages(sub["endpoint"]) == []


@pytest.mark.parametrize(
    "claims_change",
    [
        {"exp": -10},  # expired
        {"exp": 25 * 3600},  # beyond 24 h
        {"aud": "http://127.0.0.1:1"},  # another origin
        {"aud": "https://{host}"},  # right host, wrong scheme
        {"aud": "{origin}/push"},  # a path is not an origin
        {"sub": "bob@example.com"},
        {"sub": "mailto:<bob@example.com>"},
        {"sub": "https://localhost"},
    ],
)
def test_bad_jwt_claims_rejected(
    emu: PushServiceEmulator, vapid: Vapid, claims_change: dict[str, Any]
) -> None:
    sub = emu.create_subscription(vapid.public_b64)
    org = origin(sub["endpoint"])
    claims: dict[str, Any] = {"aud": org, "exp": 3600, "sub": SUB}
    claims.update(claims_change)
    claims["exp"] = int(time.time()) + claims["exp"]
    claims["aud"] = claims["aud"].format(origin=org, host=org.split("://")[1])
    auth = f"vapid t={vapid.jwt(claims)}, k={vapid.public_b64}"
    resp = push(sub, vapid, headers={"Authorization": auth})
    assert resp.status_code in (401, 403), resp.text
    assert resp.json()["reason"] == "BadJwtToken"
    assert emu.messages(sub["endpoint"]) == []


def test_bad_signature_alg_and_missing_auth(emu: PushServiceEmulator, vapid: Vapid) -> None:
    sub = emu.create_subscription(vapid.public_b64)
    org = origin(sub["endpoint"])
    good = vapid.jwt({"aud": org, "exp": int(time.time()) + 60, "sub": SUB})
    tampered = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    hs = vapid.jwt({"aud": org, "exp": int(time.time()) + 60, "sub": SUB}, alg="HS256")
    for auth in (
        f"vapid t={tampered}, k={vapid.public_b64}",
        f"vapid t={hs}, k={vapid.public_b64}",
        f"WebPush {good}",
        f"vapid t={good}",
        None,
    ):
        assert push(sub, vapid, headers={"Authorization": auth}).status_code == 401, auth


def test_aud_follows_the_host_the_client_addressed(emu: PushServiceEmulator, vapid: Vapid) -> None:
    local = emu.url.replace("127.0.0.1", "localhost")
    sub = emu.create_subscription(vapid.public_b64, base_url=local)
    assert sub["endpoint"].startswith("http://localhost:")
    assert push(sub, vapid).status_code == 201
    wrong = vapid.header(emu.url)  # 127.0.0.1 is a different origin from localhost
    assert push(sub, vapid, headers={"Authorization": wrong}).status_code == 401


def test_cached_token_still_checks_exp(vapid: Vapid) -> None:
    verifier = VapidVerifier()
    raw = vapid.key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    now = time.time()
    header = vapid.header("https://push.example", exp=int(now) + 600)
    for _ in range(3):
        verifier.verify(header, expected_key=raw, origin="https://push.example", now=now)
    with pytest.raises(VapidError) as err:
        verifier.verify(header, expected_key=raw, origin="https://push.example", now=now + 3600)
    assert err.value.status == 401
    with pytest.raises(VapidError):
        verifier.verify(header, expected_key=raw, origin="https://other.example", now=now)


# -- RFC 8030 header and body checks ------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"TTL": None}, 400),
        ({"TTL": "-1"}, 400),
        ({"TTL": "soon"}, 400),
        ({"Urgency": "urgent"}, 400),
        ({"Topic": "x" * 33}, 400),
        ({"Topic": "has space"}, 400),
        ({"Content-Encoding": None}, 400),
        ({"Content-Encoding": "aesgcm"}, 415),
    ],
)
def test_header_validation(
    emu: PushServiceEmulator, vapid: Vapid, headers: dict[str, str | None], status: int
) -> None:
    sub = emu.create_subscription(vapid.public_b64)
    assert push(sub, vapid, headers=headers).status_code == status
    assert emu.messages(sub["endpoint"]) == []


def test_too_large_body_is_413(emu: PushServiceEmulator, vapid: Vapid) -> None:
    sub = emu.create_subscription(vapid.public_b64)
    assert push(sub, vapid, b"x" * 3994).status_code == 413  # 3994 + 103 > 4096
    assert push(sub, vapid, b"x" * 3993).status_code == 201


def test_undecryptable_body_is_400(emu: PushServiceEmulator, vapid: Vapid) -> None:
    sub = emu.create_subscription(vapid.public_b64)
    other = emu.create_subscription(vapid.public_b64)
    # Encrypted for another subscription's keys: decrypts nowhere else.
    resp = push(sub, vapid, body=encrypt(other, b"secret"))
    assert resp.status_code == 400
    assert resp.json()["reason"] == "DecryptionFailed"


def test_expired_and_unknown_subscriptions(emu: PushServiceEmulator, vapid: Vapid) -> None:
    sub = emu.create_subscription(vapid.public_b64)
    assert push(sub, vapid).status_code == 201
    emu.expire(sub["endpoint"])
    assert push(sub, vapid).status_code == 410
    ghost = dict(sub, endpoint=emu.url + "/push/nope")
    assert push(ghost, vapid).status_code == 404
    assert len(emu.messages(sub["endpoint"])) == 1


# -- fault injection ------------------------------------------------------------------


def test_429_with_retry_after_then_recovers(emu: PushServiceEmulator, vapid: Vapid) -> None:
    sub = emu.create_subscription(vapid.public_b64)
    emu.add_fault(429, client_hash=sub["endpoint"], retry_after=3, times=2)
    first, second, third = (push(sub, vapid) for _ in range(3))
    assert first.status_code == second.status_code == 429
    assert first.headers["Retry-After"] == "3"
    assert third.status_code == 201
    assert len(emu.messages(sub["endpoint"])) == 1
    assert len(emu.request_times(sub["endpoint"])) == 3


def test_wns_406_and_503_http_date(emu: PushServiceEmulator, vapid: Vapid) -> None:
    a, b = emu.create_subscriptions(2, vapid.public_b64)
    emu.add_fault(406, client_hash=emu.id_for(a["endpoint"]), retry_after=5)
    emu.add_fault(
        503, client_hash=emu.id_for(b["endpoint"]), retry_after=7, retry_after_http_date=True
    )
    ra = push(a, vapid)
    assert ra.status_code == 406
    assert ra.headers["X-WNS-STATUS"] == "appthrottled" and ra.headers["Retry-After"] == "5"
    rb = push(b, vapid)
    assert rb.status_code == 503 and rb.headers["Retry-After"].endswith("GMT")


def test_drop_closes_connection_without_storing(emu: PushServiceEmulator, vapid: Vapid) -> None:
    sub = emu.create_subscription(vapid.public_b64)
    emu.add_fault("drop", client_hash=sub["endpoint"], times=1)
    with pytest.raises(requests.ConnectionError):
        push(sub, vapid)
    assert emu.messages(sub["endpoint"]) == []
    assert push(sub, vapid).status_code == 201  # one-shot


def test_drop_after_accept_stores_then_aborts(emu: PushServiceEmulator, vapid: Vapid) -> None:
    sub = emu.create_subscription(vapid.public_b64)
    emu.add_fault("drop_after_accept", client_hash=sub["endpoint"])
    with pytest.raises(requests.ConnectionError):
        push(sub, vapid, b"accepted anyway")
    assert emu.messages(sub["endpoint"]) == [b"accepted anyway"]
    assert emu.stats()["by_status"] == {"drop_after_accept": 1}


def test_slow_exceeds_client_timeout(emu: PushServiceEmulator, vapid: Vapid) -> None:
    sub = emu.create_subscription(vapid.public_b64)
    emu.add_fault("slow", client_hash=sub["endpoint"], delay=0.6, times=1)
    with pytest.raises(requests.Timeout):
        push(sub, vapid, timeout=0.2)
    assert emu.messages(sub["endpoint"]) == []  # the client gave up before the answer
    # the service still processes it after the client gave up
    assert emu.wait_for_messages(sub["endpoint"], 1) == [b'{"title": "hi"}']


def test_rate_faults_are_reproducible(vapid: Vapid) -> None:
    def run() -> list[int]:
        with PushServiceEmulator(seed=42) as e:
            subs = e.create_subscriptions(20, vapid.public_b64)
            e.add_fault(500, rate=0.3)
            return [push(s, vapid).status_code for s in subs]

    first = run()
    assert first == run()
    assert 500 in first and 201 in first


def test_stats_tally(emu: PushServiceEmulator, vapid: Vapid) -> None:
    a, b = emu.create_subscriptions(2, vapid.public_b64)
    emu.add_fault(410, client_hash=b["endpoint"])
    push(a, vapid)
    push(a, vapid)
    push(b, vapid)
    push(a, vapid, headers={"TTL": None})
    st = emu.stats(per_subscription=True)
    assert st["total_requests"] == 4 and st["accepted"] == 2
    assert st["by_status"] == {"201": 2, "410": 1, "400": 1}
    per = st["per_subscription"]
    assert per[emu.id_for(a["endpoint"])]["requests"] == 3
    assert per[emu.id_for(b["endpoint"])]["accepted"] == 0
    log = emu.request_log()
    assert [s for _, _, s in log] == ["201", "201", "410", "400"]
    assert all(t1 <= t2 for (t1, _, _), (t2, _, _) in zip(log, log[1:], strict=False))


# -- control API -------------------------------------------------------------------------


def test_control_api(emu: PushServiceEmulator, vapid: Vapid) -> None:
    def call(path: str, body: dict[str, Any] | None = None) -> requests.Response:
        return requests.post(emu.url + path, json=body or {}, timeout=5)

    assert call("/status").json()["ok"] is True
    one = call(
        "/subscribe", {"applicationServerKey": vapid.public_b64, "userVisibleOnly": "true"}
    ).json()["data"]
    assert set(one) == {"endpoint", "expirationTime", "keys", "clientHash"}
    many = call("/subscribe", {"applicationServerKey": vapid.public_b64, "count": 3}).json()
    assert isinstance(many["data"], list) and len(many["data"]) == 3
    assert call("/subscribe", {"applicationServerKey": "bad"}).status_code == 400

    sub = {k: one[k] for k in ("endpoint", "expirationTime", "keys")}
    assert push(sub, vapid, b'{"n": 1}').status_code == 201
    got = call("/get-notifications", {"clientHash": one["clientHash"]}).json()["data"]
    assert got["messages"] == ['{"n": 1}']

    rule = call("/faults", {"clientHash": one["clientHash"], "status": 502, "times": 1}).json()
    assert rule["data"]["status"] == 502
    assert call("/faults", {"status": "explode"}).status_code == 400
    assert push(sub, vapid).status_code == 502
    call("/faults", {"status": 500})
    call("/faults/clear")
    assert push(sub, vapid).status_code == 201

    assert call(f"/expire-subscription/{one['clientHash']}").status_code == 200
    assert push(sub, vapid).status_code == 410
    stats = call("/stats", {"per_subscription": True}).json()["data"]
    assert stats["by_status"] == {"201": 2, "502": 1, "410": 1}
    assert stats["subscriptions"] == 4

    call("/reset")
    assert call("/stats").json()["data"]["subscriptions"] == 0
    assert push(sub, vapid).status_code == 404


def test_control_api_requires_json_content_type(emu: PushServiceEmulator, vapid: Vapid) -> None:
    """A page in a browser can POST text/plain or a form to 127.0.0.1 without a preflight,
    never application/json: such requests must not reset, fault or expire anything."""
    emu.create_subscriptions(1, vapid.public_b64)
    for path, body in (("/reset", ""), ("/faults/clear", ""), ("/faults", '{"status": 500}'),
                       ("/subscribe", json.dumps({"applicationServerKey": vapid.public_b64}))):
        for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Content-Type": ctype} if ctype else {}
            r = requests.post(emu.url + path, data=body.encode(), headers=headers, timeout=5)
            assert r.status_code == 415, (path, ctype, r.text)
            assert "application/json" in r.json()["error"]
    stats = requests.get(emu.url + "/stats", timeout=5).json()["data"]
    assert stats["subscriptions"] == 1 and stats["faults"] == []


def test_control_api_endpoints_ignore_the_host_header(emu: PushServiceEmulator,
                                                      vapid: Vapid) -> None:
    r = requests.post(emu.url + "/subscribe", json={"applicationServerKey": vapid.public_b64},
                      headers={"Host": "evil.example:443"}, timeout=5)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["endpoint"].startswith(emu.url + "/push/")


@pytest.mark.parametrize("count", [100_001, 10**12, "9" * 5000, 0, -1])
def test_control_api_bounds_count(emu: PushServiceEmulator, vapid: Vapid, count: object) -> None:
    r = requests.post(emu.url + "/subscribe", timeout=5,
                      json={"applicationServerKey": vapid.public_b64, "count": count})
    assert r.status_code == 400
    assert emu.state.stats()["subscriptions"] == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["--host", "0.0.0.0"], "error: --host: refusing to bind to '0.0.0.0'"),
    (["--host", "192.168.1.10"], "error: --host: refusing to bind to '192.168.1.10'"),
    (["--port", "70000"], "error: --port: 70000 is not a port number"),
    (["--port", "-1"], "error: --port: -1 is not a port number"),
])
def test_testing_serve_refuses_non_loopback_host_and_bad_port(argv: list[str],
                                                              message: str) -> None:
    from typer.testing import CliRunner

    from pushcli.cli import app

    result = CliRunner().invoke(app, ["testing", "serve", *argv])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert "Traceback" not in result.output


def test_create_many_subscriptions_is_fast(emu: PushServiceEmulator, vapid: Vapid) -> None:
    start = time.perf_counter()
    subs = emu.create_subscriptions(2000, vapid.public_b64)
    assert time.perf_counter() - start < 1.0
    assert len({s["endpoint"] for s in subs}) == 2000


# -- HTTPS, async use, binding -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_https_self_signed_async(tmp_path: Path, vapid: Vapid) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    ctx = ssl.create_default_context(cafile=cert)
    async with PushServiceEmulator(ssl_cert=cert, ssl_key=key) as emu:
        assert emu.url.startswith("https://127.0.0.1:")
        subs = emu.create_subscriptions(20, vapid.public_b64)
        auth = vapid.header(emu.url)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:

            async def send(i: int, sub: dict[str, Any]) -> int:
                body = encrypt(sub, f"msg {i}".encode())
                headers = {"TTL": "0", "Content-Encoding": "aes128gcm", "Authorization": auth}
                async with session.post(sub["endpoint"], data=body, headers=headers) as r:
                    return r.status

            statuses = await asyncio.gather(*(send(i, s) for i, s in enumerate(subs)))
            # An http:// aud is wrong for an https endpoint.
            auth = vapid.header(emu.url.replace("https", "http"))
            assert await send(99, subs[0]) == 401
        assert statuses == [201] * 20
        assert emu.messages(subs[7]["endpoint"]) == [b"msg 7"]


def test_untrusted_cert_is_refused(tmp_path: Path, vapid: Vapid) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    with PushServiceEmulator(ssl_cert=cert, ssl_key=key) as emu:
        sub = emu.create_subscription(vapid.public_b64)
        with pytest.raises(requests.exceptions.SSLError):
            push(sub, vapid, verify=True)
        assert push(sub, vapid, verify=cert).status_code == 201


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com"])
def test_refuses_non_loopback(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        PushServiceEmulator(host=host)


def test_localhost_and_ipv6_loopback_allowed(vapid: Vapid) -> None:
    with PushServiceEmulator(host="localhost") as emu:
        assert emu.url.startswith("http://localhost:")
        sub = emu.create_subscription(vapid.public_b64)
        assert push(sub, vapid).status_code == 201


def test_stop_does_not_wait_for_slow_handlers(vapid: Vapid) -> None:
    emu = PushServiceEmulator().start()
    sub = emu.create_subscription(vapid.public_b64)
    emu.add_fault("slow", delay=30)
    with pytest.raises(requests.Timeout):
        push(sub, vapid, timeout=0.2)
    stopping = threading.Thread(target=emu.stop)
    stopping.start()
    stopping.join(3)  # a deadline well below the handler's 30 s, not a measurement
    assert not stopping.is_alive(), "stop() waited for the slow handler"


def test_wait_for_messages(emu: PushServiceEmulator, vapid: Vapid) -> None:
    sub = emu.create_subscription(vapid.public_b64)
    push(sub, vapid, b"one")
    assert emu.wait_for_messages(sub["endpoint"], 1, timeout=1) == [b"one"]
    with pytest.raises(TimeoutError, match="1 of 2"):
        emu.wait_for_messages(sub["endpoint"], 2, timeout=0.05)


@pytest.mark.asyncio
async def test_serve_standalone(vapid: Vapid) -> None:
    ready: asyncio.Queue[str] = asyncio.Queue()
    task = asyncio.create_task(serve(port=0, on_ready=ready.put_nowait))
    try:
        url = await asyncio.wait_for(ready.get(), 5)
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/status", json={}) as r:
                assert (await r.json())["ok"] is True
            body = {"applicationServerKey": vapid.public_b64}
            async with session.post(url + "/subscribe", json=body) as r:
                data = (await r.json())["data"]
            body = {"endpoint": data["endpoint"], "status": 500}
            async with session.post(url + "/faults", json=body) as r:
                assert (await r.json())["data"]["clientHash"] == data["clientHash"]
            async with session.get(url + "/stats?per_subscription=1") as r:
                assert (await r.json())["data"]["faults"][0]["status"] == 500
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
