"""Schedules without a clock: cron in a time zone across daylight saving time, intervals, once,
and the bad-input table (422 naming the field)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agentos.errors import InvalidRequest
from agentos.schedules import Schedule, occurrence_id, occurrence_run_id, parse_task


def _at(zone: str, *parts: int) -> float:
    return datetime(*parts, tzinfo=ZoneInfo(zone)).timestamp()  # type: ignore[misc]


def _fires(schedule: Schedule, start: float, end: float) -> list[str]:
    """Local wall times (with offset) of the occurrences in (start, end]."""
    out = []
    t = schedule.next_after(start)
    while t is not None and t <= end:
        out.append(datetime.fromtimestamp(t, ZoneInfo(schedule.timezone)).isoformat())
        t = schedule.next_after(t)
    return out


def _cron(expr: str, zone: str) -> Schedule:
    return Schedule.parse({"kind": "cron", "cron": expr, "timezone": zone}, 0.0)


@pytest.mark.parametrize(
    ("zone", "day", "expected"),
    [
        # Spring forward: 02:00-03:00 does not exist; the 02:30 job runs once, at 03:00.
        ("Europe/Berlin", (2024, 3, 31), ["2024-03-31T03:00:00+02:00"]),
        ("America/New_York", (2024, 3, 10), ["2024-03-10T03:00:00-04:00"]),
        # Fall back: 02:00-03:00 (Berlin), 01:00-02:00 (New York) happen twice: once, the first.
        ("Europe/Berlin", (2024, 10, 27), ["2024-10-27T02:30:00+02:00"]),
    ],
)
def test_a_fixed_time_job_runs_once_on_a_dst_day(
    zone: str, day: tuple[int, int, int], expected: list[str]
) -> None:
    schedule = _cron("30 2 * * *", zone)
    start = _at(zone, *day, 0, 0)
    assert _fires(schedule, start, start + 24 * 3600) == expected


def test_new_york_fall_back_runs_the_0130_job_once() -> None:
    schedule = _cron("30 1 * * *", "America/New_York")
    start = _at("America/New_York", 2024, 11, 3, 0, 0)
    assert _fires(schedule, start, start + 24 * 3600) == ["2024-11-03T01:30:00-04:00"]


def test_a_wildcard_hour_job_runs_in_both_passes_of_the_repeated_hour() -> None:
    schedule = _cron("0 * * * *", "Europe/Berlin")
    start = _at("Europe/Berlin", 2024, 10, 27, 1, 30)
    fires = _fires(schedule, start, start + 3 * 3600)
    # Every real hour once: 02:00 summer time, 02:00 winter time, 03:00.
    assert fires == [
        "2024-10-27T02:00:00+02:00",
        "2024-10-27T02:00:00+01:00",
        "2024-10-27T03:00:00+01:00",
    ]
    # And the skipped hour in spring has no occurrence: 01:00, then 03:00.
    start = _at("Europe/Berlin", 2024, 3, 31, 0, 30)
    assert _fires(schedule, start, start + 2 * 3600) == [
        "2024-03-31T01:00:00+01:00",
        "2024-03-31T03:00:00+02:00",
    ]


def test_cron_in_a_zone_is_local_time() -> None:
    schedule = _cron("0 9 * * 1-5", "Europe/Berlin")
    start = _at("Europe/Berlin", 2024, 7, 5, 10, 0)  # a Friday, after 9:00
    nxt = schedule.next_after(start)
    assert nxt == _at("Europe/Berlin", 2024, 7, 8, 9, 0)  # Monday 9:00 in Berlin
    assert occurrence_id(nxt) == "2024-07-08T07:00:00.000Z"
    assert schedule.latest_at_or_before(start) == _at("Europe/Berlin", 2024, 7, 5, 9, 0)


def test_interval_and_once() -> None:
    every = Schedule.parse({"kind": "interval", "every_seconds": 10, "start_at": 100}, 0.0)
    assert every.next_after(95) == 100
    assert every.next_after(100) == 110
    assert every.next_after(109.99) == 110
    assert every.latest_at_or_before(125) == 120
    once = Schedule.parse({"kind": "once", "at": "2030-01-01T09:00:00+01:00"}, 0.0)
    assert once.at == _at("UTC", 2030, 1, 1, 8, 0)
    assert once.next_after(0) == once.at
    assert once.next_after(once.at) is None


def test_occurrence_run_ids_are_the_same_everywhere_and_differ_by_occurrence() -> None:
    a = occurrence_run_id("nightly", "2030-01-01T08:00:00.000Z")
    assert a == occurrence_run_id("nightly", "2030-01-01T08:00:00.000Z")
    assert a != occurrence_run_id("nightly", "2030-01-02T08:00:00.000Z")
    assert a != occurrence_run_id("nightly2", "2030-01-01T08:00:00.000Z")


_BASE: dict[str, Any] = {"component_id": "echo", "message": "hi"}


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"schedule": {"kind": "cron", "cron": "61 * * * *"}}, "schedule.cron"),
        ({"schedule": {"kind": "cron", "cron": "* * * *"}}, "schedule.cron"),
        ({"schedule": {"kind": "cron", "cron": "\uff10 * * * *"}}, "schedule.cron"),
        (
            {"schedule": {"kind": "cron", "cron": "0 9 * * *", "timezone": "Mars/Olympus"}},
            "schedule.timezone",
        ),
        (
            {"schedule": {"kind": "cron", "cron": "0 9 * * *", "timezone": "../../etc/passwd"}},
            "schedule.timezone",
        ),
        (
            {"schedule": {"kind": "cron", "cron": "0 9 * * *", "timezone": "Europe/Berl\udc00"}},
            "schedule.timezone",
        ),
        ({"schedule": {"kind": "interval", "every_seconds": 0}}, "schedule.every_seconds"),
        ({"schedule": {"kind": "interval", "every_seconds": -1}}, "schedule.every_seconds"),
        ({"schedule": {"kind": "interval", "every_seconds": True}}, "schedule.every_seconds"),
        ({"schedule": {"kind": "once", "at": "2000-01-01T00:00:00Z"}}, "schedule.at"),
        ({"schedule": {"kind": "once", "at": "tomorrow"}}, "schedule.at"),
        ({"schedule": {"kind": "weekly"}}, "schedule.kind"),
        ({"overlap_policy": "sometimes"}, "overlap_policy"),
        ({"session_policy": "none"}, "session_policy"),
        ({"session_policy": "fixed"}, "session_id"),
        ({"catchup": "most"}, "catchup"),
        ({"catchup_window_seconds": 0}, "catchup_window_seconds"),
        ({"retry_policy": {"max_attempts": 0}}, "retry_policy.max_attempts"),
        ({"timeout_seconds": -1}, "timeout_seconds"),
        ({"message": ""}, "message"),
        ({"message": "a\x00b"}, "message"),
        ({"task_id": "a b"}, "task_id"),
        ({"tags": ["x\ud800"]}, "tags"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_input_names_the_field(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_task({**_BASE, **fields}, 1_700_000_000.0, new_id="t")
    assert named in caught.value.detail


def test_a_once_in_the_past_runs_when_catchup_says_so() -> None:
    task = parse_task(
        {**_BASE, "schedule": {"kind": "once", "at": 10}, "catchup": "latest"}, 100.0, new_id="t"
    )
    assert task.next_fire_at == 10
    assert task.to_dict()["schedule"] == {"kind": "once", "at": "1970-01-01T00:00:10.000Z"}


def test_any_unicode_in_text_fields() -> None:
    task = parse_task(
        {**_BASE, "message": "🌍 héllo \u202e", "description": "ü" * 50, "tags": ["日本"]},
        100.0,
        new_id="t",
    )
    assert task.tags == ("日本",)
