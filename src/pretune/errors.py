"""The one exception type for errors a user can cause.

The CLI prints its message on one line and exits with status 2, never a traceback. Messages name
the file and line, the tensor, or the setting to change.
"""

from __future__ import annotations


class PretuneError(Exception):
    """A mistake in the user's input: a path, a file's content, a setting, a checkpoint."""


def where(path: object, line: int | None = None) -> str:
    """Format a location as ``path:line`` (or just ``path``) for error messages."""
    return f"{path}:{line}" if line is not None else str(path)
