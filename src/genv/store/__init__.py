"""The state store: the only code that locks, loads and saves environments and attachments."""

from __future__ import annotations

from genv.domain.state import State, StateProblem
from genv.store.errors import NotFound, PermissionRefused, StateError, StoreError
from genv.store.store import Store

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    from genv.store.transaction import Transaction

__all__ = [
    "NotFound",
    "PermissionRefused",
    "State",
    "StateError",
    "StateProblem",
    "Store",
    "StoreError",
    "Transaction",
]


def __getattr__(name: str) -> object:
    """``Transaction`` is imported when asked for: readers never need it."""
    if name == "Transaction":
        from genv.store.transaction import Transaction

        return Transaction
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
