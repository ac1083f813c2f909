"""User-facing data errors.

:class:`DataError` marks a problem with the user's input (a missing file, bad bytes, mismatched
line counts, an unreachable hub dataset...). The CLI prints ``str(err)`` -- always one line that
names the file/line/key and the offending values -- and exits with status 2.
"""

from __future__ import annotations


class DataError(Exception):
    """A user error in data handling; ``str()`` is a single line naming what is wrong."""

    def __init__(self, message: str) -> None:
        # Collapse any embedded newlines so the CLI always prints exactly one line.
        one_line = " ".join(message.split())
        super().__init__(one_line)
        self.message = one_line

    def __str__(self) -> str:
        return self.message
