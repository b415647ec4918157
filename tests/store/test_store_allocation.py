"""Which devices an environment gets (genv.domain.allocation): pure functions, no I/O."""

from __future__ import annotations

import pytest

from genv.domain.allocation import AllocationError, check_index, choose_by_count, is_available
from genv.domain.models import Attachment, Device

GI = 1024**3


def machine(count: int, total: int = 80 * GI) -> list[Device]:
    return [Device(index, f"GPU-{index}", "Simulated", total) for index in range(count)]


def held(index: int, eid: str, gpu_memory: str | None = None, uid: int = 0) -> Attachment:
    return Attachment(index, eid, uid, 0.0, gpu_memory)


# -- is_available ----------------------------------------------------------------------


def test_a_device_nobody_holds_is_available() -> None:
    device = machine(1)[0]
    assert is_available(device, [], None)
    assert is_available(device, [], "4g")


def test_a_device_held_without_capacity_is_not_shared() -> None:
    device = machine(1)[0]
    assert not is_available(device, [held(0, "a")], None)
    assert not is_available(device, [held(0, "a")], "1gi")


def test_capacities_that_fit_share_a_device() -> None:
    device = machine(1)[0]
    assert is_available(device, [held(0, "a", "40gi")], "40gi")
    assert is_available(device, [held(0, "a", "30gi"), held(0, "b", "30gi")], "20gi")
    assert not is_available(device, [held(0, "a", "40gi")], "41gi")
    assert not is_available(device, [held(0, "a", "40gi")], None)


# -- choose_by_count -------------------------------------------------------------------


def test_free_devices_are_given_in_index_order() -> None:
    assert choose_by_count(machine(4), [], set(), 2, None, False) == [0, 1]
    assert choose_by_count(machine(4), [held(0, "x")], set(), 2, None, False) == [1, 2]


def test_devices_already_held_are_kept() -> None:
    attachments = [held(2, "me"), held(0, "x")]
    assert choose_by_count(machine(4), attachments, {2}, 2, None, False) == [1, 2]
    assert choose_by_count(machine(4), attachments, {2}, 1, None, False) == [2]


def test_a_smaller_count_keeps_the_lowest_held() -> None:
    assert choose_by_count(machine(4), [], {1, 3}, 1, None, False) == [1]
    assert choose_by_count(machine(4), [], {1, 3}, 0, None, False) == []


def test_negative_count_is_refused() -> None:
    with pytest.raises(AllocationError) as caught:
        choose_by_count(machine(2), [], set(), -1, None, False)
    assert str(caught.value) == "the device count cannot be negative"


def test_not_enough_free_devices_without_over_subscription() -> None:
    attachments = [held(0, "x"), held(1, "y")]
    with pytest.raises(AllocationError, match="available") as caught:
        choose_by_count(machine(3), attachments, set(), 2, None, False)
    assert str(caught.value) == (
        "2 devices were asked for but only 1 are available; use over-subscription (-o) to "
        "share devices"
    )


def test_the_count_available_includes_what_the_environment_holds() -> None:
    attachments = [held(0, "me"), held(1, "x"), held(2, "y")]
    with pytest.raises(AllocationError) as caught:
        choose_by_count(machine(4), attachments, {0}, 3, None, False)
    assert str(caught.value).startswith("3 devices were asked for but only 2 are available")


def test_over_subscription_uses_free_devices_first_then_least_loaded() -> None:
    attachments = [held(0, "x"), held(0, "y"), held(1, "z"), held(2, "w", "10gi")]
    devices = machine(4)
    assert choose_by_count(devices, attachments, set(), 1, None, True) == [3]
    # 3 is free; then 2 (10gi reserved) before 1 (a whole device) before 0 (two of them)
    assert choose_by_count(devices, attachments, set(), 2, None, True) == [2, 3]
    assert choose_by_count(devices, attachments, set(), 3, None, True) == [1, 2, 3]
    assert choose_by_count(devices, attachments, set(), 4, None, True) == [0, 1, 2, 3]


def test_least_loaded_counts_environments_when_reservations_tie() -> None:
    attachments = [held(0, "x", "10gi"), held(1, "y", "5gi"), held(1, "z", "5gi")]
    # same 10gi reserved on both: the one with fewer environments first
    assert choose_by_count(machine(2), attachments, set(), 1, None, True) == [0]


def test_more_devices_than_the_machine_has_is_refused_even_over_subscribed() -> None:
    with pytest.raises(AllocationError, match="has 2"):
        choose_by_count(machine(2), [], set(), 3, None, True)


def test_memory_capacity_shares_without_over_subscription() -> None:
    devices = machine(2)
    first = [held(0, "a", "40gi")]
    assert choose_by_count(devices, first, set(), 1, "40gi", False) == [0]
    full = [held(0, "a", "40gi"), held(0, "b", "40gi")]
    assert choose_by_count(devices, full, set(), 1, "1gi", False) == [1]
    # an environment without a capacity never shares
    assert choose_by_count(devices, first, set(), 1, None, False) == [1]
    with pytest.raises(AllocationError):
        choose_by_count(devices, [*full, held(1, "c")], set(), 1, "1gi", False)


def test_an_empty_machine_gives_nothing() -> None:
    assert choose_by_count([], [], set(), 0, None, False) == []
    with pytest.raises(AllocationError):
        choose_by_count([], [], set(), 1, None, True)


# -- check_index -----------------------------------------------------------------------


def test_index_of_a_free_device_is_accepted() -> None:
    check_index(machine(2), [], set(), 1, None, False)


def test_index_held_by_another_is_not_available() -> None:
    with pytest.raises(AllocationError) as caught:
        check_index(machine(2), [held(1, "x")], set(), 1, None, False)
    assert str(caught.value) == "Device 1 is not available"


def test_index_held_by_another_with_over_subscription() -> None:
    check_index(machine(2), [held(1, "x")], set(), 1, None, True)


def test_index_already_mine_is_accepted() -> None:
    check_index(machine(2), [held(1, "me"), held(1, "x")], {1}, 1, None, False)


def test_index_shared_by_capacity() -> None:
    check_index(machine(1), [held(0, "x", "40gi")], set(), 0, "40gi", False)
    with pytest.raises(AllocationError, match="Device 0 is not available"):
        check_index(machine(1), [held(0, "x", "40gi")], set(), 0, "41gi", False)


@pytest.mark.parametrize("over", [False, True])
def test_index_that_does_not_exist(over: bool) -> None:
    with pytest.raises(AllocationError) as caught:
        check_index(machine(3), [], set(), 5, None, over)
    assert str(caught.value) == "Device 5 does not exist (devices here: 0, 1, 2)"
    with pytest.raises(AllocationError) as caught:
        check_index([], [], set(), 0, None, over)
    assert str(caught.value) == "Device 0 does not exist (devices here: none)"
