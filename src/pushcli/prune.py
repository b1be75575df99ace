"""Prune: delete the subscribers the push services said are gone.

One policy for ``pushcli prune`` and the demo: take the ``prune`` lock (waiting
for running sends, which hold campaign locks), select the candidates, delete
them with the store's re-check, and return what happened. Which subscribers
qualify (expired; with ``failed_campaigns``, those whose last N campaigns each
ended with an answer about the subscriber) is the store's query; this module
decides when it may run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pushcli.errors import InputError
from pushcli.store import PRUNE_LOCK, Store, is_campaign_lock

#: Seconds ``prune`` waits for running sends before giving up (exit 75).
DEFAULT_WAIT = 30.0


@dataclass(frozen=True)
class PruneResult:
    """What a prune selected and deleted (a dry run deletes nothing)."""

    dry_run: bool
    ids: list[int]
    deleted: int

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "count": len(self.ids), "deleted": self.deleted,
                "ids": self.ids if self.dry_run else None}


def check_failed_campaigns(failed_campaigns: int | None) -> None:
    """Refuse ``--failed-campaigns`` below 1 (checked before the store is opened)."""
    if failed_campaigns is not None and failed_campaigns < 1:
        raise InputError("--failed-campaigns must be at least 1")


def prune(store: Store, *, failed_campaigns: int | None = None, dry_run: bool = False,
          wait: float = DEFAULT_WAIT) -> PruneResult:
    """Delete prunable subscribers, or with ``dry_run`` only list them.

    The dry run reads only and takes no lock, so it never waits for (or
    blocks) a send. A real prune holds the ``prune`` lock and waits up to
    ``wait`` seconds for every campaign lock, then raises ``Busy`` (exit 75):
    deleting a subscriber mid-send would lose its outcome.
    """
    check_failed_campaigns(failed_campaigns)
    if dry_run:
        return PruneResult(True, store.prunable(failed_campaigns=failed_campaigns), 0)
    with store.acquire_lock(PRUNE_LOCK, wait=wait, blocked_by=is_campaign_lock):
        candidates = store.prune_candidates(failed_campaigns=failed_campaigns)
        deleted = store.delete_subscriptions(candidates)
    return PruneResult(False, [c.id for c in candidates], deleted)


__all__ = ["DEFAULT_WAIT", "PruneResult", "check_failed_campaigns", "prune"]
