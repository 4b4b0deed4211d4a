"""The backend interface: open from a model package, ``infer(batch)``, ``close()``.

Polygraphy-style: a backend is a context manager; the public ``infer`` validates the
input (dtype, rank, fixed dimensions, batch limit) and the private ``_infer`` runs it. Every
output, of ``infer`` and of ``infer_many`` (a backend's own too), is checked finite
(`Backend.check_output`): a NaN logit would otherwise rank below every candidate and a scan would
quietly get "0 candidates".
"""
from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator

import numpy as np

from ..contract import PATCH_SIZE
from ..errors import ConfigError, PackageError

GRAPHS = ("patch", "dense", "stage2")
# where a package's INT8 graphs come from (the CPU backends' refusal of precision "int8" says it)
INT8_HINT = "noduleflow export --int8 writes stage2_int8.onnx, or patch_int8.onnx for a one-stage package"


def graph_channels(package, graph: str) -> int:
    """Input channels of ``graph`` in ``package``: 1, or the stage-2 context scales."""
    st2 = package.contract.stage2
    return st2.channels if graph == "stage2" and st2 is not None else 1


def check_signature(in_shapes, out_ranks, run, package, graph: str, fname: str) -> None:
    """A graph's inputs and outputs must be what the package's contract says, whatever runtime
    opened it: a patch graph takes (N, 1, P, P, P) and gives (N,) or (N, 1); a dense graph takes
    (N, 1, D, H, W) with dynamic D, H, W and gives (N, D', H', W'); 3D-LOC graphs take the location
    as a second input; a stage-2 graph takes (N, C, P, P, P), C its context scales, and gives (N,)
    or (N, 1). A graph in the wrong slot or for another contract is refused before use.

    ``in_shapes``: each input's dimensions (an int where fixed, anything else where dynamic);
    ``out_ranks``: each output's rank; ``run(arrays)``: the first output for the inputs in order
    (it raises on failure)."""
    k = package.contract
    want_inputs = 2 if k.uses_location and graph != "stage2" else 1
    channels = graph_channels(package, graph)
    where = f"package {package.manifest.model_id}: {fname}"
    if len(in_shapes) != want_inputs or len(out_ranks) < 1:
        raise PackageError(f"{where} has {len(in_shapes)} inputs and {len(out_ranks)} outputs; the contract "
                           f"needs {want_inputs} input(s) and one output")
    shape = list(in_shapes[0])
    fixed = lambda d: d if isinstance(d, int) else None  # noqa: E731 (symbolic dims are names)
    if len(shape) != 5 or fixed(shape[1]) not in (channels, None):
        raise PackageError(f"{where}: input shape {shape} is not (N, {channels}, D, H, W)")
    out_rank = out_ranks[0]
    if graph in ("patch", "stage2"):
        p = k.patch_size
        if [fixed(d) for d in shape[2:]] != [p, p, p] or out_rank not in (1, 2):
            raise PackageError(f"{where}: input {shape} / output rank {out_rank} is not a {graph} graph for "
                               f"{p}^3 patches (N, {channels}, {p}, {p}, {p}) -> (N,)")
        return
    if any(fixed(d) is not None for d in shape[2:]) or out_rank != 4:
        raise PackageError(f"{where}: input {shape} / output rank {out_rank} is not a dense graph "
                           "(N, 1, D, H, W) with dynamic D, H, W -> (N, D', H', W')")
    # the stride is not in the graph's signature: run one small tile and compare (a few ms)
    tile = np.zeros((1, 1, *(k.patch_size + 12,) * 3), np.float32)
    want = k.dense_output_shape(tile.shape[2:])
    arrays = [tile] + ([np.zeros((1, 3, *want), np.float32)] if k.uses_location else [])
    try:
        got = tuple(run(arrays).shape[1:])
    except Exception as exc:
        raise PackageError(f"{where} does not run on a {tile.shape[2:]} tile ({exc})") from None
    if got != tuple(want):
        raise PackageError(f"{where} gives {got} output points for a {tile.shape[2:]} tile; the contract "
                           f"(stride {k.dense_stride}) says {tuple(want)}")


