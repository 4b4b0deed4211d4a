"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers."""
from __future__ import annotations

import logging
import os

import numpy as np

from ..errors import BackendUnavailableError, PackageError
from ..package import ModelPackage
from .base import Backend

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
INSTALL = {"cpu": "onnxruntime", "cuda": "onnxruntime-gpu", "tensorrt": "onnxruntime-gpu and tensorrt"}


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


class OnnxRuntimeBackend(Backend):
    """``device``: "cpu", "cuda" or "tensorrt" (the execution provider asked for; a missing one
    is an error, not a silent fallback). ``threads``: intra-op threads (default: all cores).
    ``precision``: "fp32" runs ``{graph}.onnx``; "fp16" runs ``{graph}_fp16.onnx`` (written by
    ``noduleflow export --fp16``; fp32 inputs and outputs, so callers do not change) and is an
    error if the package has none."""

    def __init__(self, package: ModelPackage, graph: str = "patch", device: str = "cpu",
                 threads: int | None = None, max_batch: int = 256, precision: str = "fp32"):
        import onnxruntime as ort

        super().__init__(graph, max_batch)
        if device not in PROVIDERS:
            raise BackendUnavailableError(f"unknown ONNX Runtime device {device!r}; choose cpu, cuda or tensorrt")
        wanted = PROVIDERS[device][0]
        if wanted not in available_providers():
            raise BackendUnavailableError(f"ONNX Runtime has no {wanted} here (providers: "
                                          f"{', '.join(available_providers())}); install {INSTALL[device]}")
        if precision not in ("fp32", "fp16"):
            raise BackendUnavailableError(f"unknown precision {precision!r}; choose fp32 or fp16")
        fname = f"{graph}.onnx" if precision == "fp32" else f"{graph}_fp16.onnx"
        path = package.file(fname)
        if path is None:
            hint = " (export it with --fp16)" if precision == "fp16" else ""
            raise PackageError(f"package {package.manifest.model_id} has no {fname}{hint}")
        so = ort.SessionOptions()
        # All optimisations (constant folding, conv+BN+ReLU fusion); one intra-op pool over
        # every core: 3-D convolutions parallelise well inside an op, and the engine already
        # overlaps gathering with inference in its own thread.
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(path), sess_options=so, providers=PROVIDERS[device])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.name = f"onnxruntime-{device}" + ("-fp16" if precision == "fp16" else "")
        self.precision = precision
        self.device = device
        log.info("opened %s (%s) with %s", path.name, package.manifest.model_id, self.session.get_providers())

    def _infer(self, batch, extra):
        feeds = {self.inputs[0]: np.ascontiguousarray(batch)}
        if len(self.inputs) > 1:
            if extra is None:
                raise PackageError(f"{self.graph}.onnx needs a second input ({self.inputs[1]}): the location")
            feeds[self.inputs[1]] = np.ascontiguousarray(extra, dtype=np.float32)
        return self.session.run(None, feeds)[0]

    def close(self):
        self.session = None
        super().close()
