"""One error tree for driftwarden.

Everything driftwarden raises on purpose derives from :class:`DriftwardenError`, so a caller
(and the CLI) can tell a user's mistake from a bug.

>>> issubclass(ValidationError, ValueError) and issubclass(ValidationError, DriftwardenError)
True
"""

from __future__ import annotations


class DriftwardenError(Exception):
    """Root of every error driftwarden raises on purpose."""


class ConfigError(DriftwardenError):
    """A setting, a configuration file or an environment override is invalid."""


class ValidationError(DriftwardenError, ValueError):
    """Input data or a parameter is invalid (also a ``ValueError``)."""


class InputError(DriftwardenError):
    """A file could not be read or holds no usable data."""
