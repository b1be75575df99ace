"""Delivery engine pieces: encryption, response classification, DNS guard, engine wiring."""

from __future__ import annotations

import asyncio
import os
import time

import http_ece
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pushcli.engine import Engine, encrypt
from pushcli.keys import VapidSigner, generate_keys, load_private_key
from pushcli.messages import DeliveryOptions, Job
from pushcli.pushservices import Fault, Outcome, classify, fcm_wp_endpoint, parse_retry_after
from pushcli.resolver import GuardedResolver, PrivateAddress


def test_encrypt_is_rfc8291_aes128gcm_with_fresh_keys() -> None:
    ua = ec.generate_private_key(ec.SECP256R1())
    point = ua.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    auth = os.urandom(16)
    payload = b'{"web_push":8030}' * 10
    a, b = encrypt(payload, point, auth), encrypt(payload, point, auth)
    assert a != b
    assert a[:16] != b[:16], "salt must be fresh"
    assert a[21:86] != b[21:86], "sender key must be fresh"
    assert int.from_bytes(a[16:20], "big") == 4096 and a[20] == 65
    for body in (a, b):
        assert http_ece.decrypt(body, private_key=ua, auth_secret=auth,
                                version="aes128gcm") == payload
    assert len(encrypt(b"x" * 3993, point, auth)) == 4096


@pytest.mark.parametrize("status,headers,outcome", [
    (201, {}, Outcome.SENT), (202, {}, Outcome.SENT),
    (404, {}, Outcome.EXPIRED), (410, {}, Outcome.EXPIRED),
    (400, {}, Outcome.REJECTED), (413, {}, Outcome.REJECTED),
    (401, {}, Outcome.AUTH), (403, {}, Outcome.AUTH),
    (429, {"Retry-After": "3"}, None), (500, {}, None), (502, {}, None), (503, {}, None),
    (406, {"X-WNS-STATUS": "appthrottled", "Retry-After": "60"}, None),
    (301, {"Location": "https://evil.example"}, Outcome.REJECTED),
])
def test_classify(status: int, headers: dict, outcome: Outcome | None) -> None:
    verdict = classify(status, headers, b'{"reason":"BadJwtToken"}')
    assert verdict.outcome == outcome
    if status == 429:
        assert verdict.retry_after == 3.0
    if status in (400, 403):
        assert "BadJwtToken" in verdict.reason


def test_wns_reason_comes_from_header() -> None:
    v = classify(400, {"X-WNS-ERROR-DESCRIPTION": "Invalid channel"}, b"")
    assert v.outcome is Outcome.REJECTED and v.reason == "HTTP 400: Invalid channel"


@pytest.mark.parametrize("status,headers,body,fault", [
    # Apple's JSON reason
    (400, {}, b'{"reason":"BadDeviceToken"}', Fault.SUBSCRIBER),
    (410, {}, b'{"reason":"ExpiredSubscription"}', Fault.SUBSCRIBER),
    (400, {}, b'{"reason":"BadWebPushTopic"}', Fault.SENDER),
    (400, {}, b'{"reason":"BadTtl"}', Fault.SENDER),
    (400, {}, b'{"reason":"BadUrgency"}', Fault.SENDER),
    (413, {}, b'{"reason":"PayloadTooLarge"}', Fault.SENDER),
    (403, {}, b'{"reason":"BadJwtToken"}', Fault.SENDER),
    (403, {}, b'{"reason":"BadVapidPublicKey"}', Fault.SENDER),
    # Mozilla autopush errno
    (404, {}, b'{"code":404,"errno":102,"error":"Not Found"}', Fault.SUBSCRIBER),
    (410, {}, b'{"code":410,"errno":106}', Fault.SUBSCRIBER),
    (413, {}, b'{"code":413,"errno":104}', Fault.SENDER),
    (400, {}, b'{"code":400,"errno":110}', Fault.SENDER),
    (400, {}, b'{"code":400,"errno":111}', Fault.SENDER),
    (400, {}, b'{"code":400,"errno":113}', Fault.SENDER),
    (401, {}, b'{"code":401,"errno":109}', Fault.SENDER),
    # WNS: the reason only in a header
    (400, {"X-WNS-ERROR-DESCRIPTION": "The channel URI is not valid"}, b"", Fault.SUBSCRIBER),
    (400, {"X-WNS-ERROR-DESCRIPTION": "Invalid header X-WNS-Type"}, b"", Fault.SENDER),
    # nothing named: the status decides, and a bare 400/413 is nobody's for sure
    (400, {}, b"", Fault.UNKNOWN), (413, {}, b"too big", Fault.UNKNOWN),
    (400, {}, b"{not json", Fault.UNKNOWN),
    (503, {}, b"", Fault.SERVICE), (401, {}, b"", Fault.SENDER), (404, {}, b"", Fault.SUBSCRIBER),
])
def test_classify_says_whose_fault_from_each_services_reason(
        status: int, headers: dict, body: bytes, fault: Fault) -> None:
    assert classify(status, headers, body).fault is fault


def test_fcm_wrong_path_404_is_not_an_expiry() -> None:
    body = (b"A valid push subscription endpoint should be specified in the URL as such: "
            b"https://fcm.googleapis.com/wp/abc")
    v = classify(404, {}, body)
    assert v.wrong_path and v.outcome is Outcome.REJECTED and v.fault is Fault.SENDER
    assert not classify(404, {}, b"").wrong_path  # a plain 404 stays an expiry
    assert fcm_wp_endpoint("https://fcm.googleapis.com/fcm/send/abc:APA91b") == \
        "https://fcm.googleapis.com/wp/abc:APA91b"
    assert fcm_wp_endpoint("https://fcm.googleapis.com/wp/abc") is None


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("120") == 120.0
    now = time.time()
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 30))
    assert 28 <= parse_retry_after(date, now=now) <= 31
    assert parse_retry_after("garbage") is None


def test_resolver_refuses_private_addresses_unless_host_allowed() -> None:
    async def go() -> None:
        guarded = GuardedResolver(frozenset())
        with pytest.raises(PrivateAddress, match="127.0.0.1"):
            await guarded.resolve("localhost", 443)
        allowed = GuardedResolver(frozenset({"localhost"}))
        assert "127.0.0.1" in await allowed.resolve("localhost", 443)
    asyncio.run(go())


def test_engine_blocks_a_name_resolving_to_a_private_address(tmp_path) -> None:
    """The name passed the policy check but resolves to loopback: never contacted."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        listener.setblocking(False)
        info = generate_keys(tmp_path)
        signer = VapidSigner(load_private_key(info.private_key), "mailto:ops@example.com")
        recorded = []
        engine = Engine(signer, DeliveryOptions(timeout=2), recorded.extend)
        ua = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint)
        job = Job(1, f"http://localhost:{port}/push/x", f"http://localhost:{port}", "test", ua,
                  os.urandom(16), b"{}")
        asyncio.run(engine.run(iter([[job]])))
        assert [r.outcome for r in recorded] == [Outcome.BLOCKED]
        assert "non-public address" in recorded[0].reason
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected


def test_a_sender_imports_aiohttp_only_for_plain_http_origins() -> None:
    """Real push services are all https (libcurl): aiohttp is ~25 MB of each sender
    process, loaded only when the emulator or another plain-http origin is reached."""
    import subprocess
    import sys

    code = ("import sys, pushcli.engine, pushcli.delivery, pushcli.transport; "
            "print('aiohttp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
