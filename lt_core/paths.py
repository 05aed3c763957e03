"""Output paths checked before anything is written: a directory that exists, or can be created,
and can be written to."""

from __future__ import annotations

import os
from pathlib import Path

from lt_core.errors import ConfigError

NAME_MAX = 255  # bytes in one path component on the usual file systems


def check_writable_dir(path: Path, field: str) -> None:
    """ConfigError (``field: reason``) unless ``path`` is a writable directory or can be created
    as one. Creates nothing."""
    path = Path(path)
    long = [part for part in path.parts if len(os.fsencode(part)) > NAME_MAX]
    if long:
        raise ConfigError(f"{field}: {path} cannot be created: a name is over {NAME_MAX} bytes "
                          f"({long[0][:24]}...)")
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{field}: {path} is an existing file, not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{field}: {path} is not writable")
        return
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{field}: {path} cannot be created: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{field}: {path} cannot be created: {ancestor} is not writable")
