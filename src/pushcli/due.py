"""Which subscribers one run handles: the audience, send windows and frequency caps.

``schedule`` says which time zones are due at ``now`` (pure rules); this module
asks the store for the pending audience per zone (one GROUP BY), lets SQL pick
the due zones' subscribers for the send, records the frequency cap (``capped``)
and the end of the schedule (``missed``) as final outcomes, and counts who
still waits. A run never loads the audience to decide who is due.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pushcli.campaign import Campaign
from pushcli.errors import InputError
from pushcli.messages import DeliveryRecord
from pushcli.pushservices import EndpointRefused, Outcome, canonical_endpoint, check_endpoint
from pushcli.schedule import WAITING_REASONS, Schedule, ZonePlan, plan_zones
from pushcli.store import Store, StoredSubscription

#: For tests only: the moment a run takes as now (ISO 8601 with offset), so end-to-end
#: tests can simulate cron runs across a day without waiting for it.
NOW_ENV = "PUSHCLI_NOW"

Match = Callable[[StoredSubscription], bool] | None


def audience_matcher(campaign: Campaign, to: str | None = None
                     ) -> Callable[[StoredSubscription], bool] | None:
    """The subscribers a send reaches: the campaign's audience, narrowed to ``--to``.

    None means everyone, so callers can skip the per-row check (and count in SQL).
    """
    aud = campaign.audience
    targeted = bool(aud.tags or aud.exclude_tags or aud.where)

    def in_audience(s: StoredSubscription) -> bool:
        # A row whose tags or attributes cannot be read might belong: it is kept, so
        # that send records it rejected (never contacted) instead of losing it silently.
        return s.membership_unknown or aud.matches(s.subscription.tags,
                                                   s.subscription.attributes)

    if to is None:
        return in_audience if targeted else None
    wanted = canonical_endpoint(to)

    def is_to(s: StoredSubscription) -> bool:
        endpoint = s.subscription.endpoint
        return endpoint == wanted or canonical_endpoint(endpoint) == wanted

    return lambda s: is_to(s) and (not targeted or in_audience(s))


def parse_moment(text: str, option: str) -> datetime:
    """An ISO 8601 moment with a UTC offset (``--at``, PUSHCLI_NOW)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(f"{option}: {text[:40]!r} is not a date and time like "
                         "2026-12-01T09:30:00+01:00") from None
    if moment.utcoffset() is None:
        raise InputError(f"{option}: needs a UTC offset (2026-12-01T09:30:00+01:00, or Z)")
    return moment.astimezone(UTC)


def current_time(environ: Mapping[str, str] = os.environ) -> datetime:
    """Now, for a send: the clock, or PUSHCLI_NOW when a test sets it."""
    fake = environ.get(NOW_ENV)
    return parse_moment(fake, NOW_ENV) if fake else datetime.now(UTC)


@dataclass
class Gate:
    """What a run may send: the due zones (None: everyone) and what it closed before."""

    zones: tuple[str, ...] | None = None
    default_zone: str = "UTC"
    schedule: Schedule | None = None
    plan: ZonePlan | None = None
    capped: int = 0
    missed: int = 0

    def where(self) -> dict[str, Any]:
        """The store's due-zone filter (``zones``, ``default_zone``); empty: everyone."""
        return {} if self.zones is None else {"zones": self.zones,
                                              "default_zone": self.default_zone}


def first_run_at(store: Store, campaign: Campaign, campaign_id: int) -> float | None:
    """When the campaign's first real run started (Unix time), None before one.

    What a ``schedule`` and an A/B test's ``decide_after`` count from. A ``send --to``
    test send is not a real run (``Ledger.start_campaign``): previewing a campaign on one
    device hours before the real send starts neither clock.
    """
    info = store.get_campaign(campaign.name)
    return info.started_at if info is not None and info.id == campaign_id else None


def _first_run(store: Store, campaign_id: int, campaign: Campaign) -> datetime:
    first = first_run_at(store, campaign, campaign_id)
    return datetime.fromtimestamp(first, UTC) if first else datetime.now(UTC)


def service_of(endpoint: str, allowed_hosts: frozenset[str]) -> str:
    """The push service a final outcome is filed under (``blocked`` if policy refuses it)."""
    try:
        return check_endpoint(endpoint, allowed_hosts).service
    except EndpointRefused:
        return "blocked"


