"""Errors raised while reading signature sources."""

from __future__ import annotations


class SignatureError(Exception):
    """A signature source could not be loaded.

    Carries the file and 1-based line so every front end can print ``file:line: reason``.
    ``line`` is 0 when the problem concerns the whole file (unreadable, empty, unknown format).
    """

    def __init__(self, path: str, line: int, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {reason}")
