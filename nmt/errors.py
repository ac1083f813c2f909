"""User errors raised by nmt/ (the CLI prints them as one line and exits 2)."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input or configuration; ``str()`` is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def user_error_types() -> tuple[type[BaseException], ...]:
    """Every exception class that signals a user error (exit 2, no traceback)."""
    from data.errors import DataError
    from parallel.errors import PlacementError

    return (UserError, DataError, PlacementError)
