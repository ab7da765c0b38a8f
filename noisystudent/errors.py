"""Errors a user can cause.

Everything a user can get wrong (a config value, a CLI flag, a missing folder, a checkpoint that does
not fit) is raised as :class:`UserError` with a message that names the field or file. The CLI turns it
into one line on stderr and exit code 2; library callers can catch it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: config, flags, paths, data or checkpoints."""


class ConfigError(UserError):
    """A config field is unknown, of the wrong type or out of range. The message names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"config field '{field}': {message}")


class ImageDecodeError(Exception):
    """One image could not be read. Callers skip it, count it and list it; a run never stops for it."""

    def __init__(self, image_id: str, reason: str):
        self.image_id = image_id
        self.reason = reason
        super().__init__(f"{image_id}: {reason}")
