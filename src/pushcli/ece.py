"""RFC 8291 message encryption (aes128gcm, RFC 8188) written on ``cryptography``.

Why not ``http_ece``: it builds four ``HKDF`` objects and a ``Cipher`` per
message, concatenates records in a loop and re-encodes keys it already has;
a campaign encrypts every message once, so that overhead is paid per
subscriber (``bench/crypto_bench.py`` prints both rates and the ratio). A Web
Push message is always one record (the body is at most 4,096 bytes), so this
module does exactly that: one ECDH, HKDF as four HMAC-SHA256 calls, one AES-GCM
seal, and the 86-byte header. ``tests/test_ece.py`` checks that it is byte for
byte what ``http_ece.encrypt`` produces for the same salt and keys, and that
``http_ece.decrypt`` reads it.
"""

from __future__ import annotations

import hashlib
import os
import struct

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pushcli.errors import PayloadTooLarge

#: Record size announced in the header; the whole body fits in one record.
RECORD_SIZE = 4096
#: salt (16) + record size (4) + key id length (1) + uncompressed P-256 point (65).
HEADER_LENGTH = 86
#: Largest plaintext whose body (header + plaintext + 1 delimiter + 16 tag) stays
#: within 4,096 bytes, the size every push service accepts.
MAX_PLAINTEXT = RECORD_SIZE - HEADER_LENGTH - 1 - 16

_CURVE = ec.SECP256R1()
_ECDH = ec.ECDH()
_WEBPUSH_INFO = b"WebPush: info\x00"
_KEY_INFO = b"Content-Encoding: aes128gcm\x00\x01"  # HKDF info with T(1)'s counter byte
_NONCE_INFO = b"Content-Encoding: nonce\x00\x01"
_RS_AND_IDLEN = struct.pack("!LB", RECORD_SIZE, 65)
_LAST_RECORD = b"\x02"


def parse_public_key(p256dh: bytes) -> ec.EllipticCurvePublicKey:
    """The subscriber's P-256 point as a key object (raises ValueError if not on the curve)."""
    return ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, p256dh)


_SHA256 = hashlib.sha256
_OPAD = bytes(b ^ 0x5C for b in range(256))  # RFC 2104's pads, as translate tables
_IPAD = bytes(b ^ 0x36 for b in range(256))


def _hmac(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) on two hashlib calls: 2.7 against 4.0 us for
    ``hmac.digest`` here (OpenSSL 3 looks the MAC up again on every one-shot call),
    five times a message. ``tests/test_ece.py`` checks it against ``hmac``."""
    if len(key) > 64:
        key = _SHA256(key).digest()
    key = key.ljust(64, b"\0")
    return _SHA256(key.translate(_OPAD) + _SHA256(key.translate(_IPAD) + msg).digest()).digest()


def encrypt(
    payload: bytes,
    p256dh: bytes,
    auth: bytes,
    *,
    receiver_key: ec.EllipticCurvePublicKey | None = None,
    salt: bytes | None = None,
    sender_key: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    """The aes128gcm body for one subscriber: header (86 bytes) then one sealed record.

    ``p256dh`` and ``auth`` are the subscription's raw key and secret. A fresh
    ephemeral key and salt are made per message unless given (tests pin them to
    compare with ``http_ece``). ``receiver_key`` is ``p256dh`` already parsed, for
    a caller that sends to the same subscriber more than once.
    """
    if len(payload) > MAX_PLAINTEXT:
        raise PayloadTooLarge(
            f"payload is {len(payload):,} bytes; at most {MAX_PLAINTEXT:,} fit one message")
    if receiver_key is None:
        receiver_key = parse_public_key(p256dh)
    if sender_key is None:
        sender_key = ec.generate_private_key(_CURVE)
    if salt is None:
        salt = os.urandom(16)
    sender_pub = sender_key.public_key().public_bytes(Encoding.X962,
                                                      PublicFormat.UncompressedPoint)
    shared = sender_key.exchange(_ECDH, receiver_key)
    # RFC 8291 section 3.4: IKM = HKDF(auth, ecdh, "WebPush: info" || ua_pub || as_pub, 32);
    # every output here is at most one SHA-256 block, so expand is a single HMAC (T(1)).
    ikm = _hmac(_hmac(auth, shared), _WEBPUSH_INFO + p256dh + sender_pub + b"\x01")
    prk = _hmac(salt, ikm)
    cek = _hmac(prk, _KEY_INFO)[:16]
    nonce = _hmac(prk, _NONCE_INFO)[:12]
    sealed = AESGCM(cek).encrypt(nonce, payload + _LAST_RECORD, None)
    return salt + _RS_AND_IDLEN + sender_pub + sealed
