"""VAPID (RFC 8292) verification as a push service performs it.

The emulator exists to prove that our sender signs correctly, so this checks
everything a real service checks: ES256 signature against the ``k`` key, the
key being the one the subscription was created with, ``aud`` equal to the
endpoint's origin, ``exp`` in the future but within 24 hours, and a
``mailto:``/``https:`` ``sub``.  Signature checks are the expensive part, so
verified tokens are cached; the cheap time and audience checks still run on
every request because a cached token can expire while it is being reused.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from pushcli.encoding import b64_decode

#: RFC 8292 caps ``exp`` at 24 hours ahead; allow a little slack on top, since
#: senders compute ``now + 24h`` a moment before we check it.
MAX_EXP_AHEAD = 24 * 60 * 60
CLOCK_SKEW = 60
_CACHE_LIMIT = 10_000
_DEFAULT_PORTS = {"http": 80, "https": 443}


class VapidError(Exception):
    """A request the push service refuses on VAPID grounds.

    ``status`` is 401 for a malformed, unsigned, expired or misaddressed token
    (autopush style) and 403 for a valid token made with a key other than the
    subscription's applicationServerKey (FCM style).
    """

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """Claims of a JWT whose signature has been checked against ``key``."""

    aud: str
    exp: int
    sub: str


def normalize_origin(scheme: str, host: str, port: int | None) -> str:
    """Canonical ``scheme://host[:port]``: lower case, default port dropped.

    ``https://h:443`` and ``https://h`` name the same origin; comparing the
    canonical forms avoids rejecting a correct sender over notation.
    """
    scheme = scheme.lower()
    host = host.lower()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def origin_of(url: str) -> str | None:
    """Canonical origin of an absolute URL, or None when it has a path/query or no host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    return normalize_origin(parts.scheme, parts.hostname, port)


def parse_authorization(header: str) -> tuple[str, str]:
    """Split ``vapid t=<jwt>, k=<key>`` into ``(token, key)``.

    Tolerates any spacing around the comma and either parameter order, since
    senders differ on both.
    """
    scheme, _, params = header.strip().partition(" ")
    if scheme.lower() != "vapid":
        raise VapidError(401, "UnsupportedAuthScheme", "Authorization scheme must be 'vapid'")
    values: dict[str, str] = {}
    for item in params.split(","):
        name, sep, value = item.strip().partition("=")
        if sep:
            values[name.strip().lower()] = value.strip()
    token, key = values.get("t"), values.get("k")
    if not token or not key:
        raise VapidError(401, "BadAuthorizationHeader", "Authorization needs both t= and k=")
    return token, key


def load_public_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    """P-256 public key from its 65-byte uncompressed point; ValueError otherwise."""
    if len(raw) != 65 or raw[0] != 4:
        raise ValueError("must be a 65-byte uncompressed P-256 point")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)


def sub_problem(sub: str) -> str | None:
    """Why a ``sub`` claim would be refused, or None.

    Beyond RFC 8292's mailto:/https: rule this applies Apple's observed
    rejections (whitespace or angle brackets in a mailto:, a localhost
    contact), because a sender that passes here should pass everywhere.
    """
    if sub.startswith("mailto:"):
        addr = sub[len("mailto:") :]
        if not addr or any(c.isspace() or c in "<>" for c in addr) or "@" not in addr:
            return "mailto: must be a bare address (no spaces or angle brackets)"
        host = addr.rpartition("@")[2].lower()
    elif sub.startswith("https:"):
        try:
            host = (urlsplit(sub).hostname or "").lower()
        except ValueError:
            return "is not a valid https: URL"
        if not host:
            return "https: URL has no host"
    else:
        return "must be a mailto: or https: URI"
    if host == "localhost" or host.endswith(".localhost"):
        return "must not point at localhost (Apple rejects it)"
    return None


