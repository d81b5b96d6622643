"""Errors of the embedded world (one-line, naming the file and the fix)."""

from __future__ import annotations


class WeightsError(ValueError):
    """A shipped weight/config file is missing or unreadable; the message names it and the rebuild command."""
