"""Row values <-> subscriber values: what import writes, and the checked decoding of
what a row holds (a row pushcli did not write may be malformed)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pushcli.store.schema import subscriptions
from pushcli.subscriptions import (
    Subscription,
    stored_keys_valid,
    validate_auth,
    validate_p256dh,
    validate_timezone,
)


@dataclass(frozen=True, slots=True)
class StoredSubscription:
    """A subscriber as the store holds it: its row id and its subscription."""

    id: int
    subscription: Subscription
    status: str = "active"
    #: Why this row cannot be used, for a row written straight into the table
    #: (bad base64 keys, a point off the curve, tags or attributes that are not
    #: the JSON we write). Such a row is never contacted: send records it
    #: ``rejected`` with this reason, dry-run and doctor count it, export skips it.
    problem: str | None = None

    @property
    def membership_unknown(self) -> bool:
        """Its tags or attributes are unreadable, so no audience filter can place it."""
        return self.problem is not None and self.problem.startswith(("tags", "attributes"))


@dataclass(frozen=True)
class CampaignInfo:
    """A campaign's row: its runs and the spec it was last sent with."""

    id: int
    name: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    status: str
    runs: int
    spec: dict[str, Any] | None
    last_run: dict[str, Any] | None = None  # the last run's figures (``SendResult.run_summary``)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def dumps(value: Any) -> str:
    """Canonical JSON (sorted, compact), so equal values compare equal as text."""
    if not value:
        return "[]" if isinstance(value, list | tuple) else "{}"
    return _ENCODER.encode(value)


def row_values(sub: Subscription) -> dict[str, Any]:
    """The ``subscriptions`` columns import writes for one subscriber (canonical JSON)."""
    return {
        "endpoint": sub.endpoint,
        "p256dh": sub.p256dh,
        "auth": sub.auth,
        "tags": dumps(list(sub.tags)),
        "locale": sub.locale,
        "attributes": dumps(dict(sub.attributes)),
        "user_id": sub.user_id,
        "expiration_time": sub.expiration_time,
        "timezone": sub.timezone,
    }


SUB_COLUMNS = (
    subscriptions.c.id,
    subscriptions.c.endpoint,
    subscriptions.c.p256dh,
    subscriptions.c.auth,
    subscriptions.c.tags,
    subscriptions.c.locale,
    subscriptions.c.attributes,
    subscriptions.c.user_id,
    subscriptions.c.expiration_time,
    subscriptions.c.status,
    subscriptions.c.timezone,
)


def stored(row: Sequence[Any]) -> StoredSubscription:
    """Decode one row: the quick path for rows as import writes them."""
    try:
        tags = _json_tags(row[4])
        attributes = _json_attributes(row[6])
        exp = row[8]
        expiration = int(exp) if exp is not None else None
        zone = validate_timezone(row[10])
    except (ValueError, TypeError, OverflowError, RecursionError):
        return _checked(row)
    if not stored_keys_valid(row[2], row[3]):
        return _checked(row)
    return StoredSubscription(
        id=row[0],
        subscription=Subscription(row[1], row[2], row[3], tags, row[5], attributes, row[7],
                                  expiration, zone),
        status=row[9],
    )


def _checked(row: Sequence[Any]) -> StoredSubscription:
    """Decode one row field by field; a row pushcli did not write may be malformed.

    Each field is checked on its own, so one bad field is named in
    ``problem`` (never with its value: keys are secrets) while the fields that
    do decode are kept: the audience can still be matched on good tags.
    """
    problems: list[str] = []

    def decoded(name: str, decode: Callable[[], Any], default: Any) -> Any:
        try:
            return decode()
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            problems.append(str(exc) if str(exc).startswith(name) else f"{name}: {exc}")
            return default

    tags = decoded("tags", lambda: _json_tags(row[4]), ())
    attributes = decoded("attributes", lambda: _json_attributes(row[6]), {})
    decoded("keys.p256dh", lambda: validate_p256dh(row[2]), None)
    decoded("keys.auth", lambda: validate_auth(row[3]), None)
    exp = row[8]
    expiration = decoded("expiration_time",
                       lambda: int(exp) if exp is not None else None, None)
    zone = decoded("timezone", lambda: validate_timezone(row[10]), None)
    return StoredSubscription(
        id=row[0],
        subscription=Subscription(
            endpoint=row[1],
            p256dh=row[2],
            auth=row[3],
            tags=tags,
            locale=row[5],
            attributes=attributes,
            user_id=row[7],
            expiration_time=expiration,
            timezone=zone,
        ),
        status=row[9],
        problem="; ".join(problems) or None,
    )


#: Tags columns already decoded: an audience has few distinct tag sets, and decoding
#: one costs ~5 us a row on the send path. Bounded: cleared when full.
_TAGS_SEEN: dict[str, tuple[str, ...]] = {}
_TAGS_SEEN_MAX = 4096


def _json_tags(text: str | None) -> tuple[str, ...]:
    """The tags column: a JSON array of strings."""
    if not text or text == "[]":
        return ()
    seen = _TAGS_SEEN.get(text)
    if seen is not None:
        return seen
    if len(_TAGS_SEEN) >= _TAGS_SEEN_MAX:
        _TAGS_SEEN.clear()
    _TAGS_SEEN[text] = tags = _decode_tags(text)
    return tags


def _decode_tags(text: str) -> tuple[str, ...]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"tags: not valid JSON ({exc.msg})") from None
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError("tags: not a JSON array of strings")
    return tuple(value)


def _json_attributes(text: str | None) -> dict[str, Any]:
    """The attributes column: a JSON object of names to scalars (what import accepts)."""
    if not text or text == "{}":
        return {}
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"attributes: not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict) or not all(
            v is None or isinstance(v, str | int | float | bool) for v in value.values()):
        raise ValueError("attributes: not a JSON object of strings, numbers and booleans")
    return value




def campaign_info(row: Any) -> CampaignInfo:
    """Decode one ``campaigns`` row."""
    m = row._mapping
    return CampaignInfo(
        id=m["id"], name=m["name"], created_at=m["created_at"], started_at=m["started_at"],
        finished_at=m["finished_at"], status=m["status"], runs=m["runs"],
        spec=json.loads(m["spec"]) if m["spec"] else None,
        last_run=json.loads(m["last_run"]) if m["last_run"] else None,
    )
