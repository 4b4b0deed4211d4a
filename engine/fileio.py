"""Atomic writes: a reader finds the old file (or folder) or the new one, never a cut-off one.

One way to do it, used by every writer of the package: results, manifests, the service's spool,
the trainer's caches and the exporter. The new content goes to a temporary name in the same
folder (so on the same filesystem, where ``os.replace`` is atomic), is flushed to disk, and is
renamed over the target; on an exception the temporary is removed and the target is left as it
was. Temporary names start with `TEMP_PREFIX` (``.tmp-``).

``mode``: None creates files 0666 and folders 0777 less the process umask, as ``open`` and
``mkdir`` do; an int sets exactly that mode whatever the umask (a umask only removes bits, so
a permissive one would otherwise leave private data readable by other local users).

Several files that belong together (a detection's JSON, picture and CSV) go through one
`Transaction`: all are written to temporaries first and renamed only when every one of them is
whole, so a full disk leaves none of them. `FolderLock` keeps two processes from writing into one
folder at once.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

# how every temporary name begins: hidden, and told apart from content by whoever lists a folder
TEMP_PREFIX = ".tmp-"
_TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r".*-[0-9a-f]{12}(\.[^.]*)?$", re.DOTALL)


def fsync_dir(path) -> None:
    """Flush a folder's entries (a rename into it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path, tmp_dir=None) -> Path:
    """A fresh name for a temporary of ``path``: ``.tmp-<stem>-<random><suffix>`` beside it
    (or in ``tmp_dir``, which must be on the same filesystem). The suffix is kept because some
    writers add their own otherwise (``numpy.savez`` appends ``.npz``)."""
    path = Path(path)
    folder = path.parent if tmp_dir is None else Path(tmp_dir)
    return folder / f"{TEMP_PREFIX}{path.stem}-{uuid.uuid4().hex[:12]}{path.suffix}"


