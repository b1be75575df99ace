"""What an A/B test (``variants``, ``holdout``, ``winner``) decides at the start of a run.

The assignment itself is pure (``campaign.variants.Assigner``); this module adds
what needs the store: the winner, decided once by the first run at or after
``decide_after`` (counted from the campaign's first run) and then read by every
run and sender; and the holdout, recorded as the final outcome ``holdout``
before anything is sent, so it is never sent, retried or counted by prune.
Subscribers outside the test group while no winner is decided wait: they are
neither recorded nor sent, and a later run sends them the winner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pushcli import abtest
from pushcli.campaign import Campaign
from pushcli.campaign.variants import Arm, Assigner
from pushcli.due import service_of
from pushcli.errors import InputError
from pushcli.messages import DeliveryRecord, VariantResult
from pushcli.pushservices import Outcome
from pushcli.schedule import parse_duration
from pushcli.store import Store, StoredSubscription

__all__ = ["ArmGate", "open_arms", "sendable"]

Match = Callable[[StoredSubscription], bool] | None


@dataclass
class ArmGate:
    """One run's A/B state: the assignment rule and what it left for later runs."""

    rule: Assigner | None = None
    holdout: int = 0  # subscribers recorded ``holdout`` by this run
    waiting: int = 0  # outside the test group, waiting for the winner
    decide_at: float | None = None  # Unix time the winner is (or was) due
    winner: dict[str, Any] | None = None  # Store.get_winner

    def summary(self) -> dict[str, Any] | None:
        """The ``ab_test`` section of the run's figures (None without variants or holdout)."""
        if self.rule is None:
            return None
        return {"variants": list(self.rule.names), "holdout_now": self.holdout,
                "waiting_for_winner": self.waiting, "decide_at": self.decide_at,
                "winner": self.winner}


def sendable(base: Match, rule: Assigner | None,
             keep: dict[int, Arm] | None = None) -> Match:
    """``base`` (the audience; None: everyone) narrowed to who a run may send: not the
    holdout, not those waiting for the winner. ``base`` itself when that is everyone,
    so the store still counts the audience in SQL.

    With ``keep``, the arm of every subscriber let through is stored there by id, so
    the job builder takes it instead of hashing the same subscriber again (4 us each).
    """
    if rule is None or not rule.excludes_some:
        return base
    assign = rule.assign
    if keep is None:
        if base is None:
            return lambda s: assign(s.id).sendable
        return lambda s: base(s) and assign(s.id).sendable

    def kept(s: StoredSubscription) -> bool:
        if base is not None and not base(s):
            return False
        arm = assign(s.id)
        if arm.sendable:
            keep[s.id] = arm
            return True
        return False
    return kept


def _decide(store: Store, campaign: Campaign, campaign_id: int, now: datetime,
            first_run: float) -> tuple[float, dict[str, Any] | None]:
    """(when the winner is due, the recorded winner), deciding it now if it is due."""
    assert campaign.winner is not None
    decide_at = first_run + parse_duration(campaign.winner.decide_after).total_seconds()
    recorded = store.get_winner(campaign_id)
    if recorded is None and now.timestamp() >= decide_at:
        found = store.variant_results(campaign_id)
        # every variant, in file order: abtest.decide breaks ties by order
        results = {n: found.get(n, VariantResult(n)) for n in campaign.variant_names()}
        decision = abtest.decide(results)
        # first writer wins: concurrent senders all go on with the recorded one
        recorded = store.set_winner(campaign_id, decision.variant, now.timestamp(),
                                    decision.reason)
    return decide_at, recorded


def open_arms(store: Store, campaign: Campaign, campaign_id: int, now: datetime, *,
              match: Match, allowed_hosts: frozenset[str]) -> ArmGate:
    """Decide the winner if due, record the holdout among the pending audience
    (``match``), count who waits for the winner; the rule the senders assign with."""
    gate = ArmGate()
    if campaign.winner is not None:
        info = store.get_campaign(campaign.name)
        first = info.created_at if info is not None and info.id == campaign_id else None
        gate.decide_at, gate.winner = _decide(store, campaign, campaign_id, now,
                                              first or now.timestamp())
    name = gate.winner["variant"] if gate.winner else None
    try:
        gate.rule = Assigner.for_campaign(campaign, winner=name)
    except KeyError:
        raise InputError(f"the A/B test already sent variant {name!r} to the rest of the "
                         "audience; it must stay in variants", file=campaign.source,
                         line=campaign.line_of("variants"), field="variants") from None
    rule = gate.rule
    if rule is None or not rule.excludes_some:
        return gate  # nobody to hold out, nobody waiting: nothing to scan
    reason = f"holdout: the {campaign.holdout} control group, never sent"
    # each batch is recorded before the next is read (keyset paging moves past it)
    for batch in store.pending(campaign_id, match=match, batch_size=1000):
        records = []
        for s in batch:
            arm = rule.assign(s.id)
            if arm.holdout:
                records.append(DeliveryRecord(
                    s.id, Outcome.HOLDOUT, service_of(s.subscription.endpoint, allowed_hosts),
                    reason=reason, attempts=0))
            elif arm.waiting:
                gate.waiting += 1
        store.record(campaign_id, records)
        gate.holdout += len(records)
    return gate
