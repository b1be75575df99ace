"""base64 as Web Push uses it: url-safe, unpadded on output, lenient on input."""

from __future__ import annotations

import base64
import binascii
import re

_B64_CHARS = re.compile(r"^[A-Za-z0-9+/_-]*={0,2}$")


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url, the form browsers and VAPID use."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64_decode(text: str) -> bytes:
    """Decode base64url or standard base64, padding optional.

    Browsers emit unpadded base64url, but hand-written exports and other
    libraries often pad or use the standard alphabet; both decode the same.
    Raises ValueError with a short reason on anything else.
    """
    if not isinstance(text, str):
        raise ValueError("must be a base64url string")
    plain = _plain(text) if text else None
    if plain is not None:
        return plain
    s = text.strip()
    if not s:
        raise ValueError("is empty")
    if not _B64_CHARS.match(s):
        raise ValueError("is not valid base64url")
    s = s.rstrip("=").replace("+", "-").replace("/", "_")
    if len(s) % 4 == 1:
        raise ValueError("is not valid base64url (bad length)")
    try:
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - regex screens most
        raise ValueError(f"is not valid base64url ({exc})") from None


def _plain(text: str) -> bytes | None:
    """``text`` decoded if it is plain base64url or base64 (what import stores; padding
    optional), else None. One C call: the send path decodes two keys a message, and
    the careful path costs three times as much."""
    try:
        return binascii.a2b_base64(text.replace("-", "+").replace("_", "/")
                                   + "=" * (-len(text) % 4), strict_mode=True)
    except (binascii.Error, ValueError):
        return None  # whitespace, excess padding, a bad character or length: b64_decode says
