"""The due rules of send windows, with a fixed clock: local time per zone, DST gaps and
folds, windows and quiet hours across midnight, half-hour zones and the day line."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from pushcli.schedule import (
    FrequencyCap,
    Schedule,
    format_duration,
    parse_clock,
    parse_duration,
    parse_range,
    plan_zones,
    zone_state,
)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def sched(start: str = "2026-12-01T08:00:00+01:00", end: str = "2026-12-02T12:00:00+01:00",
          local_time: str | None = "09:00", window: str = "2h", tz: str = "UTC",
          quiet: str | None = None) -> Schedule:
    return Schedule(start=utc(start), end=utc(end),
                    local_time=parse_clock(local_time) if local_time else None,
                    window=parse_duration(window), timezone=tz,
                    quiet_hours=parse_range(quiet) if quiet else None)


def test_local_time_window_in_paris() -> None:
    s = sched()
    early = zone_state(s, "Europe/Paris", utc("2026-12-01T08:30:00+01:00"))
    assert not early.due and early.reason == "local_time"
    assert early.next_due == utc("2026-12-01T09:00:00+01:00")
    assert zone_state(s, "Europe/Paris", utc("2026-12-01T09:00:00+01:00")).due
    assert zone_state(s, "Europe/Paris", utc("2026-12-01T10:59:00+01:00")).due
    late = zone_state(s, "Europe/Paris", utc("2026-12-01T11:00:00+01:00"))
    assert not late.due and late.next_due == utc("2026-12-02T09:00:00+01:00")  # tomorrow's
    closed = zone_state(s, "Europe/Paris", utc("2026-12-02T12:00:00+01:00"))
    assert not closed.due and closed.reason is None and closed.next_due is None


def test_before_start_waits_for_start_even_inside_a_window() -> None:
    s = sched(start="2026-12-01T09:30:00+01:00")
    st = zone_state(s, "Europe/Paris", utc("2026-12-01T09:10:00+01:00"))
    assert not st.due and st.reason == "start"
    assert st.next_due == utc("2026-12-01T09:30:00+01:00")  # the window is still open then


def test_half_hour_zone_kolkata() -> None:
    s = sched(start="2026-12-01T00:00:00Z", end="2026-12-02T00:00:00Z", window="1h")
    assert zone_state(s, "Asia/Kolkata", utc("2026-12-01T03:29:00Z")).next_due == utc(
        "2026-12-01T03:30:00Z")  # 09:00 at +05:30
    assert zone_state(s, "Asia/Kolkata", utc("2026-12-01T03:30:00Z")).due
    assert not zone_state(s, "Asia/Kolkata", utc("2026-12-01T04:30:00Z")).due


def test_the_day_line_kiritimati_and_pago_pago() -> None:
    # 09:00 on the same wall clock is a day apart across the date line: Kiritimati (+14)
    # and Honolulu (-10) are due at the same instant on different dates, Pago Pago (-11)
    # an hour later.
    s = sched(start="2026-12-01T00:00:00+14:00", end="2026-12-03T00:00:00Z", window="1h")
    now = utc("2026-11-30T19:30:00Z")
    assert now.astimezone(ZoneInfo("Pacific/Kiritimati")).day == 1  # already 1 December there
    plan = plan_zones(s, ["Pacific/Kiritimati", "Pacific/Honolulu", "Pacific/Pago_Pago"], now)
    assert plan.due == ["Pacific/Kiritimati", "Pacific/Honolulu"]
    assert plan.waiting == {"Pacific/Pago_Pago": "local_time"}
    assert plan.next_due["Pacific/Pago_Pago"] == utc("2026-11-30T20:00:00Z")


@pytest.mark.parametrize("zone, opens", [
    ("Europe/Paris", "2026-03-29T01:30:00Z"),  # 02:30 does not exist: 03:30 CEST
    ("America/New_York", "2026-03-08T07:30:00Z"),  # 02:30 does not exist: 03:30 EDT
])
def test_local_time_in_a_dst_gap_opens_after_the_jump(zone: str, opens: str) -> None:
    s = sched(start="2026-03-01T00:00:00Z", end="2026-04-01T00:00:00Z", local_time="02:30",
              window="1h")
    day_before = utc(opens) - timedelta(hours=12)
    st = zone_state(s, zone, day_before)
    assert not st.due and st.next_due == utc(opens)
    assert not zone_state(s, zone, utc(opens) - timedelta(minutes=1)).due
    assert zone_state(s, zone, utc(opens)).due


def test_local_time_that_exists_twice_opens_once_at_the_first() -> None:
    # 2026-10-25 in Paris: 02:30 is 00:30Z (CEST) and again 01:30Z (CET)
    s = sched(start="2026-10-24T12:00:00Z", end="2026-10-26T00:00:00Z", local_time="02:30",
              window="30m", tz="Europe/Paris")
    assert zone_state(s, "Europe/Paris", utc("2026-10-25T00:30:00Z")).due
    second = zone_state(s, "Europe/Paris", utc("2026-10-25T01:30:00Z"))
    assert not second.due and second.next_due is None  # the next 02:30 is after end


def test_window_across_midnight() -> None:
    s = sched(start="2026-12-01T00:00:00Z", end="2026-12-03T00:00:00Z", local_time="23:30",
              window="1h")
    assert zone_state(s, "Europe/Paris", utc("2026-12-02T00:15:00+01:00")).due
    after = zone_state(s, "Europe/Paris", utc("2026-12-02T00:31:00+01:00"))
    assert not after.due and after.next_due == utc("2026-12-02T23:30:00+01:00")


def test_quiet_hours_across_midnight_hold_a_campaign_without_local_time() -> None:
    s = sched(start="2026-12-01T23:00:00+01:00", end="2026-12-03T00:00:00Z", local_time=None,
              quiet="21:00-08:00")
    now = utc("2026-12-01T23:00:00+01:00")
    paris = zone_state(s, "Europe/Paris", now)
    assert not paris.due and paris.reason == "quiet_hours"
    assert paris.next_due == utc("2026-12-02T08:00:00+01:00")
    assert zone_state(s, "America/New_York", now).due  # 17:00 there
    assert zone_state(s, "Europe/Paris", utc("2026-12-02T08:00:00+01:00")).due
    assert not zone_state(s, "Europe/Paris", utc("2026-12-02T21:00:00+01:00")).due


def test_a_window_opening_in_quiet_hours_opens_when_they_end() -> None:
    s = sched(start="2026-12-01T00:00:00Z", end="2026-12-03T00:00:00Z", local_time="07:00",
              window="1h", quiet="21:00-08:00")
    st = zone_state(s, "Europe/Paris", utc("2026-12-01T07:30:00+01:00"))
    assert not st.due and st.reason == "quiet_hours"
    assert st.next_due == utc("2026-12-01T08:00:00+01:00")
    assert zone_state(s, "Europe/Paris", utc("2026-12-01T08:59:00+01:00")).due
    assert not zone_state(s, "Europe/Paris", utc("2026-12-01T09:00:00+01:00")).due


def test_the_part_of_a_window_quiet_hours_cut_comes_after_them() -> None:
    s = sched(start="2026-12-01T00:00:00Z", end="2026-12-03T00:00:00Z", local_time="20:30",
              window="1h", quiet="21:00-08:00")
    assert zone_state(s, "Europe/Paris", utc("2026-12-01T20:45:00+01:00")).due
    held = zone_state(s, "Europe/Paris", utc("2026-12-01T21:10:00+01:00"))
    assert not held.due and held.reason == "quiet_hours"
    assert held.next_due == utc("2026-12-02T08:00:00+01:00")
    assert zone_state(s, "Europe/Paris", utc("2026-12-02T08:29:00+01:00")).due
    waiting = zone_state(s, "Europe/Paris", utc("2026-12-02T08:30:00+01:00"))
    assert not waiting.due and waiting.reason == "local_time"
    assert waiting.next_due == utc("2026-12-02T20:30:00+01:00")


def test_unknown_zone_is_due_so_its_rows_are_rejected_not_left_waiting() -> None:
    assert zone_state(sched(), "Mars/Olympus", utc("2026-12-01T08:30:00+01:00")).due


def test_plan_summary_counts_waiting_by_reason_and_next_due() -> None:
    s = sched(start="2026-12-01T00:00:00Z", end="2026-12-01T12:00:00Z", window="1h")
    now = utc("2026-12-01T08:30:00Z")
    plan = plan_zones(s, ["UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo"], now)
    assert plan.due == ["Europe/Paris"] and not plan.closed  # 09:00 there is 08:00Z
    counts = {"UTC": 5, "Europe/Paris": 2, "America/New_York": 3, "Asia/Tokyo": 4}
    summary = plan.summary(counts, s.end)
    assert summary["waiting"] == 12
    assert summary["waiting_by_reason"] == {"start": 0, "local_time": 12, "quiet_hours": 0}
    # New York opens at 14:00Z (after end) and Tokyo's window closed at 01:00Z: neither is
    # due again before end, which closes them as missed
    assert plan.next_due == {"UTC": utc("2026-12-01T09:00:00Z"), "America/New_York": None,
                             "Asia/Tokyo": None}
    assert summary["next_due_at"] == round(utc("2026-12-01T09:00:00Z").timestamp())
    assert plan.summary({"America/New_York": 3}, s.end)["next_due_at"] == round(
        s.end.timestamp())
    assert plan_zones(s, ["UTC"], s.end).closed


def test_parsers_and_the_cap_reason() -> None:
    assert parse_duration("2h") == timedelta(hours=2)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("7d") == parse_duration("1w")
    for bad in ("", "2", "2x", "h", "-1h", "2h3"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_clock("9:05") == time(9, 5)
    for bad in ("24:00", "09:60", "9", "nine"):
        with pytest.raises(ValueError):
            parse_clock(bad)
    assert parse_range("21:00-08:00") == (time(21), time(8))
    with pytest.raises(ValueError, match="must differ"):
        parse_range("08:00-08:00")
    assert format_duration(timedelta(days=7)) == "7d"
    assert format_duration(timedelta(minutes=90)) == "90m"
    cap = FrequencyCap(2, timedelta(days=7))
    now = utc("2026-12-08T00:00:00Z")
    assert cap.since(now) == utc("2026-12-01T00:00:00Z").timestamp()
    assert cap.reason(3) == "frequency cap: 3 messages sent in the last 7d (max 2)"
