"""Errors a user can cause through the store; each message is one line that says what to do."""

from genv.errors import GenvError


class StoreError(GenvError):
    """Base of the store's user-facing errors."""


class StateError(StoreError):
    """The state folder or a state file cannot be used (corrupt, unreadable, unsafe, full)."""


class PermissionRefused(StoreError):
    """The caller tried to act on another user's environment or attachment."""


class NotFound(StoreError):
    """No environment with that id, or nothing registered for that process or kernel."""
