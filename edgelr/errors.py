"""One exception hierarchy for edgelr.

Every error a user can cause derives from :class:`EdgelrError`. Messages say what was
received, what was expected and what to do; the CLI prints ``str(err)`` on one line and
exits with ``err.exit_code`` (1 unless said otherwise). ``--debug`` shows the traceback.
"""

from __future__ import annotations


class EdgelrError(Exception):
    """Base class of every error edgelr raises on purpose."""

    exit_code: int = 1


class UsageError(EdgelrError):
    """The command line or an option value is wrong (exit code 2)."""

    exit_code = 2


class TargetError(EdgelrError):
    """Unknown or malformed target profile."""


class ModelLoadError(EdgelrError):
    """A model file is missing, corrupt, or uses layers edgelr cannot translate."""


class DataError(EdgelrError):
    """Data is missing, malformed, or does not fit the model."""


class FactorizeError(EdgelrError):
    """A decomposition or rewrite got input it cannot handle (bad rank, non-finite weights...)."""


class ConversionError(EdgelrError):
    """TFLite conversion or validation failed."""


class DeviceError(EdgelrError):
    """A device is unreachable, timed out, or misbehaved."""


class HostKeyError(DeviceError):
    """An SSH host key is unknown or does not match known_hosts."""


class BenchmarkError(DeviceError):
    """The benchmark program failed on the device or printed output we cannot trust."""


class InventoryError(EdgelrError):
    """The device inventory file is missing, malformed, or lacks the named device."""


class HistoryError(EdgelrError):
    """The results history store cannot be read or written."""


class NotAvailableError(EdgelrError):
    """A sub-command that a later release fills in."""


class RegressionFound(EdgelrError):
    """A regression run found at least one regression (exit code 3)."""

    exit_code = 3


class Interrupted(EdgelrError):
    """The user stopped the run (Ctrl-C, SIGTERM): what was measured is kept (exit code 130)."""

    exit_code = 130
