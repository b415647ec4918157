"""What people type and state files say (genv.domain.validate): the values taken, the values
refused, and the one line that says why."""

from __future__ import annotations

import math

import pytest

from genv.domain import constants, validate
from genv.domain.validate import InvalidValue
from genv.errors import UsageError


def refused(check, value, *args) -> str:
    with pytest.raises(InvalidValue) as caught:
        check(value, *args)
    return str(caught.value)


def test_an_invalid_value_is_a_usage_error():
    assert issubclass(InvalidValue, UsageError)


def test_uids_from_root_to_the_largest_one():
    assert validate.uid(0) == 0  # root
    assert validate.uid("1000") == 1000
    assert validate.uid(constants.MAX_UID) == constants.MAX_UID
    assert refused(validate.uid, -1) == f"uid -1 is out of range (0 to {constants.MAX_UID})"
    assert refused(validate.uid, constants.MAX_UID + 1) == (
        f"uid {constants.MAX_UID + 1} is out of range (0 to {constants.MAX_UID})")
    assert refused(validate.uid, "alice") == "invalid uid 'alice': use a whole number"
    assert refused(validate.uid, True) == "the uid must be a whole number"
    assert refused(validate.uid, 1.5) == "invalid uid float: use a whole number"


def test_pids_from_one_to_the_largest_linux_gives():
    assert validate.pid(1) == 1
    assert validate.pid(f" {constants.PID_MAX} ") == constants.PID_MAX
    for wrong in (0, -5, constants.PID_MAX + 1):
        assert refused(validate.pid, wrong) == (
            f"pid {wrong} is out of range (1 to {constants.PID_MAX})")


def test_counts_and_device_indices():
    assert validate.count("0") == 0
    assert validate.count(constants.MAX_DEVICES) == constants.MAX_DEVICES
    assert validate.device_index(constants.MAX_DEVICES - 1) == constants.MAX_DEVICES - 1
    assert refused(validate.count, "-1") == "the device count cannot be negative"
    assert refused(validate.device_index, constants.MAX_DEVICES) == (
        f"the device index {constants.MAX_DEVICES} is more than the maximum of "
        f"{constants.MAX_DEVICES - 1}")
    assert refused(validate.count, "2x") == "invalid device count '2x': use a whole number"
    assert refused(validate.count, "1" * 21) == (
        f"invalid device count '{'1' * 21}': use a whole number")


def test_durations_in_seconds():
    assert validate.seconds("0", "the grace period", 60) == 0.0
    assert validate.seconds(" 2.5 ", "the grace period", 60) == 2.5
    assert validate.seconds(60, "the grace period", 60) == 60.0
    assert refused(validate.seconds, "soon", "the grace period", 60) == (
        "'soon' is not a number of seconds for the grace period")
    assert refused(validate.seconds, None, "the interval", 60) == (
        "NoneType is not a number of seconds for the interval")
    for wrong in ("-1", "nan", "inf", -math.inf):
        assert refused(validate.seconds, wrong, "the interval", 60) == (
            "the interval must be a finite number of seconds, zero or more")
    assert refused(validate.seconds, "60.5", "the interval", 60) == (
        "the interval of 60.5 seconds is more than the maximum of 60")
    assert refused(validate.seconds, 1e10, "the interval", 86400) == (
        "the interval of 1e+10 seconds is more than the maximum of 86400")


def test_memory_amounts_are_kept_as_written_trimmed():
    assert validate.memory_amount(" 4g ") == "4g"
    assert validate.memory_amount(str(constants.MAX_MEMORY)) == str(constants.MAX_MEMORY)
    assert refused(validate.memory_amount, "1" * 33) == (
        f"invalid memory amount '{'1' * 33}': use e.g. 4g or 512mi")
    assert refused(validate.memory_amount, f"{constants.MAX_MEMORY + 1}") == (
        f"memory amount {constants.MAX_MEMORY + 1} is larger than any device")
    assert "invalid memory amount '4 gigs'" in refused(validate.memory_amount, "4 gigs")


@pytest.mark.parametrize("text", ["1k\u0131", "1m\u0130", "\uff11g", "\u0661\u0662mi", "4\u00b2g"])
def test_a_memory_amount_is_ascii_digits_and_units(text):
    """Unicode case-folding would let "i" match "ı" or "İ" (a unit nobody has: it raised
    KeyError), and \\d other scripts' digits: refused with the usual one line."""
    assert "invalid memory amount" in refused(validate.memory_amount, text)


@pytest.mark.parametrize("text", ["\u00b2", "\u0661", "-\u00b2", "1\u00b2"])
def test_whole_numbers_are_ascii_digits(text):
    assert "use a whole number" in refused(validate.pid, text)


def test_ids_and_names():
    assert validate.environment_id("a.b_c:d@e+f/g=h-1") == "a.b_c:d@e+f/g=h-1"
    assert refused(validate.environment_id, "a b") == (
        "invalid environment id 'a b': use letters, digits and . _ : @ + / = -")
    assert refused(validate.environment_id, "x" * 129) == (
        "environment id is too long (129 characters; at most 128)")
    assert validate.kernel_id("0f-A_9") == "0f-A_9"
    assert refused(validate.kernel_id, "k" * 129) == "kernel id is too long (at most 128)"
    assert validate.environment_name("my run") == "my run"
    assert refused(validate.username, "a b") == (
        "the user name 'a b' has a character that is not allowed (' '); use printable text "
        "without commas")
    assert refused(validate.environment_name, " ") == "the environment name cannot be empty"
    assert refused(validate.environment_name, "n" * 129) == (
        "the environment name is too long (129 characters; at most 128)")
    bidi = refused(validate.environment_name, "a\u202eb")  # shown escaped, never as is
    assert "has a character that is not allowed" in bidi
    assert "u202e" in bidi and "\u202e" not in bidi


def test_safe_text_escapes_what_could_forge_a_line():
    assert validate.safe_text("plain text") == "plain text"
    assert validate.safe_text("a\nb\\c\u202e") == "a\\nb\\\\c\\u202e"
    assert validate.safe_text("x" * 10, limit=4) == "xxxx..."


def test_refresh_interval_is_from_a_tenth_of_a_second_to_an_hour():
    assert validate.refresh_interval("0.1") == 0.1
    assert validate.refresh_interval("3600") == 3600.0
    with pytest.raises(validate.InvalidValue, match="^--interval must be at least 0.1 seconds$"):
        validate.refresh_interval("0.09")
    with pytest.raises(validate.InvalidValue, match="more than the maximum of 3600"):
        validate.refresh_interval("3600.5")
    with pytest.raises(validate.InvalidValue, match="^-i must be at least 0.1 seconds$"):
        validate.refresh_interval("0", "-i")