def open_gate(store: Store, campaign: Campaign, campaign_id: int, now: datetime, *,
              match: Match, allowed_hosts: frozenset[str],
              retry_failed: bool = False) -> Gate:
    """Decide this run's due zones; record ``missed`` (schedule ended) and ``capped``.

    Without a schedule every pending subscriber is due; a frequency cap still
    applies to them.
    """
    spec, cap = campaign.schedule, campaign.audience.frequency_cap
    gate = Gate(default_zone=spec.timezone if spec is not None else "UTC")
    if spec is not None:
        gate.schedule = spec.resolve(_first_run(store, campaign_id, campaign))
        zones = store.pending_by_zone(campaign_id, default_zone=gate.default_zone,
                                      retry_failed=retry_failed)
        gate.plan = plan_zones(gate.schedule, sorted(zones), now)
        if gate.plan.closed:
            gate.missed = _close_missed(store, campaign_id, gate, match, allowed_hosts,
                                        retry_failed)
            gate.zones = ()
            return gate
        gate.zones = tuple(gate.plan.due)
    if cap is not None and gate.zones != ():
        rule = cap.cap()
        over = store.over_cap(campaign_id, since=rule.since(now), most=rule.max,
                              zones=gate.zones, default_zone=gate.default_zone,
                              retry_failed=retry_failed)
        records = [DeliveryRecord(s.id, Outcome.CAPPED,
                                  service_of(s.subscription.endpoint, allowed_hosts),
                                  reason=rule.reason(n))
                   for s, n in over if match is None or match(s)]
        for i in range(0, len(records), 1000):
            store.record(campaign_id, records[i:i + 1000])
        gate.capped = len(records)
    return gate


def _close_missed(store: Store, campaign_id: int, gate: Gate, match: Match,
                  allowed_hosts: frozenset[str], retry_failed: bool) -> int:
    assert gate.schedule is not None
    reason = f"still waiting when the schedule ended ({gate.schedule.end.isoformat()})"
    n = 0
    # each batch is recorded before the next is read (keyset paging moves past it)
    for batch in store.pending(campaign_id, retry_failed=retry_failed, match=match,
                               batch_size=1000):
        store.record(campaign_id, [
            DeliveryRecord(s.id, Outcome.MISSED, service_of(s.subscription.endpoint,
                                                            allowed_hosts), reason=reason)
            for s in batch])
        n += len(batch)
    return n


def _waiting_counts(store: Store, campaign_id: int, gate: Gate, match: Match,
                    retry_failed: bool) -> dict[str, int]:
    """Pending subscribers per waiting zone (the audience's only, when it is targeted)."""
    assert gate.plan is not None
    waiting = sorted(gate.plan.waiting)
    if match is None:
        counts = store.pending_by_zone(campaign_id, default_zone=gate.default_zone,
                                       retry_failed=retry_failed)
        return {z: counts[z] for z in waiting if z in counts}
    out: dict[str, int] = {}
    for batch in store.pending(campaign_id, retry_failed=retry_failed, match=match,
                               zones=waiting, default_zone=gate.default_zone,
                               batch_size=5000):
        for s in batch:
            z = s.subscription.timezone or gate.default_zone
            out[z] = out.get(z, 0) + 1
    return out


def waiting_summary(store: Store, campaign_id: int, gate: Gate, *, match: Match,
                    retry_failed: bool = False) -> dict[str, Any] | None:
    """After a run: ``waiting``, ``waiting_by_reason``, ``next_due_at`` and what this run
    closed (``capped``, ``missed``); None for a campaign with neither schedule nor cap."""
    if gate.schedule is None and gate.capped == 0:
        return None
    summary: dict[str, Any] = {"waiting": 0, "waiting_by_reason": dict.fromkeys(
        WAITING_REASONS, 0), "next_due_at": None}
    if gate.plan is not None and not gate.plan.closed and gate.schedule is not None:
        counts = _waiting_counts(store, campaign_id, gate, match, retry_failed)
        summary.update(gate.plan.summary(counts, gate.schedule.end))
    summary["capped_now"], summary["missed_now"] = gate.capped, gate.missed
    return summary


def preview(store: Store, campaign: Campaign, now: datetime, *,
            to: str | None = None) -> dict[str, Any]:
    """``send --dry-run --at``: who would be due at ``now`` and who would wait.

    Counts the pending audience of the campaign (everyone, before its first run).
    """
    match = audience_matcher(campaign, to)
    info = store.get_campaign(campaign.name)
    campaign_id = info.id if info is not None else -1  # no ledger rows yet: all pending
    spec = campaign.schedule
    default = spec.timezone if spec is not None else "UTC"
    counts: dict[str, int] = {}
    if match is None:
        counts = store.pending_by_zone(campaign_id, default_zone=default)
    else:
        for batch in store.pending(campaign_id, match=match, batch_size=5000):
            for s in batch:
                z = s.subscription.timezone or default
                counts[z] = counts.get(z, 0) + 1
    if spec is None:
        return {"at": round(now.timestamp()), "due": sum(counts.values()), "waiting": 0,
                "waiting_by_reason": dict.fromkeys(WAITING_REASONS, 0), "next_due_at": None}
    started = info.started_at if info is not None else None  # None: no real run yet
    schedule = spec.resolve(datetime.fromtimestamp(started, UTC) if started else now)
    plan = plan_zones(schedule, sorted(counts), now)
    doc: dict[str, Any] = {"at": round(now.timestamp()),
                           "due": 0 if plan.closed else sum(counts[z] for z in plan.due)}
    doc.update(plan.summary(counts, schedule.end))
    doc["missed"] = sum(counts.values()) if plan.closed else 0
    return doc


__all__ = ["NOW_ENV", "Gate", "audience_matcher", "current_time", "first_run_at", "open_gate",
           "parse_moment", "preview", "service_of", "waiting_summary"]
