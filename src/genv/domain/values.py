"""Frozen value classes: what ``@dataclass(frozen=True)`` gives, at a fraction of its cost.

``@value`` on a class with annotated fields gives it an ``__init__`` (the fields in order, by
position or keyword, with their defaults), ``__eq__`` and ``__hash__`` over the compared fields
(only with an instance of the very same class), ``__repr__`` (``Name(field=..., ...)``) and
``__match_args__``, and refuses assignment and deletion (``FrozenInstanceError``);
``field(default=..., compare=False)`` leaves a field out of equality and hashing, and
``field(default_factory=...)`` makes its default anew for each instance;
``replace(obj, **changes)`` is a copy with some fields changed (``dataclasses.replace``, which
it also does for dataclasses). Type checkers see frozen dataclasses (``dataclass_transform``).
Instances keep a ``__dict__``, so ``functools.cached_property``, pickling and copying work as
with frozen dataclasses.

Why not ``dataclasses``: importing it imports ``inspect`` (with ``ast``, ``dis``,
``tokenize``), and each class compiles six methods from source at import; for the domain's
classes that was about a fifth of what a quick command such as ``genv devices`` costs (see
bench/startup.py), paid at every shell prompt. Here a class costs tens of microseconds.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    from typing_extensions import dataclass_transform

    T = TypeVar("T")
else:

    def dataclass_transform(**_: object) -> object:
        return lambda decorated: decorated


class FrozenInstanceError(AttributeError):
    """A field of a value was assigned or deleted (as ``dataclasses.FrozenInstanceError``)."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Field:
    """A field's default, and whether it counts in equality and hashing."""

    __slots__ = ("compare", "default")

    def __init__(self, default: object, compare: bool) -> None:
        self.default = default
        self.compare = compare


class _Factory:
    """A default made anew for each instance (``default_factory``)."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make


def field(
    *,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | None = None,
    compare: bool = True,
) -> Any:
    """A field with a default (``default``, or ``default_factory()`` made for each instance)
    that ``compare=False`` leaves out of ``==``."""
    if default_factory is not None:
        if default is not MISSING:
            raise ValueError("cannot specify both default and default_factory")
        return Field(_Factory(default_factory), compare)
    return Field(default, compare)


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def value(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen value class of its annotated fields (see the module)."""
    names: list[str] = []
    defaults: list[object] = []
    compared: list[str] = []
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if str(annotation).startswith(("ClassVar", "typing.ClassVar")):
            continue  # a class attribute, not a field
        default = cls.__dict__.get(name, MISSING)
        compare = True
        if isinstance(default, Field):
            spec: Field = default
            default, compare = spec.default, spec.compare
            if default is MISSING or isinstance(default, _Factory):
                delattr(cls, name)
            else:
                setattr(cls, name, default)
        if default.__class__ in (list, dict, set):
            raise ValueError(f"mutable default for field {name!r}: use default_factory")
        if default is MISSING and defaults and defaults[-1] is not MISSING:
            raise TypeError(f"non-default argument {name!r} follows default argument")
        names.append(name)
        defaults.append(default)
        if compare:
            compared.append(name)
    attributes: dict[str, object] = {
        "__value_fields__": tuple(names),
        "__value_defaults__": tuple(defaults),
        "__value_compared__": tuple(compared),
        "__match_args__": tuple(names),
        "__init__": _init,
        "__repr__": _repr,
        "__eq__": _eq,
        "__hash__": _hash,
        "__setattr__": _setattr,
        "__delattr__": _delattr,
    }
    for name, attribute in attributes.items():
        if name in _OWN_KEPT and name in cls.__dict__:
            continue  # written by the class itself: kept, as dataclasses keep it
        setattr(cls, name, attribute)
    return cls


# Methods a class may write itself (dataclasses keep an explicit __init__, __repr__, __eq__
# and, for a frozen class, __hash__); assignment stays refused whatever the class says.
_OWN_KEPT = frozenset({"__init__", "__repr__", "__eq__", "__hash__"})


def replace(obj: T, /, **changes: Any) -> T:
    """A copy of the value ``obj`` (or dataclass instance) with ``changes`` to its fields."""
    names = getattr(type(obj), "__value_fields__", None)
    if names is None:
        import dataclasses

        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    unknown = sorted(changes.keys() - set(names))
    if unknown:
        raise TypeError(f"{type(obj).__qualname__} has no field {unknown[0]!r}")
    return type(obj)(**{name: changes.get(name, getattr(obj, name)) for name in names})


def _init(self: Any, *args: object, **kwargs: object) -> None:
    cls = type(self)
    names: tuple[str, ...] = cls.__value_fields__
    defaults: tuple[object, ...] = cls.__value_defaults__
    if len(args) > len(names):
        raise TypeError(
            f"{cls.__qualname__}() takes {len(names)} arguments but {len(args)} were given"
        )
    own = self.__dict__
    for index, name in enumerate(names):
        if index < len(args):
            if name in kwargs:
                raise TypeError(f"{cls.__qualname__}() got multiple values for {name!r}")
            own[name] = args[index]
        elif name in kwargs:
            own[name] = kwargs.pop(name)
        elif defaults[index] is not MISSING:
            default = defaults[index]
            own[name] = default.make() if default.__class__ is _Factory else default
        else:
            raise TypeError(f"{cls.__qualname__}() is missing {name!r}")
    if kwargs:
        raise TypeError(f"{cls.__qualname__}() has no field {sorted(kwargs)[0]!r}")


def _key(self: Any) -> tuple[object, ...]:
    """The values that equality and hashing look at."""
    return tuple(map(self.__dict__.__getitem__, type(self).__value_compared__))


def _repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__value_fields__)
    return f"{type(self).__qualname__}({shown})"


def _eq(self: object, other: object) -> bool:
    if other.__class__ is self.__class__:
        return _key(self) == _key(other)
    return NotImplemented


def _hash(self: object) -> int:
    return hash(_key(self))


def _setattr(self: object, name: str, _: object) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _delattr(self: object, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")
