"""Build TensorRT plans from a package's ONNX graphs (TensorRT 10 Python API).

UNVERIFIED: written against the documented API; TensorRT is not installable on the
machines this project is developed and tested on. Profile computation and calibration
batching are plain Python and are tested; the build itself is marked `tensorrt`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noduleflow.engine import ConfigError
from noduleflow.engine.backends.tensorrt import PRECISIONS, current_key, write_plan
from noduleflow.engine.config import DENSE_TILE_OUT
from noduleflow.engine.contract import PATCH_SIZE
from noduleflow.engine.package import ModelPackage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Profile:
    """(min, opt, max) input shapes of one optimisation profile."""

    name: str
    min: tuple
    opt: tuple
    max: tuple


def profiles(graph: str, max_batch: int = 256, opt_batch: int = 64, tile_out=None, stride: int = 4,
             patch: int = PATCH_SIZE, channels: int = 1):
    """Patch and stage-2 graphs: batch 1..max_batch (stage 2: ``channels`` context scales). Dense
    graph: tiles from one output point (patch^3) to ``tile_out`` points per axis (default the
    engine's tile, `DENSE_TILE_OUT`: stride * (t - 1) + patch voxels)."""
    if tile_out is None:
        tile_out = (DENSE_TILE_OUT,) * 3
    one = (1, 1, patch, patch, patch)
    if graph in ("patch", "stage2"):
        if not 1 <= opt_batch <= max_batch:
            raise ConfigError(f"need 1 <= opt_batch <= max_batch, got {opt_batch}, {max_batch}")
        one = (1, channels if graph == "stage2" else 1, patch, patch, patch)
        return [Profile("patch", one, (opt_batch, *one[1:]), (max_batch, *one[1:]))]
    if graph == "dense":
        big = tuple(stride * (t - 1) + patch for t in tile_out)
        return [Profile("volume", one, (1, 1, *big), (1, 1, *big))]
    raise ConfigError(f"graph must be 'patch', 'dense' or 'stage2', got {graph!r}")


def calibration_batches(patches: np.ndarray, batch_size: int):
    """Representative patches cut into float32 batches for the INT8 entropy calibrator."""
    if patches.ndim != 5 or patches.shape[1] != 1 or len(set(patches.shape[2:])) != 1:
        raise ConfigError(f"calibration patches must be (N, 1, P, P, P), got {patches.shape}")
    for s in range(0, len(patches) - batch_size + 1, batch_size):
        yield np.ascontiguousarray(patches[s:s + batch_size], dtype=np.float32)


def build_plan(package_dir, graph: str = "patch", precision: str = "fp16", workspace_gb: float = 4.0,
               calibration: np.ndarray | None = None, timing_cache: Path | None = None) -> Path:
    """Build and store ``<package>/trt/<key>.plan`` for this GPU and TensorRT version."""
    import tensorrt as trt

    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    pkg = ModelPackage.load(package_dir)
    onnx_path = pkg.file(f"{graph}.onnx")
    if onnx_path is None:
        raise ConfigError(f"package has no {graph}.onnx")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConfigError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    channels = pkg.contract.stage2.channels if graph == "stage2" and pkg.contract.stage2 else 1
    for p in profiles(graph, stride=pkg.contract.dense_stride or 4, patch=pkg.contract.patch_size,
                      channels=channels):
        profile.set_shape(p.name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if calibration is None:
            raise ConfigError("int8 needs calibration patches")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _entropy_calibrator(trt, calibration, Path(package_dir) / "trt" / "int8.cache")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ConfigError(f"TensorRT build of {onnx_path.name} ({precision}) failed")
    if timing_cache:
        timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return write_plan(package_dir, current_key(precision, graph), bytes(plan))


def _entropy_calibrator(trt, patches, cache_path: Path, batch_size: int = 32):
    from cuda.bindings import runtime as cudart

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.batches = calibration_batches(patches, batch_size)
            err, self.dev = cudart.cudaMalloc(int(np.prod(patches.shape[1:])) * batch_size * 4)

        def get_batch_size(self):
            return batch_size

        def get_batch(self, names):
            batch = next(self.batches, None)
            if batch is None:
                return None
            cudart.cudaMemcpy(self.dev, batch.ctypes.data, batch.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
            return [int(self.dev)]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.exists() else None

        def write_calibration_cache(self, cache):
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_bytes(bytes(cache))

    return Calibrator()
