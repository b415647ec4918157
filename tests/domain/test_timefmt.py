"""How long ago something happened, as genv prints it."""

from __future__ import annotations

import time

from genv.domain.timefmt import time_since, timestamp

NOW = 1_700_000_000.0
MINUTE, HOUR, DAY, WEEK = 60, 3600, 86400, 7 * 86400


def ago(seconds: float) -> str:
    return time_since(NOW - seconds, now=NOW)


def test_each_unit_from_seconds_to_weeks_singular_and_plural():
    assert ago(0) == "0 seconds ago"
    assert ago(1) == "1 second ago"
    assert ago(59.9) == "59 seconds ago"
    assert ago(MINUTE) == "1 minute ago"
    assert ago(2 * MINUTE + 59) == "2 minutes ago"
    assert ago(HOUR - 1) == "59 minutes ago"
    assert ago(HOUR) == "1 hour ago"
    assert ago(DAY - 1) == "23 hours ago"
    assert ago(DAY) == "1 day ago"
    assert ago(WEEK - 1) == "6 days ago"
    assert ago(WEEK) == "1 week ago"
    assert ago(60 * WEEK) == "60 weeks ago"


def test_a_time_in_the_future_is_now():
    assert ago(-30) == "0 seconds ago"


def test_without_now_it_is_the_clock():
    assert time_since(time.time() - 2 * HOUR) == "2 hours ago"


def test_timestamp_is_day_month_year_and_local_time():
    assert timestamp(NOW) == time.strftime("%d/%m/%Y %H:%M:%S", time.localtime(NOW))
