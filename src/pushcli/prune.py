"""Prune: delete the subscribers the push services said are gone.

One policy for ``pushcli prune`` and the demo: take the ``prune`` lock (waiting
for running sends, which hold campaign locks), select the candidates, delete
them with the store's re-check, and return what happened. Which subscribers
qualify (expired; with ``failed_campaigns``, those whose last N campaigns each
ended with an answer about the subscriber; with ``unengaged_days`` and
``min_sent``, those sent K messages without a click in D days) is the store's
query; this module decides when it may run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

from pushcli.errors import InputError
from pushcli.store import PRUNE_LOCK, Store, Unengaged, is_campaign_lock

#: Seconds ``prune`` waits for running sends before giving up (exit 75).
DEFAULT_WAIT = 30.0
_DAY = 86400.0


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


def unengaged_rule(unengaged_days: float | None, min_sent: int | None,
                   now: float) -> Unengaged | None:
    """``--unengaged-days D --min-sent K`` as the store's rule, or None when not asked.

    Both or neither (checked before the store is opened): D alone would delete
    everyone never sent anything tracked, K alone has no window.
    """
    if unengaged_days is None and min_sent is None:
        return None
    if unengaged_days is None or min_sent is None:
        raise InputError("--unengaged-days and --min-sent go together (subscribers sent at "
                         "least K messages with no click in the last D days)")
    if not unengaged_days > 0 or unengaged_days == float("inf"):
        raise InputError("--unengaged-days must be a positive number of days")
    if min_sent < 1:
        raise InputError("--min-sent must be at least 1")
    return Unengaged(since=now - unengaged_days * _DAY, min_sent=min_sent)


class Rules(TypedDict):
    """Who ``prune`` takes beyond the expired: its keyword arguments of that name."""

    failed_campaigns: int | None
    unengaged: Unengaged | None


def rules(failed_campaigns: int | None, unengaged_days: float | None, min_sent: int | None,
          now: float) -> Rules:
    """``pushcli prune``'s options as its rules, checked before the store is opened
    (``now`` ends the unengaged window)."""
    check_failed_campaigns(failed_campaigns)
    return Rules(failed_campaigns=failed_campaigns,
                 unengaged=unengaged_rule(unengaged_days, min_sent, now))


def prune(store: Store, *, failed_campaigns: int | None = None,
          unengaged: Unengaged | None = None, dry_run: bool = False,
          wait: float = DEFAULT_WAIT) -> PruneResult:
    """Delete prunable subscribers, or with ``dry_run`` only list them.

    The dry run reads only and takes no lock, so it never waits for (or
    blocks) a send. ``unengaged`` comes from ``unengaged_rule`` (its ``now``
    injected by the caller). A real prune holds the ``prune`` lock and waits up to
    ``wait`` seconds for every campaign lock, then raises ``Busy`` (exit 75):
    deleting a subscriber mid-send would lose its outcome.
    """
    check_failed_campaigns(failed_campaigns)
    if dry_run:
        return PruneResult(True, store.prunable(failed_campaigns=failed_campaigns,
                                                unengaged=unengaged), 0)
    with store.acquire_lock(PRUNE_LOCK, wait=wait, blocked_by=is_campaign_lock):
        candidates = store.prune_candidates(failed_campaigns=failed_campaigns,
                                            unengaged=unengaged)
        deleted = store.delete_subscriptions(candidates)
    return PruneResult(False, [c.id for c in candidates], deleted)


__all__ = ["DEFAULT_WAIT", "PruneResult", "Rules", "check_failed_campaigns", "prune", "rules",
           "unengaged_rule"]