def write_new(path, data: bytes | str, *, mode: int | None = None) -> Path:
    """Create the file ``path`` (which must not exist) holding ``data`` (str: UTF-8) and flush it to
    disk. A failed write removes what it created. -> ``path``."""
    payload = _as_bytes(data)
    path = Path(path)
    fd = _create(path, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_path(path, *, mode: int | None = None, tmp_dir=None) -> Iterator[Path]:
    """Yield a temporary path (an empty file, created with ``mode``) for the caller to write
    ``path``'s new content to with any writer (``numpy.savez``, ``Path.write_text``...). On a
    normal exit the temporary is flushed to disk and renamed over ``path``, and the folder is
    flushed; on an exception it is removed and ``path`` is untouched. ``tmp_dir``: where the
    temporary lives instead of beside ``path`` (same filesystem)."""
    path = Path(path)
    tmp = temp_name(path, tmp_dir)
    os.close(_create(tmp, mode))
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path, data: bytes | str, *, mode: int | None = None, tmp_dir=None) -> Path:
    """Replace (or create) the file ``path`` with ``data`` (str: UTF-8), atomically and durably
    (`atomic_path`). -> ``path``."""
    payload = _as_bytes(data)
    with atomic_path(path, mode=mode, tmp_dir=tmp_dir) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path, *, mode: int | None = None) -> Iterator[Path]:
    """Yield a new empty temporary folder beside ``path`` to build ``path``'s content in; on a
    normal exit it is renamed to ``path``, on an exception removed with what it holds.

    An existing empty folder at ``path`` is replaced; an existing non-empty one is not (it may be
    a concurrent writer's complete result): `FileExistsError`, and the temporary is removed. The
    content is not flushed to disk file by file: the writers of folders (caches, packages) can
    build them again after a crash."""
    path = Path(path)
    tmp = temp_name(path)
    os.mkdir(tmp, 0o777 if mode is None else mode)
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        yield tmp
        try:
            os.replace(tmp, path)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(errno.EEXIST, "folder exists and is not empty", str(path)) from exc
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_files(folder, *, mode: int | None = None, last: str | None = None) -> Iterator[Path]:
    """Yield a new private (0700) temporary folder inside ``folder`` for a writer that makes files
    which name one another (a MetaImage header and its data file) under their final names. On a
    normal exit each file in it is given ``mode``, flushed and renamed into ``folder`` (the one
    named ``last``, e.g. the header that points at the others, after the rest), and the temporary
    folder is removed; on an exception it is removed with what it holds and ``folder`` is as it was
    (bar files renamed before a rename failed part-way, which needs no disk space: rare)."""
    folder = Path(folder)
    tmp = temp_name(folder / "files")
    os.mkdir(tmp, 0o700)
    try:
        yield tmp
        names = sorted(os.listdir(tmp), key=lambda n: (n == last, n))
        for name in names:
            if mode is not None:
                os.chmod(tmp / name, mode, follow_symlinks=False)
            _fsync_file(tmp / name)
        for name in names:
            os.replace(tmp / name, folder / name)
        fsync_dir(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Transaction:
    """Files written now to temporaries beside their targets and renamed into place together.

        with Transaction(mode=0o600) as tx:
            tx.write(folder / "a.json", text)
            tx.write(folder / "a.png", png_bytes)
        # here both are in place; an exception inside the block left neither (and no temporary)

    `commit` renames after every file was written and flushed, so a write error (a full disk)
    leaves the targets as they were. A rename failing part-way (rare: renames need no data
    blocks) leaves the files renamed before it and removes the other temporaries.
    """

    def __init__(self, *, mode: int | None = None):
        self.mode = mode
        self._staged: list[tuple[Path, Path]] = []   # (temporary, target)
        self._done = False

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    @property
    def targets(self) -> list[Path]:
        """The files this transaction will write, in the order they were staged."""
        return [t for _, t in self._staged]

    def write(self, path, data: bytes | str) -> Path:
        """Stage ``data`` (str: UTF-8) for ``path``: written and flushed to a temporary now. A failed
        write removes that temporary and raises (the others stay staged until `discard`)."""
        if self._done:
            raise ValueError("this transaction is already committed or discarded")
        payload = _as_bytes(data)
        path = Path(path)
        tmp = write_new(temp_name(path), payload, mode=self.mode)
        self._staged.append((tmp, path))
        return path

    def commit(self) -> list[Path]:
        """Rename every staged temporary over its target and flush the folders. -> the targets."""
        if self._done:
            raise ValueError("this transaction is already committed or discarded")
        try:
            for tmp, path in self._staged:
                os.replace(tmp, path)
            for folder in dict.fromkeys(p.parent for _, p in self._staged):
                fsync_dir(folder)
        except BaseException:
            self.discard()
            raise
        self._done = True
        return self.targets

    def discard(self) -> None:
        """Remove every staged temporary that was not renamed; the targets stay as they were."""
        for tmp, _ in self._staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._done = True


class FolderLockedError(BlockingIOError):
    """Another process holds the folder's `FolderLock`; ``holder`` is what it wrote (its pid)."""

    def __init__(self, folder: Path, holder: str):
        super().__init__(errno.EWOULDBLOCK, f"locked by another process ({holder or 'pid unknown'})", str(folder))
        self.holder = holder


class FolderLock:
    """An exclusive advisory lock (``flock``) on a folder, held through the lock file ``LOCK_NAME``
    inside it (0600, holding the holder's pid): the second process refuses at once
    (`FolderLockedError`) instead of waiting for a run that may take minutes. The lock file is
    removed on release. Only processes that take this lock are kept out.

        with FolderLock(folder): ...
    """

    LOCK_NAME = ".noduleflow.lock"

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / self.LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode("ascii", "replace").strip()
                os.close(fd)
                raise FolderLockedError(self.folder, holder) from None
            except BaseException:
                os.close(fd)
                raise
            # the holder before us may have removed the file between our open and our lock: then
            # we hold a lock on a file nobody else will open; take the lock again on the new one
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()   # while still locked: a waiter re-checks the inode (acquire)
        finally:
            os.close(self._fd)       # closing releases the lock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def remove_stale_temporaries(folder) -> list[Path]:
    """Remove the regular files directly in ``folder`` named as `temp_name` names temporaries
    (``.tmp-<stem>-<12 hex digits><suffix>``), left by a writer that was killed. Call it only while
    holding the folder's `FolderLock`. -> what was removed."""
    removed = []
    for entry in os.scandir(folder):
        if _TEMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _create(path: Path, mode: int | None) -> int:
    """An fd for the new file ``path`` (an existing one is an error), with ``mode``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    if mode is not None:
        try:
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
    return fd


def _as_bytes(data) -> bytes | bytearray | memoryview:
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    raise TypeError(f"data must be str or bytes, got {type(data).__name__}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["TEMP_PREFIX", "FolderLock", "FolderLockedError", "Transaction", "atomic_dir", "atomic_files", "atomic_path",
           "atomic_write", "fsync_dir", "remove_stale_temporaries", "temp_name", "write_new"]
