"""Shared fixtures: thin wrappers over tests/support.py (the one harness)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pushcli.store import Store
from tests.support import postgres_server


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
    with postgres_server() as url:
        yield url
