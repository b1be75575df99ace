"""Engagement tokens: signed, short, bound to campaign, variant and subscriber."""

from __future__ import annotations

import random

from pushcli.tokens import MAX_TOKEN_LEN, TokenClaims, TokenSigner, make_token, read_token

SECRET = bytes(range(32))
OTHER = bytes(range(1, 33))


def test_a_token_round_trips_its_claims_and_is_url_safe_and_short() -> None:
    rng = random.Random(7)
    for _ in range(200):
        claims = TokenClaims(rng.randrange(2**32), rng.randrange(256), rng.randrange(2**63))
        token = make_token(SECRET, claims.campaign_id, claims.variant, claims.subscriber_id)
        assert len(token) <= MAX_TOKEN_LEN and len(token) == 40
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                 "0123456789-_")
        assert read_token((SECRET,), token) == claims


def test_a_forged_or_altered_token_is_refused() -> None:
    token = make_token(SECRET, 5, 1, 99)
    assert read_token((OTHER,), token) is None  # another store's secret
    for i in range(len(token)):  # any one character changed
        swapped = "A" if token[i] != "A" else "B"
        assert read_token((SECRET,), token[:i] + swapped + token[i + 1:]) is None
    for bad in ("", token[:-1], token + "A", token.replace(token[3], "+"), None, 17,
                "=" * 40, "é" * 40):
        assert read_token((SECRET,), bad) is None


def test_the_previous_secret_still_verifies() -> None:
    token = make_token(OTHER, 1, 0, 2)
    assert read_token((SECRET, OTHER), token) == TokenClaims(1, 0, 2)


def test_the_pre_keyed_signer_mints_the_same_tokens_as_make_token() -> None:
    """The send loop's signer computes HMAC by hand from keyed SHA-256 states; it must
    agree with the standard library's HMAC (make_token) for any secret length, including
    the empty key, one block exactly and keys longer than a block (hashed first)."""
    rng = random.Random(12)
    for size in (0, 1, 32, 63, 64, 65, 200):
        secret = rng.randbytes(size)
        signer = TokenSigner(secret)
        for _ in range(50):
            c, v, s = rng.randrange(2**32), rng.randrange(256), rng.randrange(2**63)
            token = signer.token(c, v, s)
            assert token == make_token(secret, c, v, s)
            assert read_token((secret,), token) == TokenClaims(c, v, s)
    assert TokenSigner(SECRET).token(5, 1, 99) != TokenSigner(OTHER).token(5, 1, 99)
    assert "0" not in repr(TokenSigner(b"0" * 32))  # the secret never shows
