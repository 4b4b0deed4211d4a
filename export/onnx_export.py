"""PyTorch checkpoint -> ONNX patch and dense graphs, with parity checks against PyTorch."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from noduleflow.engine import ConfigError, PackageError
from noduleflow.engine.contract import PATCH_SIZE
from noduleflow.engine.postprocess import sigmoid

log = logging.getLogger(__name__)

OPSET = 17


class _Dense:
    """Wrapper module exposing ``dense_forward`` as ``forward`` for export."""

    @staticmethod
    def make(model):
        import torch

        class Dense(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x, loc_map=None):
                return self.m.dense_forward(x, loc_map)

        return Dense(model).eval()


def export_patch(model, path: Path, uses_location: bool, patch: int = PATCH_SIZE, opset: int = OPSET) -> Path:
    import torch

    x = torch.rand(2, 1, patch, patch, patch)
    args = (x, torch.rand(2, 3)) if uses_location else (x,)
    names = ["patch", "location"] if uses_location else ["patch"]
    axes = {"patch": {0: "batch"}, "logit": {0: "batch"}}
    if uses_location:
        axes["location"] = {0: "batch"}
    torch.onnx.export(model.eval(), args, str(path), input_names=names, output_names=["logit"],
                      dynamic_axes=axes, opset_version=opset, dynamo=False)
    return path


def export_stage2(model, path: Path, channels: int, patch: int = PATCH_SIZE, opset: int = OPSET) -> Path:
    """The stage-2 classifier: (N, C, P, P, P) multi-scale context patches -> (N,) logits."""
    import torch

    x = torch.rand(2, channels, patch, patch, patch)
    torch.onnx.export(model.eval(), (x,), str(path), input_names=["patch"], output_names=["logit"],
                      dynamic_axes={"patch": {0: "batch"}, "logit": {0: "batch"}}, opset_version=opset,
                      dynamo=False)
    return path


def parity_stage2(model, path: Path, patches: np.ndarray) -> float:
    """max |logit(ONNX Runtime) - logit(PyTorch)| over stage-2 ``patches`` (N, C, P, P, P)."""
    import torch

    with torch.no_grad():
        ref = model(torch.from_numpy(patches)).numpy().reshape(-1)
    got = _session(path).run(None, {"patch": patches})[0].reshape(-1)
    return float(np.abs(got - ref).max())


def export_dense(model, path: Path, uses_location: bool, patch: int = PATCH_SIZE, opset: int = OPSET) -> Path:
    import torch

    dense = _Dense.make(model)
    x = torch.rand(1, 1, patch + 8, patch + 12, patch + 16)  # uneven sizes: the exporter keeps them symbolic
    s = model.dense_stride
    out_shape = [(n - patch) // s + 1 for n in x.shape[2:]]
    args = (x, torch.rand(1, 3, *out_shape)) if uses_location else (x,)
    names = ["volume", "location_map"] if uses_location else ["volume"]
    axes = {"volume": {0: "batch", 2: "depth", 3: "height", 4: "width"},
            "logits": {0: "batch", 1: "out_depth", 2: "out_height", 3: "out_width"}}
    if uses_location:
        axes["location_map"] = {0: "batch", 2: "out_depth", 3: "out_height", 4: "out_width"}
    torch.onnx.export(dense, args, str(path), input_names=names, output_names=["logits"],
                      dynamic_axes=axes, opset_version=opset, dynamo=False)
    return path


def slim_graph(path: Path) -> str:
    """Rewrite ``path`` in place with onnxslim (constant folding, shape-arithmetic elimination,
    dead nodes); returns "onnxslim <version>". bench/onnx_graph.py measures what it buys: fewer
    nodes even after ONNX Runtime's own ORT_ENABLE_ALL optimisation, and no logit change."""
    import onnx

    try:
        import onnxslim
    except ImportError as exc:
        raise ConfigError("export slims the graphs with onnxslim: pip install onnxslim "
                          "(or export with --no-slim)") from exc
    onnx.save(onnxslim.slim(str(path)), str(path))
    return f"onnxslim {onnxslim.__version__}"


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def parity_patch(model, path: Path, patches: np.ndarray, uses_location: bool) -> float:
    """max |logit(ONNX Runtime) - logit(PyTorch)| over ``patches`` (N, 1, P, P, P)."""
    import torch

    rng = np.random.default_rng(0)
    loc = rng.uniform(size=(len(patches), 3)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(patches), torch.from_numpy(loc)).numpy()
    feeds = {"patch": patches}
    if uses_location:
        feeds["location"] = loc
    got = _session(path).run(None, feeds)[0]
    return float(np.abs(got - ref).max())


def parity_dense(dense_path: Path, patch_path: Path, tile: np.ndarray, stride: int, uses_location: bool,
                 patch: int = PATCH_SIZE) -> float:
    """max |dense(tile)[i,j,k] - patch(tile[s*i:s*i+P, ...])| over every output point."""
    out_shape = [(n - patch) // stride + 1 for n in tile.shape]
    rng = np.random.default_rng(1)
    loc_map = rng.uniform(size=(1, 3, *out_shape)).astype(np.float32)
    feeds = {"volume": tile[None, None].astype(np.float32)}
    if uses_location:
        feeds["location_map"] = loc_map
    dense = _session(dense_path).run(None, feeds)[0][0]
    if list(dense.shape) != out_shape:
        raise PackageError(f"dense graph gives {list(dense.shape)} outputs for a {list(tile.shape)} tile, "
                           f"expected {out_shape}")
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in out_shape], indexing="ij"), -1).reshape(-1, 3)
    patches = np.stack([tile[s0:s0 + patch, s1:s1 + patch, s2:s2 + patch] for s0, s1, s2 in idx * stride])[:, None]
    feeds = {"patch": patches.astype(np.float32)}
    if uses_location:
        feeds["location"] = loc_map[0].reshape(3, -1).T.copy()
    patch = _session(patch_path).run(None, feeds)[0]
    return float(np.abs(dense.reshape(-1) - patch).max())


def to_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and activations, fp32 inputs/outputs (onnx's float16 converter)."""
    import onnx
    from onnx import version_converter  # noqa: F401  (keeps onnx's optional helpers importable)

    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise ConfigError("--fp16 needs onnxconverter-common: pip install onnxconverter-common") from exc
    with warnings.catch_warnings():
        # the converter warns for every weight below fp16's range that it clamps
        warnings.simplefilter("ignore", UserWarning)
        model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return dst


def fp16_error(fp32_path: Path, fp16_path: Path, x: np.ndarray, extra: np.ndarray | None = None) -> dict:
    """max |logit| and max |sigmoid probability| difference, fp16 graph vs fp32 graph, on ``x``.

    ``x``: the graph's first input, float32 (patches (N, 1, P, P, P) or a tile (1, 1, D, H, W));
    ``extra``: the second input (locations) for graphs that have one, the same for both graphs.
    """
    outs = []
    for path in (fp32_path, fp16_path):
        sess = _session(path)
        names = [i.name for i in sess.get_inputs()]
        feeds = {names[0]: x.astype(np.float32)}
        if len(names) > 1:
            if extra is None:
                raise ConfigError(f"{Path(path).name} needs a second input ({names[1]})")
            feeds[names[1]] = extra.astype(np.float32)
        outs.append(sess.run(None, feeds)[0].astype(np.float64))
    a, b = outs

    return {"max_abs_logit_diff": float(np.abs(a - b).max()),
            "max_abs_prob_diff": float(np.abs(sigmoid(a) - sigmoid(b)).max())}
