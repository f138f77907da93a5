"""Writing output files atomically: everything is staged in a private folder beside the
destination and renamed into place, so a failed or interrupted write leaves the old file."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

__all__ = ["staging_dir"]


@contextlib.contextmanager
def staging_dir(directory: str, what: str) -> Iterator[str]:
    """A fresh private folder inside `directory` (same filesystem, so `os.replace` from it is
    atomic), removed afterwards with whatever is left in it. A folder rather than mkstemp:
    files are created with the umask's permissions (mkstemp's 0600 would survive the rename).
    """
    tmp = tempfile.mkdtemp(prefix=f".homec-{what}-", dir=directory)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
