"""One exception family; every message says what to do next."""

from __future__ import annotations


class SdplayError(Exception):
    """Base class of every error sdplay raises on purpose.

    `field` names the request field at fault (for forms and API error bodies),
    `hint` says what to do about it.
    """

    status = 500

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class InvalidRequest(SdplayError):
    """A parameter is out of range or malformed."""

    status = 400


class ModelNotAvailable(SdplayError):
    """A model is unknown, or its weights are not on this machine."""

    status = 404


class DeviceNotAvailable(SdplayError):
    """The requested device does not exist on this machine."""

    status = 400


class DeviceOutOfMemory(SdplayError):
    """The device ran out of memory; the hint says what would fit."""

    status = 507


class UnsafeCheckpoint(SdplayError):
    """A pickle checkpoint was refused because unpickling runs arbitrary code."""

    status = 400


class Cancelled(SdplayError):
    """The generation was cancelled between two steps."""

    status = 409


class OutputNotWritable(SdplayError):
    """The output folder cannot be created or written."""

    status = 400


class DataError(SdplayError):
    """Training or evaluation data is missing, corrupt or malformed."""

    status = 400


class MissingExtra(SdplayError):
    """An optional part of sdplay (an extra such as 'server') is not installed; the hint gives the command."""

    status = 501


class TimeLimitExceeded(SdplayError):
    """A generation ran past its time limit and was stopped (inside a step)."""

    status = 408


# Every error class of the core by name, for errors that travel between processes (Ray replicas).
BY_NAME: dict[str, type[SdplayError]] = {
    cls.__name__: cls
    for cls in (SdplayError, InvalidRequest, ModelNotAvailable, DeviceNotAvailable, DeviceOutOfMemory,
                UnsafeCheckpoint, Cancelled, OutputNotWritable, DataError, MissingExtra, TimeLimitExceeded)
}  # fmt: skip
