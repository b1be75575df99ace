"""What an A/B test (``variants``, ``holdout``, ``winner``) decides at the start of a run.

The assignment itself is pure (``campaign.variants.Assigner``); this module adds
what needs the store: the winner, decided once by the first run at or after
``decide_after`` (counted from the campaign's first run that is not a ``--to`` test
send: ``started_at``) and then read by every run and sender; and the holdout,
recorded as the final outcome ``holdout`` before anything is sent, so it is never
sent, retried or counted by prune.
Subscribers outside the test group while no winner is decided wait: they are
neither recorded nor sent, and a later run sends them the winner.

Two edits of the experiment are refused before a run records anything:

* ``send --to`` (a test send) to a subscriber in the holdout, or waiting for the
  winner (``check_test_send``). A test send is recorded in the ledger like any
  send, so sending a holdout subscriber a variant would put a subscriber who saw
  the message in the control group, and recording ``holdout`` (as before) showed
  the operator nothing; an unrecorded preview would be a second kind of send (no
  ledger row, no intent log, a token whose clicks count) for one device. So it is
  refused (exit 2) naming the reason and what to do: test with a subscriber in a
  variant, whose test send is its real one (that variant, recorded and counted,
  never sent again), exactly what the real send would do. A test send also never
  decides the winner: only a real run does, with what the test share answered.
* Removing ``winner:`` while subscribers outside the test share are still
  unsent (``winner_dropped``): the next run would send them variants by weight
  instead of the winner, which cannot be undone. Refused (exit 2, with their
  number) unless the operator confirms with ``--drop-winner``; the confirmed run
  says how many in its summary (``ab_test.winner_dropped``, a line on stderr).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pushcli import abtest
from pushcli.campaign import Campaign
from pushcli.campaign.model import percent
from pushcli.campaign.variants import Arm, Assigner
from pushcli.due import first_run_at, service_of
from pushcli.errors import InputError
from pushcli.messages import DeliveryRecord, VariantResult
from pushcli.pushservices import Outcome
from pushcli.schedule import parse_duration
from pushcli.store import Store, StoredSubscription

__all__ = ["ArmGate", "check_test_send", "open_arms", "sendable", "winner_dropped"]

Match = Callable[[StoredSubscription], bool] | None


@dataclass
class ArmGate:
    """One run's A/B state: the assignment rule and what it left for later runs."""

    rule: Assigner | None = None
    holdout: int = 0  # subscribers recorded ``holdout`` by this run
    waiting: int = 0  # outside the test group, waiting for the winner
    decide_at: float | None = None  # Unix time the winner is (or was) due
    winner: dict[str, Any] | None = None  # Store.get_winner
    dropped: int = 0  # unsent subscribers of a removed ``winner:`` (winner_dropped)

    def summary(self) -> dict[str, Any] | None:
        """The ``ab_test`` section of the run's figures (None without variants or holdout)."""
        if self.rule is None and not self.dropped:
            return None
        return {"variants": list(self.rule.names) if self.rule else [],
                "holdout_now": self.holdout, "waiting_for_winner": self.waiting,
                "decide_at": self.decide_at, "winner": self.winner,
                **({"winner_dropped": self.dropped} if self.dropped else {})}


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


def _rule(campaign: Campaign, winner: dict[str, Any] | None) -> Assigner | None:
    """The campaign's assignment rule with the recorded winner (``Store.get_winner``)."""
    name = winner["variant"] if winner else None
    try:
        return Assigner.for_campaign(campaign, winner=name)
    except KeyError:
        raise InputError(f"the A/B test already sent variant {name!r} to the rest of the "
                         "audience; it must stay in variants", file=campaign.source,
                         line=campaign.line_of("variants"), field="variants") from None


