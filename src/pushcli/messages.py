"""The values the send orchestration and the engine exchange: options, jobs, live stats.

Kept apart from the engine so that a process that only coordinates sender
processes (``--workers``) never imports aiohttp.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from pushcli.pushservices import Fault


@dataclass(frozen=True)
class DeliveryOptions:
    """How to send: protocol headers from the campaign plus engine limits."""

    ttl: int = 86400
    urgency: str | None = None
    topic: str | None = None
    concurrency: int = 64
    rate_limit: float | None = None  # messages per second, whole run
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


@dataclass
class Stats:
    """Live counters the progress display reads."""

    total: int = 0
    started: float = field(default_factory=time.monotonic)
    outcomes: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    ambiguous: int = 0
    signatures: int = 0
    ledger_retries: int = 0  # failed ledger writes retried (disk full, lock held too long)

    @property
    def done(self) -> int:
        return sum(self.outcomes.values())

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0
