"""The Subscription value and its validation, field by field.

What a browser's ``PushSubscription.toJSON()`` gives us is checked here once
(endpoint policy, keys on the P-256 curve, tags, locale, attributes), so
everything downstream can trust a Subscription; the file formats that carry
them live in ``formats``.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pushcli.encoding import b64_decode, b64url_encode
from pushcli.pushservices import EndpointRefused, check_endpoint
from pushcli.schedule import zone

TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
LOCALE_RE = re.compile(r"^[A-Za-z]{2,8}([_-][A-Za-z0-9]{1,8}){0,4}$")
ATTR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_LENGTH = 1024


@dataclass(frozen=True, slots=True)
class Subscription:
    """One browser's push subscription, validated and normalized.

    Keys are kept as unpadded base64url text so that what we store is what the
    browser gave (``PushSubscription.toJSON()``) and round-trips on export.
    """

    endpoint: str
    p256dh: str
    auth: str
    tags: tuple[str, ...] = ()
    locale: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    user_id: str | None = None
    expiration_time: int | None = None
    #: IANA time zone (``Europe/Paris``) for sends at the subscriber's local time.
    timezone: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The import format, so export -> import round-trips."""
        out: dict[str, Any] = {
            "endpoint": self.endpoint,
            "expirationTime": self.expiration_time,
            "keys": {"p256dh": self.p256dh, "auth": self.auth},
        }
        if self.tags:
            out["tags"] = list(self.tags)
        if self.locale:
            out["locale"] = self.locale
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        if self.user_id is not None:
            out["user_id"] = self.user_id
        if self.timezone is not None:
            out["timezone"] = self.timezone
        return out


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that failed validation: where it was and why."""

    location: str  # "line 12" or "[3]"
    reason: str

    def describe(self, source: str) -> str:
        return describe_rejection(source, self.location, self.reason)


def describe_rejection(source: str, location: str, reason: str) -> str:
    """The one line naming a rejected record: ``file:12: reason`` (a line),
    ``file[3]: reason`` (a JSON index) or ``file: record 2: reason`` (an ordinal)."""
    if location.startswith("line "):
        return f"{source}:{location.removeprefix('line ')}: {reason}"
    if location.startswith("["):
        return f"{source}{location}: {reason}"
    return f"{source}: {location}: {reason}"


# --- validation of single values --------------------------------------------------------

# P-256 (secp256r1) domain parameters, FIPS 186-4 D.1.2.3.
_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_CANONICAL = re.compile(r"^[A-Za-z0-9_-]+$")


def _on_p256(raw: bytes) -> bool:
    """True if a 65-byte uncompressed point satisfies y^2 = x^3 - 3x + b (mod p).

    The same test cryptography's from_encoded_point makes, at a quarter of its
    cost: import checks a million keys. The point at infinity has no
    uncompressed encoding, so coordinates in range on the curve are enough.
    """
    x = int.from_bytes(raw[1:33], "big")
    y = int.from_bytes(raw[33:], "big")
    return x < _P and y < _P and (y * y - (x * x * x - 3 * x + _B)) % _P == 0


def _is_canonical(text: str, size: int) -> bool:
    """Already unpadded base64url of ``size`` bytes: store it as given."""
    return len(text) == (size * 4 + 2) // 3 and _CANONICAL.match(text) is not None


def _decode_key(field: str, value: object, size: int) -> bytes:
    """Decode a base64url key field to exactly ``size`` bytes, or say what is wrong."""
    if not isinstance(value, str):
        raise ValueError(f"{field}: must be a base64url string")
    try:
        raw = b64_decode(value)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None
    if len(raw) != size:
        raise ValueError(f"{field}: must decode to {size} bytes, got {len(raw)}")
    return raw


def validate_p256dh(value: object) -> str:
    """The subscriber's ECDH public key: a 65-byte uncompressed point on P-256."""
    raw = _decode_key("keys.p256dh", value, 65)
    if raw[0] != 0x04:
        raise ValueError("keys.p256dh: must be an uncompressed point (first byte 0x04)")
    if not _on_p256(raw):
        raise ValueError("keys.p256dh: point is not on the P-256 curve")
    assert isinstance(value, str)
    return value if _is_canonical(value, 65) else b64url_encode(raw)


# unpadded base64url: 65 bytes end in a character whose last 2 bits are 0 (4 data bits),
# 16 bytes in one whose last 4 bits are 0 (2 data bits)
_P256DH_RE = re.compile(r"[A-Za-z0-9_-]{86}[AEIMQUYcgkosw048]")
_AUTH_RE = re.compile(r"[A-Za-z0-9_-]{21}[AQgw]")


def stored_keys_valid(p256dh: object, auth: object) -> bool:
    """Quick check of keys in the canonical form import stores (both valid, True).

    For reading the store on the send path, where validate_* would cost more
    than the rest of decoding a row. False means "not canonical or not valid":
    call validate_p256dh/validate_auth to tell which and why.
    """
    if not (isinstance(p256dh, str) and isinstance(auth, str)
            and _P256DH_RE.fullmatch(p256dh) and _AUTH_RE.fullmatch(auth)):
        return False
    raw = base64.urlsafe_b64decode(p256dh + "=")
    return raw[0] == 0x04 and _on_p256(raw)


