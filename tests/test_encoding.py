"""base64 as Web Push uses it: every spelling a browser or an export gives decodes the same,
and anything else is one short ValueError."""

from __future__ import annotations

import base64
import random

import pytest

from pushcli.encoding import b64_decode, b64url_encode


@pytest.mark.parametrize("size", [1, 2, 3, 16, 32, 65, 100])
def test_b64_decode_takes_url_safe_standard_padded_and_spaced_spellings(size: int) -> None:
    raw = random.Random(size).randbytes(size)
    url = b64url_encode(raw)
    for spelling in (url, base64.b64encode(raw).decode(), url + "=" * (-len(url) % 4),
                     f" {url} "):
        assert b64_decode(spelling) == raw


@pytest.mark.parametrize("text, reason", [
    ("", "is empty"),
    ("  ", "is empty"),
    ("a", "bad length"),
    ("abcde", "bad length"),
    ("abc$", "not valid base64url"),
    ("ab==c", "not valid base64url"),
    ("=abc", "not valid base64url"),
    ("ab===", "not valid base64url"),
    ("YW\nJj", "not valid base64url"),
])
def test_b64_decode_says_why_a_text_is_not_base64(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        b64_decode(text)


def test_b64_decode_refuses_what_is_not_text() -> None:
    with pytest.raises(ValueError, match="must be a base64url string"):
        b64_decode(b"YWJj")  # type: ignore[arg-type]
