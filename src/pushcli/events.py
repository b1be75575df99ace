"""Notification events coming back from the service worker: what one event document
may say, how its token is verified, and ``pushcli events import``.

An event is ``{"token": str, "event": "shown" | "clicked" | "closed", "action":
str (optional), "at": Unix seconds (optional)}``; other keys are ignored, so a
newer service worker can add some. The token (``pushcli.tokens``) is the only
proof of what the event is about: a forged or damaged one, one signed before the
last two secret rotations, or one about a subscriber no longer in the store is
refused. The store keeps the first event of each (campaign, subscriber, kind), so
a re-posted event or a re-imported file counts once. ``events serve`` (the HTTP
collector, ``pushcli.collector``) parses with the same functions.

Library code: returns values or raises ``pushcli.errors``; never prints.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pushcli.store import EventRow, Rejection, Store
from pushcli.subscriptions import (
    JSON_ERRORS,
    Rejected,
    json_problem,
    ndjson_records,
    open_sources,
)
from pushcli.tokens import read_token

__all__ = [
    "EVENT_KINDS", "FUTURE_SLACK", "MAX_ACTION_LEN", "EventImportResult", "EventProblem",
    "decode_event", "import_events", "parse_event",
]

EVENT_KINDS = ("shown", "clicked", "closed")
#: The longest ``action`` stored (a notification action id; the column's width).
MAX_ACTION_LEN = 128
#: How far an event's ``at`` may run ahead of our clock (a device's clock is wrong,
#: or the site's log is in another zone); anything later is refused as absurd.
FUTURE_SLACK = 86400.0
#: Above this an ``at`` is surely JavaScript's Date.now(), in milliseconds.
_MILLISECONDS = 1e11
#: Valid events looked up and written per store round trip in ``import_events``.
IMPORT_BATCH = 2000
#: Rejections ``import_events`` keeps in its result (all are counted and handed on).
MAX_REJECTIONS_KEPT = 1000


class EventProblem(ValueError):
    """Why one event document was refused (one line, no token or secret in it)."""


def _action(value: object) -> str | None:
    if value is None or value == "":  # the body, not an action button, was clicked
        return None
    if not isinstance(value, str):
        raise EventProblem("action: must be a string")
    if len(value) > MAX_ACTION_LEN:
        raise EventProblem(f"action: longer than {MAX_ACTION_LEN} characters")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise EventProblem("action: contains control characters or invalid Unicode")
    return value


def _at(value: object, now: float) -> float:
    if value is None:
        return now
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EventProblem("at: must be a number (Unix seconds)")
    try:
        at = float(value)
    except OverflowError:  # an integer beyond any float: as absurd as infinity
        at = math.inf if value > 0 else -math.inf
    if not math.isfinite(at) or at <= 0:
        raise EventProblem("at: must be a positive number of Unix seconds")
    if at > now + FUTURE_SLACK:
        hint = " (milliseconds? send Unix seconds)" if at > _MILLISECONDS else ""
        raise EventProblem(f"at: more than a day in the future{hint}")
    return at


def parse_event(doc: object, secrets: Sequence[bytes], now: float) -> EventRow:
    """The event a decoded document describes, verified against the store's secrets.

    Raises EventProblem naming the field at fault. Whether the token's subscriber
    still exists is the caller's check (it needs the store: ``known_subscribers``).
    """
    if not isinstance(doc, dict):
        raise EventProblem("an event must be a JSON object")
    kind = doc.get("event")
    if kind not in EVENT_KINDS:
        raise EventProblem("event: must be one of " + ", ".join(EVENT_KINDS))
    action = _action(doc.get("action"))
    at = _at(doc.get("at"), now)
    token = doc.get("token")
    if token is None:
        raise EventProblem("token: missing")
    claims = read_token(tuple(secrets), token)
    if claims is None:
        raise EventProblem("token: not signed by this store (forged, damaged, or older "
                           "than the last two secret rotations)")
    return EventRow(claims.campaign_id, claims.subscriber_id, str(kind), claims.variant,
                    action, at, now)


def decode_event(body: bytes, secrets: Sequence[bytes], now: float) -> EventRow:
    """``parse_event`` of a request body (UTF-8 JSON, whatever its Content-Type said)."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise EventProblem("not valid UTF-8") from None
    except JSON_ERRORS as exc:
        raise EventProblem(json_problem(exc)) from None
    return parse_event(doc, secrets, now)


UNKNOWN_SUBSCRIBER = "token: its subscriber is no longer in this store"


@dataclass
class EventImportResult:
    """Counts of one ``events import``: ``read`` lines with a document, of which
    ``added`` were new, ``duplicates`` were already stored (or repeated in the
    input) and ``rejected`` were refused (the first of them in ``rejections``)."""

    read: int = 0
    added: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejections: list[Rejection] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The counts; the caller adds the rejections in the words it reports them in."""
        return {"read": self.read, "added": self.added, "duplicates": self.duplicates,
                "rejected": self.rejected}


def _documents(files: Iterable[str]) -> Iterator[tuple[str, str, Any]]:
    """(source, location, decoded document or Rejected) for every NDJSON line."""
    for source, stream in open_sources(files):
        for location, record in ndjson_records(stream, source, size_note="an event is "
                                               "under 1 KiB"):
            yield source, location, record


def import_events(store: Store, files: Iterable[str], now: float, *,
                  on_reject: Callable[[Rejection], None] | None = None) -> EventImportResult:
    """Read NDJSON event files (``-`` is standard input) into the store, streaming.

    Every file must open before anything is read. Each refused line becomes a
    ``Rejection`` (``file``, ``line N``, why) handed to ``on_reject`` as it is
    found; the valid ones are stored in batches. Idempotent: the store keeps one
    event per (campaign, subscriber, kind), so importing a file again adds nothing.
    ``now`` stands for ``received_at`` and the ``at`` of events without one.
    """
    result = EventImportResult()
    secrets = store.token_secrets()

    def reject(source: str, location: str, reason: str) -> None:
        result.rejected += 1
        rejection = Rejection(source, location, reason)
        if len(result.rejections) < MAX_REJECTIONS_KEPT:
            result.rejections.append(rejection)
        if on_reject is not None:
            on_reject(rejection)

    batch: list[tuple[str, str, EventRow]] = []

    def flush() -> None:
        known = store.known_subscribers(row.subscription_id for _, _, row in batch)
        rows = []
        for source, location, row in batch:
            if row.subscription_id in known:
                rows.append(row)
            else:
                reject(source, location, UNKNOWN_SUBSCRIBER)
        added = store.record_events(rows)
        result.added += added
        result.duplicates += len(rows) - added
        batch.clear()

    for source, location, doc in _documents(files):
        result.read += 1
        if isinstance(doc, Rejected):
            reject(source, location, doc.reason)
            continue
        try:
            batch.append((source, location, parse_event(doc, secrets, now)))
        except EventProblem as exc:
            reject(source, location, str(exc))
            continue
        if len(batch) >= IMPORT_BATCH:
            flush()
    flush()
    return result
