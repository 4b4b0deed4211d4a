"""Inference backends behind one interface (`engine.backends.base.Backend`).

``open_backend(package, "auto")`` picks the fastest one present, in this order:
native TensorRT, ONNX Runtime CUDA, compiled PyTorch (AOTInductor) on CUDA, ONNX
Runtime CPU, and says which it picked. A backend asked for by name that cannot run
here is an error naming what to install: never a silent fallback.
"""
from __future__ import annotations

import importlib.util
import logging

from ..errors import BackendUnavailableError, ConfigError
from ..package import ModelPackage

log = logging.getLogger(__name__)

NAMES = ("auto", "tensorrt", "onnxruntime-cuda", "onnxruntime-tensorrt", "onnxruntime-cpu", "torch-compiled")


def _has(mod: str) -> bool:
    return importlib.util.find_spec(mod) is not None


def _cuda_ort() -> bool:
    from .onnxruntime import available_providers

    return "CUDAExecutionProvider" in available_providers()


def open_backend(package: ModelPackage, name: str = "auto", graph: str = "patch", **opts):
    """Open backend ``name`` for ``graph`` ("patch" or "dense") of ``package``."""
    if name not in NAMES:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}")
    if name == "auto":
        for cand in ("tensorrt", "onnxruntime-cuda", "onnxruntime-cpu"):
            try:
                b = open_backend(package, cand, graph, **opts)
            except BackendUnavailableError as exc:
                log.debug("auto: %s unavailable: %s", cand, exc)
                continue
            log.info("backend auto -> %s", b.name)
            return b
        raise BackendUnavailableError("no inference backend available: install onnxruntime")
    if name == "tensorrt":
        if not _has("tensorrt"):
            raise BackendUnavailableError("the tensorrt backend needs the tensorrt and cuda-python packages "
                                          "and an NVIDIA GPU: pip install 'noduleflow[gpu]'")
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(package, graph=graph, **opts)
    if name == "torch-compiled":
        if not _has("torch"):
            raise BackendUnavailableError("the torch-compiled backend needs PyTorch: pip install torch")
        from export.torch_backend import TorchCompiledBackend  # torch stays out of engine/

        return TorchCompiledBackend(package, graph=graph, **opts)
    from .onnxruntime import OnnxRuntimeBackend

    device = name.split("-", 1)[1]
    return OnnxRuntimeBackend(package, graph=graph, device=device, **opts)
