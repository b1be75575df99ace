"""Delivery engine pieces: encryption, response classification, DNS guard, engine wiring."""

from __future__ import annotations

import asyncio
import os
import time

import http_ece
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pushcli.engine import Engine, GuardedResolver, PrivateAddress, encrypt
from pushcli.keys import VapidSigner, generate_keys, load_private_key
from pushcli.messages import DeliveryOptions, Job
from pushcli.pushservices import Outcome, classify, parse_retry_after


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
        await guarded.close()
        allowed = GuardedResolver(frozenset({"localhost"}))
        infos = await allowed.resolve("localhost", 443)
        assert any(i["host"] == "127.0.0.1" for i in infos)
        await allowed.close()
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
