"""Exceptions that acpsl raises for a user's mistake or a broken input.

Every error a user can cause derives from :class:`AcpslError`, so the CLI can print it as
one line and exit with a clear code instead of a traceback.
"""

from __future__ import annotations


class AcpslError(Exception):
    """Base class of every error acpsl raises on purpose."""

    #: Exit code the CLI uses for this error: 2 for usage errors, 1 for runtime failures.
    exit_code: int = 1


class ConfigError(AcpslError, ValueError):
    """A configuration value is invalid (wrong type, out of range, unknown name)."""

    exit_code = 2


class PayloadError(AcpslError, ValueError):
    """Bytes that should hold a cut payload are malformed (truncated, oversized, inconsistent)."""


class DataError(AcpslError, RuntimeError):
    """A dataset file is missing, corrupt, or cannot be fetched."""


class TrainingError(AcpslError, RuntimeError):
    """Training cannot go on (for example a non-finite loss)."""


class CheckpointError(AcpslError, RuntimeError):
    """A checkpoint or run directory is missing, corrupt, or does not match the configuration."""


def os_error_reason(exc: OSError) -> str:
    """The system's reason for ``exc`` in a few words (e.g. "No space left on device")."""
    return exc.strerror or str(exc) or type(exc).__name__
