"""Who is due now: send windows at each subscriber's local time, quiet hours, frequency caps.

Pure functions of (schedule, time zone, now): no clock, no store. A send asks
them once per time zone in its pending audience (a few hundred zones at most)
and lets SQL pick the subscribers of the due zones, so the audience is never
loaded to decide who is due.

The rules, in local time of each subscriber's zone:

* Nothing is sent before ``start``; whoever still waits at ``end`` is closed
  as ``missed``.
* With ``local_time`` a window opens on every local day at that time and
  stays open ``window`` long. A local time that does not exist that day (the
  clock jumps over it) opens the window as many minutes after the jump (02:30
  -> 03:30 on a spring-forward night); one that exists twice opens it at the
  first. Without ``local_time`` the window is the whole ``start``..``end``.
* Nothing is sent inside ``quiet_hours`` (``"21:00-08:00"`` spans midnight): a
  window that opens inside them opens when they end, and the part of a window
  they cut is added after they end. Due subscribers wait, they are not skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: Why a pending subscriber is not due now (``waiting_by_reason`` keys, in this order).
WAITING_REASONS = ("start", "local_time", "quiet_hours")
#: ``end`` when a schedule gives none.
DEFAULT_SPAN = timedelta(hours=48)
DEFAULT_WINDOW = timedelta(hours=1)

_DURATION_RE = re.compile(r"(\d{1,6})\s*([mhdw])")
_UNIT = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_CLOCK_RE = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


# --- values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """When a campaign may reach a subscriber (times are timezone-aware)."""

    start: datetime
    end: datetime
    local_time: time | None = None
    window: timedelta = DEFAULT_WINDOW
    #: Zone of subscribers who have none.
    timezone: str = "UTC"
    #: (from, to) local times; ``to`` <= ``from`` spans midnight.
    quiet_hours: tuple[time, time] | None = None


@dataclass(frozen=True)
class FrequencyCap:
    """At most ``max`` messages sent (any campaign) within ``within`` before now."""

    max: int
    within: timedelta

    def since(self, now: datetime) -> float:
        """The Unix time from which sent messages count against the cap."""
        return (now - self.within).timestamp()

    def reason(self, count: int) -> str:
        """The ledger reason of a ``capped`` subscriber."""
        return (f"frequency cap: {count} messages sent in the last "
                f"{format_duration(self.within)} (max {self.max})")


@dataclass(frozen=True)
class ZoneState:
    """One time zone at one moment."""

    due: bool
    #: Why not due (one of WAITING_REASONS); None when due or when the schedule has ended.
    reason: str | None = None
    #: When it is due next (now, if due); None: not again before ``end``.
    next_due: datetime | None = None


@dataclass
class ZonePlan:
    """Every zone of a pending audience at one moment: the due ones and why others wait."""

    #: ``now`` is at or after ``end``: whoever still waits is ``missed``.
    closed: bool
    due: list[str] = field(default_factory=list)
    #: zone -> reason (WAITING_REASONS)
    waiting: dict[str, str] = field(default_factory=dict)
    #: zone -> when it is due next (None: not before ``end``)
    next_due: dict[str, datetime | None] = field(default_factory=dict)

    def summary(self, counts: Mapping[str, int], end: datetime | None) -> dict[str, object]:
        """``waiting``, ``waiting_by_reason`` and ``next_due_at`` (Unix time) for reports.

        ``counts`` is pending subscribers per zone. A waiting zone with no due
        moment left makes ``end`` the next time a run has something to do
        (closing them as ``missed``).
        """
        by_reason = dict.fromkeys(WAITING_REASONS, 0)
        moments: list[datetime] = []
        for zone, reason in self.waiting.items():
            n = counts.get(zone, 0)
            if not n:
                continue
            by_reason[reason] += n
            nxt = self.next_due.get(zone)
            if nxt is not None:
                moments.append(nxt)
            elif end is not None:
                moments.append(end)
        return {"waiting": sum(by_reason.values()), "waiting_by_reason": by_reason,
                "next_due_at": round(min(moments).timestamp()) if moments else None}


# --- parsing (the campaign model's validators call these) ---------------------------------


def parse_duration(text: str) -> timedelta:
    """``"90m"``, ``"2h"``, ``"7d"``, ``"1w"``, ``"1h30m"``; ValueError says what is wrong."""
    compact = text.strip().lower()
    parts = _DURATION_RE.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact.replace(" ", ""):
        raise ValueError(f"{text!r} is not a duration like '90m', '2h' or '7d'")
    return timedelta(seconds=sum(int(n) * _UNIT[u] for n, u in parts))


def format_duration(span: timedelta) -> str:
    """The shortest of ``7d``, ``36h``, ``90m`` that says ``span`` exactly."""
    seconds = int(span.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_clock(text: str) -> time:
    """``"09:00"`` (24-hour local time)."""
    m = _CLOCK_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a time like '09:00' (24-hour clock)")
    return time(int(m.group(1)), int(m.group(2)))


def parse_range(text: str) -> tuple[time, time]:
    """``"21:00-08:00"``: from, to; a range that ends before it starts spans midnight."""
    start, sep, end = text.partition("-")
    if not sep:
        raise ValueError(f"{text!r} is not a range like '21:00-08:00'")
    a, b = parse_clock(start), parse_clock(end)
    if a == b:
        raise ValueError(f"{text!r} is empty or the whole day: from and to must differ")
    return a, b


@lru_cache(maxsize=2048)
def zone(name: str) -> ZoneInfo | None:
    """The zone, or None for a name zoneinfo does not know (a row written directly)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


