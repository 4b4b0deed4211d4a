"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers."""
from __future__ import annotations

import logging
import os
from collections import deque

import numpy as np

from ..errors import BackendUnavailableError, ConfigError, PackageError
from ..package import ModelPackage
from . import backend_info
from .base import INT8_HINT, Backend, check_signature, graph_channels

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


def check_graph(session, package: ModelPackage, graph: str, fname: str) -> None:
    """`check_signature` for an ONNX Runtime session."""
    ins = session.get_inputs()
    names = [i.name for i in ins]

    def run(arrays):
        try:
            return session.run(None, dict(zip(names, arrays)))[0]
        except Exception as exc:  # ORT's own error types
            raise RuntimeError(type(exc).__name__) from None

    check_signature([list(i.shape) for i in ins], [len(o.shape) for o in session.get_outputs()],
                    run, package, graph, fname)


def session_options(threads: int | None = None):
    """The engine's ONNX Runtime session options: all optimisations (constant folding,
    conv+BN+ReLU fusion); one intra-op pool over ``threads`` (default every core): 3-D convolutions
    parallelise well inside an op, and the engine already overlaps gathering with inference in its
    own thread."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(threads or os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return so


def default_streams(graph: str, device: str, threads: int) -> int:
    """How many batches `OnnxRuntimeBackend.infer_many` runs at once unless told: on the CPU, the
    stage-2 graph (a 0.19 GFLOP network on small multi-channel patches, whose later layers are too
    small to split well over cores) runs one single-threaded batch per core: on 2 cores the network
    alone gives more throughput than one batch split over both (`noduleflow bench speed` measures
    it). At most 4 streams, the threads shared between them (each stream holds its own
    activations). The dense and
    patch graphs (large tiles, or a patch stream fed by its own gather thread) one batch over every
    core."""
    return max(1, min(threads, 4)) if device == "cpu" and graph == "stage2" else 1


class OnnxRuntimeBackend(Backend):
    """``device``: "cpu", "cuda" or "tensorrt" (the execution provider asked for; a missing one
    is an error, not a silent fallback). ``threads``: intra-op threads (default: all cores).
    ``precision``: "fp32" runs ``{graph}.onnx``; "fp16" runs ``{graph}_fp16.onnx`` (written by
    ``noduleflow export --fp16``; fp32 inputs and outputs, so callers do not change), "int8"
    ``{graph}_int8.onnx`` (``noduleflow export --int8``; slower than fp32 on CPUs without
    VNNI); either is an error if the package has none.
    ``streams``: batches `infer_many` runs at once, each on ``threads // streams`` threads (default
    `default_streams`: one per core for stage 2 on the CPU, else 1); a single ``infer`` call then
    runs on that share of the cores."""

    def __init__(self, package: ModelPackage, graph: str = "patch", device: str = "cpu",
                 threads: int | None = None, max_batch: int = 256, precision: str = "fp32",
                 streams: int | None = None):
        import onnxruntime as ort

        super().__init__(graph, max_batch, package.contract.patch_size, graph_channels(package, graph))
        if device not in PROVIDERS:
            raise BackendUnavailableError(f"unknown ONNX Runtime device {device!r}; choose cpu, cuda or tensorrt")
        wanted = PROVIDERS[device][0]
        if wanted not in available_providers():
            raise BackendUnavailableError(f"ONNX Runtime has no {wanted} here (providers: "
                                          f"{', '.join(available_providers())}); install {INSTALL[device]}")
        runs = backend_info(f"onnxruntime-{device}").precisions   # declared in the backend table
        if precision not in runs:
            hint = " (bf16: the openvino-cpu backend, on a CPU with bfloat16)" if precision == "bf16" else ""
            raise BackendUnavailableError(f"ONNX Runtime runs {', '.join(runs[:-1])} or {runs[-1]}, not "
                                          f"{precision!r}{hint}")
        fname = f"{graph}.onnx" if precision == "fp32" else f"{graph}_{precision}.onnx"
        path = package.file(fname)
        if path is None:
            hint = {"fp16": " (export it with --fp16)", "int8": f" ({INT8_HINT})"}.get(precision, "")
            raise PackageError(f"package {package.manifest.model_id} has no {fname}{hint}")
        threads = int(threads or os.cpu_count() or 1)
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        streams = default_streams(graph, device, threads) if streams is None else int(streams)
        if streams < 1:
            raise ConfigError(f"streams must be >= 1, got {streams}")
        self.streams = streams
        self._pool = None
        if streams > 1:  # its threads start on first use
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(streams, thread_name_prefix=f"ort-{graph}")
        so = session_options(max(1, threads // streams))
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=PROVIDERS[device])
        except Exception as exc:  # ORT raises its own types for a graph it cannot load
            raise PackageError(f"package {package.manifest.model_id}: {fname} is not a loadable ONNX graph "
                               f"({type(exc).__name__}: {str(exc)[:200]})") from None
        check_graph(self.session, package, graph, fname)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.name = f"onnxruntime-{device}" + (f"-{precision}" if precision != "fp32" else "")
        self.precision = precision
        self.device = device
        if precision == "int8" and device == "cpu":
            log.warning("%s: ONNX Runtime's CPU provider runs INT8 graphs slower than fp32 on CPUs without "
                        "VNNI; openvino-cpu runs the same graph faster than fp32", fname)
        log.info("opened %s (%s) with %s", path.name, package.manifest.model_id, self.session.get_providers())

    def _infer(self, batch, extra):
        feeds = {self.inputs[0]: np.ascontiguousarray(batch)}
        if len(self.inputs) > 1:
            if extra is None:
                raise PackageError(f"{self.graph}.onnx needs a second input ({self.inputs[1]}): the location")
            feeds[self.inputs[1]] = np.ascontiguousarray(extra, dtype=np.float32)
        y = self.session.run(None, feeds)[0]
        return y.reshape(len(batch)) if self.graph != "dense" else y

    def infer_many(self, batches):
        """``infer`` over a stream of batches, in order; with ``streams`` > 1, that many run at once
        (ONNX Runtime releases the GIL inside a run), one more is gathered while they run."""
        if self._pool is None:  # one stream (or closed: infer says so)
            yield from super().infer_many(batches)
            return
        pending = deque()
        for b in batches:
            pending.append(self._pool.submit(self.infer, b))
            if len(pending) > self.streams:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.session = None
        super().close()

    def describe(self) -> dict:
        return {**super().describe(), "streams": self.streams}