class VapidVerifier:
    """Checks VAPID headers, caching signature checks per ``(token, key)``.

    A campaign sender reuses one JWT per origin for hours; re-verifying the
    ECDSA signature for each of thousands of requests would make the emulator,
    not the sender, the bottleneck of a benchmark.
    """

    def __init__(self) -> None:
        self._keys: dict[str, tuple[bytes, ec.EllipticCurvePublicKey]] = {}
        self._tokens: dict[tuple[str, str], VerifiedToken] = {}

    def _key(self, k: str) -> tuple[bytes, ec.EllipticCurvePublicKey]:
        cached = self._keys.get(k)
        if cached is None:
            try:
                raw = b64_decode(k)
                cached = (raw, load_public_key(raw))
            except ValueError as exc:
                raise VapidError(401, "BadVapidPublicKey", f"k is not a P-256 key: {exc}") from None
            if len(self._keys) >= _CACHE_LIMIT:
                self._keys.clear()
            self._keys[k] = cached
        return cached

    def _verify_signature(self, token: str, pub: ec.EllipticCurvePublicKey) -> VerifiedToken:
        bad = "BadJwtToken"
        parts = token.split(".")
        if len(parts) != 3:
            raise VapidError(401, bad, "JWT must have three parts")
        try:
            header = json.loads(b64_decode(parts[0]))
            claims = json.loads(b64_decode(parts[1]))
            sig = b64_decode(parts[2])
        except (ValueError, UnicodeDecodeError) as exc:
            raise VapidError(401, bad, f"JWT is not decodable: {exc}") from None
        if not isinstance(header, dict) or header.get("alg") != "ES256":
            raise VapidError(401, bad, "JWT alg must be ES256")
        if len(sig) != 64:
            raise VapidError(401, bad, "ES256 signature must be 64 bytes (raw r||s)")
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        try:
            pub.verify(der, f"{parts[0]}.{parts[1]}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise VapidError(401, bad, "JWT signature does not verify with k") from None
        if not isinstance(claims, dict):
            raise VapidError(401, bad, "JWT claims must be an object")
        aud, exp, sub = claims.get("aud"), claims.get("exp"), claims.get("sub")
        if not isinstance(aud, str):
            raise VapidError(401, bad, "JWT aud missing")
        if not isinstance(exp, int) or isinstance(exp, bool):
            raise VapidError(401, bad, "JWT exp missing or not an integer")
        if not isinstance(sub, str):
            raise VapidError(401, bad, "JWT sub missing")
        return VerifiedToken(aud=aud, exp=exp, sub=sub)

    def verify(
        self,
        header: str | None,
        *,
        expected_key: bytes,
        origin: str,
        now: float | None = None,
    ) -> VerifiedToken:
        """Verify an ``Authorization`` header for a push to ``origin``.

        ``expected_key`` is the subscription's applicationServerKey (raw point
        bytes); ``origin`` the canonical origin the client addressed.
        Raises VapidError with the status a real service would answer.
        """
        if not header:
            raise VapidError(401, "MissingAuthorization", "Authorization header required")
        token, k = parse_authorization(header)
        raw, pub = self._key(k)
        cache_key = (token, k)
        claims = self._tokens.get(cache_key)
        if claims is None:
            claims = self._verify_signature(token, pub)
            if len(self._tokens) >= _CACHE_LIMIT:
                self._tokens.clear()
            self._tokens[cache_key] = claims
        if raw != expected_key:
            raise VapidError(
                403, "VapidPkHashMismatch", "k is not the applicationServerKey of this subscription"
            )
        now = time.time() if now is None else now
        if claims.exp <= now:  # same clock as the sender: no skew here
            raise VapidError(401, "BadJwtToken", "JWT exp is in the past")
        if claims.exp > now + MAX_EXP_AHEAD + CLOCK_SKEW:
            raise VapidError(401, "BadJwtToken", "JWT exp is more than 24 hours ahead")
        if origin_of(claims.aud) != origin:
            raise VapidError(
                401, "BadJwtToken", f"JWT aud {claims.aud!r} is not the endpoint origin {origin!r}"
            )
        problem = sub_problem(claims.sub)
        if problem:
            raise VapidError(401, "BadJwtToken", f"JWT sub {problem}")
        return claims
