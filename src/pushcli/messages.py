"""The values the send orchestration and the engine exchange: options, jobs, live stats.

Kept apart from the engine so that a process that only coordinates sender
processes (``--workers``) never imports aiohttp.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pushcli.pushservices import Fault, Outcome

#: Requests in flight a campaign (``delivery.concurrency``) or ``--concurrency`` may ask for.
CONCURRENCY_RANGE = (1, 1000)


@dataclass(frozen=True)
class DeliveryOptions:
    """How to send: protocol headers from the campaign plus engine limits."""

    ttl: int = 86400
    urgency: str | None = None
    topic: str | None = None
    #: Requests in flight per push-service origin: the ceiling the adaptive limit
    #: grows to, or the fixed number when ``adaptive_concurrency`` is off (--concurrency).
    concurrency: int = 1000
    adaptive_concurrency: bool = True
    rate_limit: float | None = None  # messages per second, whole run
    #: Messages per second per push service (``delivery.rate_limits``), on top of
    #: ``DEFAULT_RATE_LIMITS``; a service not named is paced only by its answers.
    rate_limits: Mapping[str, float] = field(default_factory=dict)
    timeout: float = 10.0  # seconds per request
    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 60.0
    auth_failure_limit: int = 20  # consecutive 401/403 per service before we stop
    circuit_failure_limit: int = 50  # consecutive transport failures per host
    flush_interval: float = 0.25
    flush_size: int = 500
    # A ledger write that fails (disk full, lock held) is retried with backoff from
    # ledger_backoff_base up to ledger_backoff_max seconds apart; after ledger_retry_budget
    # seconds of failing the send stops (StoreError, exit 74) rather than send unrecorded.
    ledger_retry_budget: float = 60.0
    ledger_backoff_base: float = 0.05
    ledger_backoff_max: float = 5.0
    # Subscribers an earlier run marked in flight and never recorded (kill -9, power cut,
    # failed ledger, second Ctrl-C) may already have the message: "resend" sends again and
    # counts them as possible duplicates, "skip" records them ``uncertain`` and sends nothing.
    on_uncertain: str = "resend"


#: Pacing ceilings per push service unless the campaign says otherwise: FCM's default
#: project quota is 600,000 messages per minute.
DEFAULT_RATE_LIMITS: Mapping[str, float] = {"fcm": 10_000.0}


def service_rate_limits(options: DeliveryOptions) -> dict[str, float]:
    """The pacing ceiling of every service that has one: defaults, then the campaign's."""
    return {**DEFAULT_RATE_LIMITS, **options.rate_limits}


@dataclass(slots=True)
class Job:
    """One message to one subscriber, ready to encrypt and post."""

    subscription_id: int
    url: str
    origin: str
    service: str
    p256dh: bytes
    auth: bytes
    payload: bytes
    attempts: int = 0
    ambiguous: bool = False
    last_reason: str = ""
    last_status: int | None = None
    blocked: str | None = None  # endpoint refused by policy: finish without contacting
    #: This subscriber cannot be sent to (its stored row is malformed, its attributes
    #: do not render, it duplicates another subscriber's endpoint): finished
    #: ``rejected`` with this reason without contacting anyone.
    rejected: str | None = None
    rejected_fault: Fault | None = None  # whose problem ``rejected`` is (prune reads it)
    #: Endpoint as stored, when ``url`` was rewritten to FCM's /wp/ form after a
    #: wrong-path 404 (resent once; the store keeps the form that worked).
    moved_from: str | None = None
    uncertain: bool = False  # marked in flight by an earlier run that never recorded it
    chunk: int = -1  # the engine's intent-log chunk this job was committed in flight with


