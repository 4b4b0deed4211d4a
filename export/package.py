"""`noduleflow export`: a checkpoint -> a verified model package the engine loads."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from noduleflow.engine import ConfigError, PackageError
from noduleflow.engine.package import ModelPackage, write_manifest

from .onnx_export import (export_dense, export_patch, fp16_error, parity_dense, parity_patch,
                          slim_graph, to_fp16)

log = logging.getLogger(__name__)

PARITY_TOL = 1e-4


def _sample_patches(n: int = 16, seed: int = 0) -> np.ndarray:
    """Random patches plus real phantom patches (lung, vessels, a nodule) for the parity check."""
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    from noduleflow.engine.patches import gather
    from noduleflow.engine.preprocess import preprocess

    rng = np.random.default_rng(seed)
    rand = rng.uniform(size=(n // 2, 1, 41, 41, 41)).astype(np.float32)
    ph = generate_phantom(seed, params=PhantomParams(n_nodules=2), shape_zyx=(80, 192, 192),
                          spacing_zyx_mm=(3.0, 1.8, 1.8))
    pre = preprocess(ph.volume)
    pts = np.argwhere(pre.mask)
    centres = pts[rng.choice(len(pts), n - n // 2 - len(ph.nodules))]
    nod = [np.round(pre.volume.world_to_voxel(x.center_xyz_mm)).astype(int) for x in ph.nodules]
    real = gather(pre.volume.hu, np.concatenate([centres, np.array(nod).reshape(-1, 3)]))
    return np.concatenate([rand, real]).astype(np.float32), pre


def export_package(checkpoint, out_dir, model_id: str | None = None, overwrite: bool = False,
                   fp16: bool = False, slim: bool = True) -> dict:
    """Export ``checkpoint`` (safetensors + json) to ``out_dir``; returns the parity report.

    Raises PackageError if ONNX Runtime and PyTorch disagree beyond 1e-4 on any logit.
    ``fp16``: also write ``patch_fp16.onnx`` (and ``dense_fp16.onnx``), converted from the
    checked fp32 graphs, hashed in the manifest; their error against fp32 (max |logit| and
    max |probability| difference on the phantom parity patches and the phantom dense tile) is added to the
    report and to ``manifest.export["fp16"]``. No tolerance is enforced: fp16 error is
    reported, not gated.
    ``slim``: run onnxslim on each graph right after export, so the parity checks below judge
    the graph that ships (bench/results/onnx_graph.md has the measurement behind the default).
    """
    import onnx

    from noduleflow.trainer.checkpoint import load_checkpoint
    from noduleflow.trainer.models import DENSE_MODELS, uses_location

    model, config = load_checkpoint(checkpoint)
    name = config["model"]
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out} is not empty (use --overwrite)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    loc = uses_location(name)
    export_patch(model, out / "patch.onnx", loc)
    slimmed = slim_graph(out / "patch.onnx") if slim else None
    onnx.checker.check_model(str(out / "patch.onnx"))
    patches, pre = _sample_patches()
    report = {"patch_max_abs_logit_diff": parity_patch(model, out / "patch.onnx", patches, loc)}
    stride = offset = tile = None
    if name in DENSE_MODELS:
        stride, offset = model.dense_stride, model.dense_offset
        export_dense(model, out / "dense.onnx", loc)
        if slim:
            slim_graph(out / "dense.onnx")
        onnx.checker.check_model(str(out / "dense.onnx"))
        hu = pre.volume.hu
        c = np.array(hu.shape) // 2
        tile = hu[c[0] - 30:c[0] + 30, c[1] - 26:c[1] + 26, c[2] - 34:c[2] + 34].astype(np.float32)
        tile = np.clip((tile + 1000.0) / 1400.0, 0, 1)
        report["dense_vs_patch_max_abs_diff"] = parity_dense(out / "dense.onnx", out / "patch.onnx", tile,
                                                             stride, loc)
    bad = {k: v for k, v in report.items() if v > PARITY_TOL}
    if bad:
        raise PackageError(f"parity check failed (tolerance {PARITY_TOL}): {bad}")
    metrics = config.get("metrics", {})
    fields = dict(
        model_id=model_id or f"{name}-{Path(checkpoint).stem}",
        architecture=name,
        dense_stride=stride, dense_offset=offset, uses_location=loc,
        preprocess=config.get("preprocess", {}),
        candidate_rules={},
        training={"data": config.get("data", {}), "metrics": metrics, "train": config.get("train", {})},
        export={"opset": 17, "parity": dict(report), "torch": __import__("torch").__version__,
                "onnx": onnx.__version__, "slim": slimmed},
    )
    write_manifest(out, **fields)
    # set the metadata inside the graphs too, then hash again
    for g in ("patch.onnx", "dense.onnx"):
        if (out / g).exists():
            m = onnx.load(str(out / g))
            for k, v in {"model_id": fields["model_id"], "architecture": name, "patch_size": "41",
                         "target_spacing_zyx_mm": "1,1,1", "hu_window": "-1000,400",
                         "normalisation": "window_to_unit", "dense_stride": str(stride),
                         "dense_offset": str(offset), "package_format_version": "1",
                         "training": json.dumps(fields["training"]["metrics"])}.items():
                m.metadata_props.add(key=k, value=v)
            onnx.save(m, str(out / g))
    if fp16:
        # converted after the metadata is set, so the fp16 graphs carry it too
        err = {}
        real = patches[len(patches) // 2:]  # the phantom half of the parity patches
        for g, x in (("patch", real), ("dense", tile)):
            if (out / f"{g}.onnx").exists():
                to_fp16(out / f"{g}.onnx", out / f"{g}_fp16.onnx")
                onnx.checker.check_model(str(out / f"{g}_fp16.onnx"))
                feed = x if g == "patch" else x[None, None]
                rng = np.random.default_rng(2)
                if g == "patch":
                    extra = rng.uniform(size=(len(x), 3)) if loc else None
                else:
                    extra = rng.uniform(size=(1, 3, *[(n - 41) // stride + 1 for n in x.shape])) if loc else None
                err.update({f"{g}_fp16_{k}": v for k, v in
                            fp16_error(out / f"{g}.onnx", out / f"{g}_fp16.onnx", feed, extra).items()})
        fields["export"]["fp16"] = err
        report.update(err)
    write_manifest(out, **fields)
    ModelPackage.load(out)  # what we wrote must verify
    return report
