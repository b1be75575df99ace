"""RFC 8291 encryption on ``cryptography`` primitives matches ``http_ece`` byte for byte."""

from __future__ import annotations

import hmac
import os
import random

import http_ece
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pushcli import ece
from pushcli.errors import PayloadTooLarge


def _subscriber() -> tuple[ec.EllipticCurvePrivateKey, bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    point = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return key, point, os.urandom(16)


@pytest.mark.parametrize("size", [1, 15, 16, 17, 200, 3000, ece.MAX_PLAINTEXT])
def test_same_bytes_as_http_ece_for_fixed_salt_and_keys(size: int) -> None:
    _, p256dh, auth = _subscriber()
    sender = ec.generate_private_key(ec.SECP256R1())
    salt = os.urandom(16)
    payload = os.urandom(size)
    ours = ece.encrypt(payload, p256dh, auth, salt=salt, sender_key=sender)
    theirs = http_ece.encrypt(payload, salt=salt, private_key=sender, dh=p256dh,
                              auth_secret=auth, version="aes128gcm")
    assert ours == theirs
    assert len(ours) == ece.HEADER_LENGTH + size + 1 + 16


def test_http_ece_decrypts_ours_with_fresh_key_and_salt() -> None:
    receiver, p256dh, auth = _subscriber()
    payload = b'{"title": "Hello", "body": "caf\xc3\xa9"}'
    body = ece.encrypt(payload, p256dh, auth)
    assert body[16:20] == (4096).to_bytes(4, "big") and body[20] == 65
    assert http_ece.decrypt(body, private_key=receiver, auth_secret=auth,
                            version="aes128gcm") == payload
    # a fresh ephemeral key and salt each time: two bodies for one payload differ
    again = ece.encrypt(payload, p256dh, auth)
    assert again[:16] != body[:16] and again[21:86] != body[21:86]


def test_empty_payload_is_one_record_http_ece_reads() -> None:
    # http_ece.encrypt writes no record at all for b"" (a header alone); ours is valid.
    receiver, p256dh, auth = _subscriber()
    body = ece.encrypt(b"", p256dh, auth)
    assert len(body) == ece.HEADER_LENGTH + 17
    assert http_ece.decrypt(body, private_key=receiver, auth_secret=auth,
                            version="aes128gcm") == b""


def test_parsed_receiver_key_gives_the_same_body() -> None:
    _, p256dh, auth = _subscriber()
    sender = ec.generate_private_key(ec.SECP256R1())
    salt = os.urandom(16)
    parsed = ece.parse_public_key(p256dh)
    assert (ece.encrypt(b"x", p256dh, auth, receiver_key=parsed, salt=salt, sender_key=sender)
            == ece.encrypt(b"x", p256dh, auth, salt=salt, sender_key=sender))


def test_wrong_auth_secret_does_not_decrypt() -> None:
    receiver, p256dh, auth = _subscriber()
    body = ece.encrypt(b"secret", p256dh, auth)
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidTag
        http_ece.decrypt(body, private_key=receiver, auth_secret=os.urandom(16),
                         version="aes128gcm")


def test_payload_over_one_record_is_refused() -> None:
    _, p256dh, auth = _subscriber()
    with pytest.raises(PayloadTooLarge, match="3,994 bytes; at most 3,993"):
        ece.encrypt(b"a" * (ece.MAX_PLAINTEXT + 1), p256dh, auth)


def test_point_not_on_the_curve_is_refused() -> None:
    _, p256dh, auth = _subscriber()
    bad = p256dh[:-1] + bytes([p256dh[-1] ^ 1])
    with pytest.raises(ValueError):
        ece.encrypt(b"x", bad, auth)


@pytest.mark.parametrize("key_size", [0, 16, 32, 64, 65, 200])
def test_hmac_is_rfc_2104_hmac_sha256_for_any_key_length(key_size: int) -> None:
    """The hand-built HMAC used for HKDF matches the standard library's, short keys,
    a whole block and keys longer than a block (hashed first) alike."""
    rng = random.Random(key_size)
    for msg_size in (0, 1, 55, 64, 200):
        key, msg = rng.randbytes(key_size), rng.randbytes(msg_size)
        assert ece._hmac(key, msg) == hmac.digest(key, msg, "sha256")