# --- the rules ---------------------------------------------------------------------------


def _at(day: date, clock: time, tz: ZoneInfo) -> datetime:
    """``clock`` on local ``day``, in UTC. fold=0: a time in a DST gap lands as far after
    the jump as it was after the last valid minute; a time that exists twice, the first."""
    return datetime.combine(day, clock, tzinfo=tz).astimezone(UTC)


def _local_day(t: datetime, tz: ZoneInfo) -> date:
    return t.astimezone(tz).date()


def _quiet(s: Schedule, day: date, tz: ZoneInfo) -> tuple[datetime, datetime] | None:
    """The quiet hours that begin on local ``day`` (None: none, or erased by a DST jump)."""
    assert s.quiet_hours is not None
    q_from, q_to = s.quiet_hours
    a = _at(day, q_from, tz)
    b = _at(day + timedelta(days=1) if q_to <= q_from else day, q_to, tz)
    return (a, b) if a < b else None


def _quiet_containing(s: Schedule, t: datetime, tz: ZoneInfo) -> tuple[datetime, datetime] | None:
    if s.quiet_hours is None:
        return None
    today = _local_day(t, tz)
    for day in (today - timedelta(days=1), today):
        q = _quiet(s, day, tz)
        if q is not None and q[0] <= t < q[1]:
            return q
    return None


def _next_quiet(s: Schedule, t: datetime, tz: ZoneInfo) -> tuple[datetime, datetime] | None:
    """The first quiet hours beginning after ``t``."""
    if s.quiet_hours is None:
        return None
    today = _local_day(t, tz)
    for offset in range(-1, 3):
        q = _quiet(s, today + timedelta(days=offset), tz)
        if q is not None and q[0] > t:
            return q
    return None


def _window_pieces(s: Schedule, day: date, tz: ZoneInfo) -> Iterator[tuple[datetime, datetime]]:
    """The deliverable spans of the window opening on local ``day`` (before clipping)."""
    assert s.local_time is not None
    cursor = _at(day, s.local_time, tz)
    inside = _quiet_containing(s, cursor, tz)
    if inside is not None:
        cursor = inside[1]  # opens when the quiet hours end
    remaining = s.window
    while remaining > timedelta(0):
        q = _next_quiet(s, cursor, tz)
        if q is None or cursor + remaining <= q[0]:
            yield cursor, cursor + remaining
            return
        yield cursor, q[0]
        remaining -= q[0] - cursor
        cursor = q[1]  # the rest of the window once the quiet hours end


