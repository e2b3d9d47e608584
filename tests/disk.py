"""Filling a (small, test-mounted) file system to the last byte, for ENOSPC tests."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fill_disk"]


def fill_disk(directory: Path) -> Path:
    """Fill the file system of ``directory`` with one file until a one-byte write fails with
    ENOSPC; delete the file to free the space again."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler
