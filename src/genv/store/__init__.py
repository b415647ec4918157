"""The state store: the only code that locks, loads and saves environments and attachments."""

from genv.domain.state import State, StateProblem
from genv.store.errors import NotFound, PermissionRefused, StateError, StoreError
from genv.store.store import Store
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
