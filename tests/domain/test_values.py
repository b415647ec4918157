"""genv.domain.values: a ``@value`` class behaves as the same ``@dataclass(frozen=True)``."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import typing
from functools import cached_property
from typing import ClassVar

import pytest

from genv.domain import values
from genv.domain.values import FrozenInstanceError, field, replace, value


@value
class Point:
    """Two fields and a default."""

    x: int
    y: int
    label: str | None = None
    unit: ClassVar[str] = "mm"  # a class attribute, not a field
    scale: typing.ClassVar[int] = 1

    @property
    def norm(self) -> int:
        return abs(self.x) + abs(self.y)


@dataclasses.dataclass(frozen=True)
class DataPoint:
    x: int
    y: int
    label: str | None = None


@value
class Tally:
    name: str
    counted: tuple[int, ...] = ()
    seen: int = field(default=0, compare=False)
    note: str = field(compare=False, default="")

    @cached_property
    def total(self) -> int:
        return sum(self.counted)


@value
class Empty:
    pass


@value
class One:
    only: int


@value
class Required:
    a: int = field()
    b: int = field(default=2)


def test_construction_by_position_keyword_and_default() -> None:
    assert (Point(1, 2).x, Point(1, 2).y, Point(1, 2).label) == (1, 2, None)
    assert Point(y=2, x=1, label="p") == Point(1, 2, "p")
    assert Point(1, y=2) == Point(1, 2, None)
    assert vars(Point(1, 2, "p")) == {"x": 1, "y": 2, "label": "p"}
    assert Tally("t").seen == 0 and Tally("t").note == ""
    assert Required(1).b == 2 and not hasattr(Required, "a") and Required.b == 2
    assert Point.label is None  # a default stays a class attribute, as with dataclasses
    assert Point.unit == "mm" and Point.scale == 1
    assert Point.__match_args__ == ("x", "y", "label")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: Point(1), "Point() is missing 'y'"),
        (lambda: Point(), "Point() is missing 'x'"),
        (lambda: Point(1, 2, "p", 4), "Point() takes 3 arguments but 4 were given"),
        (lambda: Point(1, 2, x=3), "Point() got multiple values for 'x'"),
        (lambda: Point(1, 2, z=3, w=4), "Point() has no field 'w'"),
        (lambda: Empty(1), "Empty() takes 0 arguments but 1 were given"),
        (lambda: Required(), "Required() is missing 'a'"),
    ],
)
def test_wrong_construction_is_a_type_error(call, message) -> None:
    with pytest.raises(TypeError) as raised:
        call()
    assert str(raised.value) == message


def test_a_field_without_default_after_one_with_is_refused() -> None:
    with pytest.raises(TypeError, match="^non-default argument 'b' follows default argument$"):

        @value
        class Wrong:
            a: int = 0
            b: int


def test_repr_is_the_dataclass_repr() -> None:
    assert repr(Point(1, 2, "p")) == repr(DataPoint(1, 2, "p")).replace("DataPoint", "Point")
    assert repr(Empty()) == "Empty()"
    assert repr(values.MISSING) == "MISSING"


def test_equality_and_hash_over_the_compared_fields_of_the_same_class() -> None:
    assert Point(1, 2) == Point(1, 2) and hash(Point(1, 2)) == hash(Point(1, 2))
    assert Point(1, 2) != Point(2, 1) and Point(1, 2) != Point(1, 2, "p")
    assert Point(1, 2) != DataPoint(1, 2) and Point(1, 2) != (1, 2, None)
    assert Point(1, 2).__eq__((1, 2, None)) is NotImplemented
    assert One(1) == One(1) and One(1) != One(2) and hash(One(1)) == hash(One(1))
    assert Empty() == Empty() and hash(Empty()) == hash(Empty())
    assert Tally("t", (1,), seen=1, note="a") == Tally("t", (1,), seen=2, note="b")
    assert hash(Tally("t", (1,), seen=1)) == hash(Tally("t", (1,), seen=2))
    assert Tally("t", (1,)) != Tally("t", (2,)) and Tally("t") != Tally("u")
    assert len({Point(1, 2), Point(1, 2), Point(2, 1)}) == 2


def test_fields_cannot_be_assigned_or_deleted() -> None:
    point = Point(1, 2)
    with pytest.raises(FrozenInstanceError, match="^cannot assign to field 'x'$"):
        point.x = 3  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError, match="^cannot delete field 'y'$"):
        del point.y  # type: ignore[misc]
    with pytest.raises(AttributeError):
        point.other = 1  # type: ignore[attr-defined]
    assert point == Point(1, 2)


def test_properties_and_cached_properties_work() -> None:
    assert Point(-1, 2).norm == 3
    tally = Tally("t", (1, 2))
    assert tally.total == 3 and tally.total == 3 and tally == Tally("t", (1, 2))


def test_replace_changes_some_fields_only() -> None:
    point = Point(1, 2, "p")
    assert replace(point, y=5) == Point(1, 5, "p") and point == Point(1, 2, "p")
    assert replace(point) == point and replace(point) is not point
    assert replace(Tally("t", seen=3), name="u").seen == 3
    with pytest.raises(TypeError, match="^Point has no field 'a'$"):
        replace(point, z=1, a=2)


def test_replace_also_replaces_in_dataclasses() -> None:
    assert replace(DataPoint(1, 2), label="q") == DataPoint(1, 2, "q")


def test_pickle_and_copy_give_equal_values() -> None:
    tally = Tally("t", (1, 2), seen=4)
    for again in (pickle.loads(pickle.dumps(tally)), copy.copy(tally), copy.deepcopy(tally)):
        assert again == tally and again.seen == 4 and again.total == 3


def test_match_by_position() -> None:
    match Point(1, 2):
        case Point(1, y):
            assert y == 2
        case _:
            pytest.fail("no match")


@value
class _WithFactory:
    name: str
    tags: list = field(default_factory=list)


def test_a_default_factory_makes_a_new_default_for_each_instance():
    first, second = _WithFactory("a"), _WithFactory("b")
    assert first.tags == [] and first.tags is not second.tags
    assert _WithFactory("a", ["x"]).tags == ["x"]
    assert not hasattr(_WithFactory, "tags")  # not a class attribute
    with pytest.raises(ValueError, match="^cannot specify both default and default_factory$"):
        field(default=1, default_factory=list)


def test_fields_made_at_run_time_keep_their_defaults_and_comparison():
    """Classes made inside the test (not at import), so that field() runs under the test."""

    @value
    class Made:
        a: int
        b: int = field(default=2)
        seen: int = field(default=0, compare=False)
        tags: list = field(default_factory=list, compare=False)
        note: str = field(default_factory=lambda: "n")

    made = Made(1)
    assert (made.a, made.b, made.seen, made.tags, made.note) == (1, 2, 0, [], "n")
    assert Made(1, seen=5, tags=["x"]) == made  # seen and tags are not compared
    assert Made(1, note="other") != made  # note is
    assert Made(1, b=3) != made
    assert hash(Made(1)) == hash(made) and hash(Made(2)) != hash(made)
    assert Made.b == 2 and not hasattr(Made, "tags")
    spec = field(default=7, compare=False)
    assert (spec.default, spec.compare) == (7, False)
    made_by = field(default_factory=dict)
    assert made_by.compare is True and made_by.default.make() == {}


def test_methods_a_class_writes_itself_are_kept_and_mutable_defaults_refused():
    @value
    class Own:
        a: int

        def __hash__(self) -> int:
            return 7

        def __repr__(self) -> str:
            return "own"

    assert hash(Own(1)) == 7 and repr(Own(1)) == "own" and Own(1) == Own(1)
    with pytest.raises(FrozenInstanceError):
        Own(1).a = 2
    with pytest.raises(ValueError, match="use default_factory"):

        @value
        class Shared:
            tags: list = []  # noqa: RUF012 - the point of the test
