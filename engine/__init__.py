"""noduleflow engine: CT series in, ranked lung-nodule candidates out.

The engine depends on numpy, numba, pydicom, SimpleITK and onnxruntime only.
It never imports torch (a test holds it to that). Heavy submodules are imported
lazily so that ``import noduleflow.engine`` stays cheap. It imports nothing from the
application layer (``noduleflow`` itself), trainer, export or bench (a test reads the imports).

numba's compiled kernels are cached in the user's cache folder (`numba_cache_dir`), never beside
the installed package: files pip does not know about would outlive an uninstall and shadow a
later install. numba reads its cache folder once, when it is imported, and every kernel module of
the engine imports numba after this package's ``__init__`` has run, so it is set here.
"""
from __future__ import annotations

import atexit
import importlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import BackendUnavailableError, ConfigError, NoduleflowError, PackageError, VolumeError
from .volume import Volume

__version__ = "0.1.0"

NUMBA_CACHE_ENV = "NUMBA_CACHE_DIR"


def numba_cache_dir() -> Path:
    """Where numba keeps the engine's compiled kernels: ``$NUMBA_CACHE_DIR`` when set (numba's own
    setting), else ``$XDG_CACHE_HOME/noduleflow/numba`` (default ``~/.cache/noduleflow/numba``)."""
    v = os.environ.get(NUMBA_CACHE_ENV)
    if v:
        return Path(v).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "noduleflow" / "numba"


def _use_user_numba_cache() -> None:
    """Point numba at `numba_cache_dir` unless the user chose a folder (``NUMBA_CACHE_DIR``). Where
    that folder cannot be created (a service account without a home), a new private temporary
    folder serves this process: kernels compile once per process, and still nothing is written
    beside the package (numba's own fallback would try there first)."""
    if os.environ.get(NUMBA_CACHE_ENV):
        return
    path = numba_cache_dir()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is not writable")
    except OSError as exc:
        path = Path(tempfile.mkdtemp(prefix="noduleflow-numba-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        logging.getLogger(__name__).info("numba's cache: %s (the user's cache folder is unusable: %s)", path, exc)
    os.environ[NUMBA_CACHE_ENV] = str(path)   # child processes (workers, tests) share it
    config = sys.modules.get("numba.core.config")
    if config is not None:                    # numba was imported first and read the environment then
        config.CACHE_DIR = str(path)


_use_user_numba_cache()

# public name -> submodule that defines it (imported on first use)
_LAZY = {
    "load_volume": ".io",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'noduleflow.engine' has no attribute {name!r}")


__all__ = [
    "Volume",
    "NoduleflowError",
    "VolumeError",
    "PackageError",
    "BackendUnavailableError",
    "ConfigError",
    "__version__",
    "numba_cache_dir",
    *_LAZY,
]
