"""Looking users up: what an admin typed never raises, whatever it holds."""

from __future__ import annotations

import pytest

from genv.system import users


@pytest.mark.parametrize(
    "name", ["\x00", "root\x00", "no-such-user-genv-test", "\u00b2", "\u0661\u0662\u0663"]
)
def test_a_name_no_user_has_is_none(name: str) -> None:
    assert users.uid_of(name) is None


def test_a_known_name_and_a_numeric_uid() -> None:
    assert users.uid_of("root") == 0
    assert users.uid_of("4242") == 4242
    assert users.username(0) == "root"