class Backend(ABC):
    name: str = "abstract"
    device: str = "cpu"
    precision: str = "fp32"
    streams: int = 1  # batches `infer_many` runs at once
    accepts_device_arrays: bool = False  # GPU batches (``__cuda_array_interface__``) taken without a copy

    def __init__(self, graph: str, max_batch: int, patch_size: int = PATCH_SIZE, channels: int = 1):
        if graph not in GRAPHS:
            raise ConfigError(f"graph must be one of {GRAPHS}, got {graph!r}")
        self.graph = graph
        self.max_batch = int(max_batch)
        self.patch_size = int(patch_size)  # from the package's input contract
        self.channels = int(channels)      # 1, or stage 2's context scales (contract.stage2.channels)
        self._closed = False

    def __init_subclass__(cls, **kwargs):
        # a backend that streams batches its own way (OpenVINO's infer requests) overrides
        # `infer_many` and may never call `infer`: its results pass the same output check
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("infer_many")
        if own is not None and not getattr(own, "_checks_outputs", False):
            @functools.wraps(own)
            def infer_many(self, batches, _own=own):
                for y in _own(self, batches):
                    yield self.check_output(y)

            infer_many._checks_outputs = True
            cls.infer_many = infer_many
        if "infer" in cls.__dict__:
            raise TypeError(f"{cls.__name__} overrides Backend.infer; implement _infer (infer validates)")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def infer(self, batch: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
        """Logits for a batch.

        patch graph: (N, 1, P, P, P) float32 -> (N,), P the contract's patch size;
        dense graph: (N, 1, D, H, W) float32 -> (N, D', H', W');
        stage2 graph: (N, C, P, P, P) float32 -> (N,), C the context scales of stage 2.
        ``extra``: the location input of 3D-LOC packages ((N, 3) or (N, 3, D', H', W')).
        """
        self.check_batch(batch)
        return self.check_output(self._infer(batch, extra))

    def check_output(self, y: np.ndarray) -> np.ndarray:
        """``y`` (logits, any shape) if every value is finite; PackageError otherwise, one line
        naming the graph and how many values are NaN / infinite. A broken graph or broken weights
        (or a reduced precision that overflows) must fail the scan, never rank it as empty."""
        y = np.asarray(y)
        finite = np.isfinite(y)
        if not finite.all():
            n_nan = int(np.count_nonzero(np.isnan(y)))
            n_inf = int(y.size - np.count_nonzero(finite)) - n_nan
            raise PackageError(f"{self.name}: the {self.graph} graph gave non-finite logits ({n_nan} NaN, {n_inf} "
                               f"infinite of {y.size}, output shape {tuple(y.shape)}, precision {self.precision}); "
                               "its output is refused (a broken graph or weights, or a precision that overflows)")
        return y

    def check_batch(self, batch) -> None:
        """Refuse what `infer` cannot run, naming the bad value: a closed backend, another dtype,
        rank or channel count, a patch of another size, a tile under the patch size, a batch
        outside [1, max_batch]."""
        if self._closed:
            raise ConfigError(f"{self.name} backend is closed")
        if not hasattr(batch, "dtype") or batch.dtype != np.float32:
            raise ConfigError(f"{self.name}: input must be float32, got {getattr(batch, 'dtype', type(batch))}")
        c = self.channels
        if batch.ndim != 5 or batch.shape[1] != c:
            raise ConfigError(f"{self.name}: input must be (N, {c}, D, H, W), got shape {tuple(batch.shape)}")
        p = self.patch_size
        if self.graph != "dense" and tuple(batch.shape[2:]) != (p, p, p):
            raise ConfigError(f"{self.name}: {self.graph} graph takes (N, {c}, {p}, {p}, {p}), got "
                              f"{tuple(batch.shape)}")
        if self.graph == "dense" and min(batch.shape[2:]) < p:
            raise ConfigError(f"{self.name}: dense tiles must be at least {p} per axis, got {tuple(batch.shape)}")
        if not 1 <= batch.shape[0] <= self.max_batch:
            raise ConfigError(f"{self.name}: batch of {batch.shape[0]} outside [1, {self.max_batch}]")

    def infer_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """``infer`` over a stream of batches, results in the same order. A backend that can run
        several batches at once (`OnnxRuntimeBackend` with ``streams`` > 1) overlaps them; here
        they run one after another, each as soon as the stream yields it."""
        for b in batches:
            yield self.infer(b)   # checked by infer

    @abstractmethod
    def _infer(self, batch: np.ndarray, extra: np.ndarray | None) -> np.ndarray: ...

    def close(self) -> None:
        self._closed = True

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device, "precision": self.precision,
                "graph": self.graph, "max_batch": self.max_batch}
