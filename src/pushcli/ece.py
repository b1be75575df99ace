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

The ephemeral key and the ECDH run straight on the system's libcrypto (OpenSSL
3, through ``ctypes``) where there is one: one reused ``EC_KEY`` regenerated
per message and one reused ``EC_POINT`` per thread, instead of four Python key
objects a message, each exported once more from OpenSSL's legacy form to its
provider form on first use. In a whole send that took a message's CPU from
566-607 us to 509-545 us (30,000 messages, HTTP/2, one process, three
alternating pairs; see README). Elsewhere (not Linux, no OpenSSL 3, a pinned key in tests) the same
bytes come from ``cryptography``. Both are tested: ``http_ece`` decrypts what
either makes, and the libcrypto secret equals the subscriber's own ECDH.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import struct
import sys
import threading

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pushcli.errors import PayloadTooLarge, PushcliError

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
    if salt is None:
        salt = os.urandom(16)
    native = libcrypto_ecdh() if receiver_key is None and sender_key is None else None
    if native is not None and _uncompressed(p256dh):
        sender_pub, shared = native.agree(p256dh)
    else:
        if receiver_key is None:
            receiver_key = parse_public_key(p256dh)
        if sender_key is None:
            sender_key = ec.generate_private_key(_CURVE)
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


# --- the ephemeral key and ECDH on the system's libcrypto -----------------------------------

_NID_P256 = 415  # NID_X9_62_prime256v1
_UNCOMPRESSED = 4  # POINT_CONVERSION_UNCOMPRESSED
_OPENSSL_3 = 0x30000000


class LibcryptoECDH:
    """A fresh P-256 key pair and its ECDH with the subscriber's point, per message, on
    OpenSSL 3's ``EC_KEY`` functions (deprecated in 3.0, still built: every P-256 step
    is OpenSSL's own constant-time code). Each thread keeps one key object, which
    ``EC_KEY_generate_key`` refills with a new random key every call, one point and
    two buffers: nothing is allocated per message."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        vp, size, text, c_int = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_int
        for name, restype, argtypes in (
            ("EC_KEY_new_by_curve_name", vp, [c_int]),
            ("EC_KEY_get0_group", vp, [vp]),
            ("EC_KEY_generate_key", c_int, [vp]),
            ("EC_KEY_get0_public_key", vp, [vp]),
            ("EC_POINT_new", vp, [vp]),
            ("EC_POINT_point2oct", size, [vp, vp, c_int, text, size, vp]),
            ("EC_POINT_oct2point", c_int, [vp, vp, text, size, vp]),
            ("ECDH_compute_key", c_int, [text, size, vp, vp, vp]),
            ("ERR_clear_error", None, []),
        ):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        self._lib = lib
        self._local = threading.local()

    def _state(self) -> tuple[int, int, int, ctypes.Array[ctypes.c_char],
                              ctypes.Array[ctypes.c_char]]:
        state = getattr(self._local, "state", None)
        if state is None:
            lib = self._lib
            key = lib.EC_KEY_new_by_curve_name(_NID_P256)
            group = lib.EC_KEY_get0_group(key) if key else None
            point = lib.EC_POINT_new(group) if group else None
            if not point:
                lib.ERR_clear_error()
                raise PushcliError("libcrypto could not allocate a P-256 key")
            state = (key, group, point, ctypes.create_string_buffer(65),
                     ctypes.create_string_buffer(32))
            self._local.state = state
        return state  # type: ignore[no-any-return]

    def agree(self, p256dh: bytes) -> tuple[bytes, bytes]:
        """(the new key's uncompressed public point, the 32-byte ECDH secret) for a
        65-byte uncompressed subscriber point; ValueError if it is not on the curve."""
        if not _uncompressed(p256dh):  # what libcrypto is told it reads
            raise ValueError("the subscriber's p256dh is not an uncompressed P-256 point")
        key, group, point, public, shared = self._state()
        lib = self._lib
        if not lib.EC_POINT_oct2point(group, point, p256dh, 65, None):  # checks the curve
            lib.ERR_clear_error()  # Python's ssl and hashlib read the same error queue
            raise ValueError("the subscriber's p256dh is not a point on P-256")
        if (lib.EC_KEY_generate_key(key) != 1
                or lib.EC_POINT_point2oct(group, lib.EC_KEY_get0_public_key(key),
                                          _UNCOMPRESSED, public, 65, None) != 65
                or lib.ECDH_compute_key(shared, 32, point, key, None) != 32):
            lib.ERR_clear_error()
            raise PushcliError("libcrypto could not make an ephemeral P-256 key")
        return public.raw, shared.raw


def _uncompressed(p256dh: bytes) -> bool:
    """65 bytes in the uncompressed form (0x04, X, Y): what RFC 8291 keys are and what
    ``agree`` hands libcrypto. A compressed point still parses through ``cryptography``."""
    return len(p256dh) == 65 and p256dh[0] == 4


_native: list[LibcryptoECDH | None] = []


def libcrypto_ecdh() -> LibcryptoECDH | None:
    """The libcrypto backend, loaded on first use; None where there is none to trust.

    Only on Linux, and only OpenSSL 3 or later: ``libcrypto.so.3`` is the library a
    distribution's Python links its ``ssl`` and ``hashlib`` against, so it is usually
    in the process already (loading a system libcrypto by name is unsafe elsewhere:
    macOS aborts). A Python without it falls back to ``cryptography``.
    """
    if not _native:
        _native.append(_load_libcrypto())
    return _native[0]


def _load_libcrypto() -> LibcryptoECDH | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL("libcrypto.so.3")
        version = lib.OpenSSL_version_num
        version.restype, version.argtypes = ctypes.c_ulong, []
        if version() < _OPENSSL_3:
            return None
        return LibcryptoECDH(lib)
    except (OSError, AttributeError):  # not installed, or a library without these functions
        return None
