"""RFC 8291 encryption on ``cryptography`` primitives matches ``http_ece`` byte for byte."""

from __future__ import annotations

import ctypes
import hmac
import os
import random
import sys
from concurrent.futures import ThreadPoolExecutor

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


# --- the ephemeral key and ECDH on the system's libcrypto ------------------------------------

@pytest.fixture(params=["libcrypto", "cryptography"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on each ECDH backend a send may use."""
    if request.param == "cryptography":
        monkeypatch.setattr(ece, "_native", [None])
    return str(request.param)


def test_libcrypto_backend_is_what_a_send_uses_on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Linux with OpenSSL 3 (the machines this suite runs on) ``encrypt`` takes the
    libcrypto path; elsewhere there is none and it never loads a libcrypto by name."""
    native = ece.libcrypto_ecdh()
    assert (native is not None) == sys.platform.startswith("linux")
    if native is None:
        return
    calls: list[bytes] = []
    agree = native.agree
    monkeypatch.setattr(native, "agree", lambda p256dh: calls.append(p256dh) or agree(p256dh))
    receiver, p256dh, auth = _subscriber()
    body = ece.encrypt(b"hello", p256dh, auth)
    assert calls == [p256dh]
    assert http_ece.decrypt(body, private_key=receiver, auth_secret=auth,
                            version="aes128gcm") == b"hello"


def test_libcrypto_reads_only_a_65_byte_uncompressed_point() -> None:
    native = ece.libcrypto_ecdh()
    assert native is not None
    _, p256dh, _ = _subscriber()
    for short in (p256dh[:33], p256dh[:64], b"\x02" + p256dh[1:], b""):
        with pytest.raises(ValueError, match="not an uncompressed P-256 point"):
            native.agree(short)


def test_libcrypto_secret_is_the_subscribers_own_ecdh() -> None:
    receiver, p256dh, _ = _subscriber()
    native = ece.libcrypto_ecdh()
    assert native is not None
    sender_pub, shared = native.agree(p256dh)
    assert len(sender_pub) == 65 and sender_pub[0] == 4
    theirs = receiver.exchange(ec.ECDH(), ece.parse_public_key(sender_pub))
    assert shared == theirs
    again_pub, again = native.agree(p256dh)
    assert again_pub != sender_pub and again != shared  # a new key pair every message


def test_http_ece_decrypts_what_either_backend_makes(backend: str) -> None:
    for size in (0, 1, 300, ece.MAX_PLAINTEXT):
        receiver, p256dh, auth = _subscriber()
        payload = os.urandom(size)
        body = ece.encrypt(payload, p256dh, auth)
        assert http_ece.decrypt(body, private_key=receiver, auth_secret=auth,
                                version="aes128gcm") == payload, backend


def test_either_backend_refuses_a_point_off_the_curve(backend: str) -> None:
    _, p256dh, auth = _subscriber()
    for bad in (p256dh[:-1] + bytes([p256dh[-1] ^ 1]), b"\x04" + bytes(64)):
        with pytest.raises(ValueError):
            ece.encrypt(b"x", bad, auth)
    # the refusal leaves nothing on libcrypto's error queue, which Python's ssl and
    # hashlib read too (a stale entry there turns a later handshake into a bogus error)
    queue = ctypes.CDLL("libcrypto.so.3").ERR_peek_error
    queue.restype, queue.argtypes = ctypes.c_ulong, []
    assert queue() == 0


def test_libcrypto_backend_keeps_one_key_per_thread() -> None:
    """Threads encrypting at once each use their own key object: every body decrypts."""
    subs = [_subscriber() for _ in range(40)]
    with ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(lambda s: ece.encrypt(b"hello", s[1], s[2]), subs * 5))
    for (receiver, _, auth), body in zip(subs * 5, bodies, strict=True):
        assert http_ece.decrypt(body, private_key=receiver, auth_secret=auth,
                                version="aes128gcm") == b"hello"
