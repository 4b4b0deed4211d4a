"""Inference backends behind one interface (`engine.backends.base.Backend`), registered in one table.

`BACKENDS` lists every built-in backend, one module each, in order of preference: every other
list (the names ``open_backend`` and ``--backend`` take, what ``auto`` tries, the CPU backends,
the precisions ``--precision`` offers, each backend's accepted precisions) is derived from it.
Adding a backend is one entry here and its module. A module is imported only when its backend
is opened, so ``import noduleflow`` stays light.

``open_backend(package, "auto")`` picks the first backend marked ``auto`` that opens here:
native TensorRT, ONNX Runtime CUDA, OpenVINO CPU (when the optional openvino package is
installed), ONNX Runtime CPU, and says which it picked. A backend asked for by name that cannot run
here is an error naming what to install: never a silent fallback.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BackendUnavailableError, ConfigError

if TYPE_CHECKING:  # the registry is imported by `import noduleflow`: keep it light
    from ..package import ModelPackage

log = logging.getLogger(__name__)


def ort_gpu_build() -> bool:
    """Whether the installed ONNX Runtime is a GPU build (its CUDA provider library ships beside
    it), found without importing it: "auto" on a CPU machine then never pays ONNX Runtime's import
    for a provider it cannot have."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(any(Path(d, "capi").glob("*onnxruntime_providers_cuda*")) for d in spec.submodule_search_locations)


@dataclass(frozen=True)
class BackendInfo:
    """One backend: ``module.cls(package, graph=..., **options, **opts)`` opens it.

    ``module``: relative to this package for the built-in ones, absolute for registered ones;
    ``device``: where it runs, "cpu" or "cuda" (None: the package decides); ``precisions``: the
    arithmetic it runs (its default is the class's); ``requires``: the import that must be
    present, ``install`` what to install otherwise; ``auto``: whether "auto" tries it (in table
    order), and ``auto_when``: a cheap check, without importing, that it may run here;
    ``options``: constructor arguments its name fixes (ONNX Runtime's execution provider)."""

    name: str
    module: str
    cls: str
    device: str | None
    precisions: tuple[str, ...]
    requires: str
    install: str
    auto: bool = False
    auto_when: Callable[[], bool] | None = None
    options: tuple[tuple[str, str], ...] = ()


_ORT = (".onnxruntime", "OnnxRuntimeBackend")
_ORT_PRECISIONS = ("fp32", "fp16", "int8")

BACKENDS: tuple[BackendInfo, ...] = (
    BackendInfo("tensorrt", ".tensorrt", "TensorRTBackend", "cuda", ("fp32", "fp16", "int8"), "tensorrt",
                "pip install 'noduleflow[gpu]' (the tensorrt and cuda-python packages, and an NVIDIA GPU)",
                auto=True),
    BackendInfo("onnxruntime-cuda", *_ORT, "cuda", _ORT_PRECISIONS, "onnxruntime", "pip install 'noduleflow[gpu]'",
                auto=True, auto_when=ort_gpu_build, options=(("device", "cuda"),)),
    BackendInfo("onnxruntime-tensorrt", *_ORT, "cuda", _ORT_PRECISIONS, "onnxruntime",
                "pip install 'noduleflow[gpu]'", options=(("device", "tensorrt"),)),
    BackendInfo("openvino-cpu", ".openvino", "OpenVinoBackend", "cpu", ("fp32", "int8", "bf16"), "openvino",
                "pip install 'noduleflow[openvino]'", auto=True),
    BackendInfo("onnxruntime-cpu", *_ORT, "cpu", _ORT_PRECISIONS, "onnxruntime", "pip install onnxruntime",
                auto=True, options=(("device", "cpu"),)),
)

# Derived from the table; kept as module constants for their callers.
BUILTIN = ("auto", *(b.name for b in BACKENDS))
AUTO_ORDER = tuple(b.name for b in BACKENDS if b.auto)

# Backends that live outside the runtime (they need torch, which the engine never imports) are
# registered by the layer that owns them (`register_backend`).
_REGISTERED: dict[str, BackendInfo] = {}


def register_backend(name: str, module: str, cls: str, requires: str, install: str, *,
                     device: str | None = None, precisions: tuple[str, ...] = ("fp32",)) -> None:
    """Make ``name`` openable: ``module.cls(package, graph=..., **opts)``, imported on first use.
    ``requires`` is the import that must be present, ``install`` what to install otherwise;
    ``device``: where it runs (None: the package decides); ``precisions``: what it runs. "auto"
    never picks a registered backend."""
    if name in BUILTIN:
        raise ConfigError(f"backend name {name!r} is built in")
    _REGISTERED[name] = BackendInfo(name, module, cls, device, tuple(precisions), requires, install)


def backends() -> tuple[BackendInfo, ...]:
    """Every backend: the built-in ones (`BACKENDS`), then the registered ones."""
    return BACKENDS + tuple(_REGISTERED.values())


def backend_info(name: str) -> BackendInfo:
    """The table entry of backend ``name``; an unknown name is a ConfigError listing the known ones."""
    for b in backends():
        if b.name == name:
            return b
    raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(backend_names())}")


def backend_names() -> tuple[str, ...]:
    """Every name `open_backend` accepts, "auto" first."""
    return ("auto", *(b.name for b in backends()))


def cpu_backend_names() -> tuple[str, ...]:
    """The backends that run on the CPU, in order of preference (the first is what "auto" takes
    on a machine without a GPU, when installed)."""
    return tuple(b.name for b in backends() if b.device == "cpu")


def precision_names() -> tuple[str, ...]:
    """Every precision some backend runs (``--precision``'s choices)."""
    return tuple(dict.fromkeys(p for b in backends() for p in b.precisions))


def _has(mod: str) -> bool:
    return importlib.util.find_spec(mod) is not None


def open_backend(package: ModelPackage, name: str = "auto", graph: str = "patch", **opts):
    """Open backend ``name`` for ``graph`` ("patch", "dense" or "stage2") of ``package``."""
    if name == "auto":
        return _open_auto(package, graph, opts)
    info = backend_info(name)
    if not _has(info.requires):
        raise BackendUnavailableError(f"the {name} backend needs {info.requires}: {info.install}")
    module = importlib.import_module(info.module, __name__)
    return getattr(module, info.cls)(package, graph=graph, **dict(info.options), **opts)


def _open_auto(package: ModelPackage, graph: str, opts: dict):
    why = []
    for info in BACKENDS:
        if not info.auto:
            continue
        if info.auto_when is not None and not info.auto_when():
            log.debug("auto: %s cannot run here (%s is false)", info.name, info.auto_when.__name__)
            continue
        try:
            b = open_backend(package, info.name, graph, **opts)
        except BackendUnavailableError as exc:
            log.debug("auto: %s unavailable: %s", info.name, exc)
            why.append(f"{info.name}: {exc}")
            continue
        log.info("backend auto -> %s", b.name)
        return b
    if not any(_has(b.requires) for b in BACKENDS if b.auto):
        raise BackendUnavailableError("no inference backend available: install onnxruntime")
    # each backend present refused (e.g. a precision none of them runs here): say why
    raise BackendUnavailableError("no installed backend runs this (" + "; ".join(why) + ")")


__all__ = ["AUTO_ORDER", "BACKENDS", "BUILTIN", "BackendInfo", "backend_info", "backend_names", "backends",
           "cpu_backend_names", "open_backend", "ort_gpu_build", "precision_names", "register_backend"]