class LatencyHistogram:
    """Request latencies in log-spaced buckets (5 % wide): bounded memory, mergeable
    across sender processes, percentiles within 5 %."""

    _BASE = 1.1
    _FLOOR = 1e-4  # 0.1 ms; anything faster lands in bucket 0

    def __init__(self, counts: Mapping[int, int] | None = None) -> None:
        self.counts: Counter[int] = Counter(counts or {})

    def add(self, seconds: float) -> None:
        """Count one request that took ``seconds``."""
        index = 0 if seconds <= self._FLOOR else int(
            math.log(seconds / self._FLOOR, self._BASE))
        self.counts[index] += 1

    def merge(self, other: LatencyHistogram) -> None:
        """Add another process's counts to these."""
        self.counts.update(other.counts)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) in seconds, None when nothing was counted."""
        total = sum(self.counts.values())
        if not total:
            return None
        rank = q * total
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return self._FLOOR * self._BASE ** (index + 0.5)
        return None  # pragma: no cover - rank <= total


@dataclass
class Stats:
    """Live counters the progress display reads.

    Per push service: requests in flight now, the most that were in flight at
    once (the concurrency the adaptive limit reached), request latencies, and
    the adaptive limit's windows: how many were measured with the event loop's
    waits, and in how many it never waited (pushcli, not the service, was the
    bottleneck: more cores would send faster).
    """

    total: int = 0
    started: float = field(default_factory=time.monotonic)
    outcomes: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    ambiguous: int = 0
    signatures: int = 0
    ledger_retries: int = 0  # failed ledger writes retried (disk full, lock held too long)
    in_flight: Counter[str] = field(default_factory=Counter)
    concurrency: dict[str, int] = field(default_factory=dict)
    latency: dict[str, LatencyHistogram] = field(default_factory=dict)
    windows: Counter[str] = field(default_factory=Counter)
    saturated_windows: Counter[str] = field(default_factory=Counter)
    _marks: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64),
                                             repr=False)

    @property
    def done(self) -> int:
        return sum(self.outcomes.values())

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def live_rate(self, now: float | None = None, window: float = 5.0) -> float:
        """Messages per second over about the last ``window`` seconds (what the send does
        now, not its average since the start). Each call is also a sample."""
        now = time.monotonic() if now is None else now
        done = self.done
        self._marks.append((now, done))
        while len(self._marks) > 2 and now - self._marks[1][0] >= window:
            self._marks.popleft()
        then, before = self._marks[0]
        if now - then < 0.5:
            return self.rate
        return (done - before) / (now - then)

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the live rate, None when unknown."""
        rate = self.live_rate(now)
        left = self.total - self.done
        return left / rate if rate > 0 and left >= 0 else None

    def note_latency(self, service: str, seconds: float) -> None:
        """Count one answered request to ``service``."""
        histogram = self.latency.get(service)
        if histogram is None:
            histogram = self.latency[service] = LatencyHistogram()
        histogram.add(seconds)

    def per_service(self) -> dict[str, dict[str, Any]]:
        """Latency p50/p95 (ms) and the concurrency reached, per push service (the report)."""
        out: dict[str, dict[str, Any]] = {}
        for service in sorted(set(self.latency) | set(self.concurrency) | set(self.windows)):
            histogram = self.latency.get(service, LatencyHistogram())
            p50, p95 = histogram.quantile(0.5), histogram.quantile(0.95)
            out[service] = {
                "latency_p50_ms": round(p50 * 1000, 1) if p50 is not None else None,
                "latency_p95_ms": round(p95 * 1000, 1) if p95 is not None else None,
                "concurrency_reached": self.concurrency.get(service, 0),
                # None: pinned (--concurrency), or a loop that does not time its waits
                "sender_bound_pct": (round(100 * self.saturated_windows[service]
                                           / self.windows[service], 1)
                                     if self.windows[service] else None),
            }
        return out

    def snapshot(self) -> dict[str, Any]:
        """The transport figures in a picklable form (a worker process's progress message)."""
        return {"in_flight": dict(self.in_flight), "concurrency": dict(self.concurrency),
                "latency": {s: dict(h.counts) for s, h in self.latency.items()},
                "windows": dict(self.windows), "saturated_windows": dict(self.saturated_windows)}

    def merge_snapshots(self, snapshots: list[dict[str, Any]]) -> None:
        """Replace the transport figures with the sum of the workers' ``snapshot`` ones.

        Concurrency adds up: each worker has its own limit per origin."""
        self.in_flight, self.concurrency, self.latency = Counter(), {}, {}
        self.windows, self.saturated_windows = Counter(), Counter()
        for snap in snapshots:
            self.in_flight.update(snap.get("in_flight", {}))
            self.windows.update(snap.get("windows", {}))
            self.saturated_windows.update(snap.get("saturated_windows", {}))
            for service, n in snap.get("concurrency", {}).items():
                self.concurrency[service] = self.concurrency.get(service, 0) + n
            for service, counts in snap.get("latency", {}).items():
                self.latency.setdefault(service, LatencyHistogram()).merge(
                    LatencyHistogram(counts))


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One ledger entry written by the delivery engine (the store persists it)."""

    subscription_id: int
    outcome: Outcome
    service: str
    status_code: int | None = None
    reason: str = ""
    attempts: int = 1
    ambiguous: bool = False
    fault: Fault | None = None
    #: (old, new) endpoint: the push service accepted the message only at ``new``
    #: (FCM's /fcm/send/ -> /wp/); the store keeps ``new`` for later campaigns.
    moved: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class VariantResult:
    """What one variant of an A/B test did: ledger outcomes and notification events,
    each a count of subscribers (the ledger and ``events`` hold one row per subscriber).

    ``failed`` folds every other unsuccessful outcome (auth, blocked, failed, uncertain):
    a variant's text cannot cause those, so one column is enough to compare variants.
    ``shown``/``clicked``/``closed`` count only subscribers the ledger records as sent,
    so ``clicked <= sent`` and the click rate is a proportion.
    """

    variant: str
    sent: int = 0
    expired: int = 0
    rejected: int = 0
    failed: int = 0
    shown: int = 0
    clicked: int = 0
    closed: int = 0

    @property
    def click_rate(self) -> float:
        """Subscribers who clicked / subscribers sent; 0.0 when nobody was sent."""
        return self.clicked / self.sent if self.sent else 0.0
