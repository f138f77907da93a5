"""Errors that reach the user, each with the exit code the CLI returns for it.

Exit codes (documented in README.md):
  0 ok, 2 usage or schedule error, 3 invalid or unsafe model, 4 unsupported feature,
  5 verification failed, 6 resource limit, 7 output I/O error, 70 internal error.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    USAGE = 2
    INVALID_MODEL = 3
    UNSUPPORTED = 4
    VERIFICATION_FAILED = 5
    RESOURCE_LIMIT = 6
    OUTPUT_IO = 7
    INTERNAL = 70


class HomecError(Exception):
    """An error with a one-line message meant for the user and an exit code."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, *, path: str | None = None):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class UsageError(HomecError):
    exit_code = ExitCode.USAGE


class InvalidModelError(HomecError):
    """The model file is missing, unreadable, not ONNX, malformed or unsafe."""

    exit_code = ExitCode.INVALID_MODEL


class UnsupportedError(HomecError):
    exit_code = ExitCode.UNSUPPORTED


class VerificationError(HomecError):
    exit_code = ExitCode.VERIFICATION_FAILED


class ResourceLimitError(HomecError):
    exit_code = ExitCode.RESOURCE_LIMIT


class OutputError(HomecError):
    exit_code = ExitCode.OUTPUT_IO


class IRError(HomecError):
    """An IR invariant is violated (a bug in a pass, or a malformed graph being built)."""

    exit_code = ExitCode.INTERNAL
