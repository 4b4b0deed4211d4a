"""Inference backends behind one interface (`engine.backends.base.Backend`).

``open_backend(package, "auto")`` picks the fastest one present, in this order:
native TensorRT, ONNX Runtime CUDA, OpenVINO CPU (when the optional openvino package is
installed), ONNX Runtime CPU, and says which it picked. A backend asked for by name that cannot run
here is an error naming what to install: never a silent fallback.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BackendUnavailableError, ConfigError

if TYPE_CHECKING:  # the registry is imported by `import noduleflow`: keep it light
    from ..package import ModelPackage

log = logging.getLogger(__name__)

BUILTIN = ("auto", "tensorrt", "onnxruntime-cuda", "onnxruntime-tensorrt", "openvino-cpu", "onnxruntime-cpu")

# Backends that live outside the runtime (they need torch, which the engine never imports) are
# registered by the layer that owns them: name -> (module, class, module it needs, install hint).
_REGISTERED: dict[str, tuple[str, str, str, str]] = {}


def register_backend(name: str, module: str, cls: str, requires: str, install: str) -> None:
    """Make ``name`` openable: ``module.cls(package, graph=..., **opts)``, imported on first use.
    ``requires`` is the import that must be present, ``install`` what to install otherwise."""
    if name in BUILTIN:
        raise ConfigError(f"backend name {name!r} is built in")
    _REGISTERED[name] = (module, cls, requires, install)


def backend_names() -> tuple[str, ...]:
    """Every name `open_backend` accepts, "auto" first."""
    return BUILTIN + tuple(_REGISTERED)


# what "auto" tries, in order: the GPU backends, then the CPU ones (OpenVINO before ONNX Runtime)
AUTO_ORDER = ("tensorrt", "onnxruntime-cuda", "openvino-cpu", "onnxruntime-cpu")


def _has(mod: str) -> bool:
    return importlib.util.find_spec(mod) is not None


def _ort_gpu_build() -> bool:
    """Whether the installed ONNX Runtime is a GPU build (its CUDA provider library ships beside
    it), found without importing it: "auto" on a CPU machine then never pays ONNX Runtime's import
    for a provider it cannot have."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(any(Path(d, "capi").glob("*onnxruntime_providers_cuda*")) for d in spec.submodule_search_locations)


def open_backend(package: ModelPackage, name: str = "auto", graph: str = "patch", **opts):
    """Open backend ``name`` for ``graph`` ("patch" or "dense") of ``package``."""
    if name not in backend_names():
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(backend_names())}")
    if name == "auto":
        why = []
        for cand in AUTO_ORDER:
            if cand == "onnxruntime-cuda" and not _ort_gpu_build():
                log.debug("auto: onnxruntime-cuda unavailable: ONNX Runtime is not a GPU build")
                continue
            try:
                b = open_backend(package, cand, graph, **opts)
            except BackendUnavailableError as exc:
                log.debug("auto: %s unavailable: %s", cand, exc)
                why.append(f"{cand}: {exc}")
                continue
            log.info("backend auto -> %s", b.name)
            return b
        if not _has("onnxruntime"):
            raise BackendUnavailableError("no inference backend available: install onnxruntime")
        # each backend present refused (e.g. a precision none of them runs here): say why
        raise BackendUnavailableError("no installed backend runs this (" + "; ".join(why) + ")")
    if name == "tensorrt":
        if not _has("tensorrt"):
            raise BackendUnavailableError("the tensorrt backend needs the tensorrt and cuda-python packages "
                                          "and an NVIDIA GPU: pip install 'noduleflow[gpu]'")
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(package, graph=graph, **opts)
    if name == "openvino-cpu":
        if not _has("openvino"):
            raise BackendUnavailableError("the openvino-cpu backend needs openvino: pip install 'noduleflow[openvino]'")
        from .openvino import OpenVinoBackend

        return OpenVinoBackend(package, graph=graph, **opts)
    if name in _REGISTERED:
        module, cls, requires, install = _REGISTERED[name]
        if not _has(requires):
            raise BackendUnavailableError(f"the {name} backend needs {requires}: {install}")
        return getattr(importlib.import_module(module), cls)(package, graph=graph, **opts)
    from .onnxruntime import OnnxRuntimeBackend

    device = name.split("-", 1)[1]
    return OnnxRuntimeBackend(package, graph=graph, device=device, **opts)
