"""VAPID keys: file modes, refusal to overwrite, applicationServerKey, JWT reuse."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from py_vapid import Vapid02

from pushcli.encoding import b64_decode, b64url_encode
from pushcli.errors import InputError, KeyFileError
from pushcli.keys import (
    VapidSigner,
    generate_keys,
    load_private_key,
    show_key,
    validate_subject,
)


def test_generate_writes_private_key_0600_and_public_key(tmp_path: Path) -> None:
    info = generate_keys(tmp_path, subject="mailto:ops@example.com")
    assert stat.S_IMODE(os.stat(info.private_key).st_mode) == 0o600
    assert info.public_key is not None and info.public_key.read_text().startswith(
        "-----BEGIN PUBLIC KEY-----")
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"


def test_private_key_is_0600_even_with_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        info = generate_keys(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(info.private_key).st_mode) == 0o600


def test_application_server_key_round_trips_through_py_vapid(tmp_path: Path) -> None:
    info = generate_keys(tmp_path)
    vapid = Vapid02.from_file(str(info.private_key))
    raw = vapid.public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    assert b64url_encode(raw) == info.application_server_key
    assert len(b64_decode(info.application_server_key)) == 65
    assert show_key(info.private_key).application_server_key == info.application_server_key


def test_generate_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    first = generate_keys(tmp_path)
    before = first.private_key.read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite.*orphan"):
        generate_keys(tmp_path)
    assert first.private_key.read_bytes() == before
    second = generate_keys(tmp_path, force=True)
    assert second.private_key.read_bytes() != before
    assert stat.S_IMODE(os.stat(second.private_key).st_mode) == 0o600


@pytest.mark.parametrize("subject", [
    "mailto:ops@example.com", "https://shop.example.com/contact",
])
def test_valid_subjects(subject: str) -> None:
    assert validate_subject(subject) == subject


@pytest.mark.parametrize("subject,message", [
    ("ops@example.com", "must start with mailto: or https:"),
    ("mailto:ops@localhost", "localhost"),
    ("https://localhost/contact", "localhost"),
    ("mailto: ops@example.com", "spaces"),
    ("mailto:<ops@example.com>", "angle brackets"),
    ("http://example.com", "must start with mailto: or https:"),
])
def test_subjects_apple_would_refuse(subject: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        validate_subject(subject)


def test_bad_subject_writes_no_key(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        generate_keys(tmp_path, subject="mailto:me@localhost")
    assert not (tmp_path / "vapid_private.pem").exists()


def test_load_refuses_missing_world_readable_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no such file"):
        load_private_key(tmp_path / "nope.pem")
    assert not (tmp_path / "nope.pem").exists(), "py-vapid must not create a key silently"
    info = generate_keys(tmp_path)
    os.chmod(info.private_key, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_private_key(info.private_key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    garbage.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a PEM"):
        load_private_key(garbage)


def _verify_jwt(header: str, expected_aud: str) -> dict:
    assert header.startswith("vapid t=")
    t_part, k_part = header[len("vapid "):].split(",")
    token = t_part.strip()[2:]
    key = k_part.strip()[2:]
    head, claims, sig = token.split(".")
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64_decode(key))
    raw = b64_decode(sig)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
    body = json.loads(b64_decode(claims))
    assert body["aud"] == expected_aud
    return body


def test_signer_signs_once_per_origin_and_renews_before_expiry(tmp_path: Path) -> None:
    info = generate_keys(tmp_path)
    now = [1_000_000.0]
    signer = VapidSigner(load_private_key(info.private_key), "mailto:ops@example.com",
                         clock=lambda: now[0])
    a1 = signer.header("https://fcm.googleapis.com")
    claims = _verify_jwt(a1, "https://fcm.googleapis.com")
    assert claims["sub"] == "mailto:ops@example.com"
    assert 0 < claims["exp"] - now[0] <= 24 * 3600
    for _ in range(1000):
        assert signer.header("https://fcm.googleapis.com") == a1
    signer.header("https://updates.push.services.mozilla.com")
    assert signer.signatures == 2
    now[0] += 11.5 * 3600  # within the renewal margin of the 12 h token
    a2 = signer.header("https://fcm.googleapis.com")
    assert a2 != a1 and signer.signatures == 3
    assert _verify_jwt(a2, "https://fcm.googleapis.com")["exp"] > claims["exp"]


# --- one subject rule; the key a send would use ---------------------------------------

#: Subjects Apple answers 403 BadJwtToken for (every message of the campaign).
REFUSED_SUBJECTS = [
    "mailto:ops@localhost", "mailto:ops@shop.localhost", "https://localhost/contact",
    "mailto:ops@127.0.0.1", "https://10.0.0.1/contact", "mailto:ops@intranet",
    "mailto:ops@printer.local", "mailto:a@example.com,b@example.com", "mailto:@example.com",
    "mailto:ops@example.com.", "mailto:ops <ops@example.com>",
]


@pytest.mark.parametrize("subject", REFUSED_SUBJECTS)
def test_keys_and_campaign_loader_apply_one_subject_rule(subject: str, tmp_path: Path) -> None:
    from pushcli.campaign import parse_campaign

    with pytest.raises(InputError):
        validate_subject(subject)
    with pytest.raises(InputError) as info:
        parse_campaign("name: c\nnotification:\n  title: T\n  body: B\n"
                       "  url: https://shop.example.com/\n"
                       f"vapid:\n  subject: \"{subject}\"\n", source="c.yml")
    assert str(info.value).startswith("c.yml:7: vapid.subject: "), info.value
    with pytest.raises(InputError):
        generate_keys(tmp_path, subject=subject)
    assert not (tmp_path / "vapid_private.pem").exists()


def test_public_key_given_as_private_key_says_it_is_the_public_key(tmp_path: Path) -> None:
    info = generate_keys(tmp_path)
    assert info.public_key is not None and stat.S_IMODE(os.stat(info.public_key).st_mode) == 0o644
    with pytest.raises(KeyFileError) as exc:
        load_private_key(info.public_key)
    assert "is the public key" in str(exc.value) and "vapid_private.pem" in str(exc.value)
    assert "chmod" not in str(exc.value)


def test_resolve_vapid_names_the_missing_subject_and_checks_the_override(
        tmp_path: Path) -> None:
    from pushcli.campaign import load_campaign
    from pushcli.keys import resolve_vapid

    generate_keys(tmp_path)
    path = tmp_path / "c.yml"
    path.write_text("name: c\nnotification:\n  title: T\n  body: B\n"
                    "  url: https://shop.example.com/\n")
    campaign = load_campaign(path)
    with pytest.raises(InputError, match=r"c\.yml: vapid\.subject: no VAPID subject"):
        resolve_vapid(campaign, tmp_path / "vapid_private.pem", None)
    with pytest.raises(InputError, match=r"--subject .*localhost"):
        resolve_vapid(campaign, tmp_path / "vapid_private.pem", "mailto:ops@localhost")
    signer = resolve_vapid(campaign, tmp_path / "vapid_private.pem", "mailto:ops@example.com")
    assert signer.subject == "mailto:ops@example.com"
    with pytest.raises(KeyFileError, match="no such file"):
        resolve_vapid(campaign, tmp_path / "missing.pem", "mailto:ops@example.com")
