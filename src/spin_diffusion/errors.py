"""One exception type for problems the user can fix.

The CLI turns it into a one-line ``error: ...`` message and a non-zero exit
instead of a traceback; library callers can catch it by type.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (path, config value, data file, checkpoint)."""

    exit_code = 2


class DataError(UserError):
    """A data source is unreadable or holds an unusable example."""


class ConfigError(UserError):
    """A configuration file or value is invalid."""


class CheckpointError(UserError):
    """A checkpoint or model directory does not fit what the run expects."""
