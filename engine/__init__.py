"""noduleflow engine: CT series in, ranked lung-nodule candidates out.

The engine depends on numpy, numba, pydicom, SimpleITK and onnxruntime only.
It never imports torch (a test holds it to that). Heavy submodules are imported
lazily so that ``import noduleflow.engine`` stays cheap. It imports nothing from the
application layer (``noduleflow`` itself), trainer, export or bench (a test reads the imports).
"""
from __future__ import annotations

import importlib

from .errors import BackendUnavailableError, ConfigError, NoduleflowError, PackageError, VolumeError
from .volume import Volume

__version__ = "0.1.0"

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
    *_LAZY,
]
