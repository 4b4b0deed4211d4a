"""Native TensorRT backend: deserialised plan, named-tensor API, pinned host buffers, one stream.

UNVERIFIED: TensorRT cannot be installed on the machines this project is developed and
tested on; this file is written against the documented TensorRT 10 Python API
(``deserialize_cuda_engine``, ``num_io_tensors`` / ``get_tensor_name`` /
``get_tensor_mode``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``)
and CUDA Python's runtime bindings, and has not run. Its pure-Python parts (plan keys,
plan paths, refusing a plan built for another GPU / version / precision) are tested.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..config import DENSE_TILE_OUT
from ..errors import BackendUnavailableError, PackageError
from ..package import ModelPackage
from . import backend_info
from .base import Backend, graph_channels

log = logging.getLogger(__name__)

PRECISIONS = backend_info("tensorrt").precisions   # declared in the backend table


@dataclass(frozen=True)
class PlanKey:
    """What a serialised TensorRT plan is valid for: it must match exactly to be loaded."""

    gpu: str
    compute_capability: str
    tensorrt: str
    precision: str
    graph: str

    def filename(self) -> str:
        safe = lambda s: re.sub(r"[^A-Za-z0-9.]+", "-", s).strip("-")  # noqa: E731
        return (f"{self.graph}_{self.precision}_{safe(self.gpu)}_sm{safe(self.compute_capability)}"
                f"_trt{safe(self.tensorrt)}.plan")


def plan_path(package_dir, key: PlanKey) -> Path:
    return Path(package_dir) / "trt" / key.filename()


def write_plan(package_dir, key: PlanKey, plan: bytes) -> Path:
    p = plan_path(package_dir, key)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_bytes(plan)
    tmp.replace(p)
    p.with_suffix(".json").write_text(json.dumps(asdict(key), indent=2))
    return p


def read_plan(package_dir, key: PlanKey) -> bytes:
    """The plan for exactly this key; PackageError if none, or if its recorded key differs."""
    p = plan_path(package_dir, key)
    meta = p.with_suffix(".json")
    if not p.exists() or not meta.exists():
        others = sorted(x.name for x in (Path(package_dir) / "trt").glob("*.plan")) \
            if (Path(package_dir) / "trt").exists() else []
        raise PackageError(f"no TensorRT plan for {key}; build one with `noduleflow export --tensorrt` on this "
                           f"machine (plans present: {others or 'none'})")
    recorded = PlanKey(**json.loads(meta.read_text()))
    if recorded != key:
        raise PackageError(f"TensorRT plan {p.name} was built for {recorded}, not {key}: rebuild it")
    return p.read_bytes()


def current_key(precision: str, graph: str) -> PlanKey:
    """The key of this machine: GPU name and compute capability, TensorRT version."""
    import tensorrt as trt
    from cuda.bindings import runtime as cudart

    err, props = cudart.cudaGetDeviceProperties(0)
    _check(err)
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return PlanKey(name.strip("\x00"), f"{props.major}.{props.minor}", trt.__version__, precision, graph)


def _check(err):
    from cuda.bindings import runtime as cudart

    code = err[0] if isinstance(err, tuple) else err
    if code != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA error {code}")


class TensorRTBackend(Backend):
    """Runs a plan from ``<package>/trt/`` built for this GPU, TensorRT version and precision.

    Host inputs are copied through a pinned buffer on one CUDA stream; inputs already on
    the GPU (objects with ``__cuda_array_interface__``) are bound without a copy.
    """

    def __init__(self, package: ModelPackage, graph: str = "patch", precision: str = "fp16",
                 max_batch: int = 256, max_tile=None):
        super().__init__(graph, max_batch, package.contract.patch_size, graph_channels(package, graph))
        try:
            import tensorrt as trt
            from cuda.bindings import runtime as cudart
        except ImportError as exc:
            raise BackendUnavailableError(f"tensorrt backend: {exc}; pip install 'noduleflow[gpu]'") from exc
        if precision not in PRECISIONS:
            raise BackendUnavailableError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.name, self.device, self.precision = "tensorrt", "cuda", precision
        self._cudart = cudart
        key = current_key(precision, graph)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(read_plan(package.path, key))
        if self._engine is None:
            raise PackageError(f"TensorRT could not deserialise {plan_path(package.path, key).name}")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        err, self._stream = cudart.cudaStreamCreate()
        _check(err)
        if max_tile is None:  # the engine's dense tile (`config.DENSE_TILE_OUT` output points), 4 voxels spare
            side = (package.contract.dense_stride or 4) * (DENSE_TILE_OUT - 1) + self.patch_size + 4
            max_tile = (side,) * 3
        n_in = max_batch * self.channels * self.patch_size ** 3 if graph != "dense" else int(np.prod(max_tile))
        self._dev_in = self._malloc(n_in * 4)
        self._dev_out = self._malloc(n_in * 4)  # outputs are never larger than inputs
        err, self._host_in = cudart.cudaMallocHost(n_in * 4)
        _check(err)
        err, self._host_out = cudart.cudaMallocHost(n_in * 4)
        _check(err)
        self._capacity = n_in

    def _malloc(self, nbytes):
        err, ptr = self._cudart.cudaMalloc(nbytes)
        _check(err)
        return ptr

    def _infer(self, batch, extra):
        cudart = self._cudart
        if extra is not None or len(self._inputs) != 1:
            raise BackendUnavailableError("the tensorrt backend does not run 3D-LOC packages yet")
        if batch.size > self._capacity:
            raise BackendUnavailableError(f"input of {batch.size} values exceeds the buffer of {self._capacity}")
        name_in, name_out = self._inputs[0], self._outputs[0]
        self._context.set_input_shape(name_in, tuple(batch.shape))
        out_shape = tuple(self._context.get_tensor_shape(name_out))
        cai = getattr(batch, "__cuda_array_interface__", None)
        if cai is not None:  # already on the GPU: bind it as it is
            self._context.set_tensor_address(name_in, int(cai["data"][0]))
        else:
            host = np.ctypeslib.as_array((np.ctypeslib.ctypes.c_float * batch.size).from_address(self._host_in))
            host[:] = batch.ravel()
            _check(cudart.cudaMemcpyAsync(self._dev_in, self._host_in, batch.nbytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream))
            self._context.set_tensor_address(name_in, int(self._dev_in))
        self._context.set_tensor_address(name_out, int(self._dev_out))
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        n_out = int(np.prod(out_shape))
        _check(cudart.cudaMemcpyAsync(self._host_out, self._dev_out, n_out * 4,
                                      cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream))
        _check(cudart.cudaStreamSynchronize(self._stream))
        out = np.ctypeslib.as_array((np.ctypeslib.ctypes.c_float * n_out).from_address(self._host_out))
        out = out.copy().reshape(out_shape)
        return out.reshape(len(batch)) if self.graph != "dense" else out

    def close(self):
        if not self._closed and hasattr(self, "_stream"):
            cudart = self._cudart
            for p in (self._dev_in, self._dev_out):
                cudart.cudaFree(p)
            for p in (self._host_in, self._host_out):
                cudart.cudaFreeHost(p)
            cudart.cudaStreamDestroy(self._stream)
        super().close()
