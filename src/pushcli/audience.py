"""Who a send reaches, checked before anything is sent: the audience per push
service (``send --dry-run`` and ``doctor``), payloads that do not render,
duplicate spellings of one endpoint, and what a send refuses up front
(``--to`` unknown, a topic a push service in the audience rejects).

It reads the store and renders payloads but sends nothing, so it sits below
``delivery``, which calls it before it takes a campaign's lock.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pushcli.abrun import check_test_send, winner_dropped
from pushcli.campaign import Campaign, Renderer
from pushcli.due import audience_matcher, preview
from pushcli.errors import EXIT_OK, EXIT_PARTIAL, InputError, PushcliError
from pushcli.pushservices import (
    KNOWN_SERVICES,
    EndpointRefused,
    canonical_endpoint,
    check_endpoint,
    topic_problem,
)
from pushcli.store import Store, StoredSubscription


def _audience(store: Store, campaign: Campaign | None,
              to: str | None) -> Iterator[StoredSubscription]:
    """Stream the active subscribers a send reaches (all active ones without a campaign)."""
    match = audience_matcher(campaign, to) if campaign is not None else None
    for s in store.iter_subscriptions(status="active"):
        if match is None or match(s):
            yield s


@dataclass
class VariantCheck:
    """What rendering the audience's payloads before a send found."""

    variants: int = 0  # distinct payloads that render
    unrenderable: int = 0  # subscribers whose payload does not render: rejected at send
    example: str | None = None  # the first such error, naming its subscriber


def check_variants(store: Store, campaign: Campaign, renderer: Renderer,
                   *, to: str | None = None) -> VariantCheck:
    """Render (and size-check) every distinct variant the audience needs, before sending.

    The campaign is refused (the RenderError is raised) only when the fault
    is the template's: a template without placeholders that fails, or one
    (or one A/B variant) that renders for nobody in the audience. Otherwise a subscriber whose own
    attributes do not render is that subscriber's outcome: counted here, for
    dry-run and doctor, and recorded ``rejected`` at send while the rest goes
    out, the same as when the attributes change in the middle of a send.
    """
    result = VariantCheck()
    arms = renderer.arms  # every A/B variant is checked for every subscriber
    if not renderer.placeholders and to is None:
        # Without placeholders a payload is a (variant, locale): render each the store holds.
        seen: set[Any] = set()
        for locale in [None, *store.distinct_locales()]:
            for arm in arms:
                key = renderer.variant_key(locale, {}, arm)
                if key not in seen:
                    renderer.render(locale, {}, arm)
                    seen.add(key)
        result.variants = len(seen)
        return result
    outcome: dict[Any, InputError | None] = {}  # variant key -> its error, None if it renders
    first: InputError | None = None
    for s in _audience(store, campaign, to):
        if s.problem is not None:
            continue  # rejected at send for its stored row, whatever it renders
        error = None
        for arm in arms:
            key = renderer.variant_key(s.subscription.locale, s.subscription.attributes, arm)
            if key not in outcome:
                try:
                    renderer.render(s.subscription.locale, s.subscription.attributes, arm)
                    outcome[key] = None
                except InputError as exc:
                    outcome[key] = _for_subscriber(exc, s.id)
            error = error or outcome[key]
        if error is not None:
            result.unrenderable += 1
            if first is None:
                first = error
                result.example = str(error)
    result.variants = sum(1 for e in outcome.values() if e is None)
    # per A/B variant: one that renders for nobody (too large once the token's room is
    # reserved, say) would otherwise reject its whole share one subscriber at a time
    renders: dict[Any, bool] = {}
    dead: dict[Any, InputError] = {}  # arm -> its first error
    for (arm, *_), error in outcome.items():
        renders[arm] = renders.get(arm, False) or error is None
        if error is not None:
            dead.setdefault(arm, error)
    for arm in arms:
        if arm in dead and not renders[arm]:
            raise dead[arm]
    return result


def validate_variants(store: Store, campaign: Campaign, renderer: Renderer,
                      *, to: str | None = None) -> int:
    """The number of distinct payloads; raises when the template renders for nobody
    (see check_variants)."""
    return check_variants(store, campaign, renderer, to=to).variants


def _for_subscriber(exc: InputError, subscriber_id: int) -> InputError:
    """The render error, naming the subscriber whose attributes caused it."""
    if f"subscriber id {subscriber_id}" in exc.message:
        return exc
    return type(exc)(f"{exc.message} (subscriber id {subscriber_id})", file=exc.file,
                     line=exc.line, field=exc.field)


