"""Bad input, named once, in a module that imports nothing heavy: the command line catches these
(one line, exit 2) without loading torch first."""

from __future__ import annotations


class ConfigError(ValueError):
    """A one-line, field-named description of bad input."""


class DataUnavailable(RuntimeError):
    """The dataset's files are missing and could not be fetched."""


class RunDirMismatch(ValueError):
    """The output directory holds a run with a different config."""


USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataUnavailable, RunDirMismatch)
