"""Shared fixtures: real keys, real subscriptions, a real store file per test."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pushcli.encoding import b64url_encode
from pushcli.store import Store


def real_subscription(endpoint: str | None = None, **extra: object) -> dict:
    """A toJSON()-shaped subscription whose keys come from a real P-256 key pair."""
    key = ec.generate_private_key(ec.SECP256R1())
    point = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    sub = {
        "endpoint": endpoint or f"https://fcm.googleapis.com/fcm/send/{secrets.token_urlsafe(16)}",
        "expirationTime": None,
        "keys": {"p256dh": b64url_encode(point), "auth": b64url_encode(os.urandom(16))},
    }
    sub.update(extra)
    return sub


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "test.db"


@pytest.fixture
def store(db_path: Path):
    s = Store.open(db_path)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's own store, key or allow-list."""
    for name in ("PUSHCLI_DB", "PUSHCLI_ALLOW_HOSTS", "PUSHCLI_VAPID_PRIVATE_KEY",
                 "PUSHCLI_VAPID_SUBJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def pg_admin():
    """A real PostgreSQL server for the whole session (see tests/pg.py)."""
    from pg import postgres_server

    with postgres_server() as url:
        yield url
