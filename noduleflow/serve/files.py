"""Private files and folders for the spool.

The spool holds patient data (images, reports, logs naming series), so every folder it
creates is 0700 and every file 0600 whatever the process umask: modes are set explicitly
(``os.open`` with a mode, then ``fchmod``/``chmod``) because a umask only ever removes bits and
a permissive one (0o000, 0o002) would leave the data readable by other local users. Files are
written atomically by `noduleflow.engine.fileio` with ``mode=FILE_MODE``.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def mkdir_private(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700 folders; an existing one is set to 0700."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            pass
        os.chmod(d, DIR_MODE)
    if stat.S_IMODE(path.stat().st_mode) != DIR_MODE:   # chmod only when needed: --status may run as
        os.chmod(path, DIR_MODE)                          # another user on a spool that is already right
    return path


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """An fd for ``path`` created 0600 (and made 0600 if it existed)."""
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


def make_private(path: Path) -> None:
    """0600 for a file, 0700 for a folder and everything under it (files moved in from elsewhere)."""
    path = Path(path)
    if path.is_dir():
        os.chmod(path, DIR_MODE)
        for p in path.rglob("*"):
            os.chmod(p, DIR_MODE if p.is_dir() else FILE_MODE)
    elif path.exists():
        os.chmod(path, FILE_MODE)


__all__ = ["DIR_MODE", "FILE_MODE", "make_private", "mkdir_private", "open_private"]