def duplicate_endpoints(store: Store, campaign: Campaign | None,
                        to: str | None = None) -> dict[int, int]:
    """{subscriber id: id of the subscriber it duplicates} within a send's audience
    (among all active subscribers without a campaign: doctor).

    Import stores one row per canonical endpoint, but a store filled by an
    older pushcli or written directly may hold several spellings of one
    endpoint. Of each such group the lowest id is sent and the others are
    recorded ``rejected`` "duplicate of subscriber N": one message per browser.
    The rule depends only on the store, so re-runs, worker processes and
    shared senders all keep the same row. Only rows not stored in canonical
    form can collide, so the scan keeps nothing else in memory.
    """
    match = audience_matcher(campaign, to) if campaign is not None else None
    rows: Iterable[tuple[int, str]]
    if match is None:
        rows = store.iter_endpoints()
    else:
        rows = ((s.id, s.subscription.endpoint) for s in _audience(store, campaign, to))
    groups: dict[str, list[int]] = {}
    for sid, endpoint in rows:
        canonical = canonical_endpoint(endpoint)
        if canonical != endpoint:
            groups.setdefault(canonical, []).append(sid)
    if not groups:
        return {}
    for s in store.active_with_endpoints(list(groups)):
        if match is None or match(s):
            groups[s.subscription.endpoint].append(s.id)
    duplicates: dict[int, int] = {}
    for ids in groups.values():
        keep = min(ids)
        duplicates.update((sid, keep) for sid in ids if sid != keep)
    return duplicates


@dataclass
class AudienceCount:
    """The audience per push service, and why the rest would not be sent.

    One count for ``send --dry-run`` and ``doctor``: ``services`` maps each push
    service to its subscribers, plus ``blocked`` (refused by the endpoint
    policy) and ``rejected`` (malformed stored rows, duplicate spellings of one
    endpoint and, when rendering was checked, attributes that do not render).
    """

    services: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)  # policy reason -> subscribers
    malformed: int = 0  # stored rows that do not parse, blocked or not
    malformed_example: str = ""
    duplicates: dict[int, int] = field(default_factory=dict)  # see duplicate_endpoints


def count_audience(store: Store, campaign: Campaign | None, allowed_hosts: frozenset[str],
                   *, limit: int | None = None, to: str | None = None,
                   renderer: Renderer | None = None) -> AudienceCount:
    """Count a send's audience (every active subscriber without a campaign) per service."""
    count = AudienceCount(duplicates=duplicate_endpoints(store, campaign, to))
    counts = count.services
    for s in itertools.islice(_audience(store, campaign, to), limit):
        if s.problem is not None:
            count.malformed += 1
            count.malformed_example = count.malformed_example or f"id {s.id}: {s.problem}"
        try:
            service = check_endpoint(s.subscription.endpoint, allowed_hosts).service
        except EndpointRefused as exc:
            counts["blocked"] += 1
            count.refused[str(exc)] += 1
            continue
        if s.problem is not None or s.id in count.duplicates:
            counts["rejected"] += 1
            continue
        if renderer is not None:
            try:
                for arm in renderer.arms:
                    renderer.render(s.subscription.locale, s.subscription.attributes, arm)
            except PushcliError:
                counts["rejected"] += 1
                continue
        counts[service] += 1
    return count


def count_by_service(store: Store, campaign: Campaign, allowed_hosts: frozenset[str],
                     limit: int | None = None, to: str | None = None,
                     renderer: Renderer | None = None) -> Counter[str]:
    """Audience per push service, with ``blocked`` and ``rejected`` (see AudienceCount)."""
    return count_audience(store, campaign, allowed_hosts, limit=limit, to=to,
                          renderer=renderer).services


def _check_to(store: Store, campaign: Campaign, to: str | None) -> None:
    """Refuse a ``--to`` endpoint the store does not hold, or whose A/B arm (holdout,
    waiting for the winner) a test send would send nothing (``abrun.check_test_send``)."""
    if to is None:
        return
    found = store.find_by_endpoint(to)
    if found is None:
        # The endpoint itself is never named: its path is a bearer token.
        raise InputError("--to: no subscriber with this endpoint in the store (import it first)")
    check_test_send(store, campaign, found.id)


def _refuse_topic(campaign: Campaign, services: Mapping[str, int]) -> None:
    """Refuse a ``delivery.topic`` that a push service in the audience rejects outright.

    ``services`` counts the audience per push service; one Apple subscriber is
    enough, since Apple would reject the topic for every one of them.
    """
    for svc, n in sorted(services.items()):
        problem = topic_problem(svc, campaign.delivery.topic) if n else None
        if problem:
            raise InputError(f"{problem} ({n:,} subscribers at {svc} in the audience)",
                             file=campaign.source, line=campaign.line_of("delivery.topic"),
                             field="delivery.topic")


def preflight(store: Store, campaign: Campaign, allowed_hosts: frozenset[str], *,
              limit: int | None = None, to: str | None = None) -> None:
    """What a send refuses before it takes its lock, in the order ``dry_run`` refuses it:
    an unknown ``--to`` endpoint or one in the A/B holdout, then a topic a push service
    in the audience rejects.

    Cheap when nothing can be refused: the audience scan (seconds per 100k
    subscribers) runs only when the store may hold a subscriber at a service
    that refuses the topic."""
    _check_to(store, campaign, to)
    topic = campaign.delivery.topic
    troubled = [host.lstrip(".") for svc, hosts in KNOWN_SERVICES.items()
                if topic_problem(svc, topic) for host in hosts]
    # the audience is counted only when a service refusing this topic may be in it
    if troubled and store.may_hold_hosts(troubled):
        _refuse_topic(campaign, count_by_service(store, campaign, allowed_hosts,
                                                 limit=limit, to=to))


@dataclass(frozen=True)
class DryRun:
    """What ``send --dry-run`` found: the audience per service, distinct payloads, a sample."""

    campaign: str
    services: Mapping[str, int]
    variants: int
    sample: bytes | None  # a payload for a subscriber without attributes, if it renders
    #: A/B variant -> its payload's bytes for a subscriber without attributes (token room
    #: included), for the variants that render so
    variant_sizes: Mapping[str, int] = field(default_factory=dict)
    #: for a scheduled campaign, who the schedule makes due at the moment asked
    #: (``due.preview``: at, due, waiting, waiting_by_reason, next_due_at, ...)
    timing: Mapping[str, Any] = field(default_factory=dict)
    #: pending subscribers a removed ``winner:`` held back, confirmed with --drop-winner
    #: (``abrun.winner_dropped``): they would get variants by weight
    winner_dropped: int = 0

    @property
    def audience(self) -> int:
        return sum(self.services.values())

    @property
    def exit_code(self) -> int:
        """1 when a send would block or reject anyone (it would exit 1 too), else 0."""
        return EXIT_PARTIAL if self.services.get("blocked") or self.services.get(
            "rejected") else EXIT_OK

    def warnings(self) -> list[str]:
        """One line per group of subscribers a send would not contact."""
        lines = []
        rejected, blocked = self.services.get("rejected", 0), self.services.get("blocked", 0)
        if rejected:  # malformed rows, duplicate endpoints, attributes that do not render
            lines.append(f"{rejected:,} of {self.audience:,} subscribers would be rejected "
                         "without being contacted (see: pushcli doctor)")
        if blocked:  # a send would record them `blocked` and exit 1: so does the dry run
            lines.append(f"{blocked:,} of {self.audience:,} subscribers would be blocked by "
                         "the endpoint policy (see: pushcli doctor; --allow-host)")
        if self.winner_dropped:
            lines.append(winner_dropped_line(self.winner_dropped, would=True))
        return lines

    def to_json(self) -> dict[str, Any]:
        sample = self.sample
        return {"campaign": self.campaign, "audience": self.audience,
                "by_service": dict(self.services), "variants": self.variants,
                "sample_payload": json.loads(sample) if sample else None,
                "sample_payload_bytes": len(sample) if sample else None,
                **({"variant_sizes": dict(self.variant_sizes)} if self.variant_sizes else {}),
                **({"winner_dropped": self.winner_dropped} if self.winner_dropped else {}),
                **self.timing}


def dry_run(store: Store, campaign: Campaign, allowed_hosts: frozenset[str], *,
            limit: int | None = None, to: str | None = None,
            now: datetime | None = None, drop_winner: bool = False) -> DryRun:
    """Validate, count, render and size-check a send without sending: it refuses what
    the send would refuse (``--to``, variants that render for nobody, the topic, a
    removed ``winner:`` without ``drop_winner``). Given ``now`` (the moment the dry run
    plans for), a scheduled campaign's ``due.preview``."""
    _check_to(store, campaign, to)
    renderer = Renderer(campaign)
    variants = validate_variants(store, campaign, renderer, to=to)
    services = count_by_service(store, campaign, allowed_hosts, limit=limit, to=to,
                                renderer=renderer)
    _refuse_topic(campaign, services)
    dropped = winner_dropped(store, campaign, match=audience_matcher(campaign),
                             confirmed=drop_winner)
    sizes: dict[str, int] = {}
    sample: bytes | None = None
    for arm in renderer.arms:  # a subscriber without attributes; defaults still render
        try:
            payload = renderer.render(None, {}, arm)
        except PushcliError:
            continue
        sample = sample or payload
        if arm is not None:
            sizes[arm] = len(payload)
    timing = preview(store, campaign, now, to=to) if campaign.schedule and now is not None else {}
    return DryRun(campaign.name, services, variants, sample, sizes, timing, dropped)


def winner_dropped_line(count: int, *, would: bool = False) -> str:
    """The stderr line of a run (or dry run) confirmed with --drop-winner."""
    return (f"winner: removed (--drop-winner): {count:,} subscribers who waited for the A/B "
            f"test's winner {'would get' if would else 'get'} variants by weight instead")

__all__ = [
    "AudienceCount",
    "DryRun",
    "VariantCheck",
    "check_variants",
    "count_audience",
    "count_by_service",
    "duplicate_endpoints",
    "dry_run",
    "preflight",
    "validate_variants",
    "winner_dropped_line",
]
