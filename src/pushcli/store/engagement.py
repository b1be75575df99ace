"""What comes back from the browsers: the per-store token secret and notification events.

The secret signs the engagement tokens (``pushcli.tokens``) every tracked payload
carries; it lives in the store (``pushcli_meta``, a file created 0600 on SQLite)
so tokens verify wherever the store is, and it is never printed. Rotation keeps
the previous secret one generation, so tokens already in delivered notifications
keep verifying until the next rotation.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.engine import Connection

from pushcli.errors import InputError
from pushcli.messages import VariantResult
from pushcli.pushservices import Outcome
from pushcli.store.database import Database, retry_deadlocks
from pushcli.store.rows import dumps
from pushcli.store.schema import campaigns, deliveries, events, meta_table

__all__ = ["Engagement", "ensure_token_secret"]

#: Ledger outcomes -> the ``VariantResult`` column they count in. Outcomes not named
#: (capped, missed, holdout, queued or in flight) were never sent a variant's text.
_RESULT_COLUMN = {
    Outcome.SENT.value: "sent", Outcome.EXPIRED.value: "expired",
    Outcome.REJECTED.value: "rejected", Outcome.FAILED.value: "failed",
    Outcome.AUTH.value: "failed", Outcome.BLOCKED.value: "failed",
    Outcome.UNCERTAIN.value: "failed",
}
#: Event kinds -> their ``VariantResult`` column.
_EVENT_KINDS = ("shown", "clicked", "closed")

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

    def variant_results(self, campaign_id: int, *,
                        include_unassigned: bool = False) -> dict[str, VariantResult]:
        """Per variant of the campaign: subscribers by outcome and by event kind.

        Two GROUP BY queries (ledger by variant x outcome; events joined to the ledger
        by campaign and subscriber, by variant x kind), so the answer is a few rows
        whatever the audience size. Events count only subscribers recorded ``sent``
        (``VariantResult``). Variants come in name order. Ledger rows without a
        variant (a campaign without ``variants:``) are left out, or with
        ``include_unassigned`` counted under the name ``""``.
        """
        d, e = deliveries, events
        by_outcome = (
            select(d.c.variant, d.c.outcome, func.count())
            .where(d.c.campaign_id == campaign_id, d.c.outcome.in_(tuple(_RESULT_COLUMN)))
            .group_by(d.c.variant, d.c.outcome))
        by_kind = (
            select(d.c.variant, e.c.kind, func.count())
            .select_from(e.join(d, and_(d.c.campaign_id == e.c.campaign_id,
                                        d.c.subscription_id == e.c.subscription_id)))
            .where(e.c.campaign_id == campaign_id, d.c.outcome == Outcome.SENT.value,
                   e.c.kind.in_(_EVENT_KINDS))
            .group_by(d.c.variant, e.c.kind))
        counts: dict[str, dict[str, int]] = {}
        with self._read() as conn:
            rows = [(v, _RESULT_COLUMN[o], n) for v, o, n in conn.execute(by_outcome)]
            rows += list(conn.execute(by_kind))
        for variant, column, n in rows:
            if variant is None and not include_unassigned:
                continue
            row = counts.setdefault(variant or "", {})
            row[column] = row.get(column, 0) + int(n)
        return {name: VariantResult(name, **counts[name]) for name in sorted(counts)}

    @retry_deadlocks
    def set_winner(self, campaign_id: int, variant: str, decided_at: float,
                   reason: str) -> dict[str, Any]:
        """Record the A/B test's winner unless one is recorded already; returns the
        recorded one. First writer wins: two senders deciding at once (``--workers``,
        shared PostgreSQL sends) both go on with the same variant."""
        mine = dumps({"variant": variant, "decided_at": decided_at, "reason": reason})
        with self._write() as conn:
            conn.execute(update(campaigns)
                         .where(campaigns.c.id == campaign_id, campaigns.c.winner.is_(None))
                         .values(winner=mine))
            recorded = conn.execute(select(campaigns.c.winner)
                                    .where(campaigns.c.id == campaign_id)).scalar_one_or_none()
        if recorded is None:
            raise InputError(f"no campaign with id {campaign_id} in this store")
        return dict(json.loads(recorded))

    def get_winner(self, campaign_id: int) -> dict[str, Any] | None:
        """The recorded winner ``{variant, decided_at, reason}``, or None before it is decided."""
        with self._read() as conn:
            raw = conn.execute(select(campaigns.c.winner)
                               .where(campaigns.c.id == campaign_id)).scalar_one_or_none()
        return dict(json.loads(raw)) if raw else None
