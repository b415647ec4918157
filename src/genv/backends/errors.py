"""The error of every GPU backend (apart from genv.backends.base, which needs typing)."""

from genv.errors import GenvError


class BackendError(GenvError, RuntimeError):
    """The GPUs cannot be read at all (no driver, no library, a bad simulated machine).

    The message is one line for the user: what is wrong and what to do.
    """
