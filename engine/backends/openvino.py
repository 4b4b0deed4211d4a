"""OpenVINO backend (CPU): the package's own ONNX graphs, compiled by OpenVINO's CPU plugin.

The same ``{graph}.onnx`` files as `OnnxRuntimeBackend` (nothing to export or convert), read
and compiled when the backend opens (~0.15 s per graph; imported from OpenVINO's model cache in
the user's cache folder once compiled there: `cache_dir`). OpenVINO's CPU plugin runs 3-D
convolutions as JIT-compiled direct kernels on blocked channel layouts (oneDNN's brgconv), where
ONNX Runtime's CPU provider expands each 3-D convolution into a column matrix and a GEMM; on the
small-channel 3-D networks of this engine that is the faster CPU path (`noduleflow bench speed`
measures both in one run). Optional: ``pip install 'noduleflow[openvino]'``; ``auto`` takes it
before ONNX Runtime's CPU provider when it is installed.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, ConfigError, PackageError
from ..package import ModelPackage
from . import backend_info
from .base import INT8_HINT, Backend, check_signature, graph_channels

log = logging.getLogger(__name__)


CACHE_ENV = "NODULEFLOW_OPENVINO_CACHE"
PRECISIONS = backend_info("openvino-cpu").precisions   # declared in the backend table


def cache_dir() -> Path | None:
    """Where OpenVINO keeps the compiled graphs between processes (its model cache: a graph read
    again is imported instead of compiled, ~0.25 s less per process for a two-stage package):
    ``$NODULEFLOW_OPENVINO_CACHE``, else ``$XDG_CACHE_HOME/noduleflow/openvino`` (default
    ``~/.cache/...``). "off" (or an empty value) turns it off, and so does a folder that cannot be
    created or written: the graphs are then compiled in every process, as without it."""
    v = os.environ.get(CACHE_ENV)
    if v is not None:
        if v.strip().lower() in ("", "off", "0", "none"):
            return None
        path = Path(v).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "noduleflow" / "openvino"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


def cpu_capabilities() -> tuple[str, ...]:
    """OpenVINO's CPU plugin's arithmetic on this machine (its ``OPTIMIZATION_CAPABILITIES``, e.g.
    ("BF16", "FP32", "INT8", ...)): "BF16" where the CPU has bfloat16 instructions (AVX512_BF16 or
    AMX), which precision "bf16" needs."""
    import openvino as ov

    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def _dims(partial_shape) -> list:
    """An OpenVINO partial shape as a list: an int where the dimension is static, None where not."""
    return [d.get_length() if d.is_static else None for d in partial_shape]


class OpenVinoBackend(Backend):
    """``threads``: OpenVINO's inference threads (default: all cores). ``streams``: batches
    `infer_many` runs at once (OpenVINO CPU streams, the threads shared between them; default 1:
    on 2 cores two streams gave stage 2's network 3.3-3.5 against 3.7-3.8 ms/patch for one, and the
    detector's stage 2 1.42-1.68 against 1.46-1.79 s, within the runs' spread, for twice the
    activations; unlike ONNX Runtime's stage 2, where streams measured 1.1-1.2x).
    ``precision``: "fp32" runs ``{graph}.onnx``; "int8" runs ``{graph}_int8.onnx`` (written by
    ``noduleflow export --int8``: ONNX Runtime's static quantization in QDQ form, whose quantized
    convolutions OpenVINO runs as int8 kernels; fp32 inputs and outputs, so callers do not change)
    and is an error if the package has none; "bf16" runs ``{graph}.onnx`` with OpenVINO's bfloat16
    arithmetic (its ``INFERENCE_PRECISION_HINT``: weights and activations rounded to bfloat16, sums
    in float32; fp32 inputs and outputs) on a CPU that has it (`cpu_capabilities`), and is refused,
    naming what the CPU has, elsewhere. fp32 is the default on every CPU, so that the scores do not
    depend on the machine (OpenVINO's own default is bf16 where the CPU has it)."""

    def __init__(self, package: ModelPackage, graph: str = "patch", device: str = "cpu",
                 threads: int | None = None, max_batch: int = 256, precision: str = "fp32",
                 streams: int | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise BackendUnavailableError("the openvino-cpu backend needs openvino: "
                                          "pip install 'noduleflow[openvino]'") from None
        super().__init__(graph, max_batch, package.contract.patch_size, graph_channels(package, graph))
        if device != "cpu":
            raise BackendUnavailableError(f"the openvino backend runs on the CPU only, not {device!r}")
        if precision not in PRECISIONS:
            raise BackendUnavailableError(f"the openvino-cpu backend runs {', '.join(PRECISIONS)}, not {precision!r}")
        if precision == "bf16" and "BF16" not in (caps := cpu_capabilities()):
            raise BackendUnavailableError(f"this CPU has no bfloat16 arithmetic (OpenVINO's CPU capabilities: "
                                          f"{', '.join(caps)}): run fp32 or int8")
        fname = f"{graph}_int8.onnx" if precision == "int8" else f"{graph}.onnx"
        path = package.file(fname)
        if path is None:
            hint = f" ({INT8_HINT})" if precision == "int8" else ""
            raise PackageError(f"package {package.manifest.model_id} has no {fname}{hint}")
        threads = int(threads or os.cpu_count() or 1)
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        streams = 1 if streams is None else int(streams)
        if not 1 <= streams <= threads:
            raise ConfigError(f"streams must be in [1, threads={threads}], got {streams}")
        self.streams = streams
        config = {"PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
                  "NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": threads,
                  "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
        core = ov.Core()
        self.cache_dir = cache_dir()
        if self.cache_dir is not None:
            core.set_property({"CACHE_DIR": str(self.cache_dir)})
        try:
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for graphs it cannot read
            # unavailable, not a bad package: ONNX Runtime may run what OpenVINO's ONNX reader cannot
            # (e.g. ONNX Runtime's QOperator INT8 graphs), and "auto" then goes on to it
            raise BackendUnavailableError(f"OpenVINO cannot compile {fname} of package {package.manifest.model_id} "
                                          f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); "
                                          f"--backend onnxruntime-cpu may run it") from None
        self._request = self.compiled.create_infer_request()
        self._stream_requests = [self.compiled.create_infer_request() for _ in range(streams)] if streams > 1 else []
        self._lock = threading.Lock()  # one request: callers on several threads take turns
        self.name = "openvino-cpu" + (f"-{precision}" if precision != "fp32" else "")
        self.device = "cpu"
        self.precision = precision
        check_signature([_dims(i.get_partial_shape()) for i in self.compiled.inputs],
                        [i.get_partial_shape().rank.get_length() for i in self.compiled.outputs],
                        self._run, package, graph, fname)
        log.info("opened %s (%s) with OpenVINO %s, %d thread(s), %d stream(s)", path.name,
                 package.manifest.model_id, ov.get_version(), threads, streams)

    def _run(self, arrays) -> np.ndarray:
        with self._lock:
            out = self._request.infer({i: np.ascontiguousarray(a) for i, a in enumerate(arrays)})
        return out[0]

    def _infer(self, batch, extra):
        arrays = [batch]
        if len(self.compiled.inputs) > 1:
            if extra is None:
                raise PackageError(f"{self.graph}.onnx needs a second input: the location")
            arrays.append(np.asarray(extra, dtype=np.float32))
        return self._shape(self._run(arrays))

    def _shape(self, y: np.ndarray) -> np.ndarray:
        return y if self.graph == "dense" else y.reshape(len(y))

    def infer_many(self, batches):
        """``infer`` over a stream of batches, in order; with ``streams`` > 1 that many run at
        once on OpenVINO's own streams, one infer request each, taken in turn (the next batch is
        gathered while they run). No Python callback runs on OpenVINO's threads: each result is
        waited for on the calling thread, and nothing is left running when the stream ends or is
        dropped."""
        if self.streams == 1 or len(self.compiled.inputs) > 1:
            yield from super().infer_many(batches)
            return
        reqs = self._stream_requests
        running: list[int] = []  # requests started and not yet waited for, oldest first
        try:
            k = 0
            for b in batches:
                self.check_batch(b)
                i = k % len(reqs)
                if i in running:  # the oldest batch in flight: its result first, in order
                    yield self._result(reqs[running.pop(0)])
                reqs[i].start_async({0: np.ascontiguousarray(b)})  # the input is copied into the request
                running.append(i)
                k += 1
            while running:
                yield self._result(reqs[running.pop(0)])
        finally:
            for i in running:
                reqs[i].wait()

    def _result(self, request) -> np.ndarray:
        request.wait()
        return self._shape(request.get_output_tensor(0).data.copy())

    def close(self):
        self._stream_requests = []
        self._request = None
        self.compiled = None
        super().close()

    def describe(self) -> dict:
        return {**super().describe(), "streams": self.streams}
