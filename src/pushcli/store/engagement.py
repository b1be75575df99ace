"""What comes back from the browsers: the per-store token secret and notification events.

The secret signs the engagement tokens (``pushcli.tokens``) every tracked payload
carries; it lives in the store (``pushcli_meta``, a file created 0600 on SQLite)
so tokens verify wherever the store is, and it is never printed. Rotation keeps
the previous secret one generation, so tokens already in delivered notifications
keep verifying until the next rotation.
"""

from __future__ import annotations

import base64
import secrets

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from pushcli.store.database import Database
from pushcli.store.schema import meta_table

__all__ = ["Engagement", "ensure_token_secret"]

_SECRET = "token_secret"
_PREVIOUS = "token_secret_previous"


def _new_secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


def ensure_token_secret(conn: Connection) -> None:
    """Create the store's token secret if it has none (new store, or one from before v6).

    Runs inside the schema transaction (``Store._migrate``), so two first opens
    cannot create two secrets.
    """
    found = conn.execute(select(meta_table.c.key).where(meta_table.c.key == _SECRET)).first()
    if found is None:
        conn.execute(meta_table.insert().values(key=_SECRET, value=_new_secret()))


class Engagement(Database):
    """Token secrets (and, with ``events``, the notification events) of ``Store``."""

    def token_secrets(self) -> tuple[bytes, ...]:
        """The secrets tokens verify with: the current one first, then the previous one."""
        with self._read() as conn:
            rows = dict(conn.execute(
                select(meta_table.c.key, meta_table.c.value)
                .where(meta_table.c.key.in_((_SECRET, _PREVIOUS)))).all())
        return tuple(base64.urlsafe_b64decode(rows[k]) for k in (_SECRET, _PREVIOUS)
                     if k in rows)

    def rotate_token_secret(self) -> None:
        """Make a new current secret; the old one stays valid for verification only.

        Tokens minted before the last-but-one rotation stop verifying.
        """
        with self._write() as conn:
            current = conn.execute(select(meta_table.c.value)
                                   .where(meta_table.c.key == _SECRET)).scalar_one()
            conn.execute(meta_table.delete().where(meta_table.c.key == _PREVIOUS))
            conn.execute(meta_table.insert().values(key=_PREVIOUS, value=current))
            conn.execute(update(meta_table).where(meta_table.c.key == _SECRET)
                         .values(value=_new_secret()))