def zone_state(s: Schedule, zone_name: str, now: datetime) -> ZoneState:
    """Is a subscriber in ``zone_name`` due at ``now``; if not, why and until when."""
    if now >= s.end:
        return ZoneState(due=False)
    tz = zone(zone_name)
    if tz is None:
        # Only a row written directly can hold an unknown zone: it is "due" so the send
        # reads it and records it rejected (invalid stored row) instead of waiting forever.
        return ZoneState(due=True, next_due=now)
    if s.local_time is None:
        nxt = _free_from(s, tz, max(now, s.start))
    else:
        nxt = _next_window_moment(s, tz, now)
    if nxt is not None and nxt <= now:
        return ZoneState(due=True, next_due=now)
    return ZoneState(due=False, reason=_why(s, tz, now), next_due=nxt)


def _clip(a: datetime, b: datetime, s: Schedule) -> tuple[datetime, datetime] | None:
    a, b = max(a, s.start), min(b, s.end)
    return (a, b) if a < b else None


def _free_from(s: Schedule, tz: ZoneInfo, t: datetime) -> datetime | None:
    """Without ``local_time``: the first moment from ``t`` outside quiet hours, before end."""
    q = _quiet_containing(s, t, tz)
    if q is not None:
        t = q[1]
    return t if t < s.end else None


def _next_window_moment(s: Schedule, tz: ZoneInfo, now: datetime) -> datetime | None:
    """With ``local_time``: ``now`` if inside a window, else the next moment one is open.

    Windows open once per local day, so the walk starts a few days back (a
    window postponed by quiet hours can run into the next day) and stops once
    a day's window opens after the best moment found, or after ``end``.
    """
    best: datetime | None = None
    day = _local_day(max(now, s.start), tz) - timedelta(days=2)
    last = _local_day(s.end, tz) + timedelta(days=1)
    while day <= last:
        opens = _at(day, s.local_time, tz)  # type: ignore[arg-type]
        if best is not None and opens > best:
            break
        for a, b in _window_pieces(s, day, tz):
            piece = _clip(a, b, s)
            if piece is None or piece[1] <= now:
                continue
            moment = max(piece[0], now)
            if best is None or moment < best:
                best = moment
        if best == now:
            break
        day += timedelta(days=1)
    return best


def _why(s: Schedule, tz: ZoneInfo, now: datetime) -> str:
    """Why not due: before ``start``; inside quiet hours while a window (or the whole
    campaign, without ``local_time``) would otherwise be open; else waiting for the window."""
    if now < s.start:
        return "start"
    if s.quiet_hours is not None:
        unquiet = Schedule(s.start, s.end, s.local_time, s.window, s.timezone, None)
        if s.local_time is None or _next_window_moment(unquiet, tz, now) == now:
            return "quiet_hours"
    return "local_time"


def plan_zones(s: Schedule, zones: Iterable[str], now: datetime) -> ZonePlan:
    """The state of every zone of a pending audience at ``now``."""
    plan = ZonePlan(closed=now >= s.end)
    for name in zones:
        st = zone_state(s, name, now)
        if st.due:
            plan.due.append(name)
        elif not plan.closed:
            plan.waiting[name] = st.reason or "local_time"
            plan.next_due[name] = st.next_due
    return plan


__all__ = [
    "DEFAULT_SPAN",
    "DEFAULT_WINDOW",
    "WAITING_REASONS",
    "FrequencyCap",
    "Schedule",
    "ZonePlan",
    "ZoneState",
    "format_duration",
    "parse_clock",
    "parse_duration",
    "parse_range",
    "plan_zones",
    "zone",
    "zone_state",
]
