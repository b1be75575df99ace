"""Engagement tokens: which campaign, variant and subscriber a notification event is about.

Every tracked payload carries one in ``notification.data.pushcli_token``; the
service worker posts it back with ``shown``/``clicked``/``closed``. It is an
HMAC-SHA256 (truncated to 128 bits) over a fixed 14-byte body, URL-safe base64:
40 characters, well under the 96 the payload budget allows (``MAX_TOKEN_LEN``),
and cheap enough to mint once per subscriber in the send loop. The secret is
per store (``Store.token_secrets``), so a token minted by one site's store is
refused by another's, and rotating it invalidates every outstanding token.

Pure functions: no store, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass

__all__ = ["MAX_TOKEN_LEN", "TOKEN_VERSION", "TokenClaims", "make_token", "read_token"]

#: The longest token any version may mint; the payload size check reserves this much.
MAX_TOKEN_LEN = 96
TOKEN_VERSION = 1
_BODY = struct.Struct(">BIBQ")  # version, campaign id, variant index, subscriber id
_MAC_LEN = 16
_TOKEN_LEN = len(base64.urlsafe_b64encode(bytes(_BODY.size + _MAC_LEN)).rstrip(b"="))
_TOKEN_RE = re.compile(rf"[A-Za-z0-9_-]{{{_TOKEN_LEN}}}")


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says. ``variant`` is the index into the campaign's
    ``variants`` list, or 0 for a campaign without variants (``Campaign.variant_index``)."""

    campaign_id: int
    variant: int
    subscriber_id: int


def _mac(secret: bytes, body: bytes) -> bytes:
    return hmac.new(secret, body, hashlib.sha256).digest()[:_MAC_LEN]


def make_token(secret: bytes, campaign_id: int, variant: int, subscriber_id: int) -> str:
    """A signed token binding one campaign, variant and subscriber (40 URL-safe characters)."""
    body = _BODY.pack(TOKEN_VERSION, campaign_id, variant, subscriber_id)
    return base64.urlsafe_b64encode(body + _mac(secret, body)).rstrip(b"=").decode("ascii")


def read_token(secrets: tuple[bytes, ...] | list[bytes], token: object) -> TokenClaims | None:
    """The claims of a token signed with one of ``secrets`` (current first, then the
    previous one kept after a rotation), or None for anything malformed or forged.

    None rather than an error: a bad token is one rejected event among many good
    ones (``events import`` names its line, ``events serve`` answers 400).
    """
    if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    body, mac = raw[:_BODY.size], raw[_BODY.size:]
    if not any(hmac.compare_digest(mac, _mac(s, body)) for s in secrets):
        return None
    version, campaign_id, variant, subscriber_id = _BODY.unpack(body)
    if version != TOKEN_VERSION:
        return None
    return TokenClaims(campaign_id, variant, subscriber_id)
