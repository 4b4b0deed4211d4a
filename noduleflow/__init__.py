"""noduleflow: lung-nodule detection in chest CT, from a DICOM series to ranked candidates.

    >>> from noduleflow import Detector                      # doctest: +SKIP
    >>> dets = Detector().detect("path/to/dicom/series")     # doctest: +SKIP
    >>> dets[0].x, dets[0].probability                       # doctest: +SKIP
    >>> dets.save("out/")                                    # candidates.csv, <uid>.json, <uid>.png

Subpackages: `noduleflow.engine` (the torch-free runtime), `noduleflow.trainer` (PyTorch
training), `noduleflow.export` (ONNX / TensorRT / AOTInductor packages), `noduleflow.bench`
(accuracy and speed), and the application layer here (CLI, scanner-side service,
synthetic phantoms). The runtime imports none of the others. Importing this module is cheap:
the public names below load their module on first use.
"""
from __future__ import annotations

import importlib

from .engine import __version__
from .engine.backends import register_backend
from .engine.errors import BackendUnavailableError, ConfigError, NoduleflowError, PackageError, VolumeError

# The compiled-PyTorch backend needs torch, which the runtime never imports: it lives in export
# and is registered here, by the layer that may depend on both.
register_backend("torch-compiled", "noduleflow.export.torch_backend", "TorchCompiledBackend",
                 requires="torch", install="pip install 'noduleflow[export]'")

# public name -> module that defines it (imported on first use)
_LAZY = {
    "Detector": "noduleflow.engine.detector",
    "DetectorConfig": "noduleflow.engine.detector",
    "Detections": "noduleflow.engine.detector",
    "Candidate": "noduleflow.engine.detector",
    "Volume": "noduleflow.engine.volume",
    "load_volume": "noduleflow.engine.io",
    "save_volume": "noduleflow.engine.io",
    "lung_mask": "noduleflow.engine.lungmask",
    "resample": "noduleflow.engine.resample",
    "preprocess": "noduleflow.engine.preprocess",
    "ModelPackage": "noduleflow.engine.package",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'noduleflow' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)


__all__ = [
    *_LAZY,
    "NoduleflowError",
    "VolumeError",
    "PackageError",
    "BackendUnavailableError",
    "ConfigError",
    "__version__",
]
