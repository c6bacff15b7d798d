"""Errors that a user can fix.

Every exception in this module carries a one-line message that names the problem and
the fix. The command-line entry point prints such a message without a traceback and
exits with code 2; library users catch :class:`UserError`.
"""

from __future__ import annotations

__all__ = ["UserError", "ConfigError", "ShapeError", "UnknownSystemError", "NoExactSamplerError"]


class UserError(Exception):
    """Base class for errors caused by input that the user can correct."""


class ConfigError(UserError, ValueError):
    """A configuration value is invalid."""


class ShapeError(UserError, ValueError):
    """An array does not have the shape a function expects."""


class UnknownSystemError(UserError, KeyError):
    """A system name is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NoExactSamplerError(UserError, NotImplementedError):
    """The system has no exact sampler."""