def check_test_send(store: Store, campaign: Campaign, subscriber_id: int) -> None:
    """Refuse a ``--to`` test send to a subscriber it would send nothing: one in the
    holdout, or one waiting for the winner (InputError, exit 2; see the module's
    docstring for why this refuses rather than sending a variant). Nothing is read
    beyond the campaign's row unless the campaign holds anyone out."""
    rule = Assigner.for_campaign(campaign)
    if rule is None or not rule.excludes_some:
        return
    info = store.get_campaign(campaign.name)
    rule = _rule(campaign, store.get_winner(info.id) if info is not None else None)
    assert rule is not None
    arm = rule.assign(subscriber_id)
    if arm.holdout:
        raise InputError(
            f"--to: this subscriber is in the A/B test's holdout (the {campaign.holdout} "
            "control group, never sent), so a test send would show nothing; test with a "
            "subscriber outside it (send --dry-run --to ENDPOINT checks one)",
            file=campaign.source, line=campaign.line_of("holdout"), field="holdout")
    if arm.waiting:
        assert campaign.winner is not None
        raise InputError(
            f"--to: this subscriber is outside the A/B test's {campaign.winner.test_share} "
            "test share and waits for the winner, so a test send would show nothing; test "
            "with a subscriber in the test share (send --dry-run --to ENDPOINT checks one)",
            file=campaign.source, line=campaign.line_of("winner"), field="winner")


def winner_dropped(store: Store, campaign: Campaign, *, match: Match,
                   confirmed: bool) -> int:
    """How many pending subscribers (among ``match``) the campaign's last run held
    back for its A/B winner although this campaign file has no ``winner:`` any more:
    this run sends them variants by weight (or, without variants, the notification)
    instead. Refused (InputError, exit 2) unless ``confirmed`` (``--drop-winner``).

    ``match`` is the campaign's whole audience, also for a ``--to`` test send: that
    run stores this file as the campaign's last, so a test send let through would
    switch the guard off for everyone.

    The last run's ``winner:`` comes from the spec stored with the campaign
    (``Store.start_campaign``), so call this before the run stores its own. The
    pending audience is scanned only when ``winner:`` was there and is gone.
    """
    info = store.get_campaign(campaign.name)
    spec = (info.spec or {}) if info is not None else {}
    before = spec.get("winner")
    if info is None or campaign.winner is not None or not before:
        return 0
    variants = spec.get("variants") or ()
    held_back = Assigner(  # the last run's rule, no winner yet: its rest is WAITING
        campaign=campaign.name, names=tuple(v["name"] for v in variants),
        weights=tuple(v["weight"] for v in variants),
        holdout=percent(campaign.holdout) if campaign.holdout else 0.0,
        test_share=percent(before["test_share"]))
    count = sum(1 for batch in store.pending(info.id, match=match, batch_size=5000)
                for s in batch if held_back.assign(s.id).waiting)
    if count and not confirmed:
        raise InputError(
            f"removed while {count:,} subscribers outside its test share have not been sent "
            "the A/B test's winner; they would get variants by weight instead: "
            "put winner: back, or confirm with --drop-winner",
            file=campaign.source, line=campaign.line_of("variants"), field="winner")
    return count


def open_arms(store: Store, campaign: Campaign, campaign_id: int, now: datetime, *,
              match: Match, allowed_hosts: frozenset[str], test_send: bool = False,
              dropped: int = 0) -> ArmGate:
    """Decide the winner if due, record the holdout among the pending audience
    (``match``), count who waits for the winner; the rule the senders assign with.

    A ``test_send`` (``--to``) neither decides the winner nor records anyone's
    holdout (``check_test_send`` refuses those before the run; this keeps a caller
    that skipped it from changing the experiment). ``dropped``: ``winner_dropped``.
    """
    gate = ArmGate(dropped=dropped)
    if campaign.winner is not None:
        first = first_run_at(store, campaign, campaign_id)
        if test_send:
            gate.winner = store.get_winner(campaign_id)
        else:
            gate.decide_at, gate.winner = _decide(store, campaign, campaign_id, now,
                                                  first or now.timestamp())
    gate.rule = _rule(campaign, gate.winner)
    rule = gate.rule
    if rule is None or not rule.excludes_some or test_send:
        return gate  # nobody to hold out, nobody waiting (or a test send): nothing to scan
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