def validate_auth(value: object) -> str:
    """The 16-byte auth secret."""
    raw = _decode_key("keys.auth", value, 16)
    assert isinstance(value, str)
    return value if _is_canonical(value, 16) else b64url_encode(raw)


def validate_tag(tag: str) -> str:
    if not isinstance(tag, str) or not TAG_RE.match(tag):
        raise ValueError(
            f"tags: invalid tag {str(tag)[:40]!r} (letters, digits, _ . : -; at most 64)"
        )
    return tag


def _tags(value: object) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        items: Iterable[object] = [t.strip() for t in value.split(";") if t.strip()]
    elif isinstance(value, list):
        items = value
    else:
        raise ValueError("tags: must be a list of strings or a ';'-separated string")
    out: list[str] = []
    for t in items:
        tag = validate_tag(t)  # type: ignore[arg-type]
        if tag not in out:
            out.append(tag)
    return tuple(sorted(out))


def _locale(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not LOCALE_RE.match(value):
        raise ValueError(f"locale: invalid locale {str(value)[:40]!r}")
    return value


def _unicode_text(field: str, text: str) -> str:
    """``text`` if it can be stored, i.e. encoded as UTF-8.

    JSON may spell a lone surrogate (``"\\udc80"``); Python decodes it into a
    str that no database driver can encode, which used to crash the import of
    its whole batch. It is this record's problem, so it is rejected here.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{field}: contains an invalid character "
                         "(a lone surrogate such as \\udc80)") from None
    return text


def _attributes(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("attributes: must be an object")
    if len(value) > MAX_ATTRIBUTES:
        raise ValueError(f"attributes: at most {MAX_ATTRIBUTES} attributes")
    out: dict[str, Any] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not ATTR_NAME_RE.match(k):
            raise ValueError(f"attributes: invalid attribute name {str(k)[:40]!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"attributes.{k}: must be a finite number")
        if v is not None and not isinstance(v, str | int | float | bool):
            raise ValueError(f"attributes.{k}: must be a string, number, boolean or null")
        if isinstance(v, str) and len(v) > MAX_ATTRIBUTE_LENGTH:
            raise ValueError(f"attributes.{k}: longer than {MAX_ATTRIBUTE_LENGTH} characters")
        if isinstance(v, str):
            _unicode_text(f"attributes.{k}", v)
        out[k] = v
    return out


def _user_id(value: object) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("user_id: must be a string or an integer")
    text = str(value)
    if len(text) > 256:
        raise ValueError("user_id: longer than 256 characters")
    return _unicode_text("user_id", text)


@lru_cache(maxsize=1024)
def _known_zone(name: str) -> bool:
    """True for an IANA zone zoneinfo can load (tzdata ships them where the system has none)."""
    return zone(name) is not None  # schedule.zone: the one place a zone name is loaded


def validate_timezone(value: object) -> str | None:
    """An IANA time zone name (``Europe/Paris``), as ``Intl`` reports it in the browser.

    Checked with zoneinfo so a send can always compute the subscriber's local
    time; cached, since an audience holds a few hundred distinct zones at most.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 64 or not _known_zone(value):
        raise ValueError(f"timezone: unknown time zone {str(value)[:64]!r} "
                         "(an IANA name such as 'Europe/Paris')")
    return value


def _expiration(value: object) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError("expirationTime: must be a number or null") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("expirationTime: must be a number or null")
    return int(value)


def make_subscription(
    record: Mapping[str, Any],
    *,
    allowed_hosts: frozenset[str] = frozenset(),
    extra_tags: Iterable[str] = (),
) -> Subscription:
    """Validate one toJSON()-shaped record (plus extras). Raises ValueError(reason)."""
    if not isinstance(record, Mapping):
        raise ValueError("record must be an object")
    try:
        endpoint = check_endpoint(record.get("endpoint"), allowed_hosts).url
    except EndpointRefused as exc:
        raise ValueError(f"endpoint: {str(exc).removeprefix('endpoint ')}") from None
    keys = record.get("keys")
    if not isinstance(keys, Mapping):
        raise ValueError("keys: missing (expected keys.p256dh and keys.auth)")
    if "p256dh" not in keys:
        raise ValueError("keys.p256dh: missing")
    if "auth" not in keys:
        raise ValueError("keys.auth: missing")
    p256dh = validate_p256dh(keys["p256dh"])
    auth = validate_auth(keys["auth"])
    tags = _tags(record.get("tags"))
    if extra_tags:
        tags = tuple(sorted(set(tags) | {validate_tag(t) for t in extra_tags}))
    user = record.get("user_id", record.get("id"))
    return Subscription(
        endpoint=endpoint,
        p256dh=p256dh,
        auth=auth,
        tags=tags,
        locale=_locale(record.get("locale")),
        attributes=_attributes(record.get("attributes")),
        user_id=_user_id(user),
        expiration_time=_expiration(record.get("expirationTime")),
        timezone=validate_timezone(record.get("timezone")),
    )
