"""The project's error classes.

Every error a user can cause is one of these: the command line prints its message as one line (no
traceback unless ``--debug`` or ``PCPO_DEBUG=1``) and exits non-zero.
"""

from __future__ import annotations


class PcpoError(Exception):
    """Base class of errors whose message alone tells the user what is wrong and how to fix it."""


class ConfigError(PcpoError, ValueError):
    """A bad configuration value; the message names the key and the fix."""
