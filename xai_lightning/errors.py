"""Errors that are the user's to fix: the command line prints them as one line (``XAI_DEBUG=1`` shows the
traceback)."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the input or the environment that a person can fix; its message says how."""


class ConfigError(UserError, ValueError):
    """A bad option or argument (raised before any training)."""


class CheckpointError(UserError, OSError):
    """A checkpoint that cannot be read or written."""
