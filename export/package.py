"""`noduleflow export`: a checkpoint -> a verified model package the engine loads."""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from noduleflow.engine import ConfigError, PackageError
from noduleflow.engine.contract import InputContract, Stage1Spec, Stage2Spec
from noduleflow.engine.fileio import atomic_dir
from noduleflow.engine.package import FORMAT_VERSION, Manifest, ModelPackage, write_manifest
from noduleflow.engine.preprocess import PreprocessSpec

from .onnx_export import (
    export_dense,
    export_patch,
    export_stage2,
    fp16_error,
    parity_dense,
    parity_patch,
    parity_stage2,
    slim_graph,
    to_fp16,
)

log = logging.getLogger(__name__)

PARITY_TOL = 1e-4


def _sample_patches(contract: InputContract, n: int = 16, seed: int = 0) -> np.ndarray:
    """Random patches plus real phantom patches (lung, vessels, a nodule) for the parity check."""
    from noduleflow.engine.patches import Normalisation, gather
    from noduleflow.engine.preprocess import preprocess
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    rng = np.random.default_rng(seed)
    p = contract.patch_size
    rand = rng.uniform(size=(n // 2, 1, p, p, p)).astype(np.float32)
    ph = generate_phantom(seed, params=PhantomParams(n_nodules=2), shape_zyx=(80, 192, 192),
                          spacing_zyx_mm=(3.0, 1.8, 1.8))
    pre = preprocess(ph.volume, contract.preprocess)
    pts = np.argwhere(pre.mask)
    centres = pts[rng.choice(len(pts), n - n // 2 - len(ph.nodules))]
    nod = [np.round(pre.volume.world_to_voxel(x.center_xyz_mm)).astype(int) for x in ph.nodules]
    norm = Normalisation(*contract.hu_window, pad_hu=contract.pad_hu)
    real = gather(pre.volume.hu, np.concatenate([centres, np.array(nod).reshape(-1, 3)]), norm=norm, size=p)
    return np.concatenate([rand, real]).astype(np.float32), pre


def export_package(checkpoint, out_dir, model_id: str | None = None, overwrite: bool = False,
                   fp16: bool = False, slim: bool = True, torch_compiled: bool = False,
                   stage2: str | None = None, stage2_spec: Stage2Spec | None = None, int8: bool = False,
                   stage1_spec: Stage1Spec | None = None, preprocess: PreprocessSpec | None = None) -> dict:
    """Export ``checkpoint`` (safetensors + json) to ``out_dir``; returns the parity report.

    Raises PackageError if ONNX Runtime and PyTorch disagree beyond 1e-4 on any logit.
    ``fp16``: also write ``patch_fp16.onnx`` (and ``dense_fp16.onnx``), converted from the
    checked fp32 graphs, hashed in the manifest; their error against fp32 (max |logit| and
    max |probability| difference on the phantom parity patches and the phantom dense tile) is added to the
    report and to ``manifest.export["fp16"]``. No tolerance is enforced: fp16 error is
    reported, not gated.
    ``slim``: run onnxslim on each graph right after export, so the parity checks below judge
    the graph that ships.
    ``torch_compiled``: also write ``patch.pt2`` (and with ``stage2``, ``stage2.pt2``; AOTInductor,
    for the GPU when PyTorch sees one, else the CPU) for the torch-compiled backend.
    ``stage2``: a stage-2 checkpoint (`trainer.stage2_train`, model ``ms-3d1``): written as
    ``stage2.onnx``, checked against PyTorch on phantom context patches like the patch graph, and
    declared in the contract by ``stage1_spec`` and ``stage2_spec`` (defaults: `Stage1Spec()`,
    `Stage2Spec()`).
    ``preprocess``: the contract's preprocessing instead of the checkpoint's (a stage 2 trained on
    another preprocessing than the stage-1 network's: the package runs what stage 2 was trained on).
    ``int8``: also write ``stage2_int8.onnx`` (a two-stage package; else ``patch_int8.onnx``):
    `export.int8`'s static quantization, calibrated on phantom patches; its error against fp32 on
    other phantom patches goes to the report and to ``manifest.export["int8"]`` (reported, not
    gated: the held-out FROC is the measure).
    The manifest is written once, at the end, over every file. The package is built in a staging
    folder beside ``out_dir`` and moved there only when complete: a failed export writes nothing.
    """
    from noduleflow.trainer.checkpoint import load_checkpoint

    model, config = load_checkpoint(checkpoint)
    name = config["model"]
    contract = contract_of(model, config)
    if preprocess is not None:
        contract = dataclasses.replace(contract, preprocess=preprocess)
    final = Path(out_dir)
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise ConfigError(f"{final} is not empty (use --overwrite)")
    # a bad --stage2 fails here, before anything is written
    stage2_loaded = _stage2_checkpoint(stage2) if stage2 else None
    # written into a staging folder beside the target and moved into place only when complete, so
    # a failed export leaves the previous package (or nothing) where the package goes
    final.parent.mkdir(parents=True, exist_ok=True)
    # mode None: a package folder is as readable as mkdir makes it
    with atomic_dir(final) as out:
        report = _write_package(model, config, name, contract, checkpoint, out, model_id, fp16, slim,
                                torch_compiled, stage2_loaded, (stage1_spec, stage2_spec), int8)
        if final.exists():
            shutil.rmtree(final)
    return report


def _write_package(model, config, name, contract, checkpoint, out: Path, model_id, fp16, slim, torch_compiled,
                   stage2, stage_specs, int8: bool = False) -> dict:
    """`export_package`'s work, into the (staging) folder ``out``; ``stage2``: the loaded stage-2
    (model, config) or None."""
    import onnx

    from noduleflow.trainer.models import DENSE_MODELS

    loc = contract.uses_location
    export_patch(model, out / "patch.onnx", loc, contract.patch_size)
    slimmed = slim_graph(out / "patch.onnx") if slim else None
    onnx.checker.check_model(str(out / "patch.onnx"))
    patches, pre = _sample_patches(contract)
    report = {"patch_max_abs_logit_diff": parity_patch(model, out / "patch.onnx", patches, loc)}
    tile = None
    if name in DENSE_MODELS:
        export_dense(model, out / "dense.onnx", loc, contract.patch_size)
        if slim:
            slim_graph(out / "dense.onnx")
        onnx.checker.check_model(str(out / "dense.onnx"))
        hu = pre.volume.hu
        c = np.array(hu.shape) // 2
        tile = contract.normalise(hu[c[0] - 30:c[0] + 30, c[1] - 26:c[1] + 26, c[2] - 34:c[2] + 34])
        report["dense_vs_patch_max_abs_diff"] = parity_dense(out / "dense.onnx", out / "patch.onnx", tile,
                                                             contract.dense_stride, loc, contract.patch_size)
    stage2_info = None
    if stage2:
        spec, stage2_info = _export_stage2(stage2, stage_specs[1], out, contract, pre, slim, report)
        contract = dataclasses.replace(contract, stage1=stage_specs[0] or Stage1Spec(), stage2=spec)
    bad = {k: v for k, v in report.items() if v > PARITY_TOL}
    if bad:
        raise PackageError(f"parity check failed (tolerance {PARITY_TOL}): {bad}")
    manifest = Manifest(
        model_id=model_id or f"{name}-{Path(checkpoint).stem}", architecture=name, contract=contract,
        training={"data": config.get("data", {}), "metrics": config.get("metrics", {}),
                  "train": config.get("train", {}), **({"stage2": stage2_info} if stage2_info else {})},
        export={"opset": 17, "parity": dict(report), "torch": __import__("torch").__version__,
                "onnx": onnx.__version__, "slim": slimmed},
    )
    # the graphs carry their contract too (ONNX metadata), so a graph found alone says what it expects
    for g in ("patch.onnx", "dense.onnx", "stage2.onnx"):
        if (out / g).exists():
            m = onnx.load(str(out / g))
            for k, v in {"model_id": manifest.model_id, "architecture": name,
                         "package_format_version": str(FORMAT_VERSION), "contract": json.dumps(contract.to_dict()),
                         "training": json.dumps(manifest.training["metrics"])}.items():
                m.metadata_props.add(key=k, value=v)
            onnx.save(m, str(out / g))
    if fp16:
        # converted after the metadata is set, so the fp16 graphs carry it too
        err = _fp16_graphs(out, patches[len(patches) // 2:], tile, contract)  # the phantom half of the patches
        manifest.export["fp16"] = err
        report.update(err)
    if int8:
        from .int8 import write_int8_graphs

        err = write_int8_graphs(out, contract, graphs=("stage2",) if stage2 else ("patch",))
        manifest.export["int8"] = err
        report.update({k: v for k, v in err.items() if k.endswith("_diff")})
    if torch_compiled:
        from .aoti import compile_patch, compile_stage2

        written, info = compile_patch(checkpoint, out)
        if stage2:
            written.append(compile_stage2(stage2[0], out, contract.stage2.channels, info["aoti_device"]))
        manifest.export.update(info)
        report["torch_compiled"] = [p.name for p in written]
    write_manifest(out, manifest)
    ModelPackage.load(out)  # what we wrote must verify
    return report


def _stage2_checkpoint(checkpoint):
    """(model, config) of a stage-2 checkpoint; ConfigError when it is missing or not stage 2."""
    from noduleflow.trainer.checkpoint import load_checkpoint
    from noduleflow.trainer.models import STAGE2_MODELS

    model, config = load_checkpoint(checkpoint)
    if config["model"] not in STAGE2_MODELS:
        raise ConfigError(f"--stage2 needs a stage-2 checkpoint (model one of {STAGE2_MODELS}), got "
                          f"{config['model']!r} from {checkpoint}")
    return model, config


def _export_stage2(stage2, spec: Stage2Spec | None, out: Path, contract: InputContract, pre, slim: bool,
                   report: dict) -> tuple[Stage2Spec, dict]:
    """Write ``stage2.onnx`` from a loaded stage-2 checkpoint (`_stage2_checkpoint`: model, config),
    check it against PyTorch on context patches of the parity phantom (its nodules and random lung
    points) -> the contract's stage-2 block."""
    import onnx

    from noduleflow.engine.context import ContextVolume
    from noduleflow.engine.patches import Normalisation

    model, config = stage2
    spec = spec or Stage2Spec()
    channels = int(model.state_dict()["stem.0.weight"].shape[1])
    if channels != spec.channels:
        raise ConfigError(f"stage-2 checkpoint takes {channels} channels, the spec says {spec.channels}")
    export_stage2(model, out / "stage2.onnx", channels, contract.patch_size)
    if slim:
        slim_graph(out / "stage2.onnx")
    onnx.checker.check_model(str(out / "stage2.onnx"))
    rng = np.random.default_rng(3)
    pts = np.argwhere(pre.mask)
    centres = pts[rng.choice(len(pts), 12)].astype(np.float64)
    ctx = ContextVolume(pre.volume.hu, Normalisation(*contract.hu_window, pad_hu=contract.pad_hu),
                        contract.patch_size, channels)
    patches = np.concatenate([ctx.patches(centres),
                              rng.uniform(size=(4, channels, *(contract.patch_size,) * 3)).astype(np.float32)])
    report["stage2_max_abs_logit_diff"] = parity_stage2(model, out / "stage2.onnx", patches)
    return spec, {"model": config["model"], "data": config.get("data"), "init": config.get("init"),
                  "metrics": config.get("metrics", {})}


def contract_of(model, config: dict) -> InputContract:
    """The input contract of a trained model: its preprocessing (saved with the checkpoint), its
    location input, and, for fully convolutional models, its dense stride and offset."""
    from noduleflow.trainer.models import uses_location

    kw = {}
    if getattr(model, "dense_stride", None) is not None:
        kw = {"dense_stride": int(model.dense_stride), "dense_offset": int(model.dense_offset)}
    pre = config.get("preprocess") or {}
    return InputContract(uses_location=uses_location(config["model"]),
                         preprocess=PreprocessSpec.from_dict(pre) if pre else PreprocessSpec(), **kw)


def _fp16_graphs(out: Path, real: np.ndarray, tile, contract: InputContract) -> dict:
    """Write ``*_fp16.onnx`` beside each fp32 graph -> their errors against fp32."""
    import onnx

    err = {}
    loc = contract.uses_location
    for g, x in (("patch", real), ("dense", tile)):
        if not (out / f"{g}.onnx").exists():
            continue
        to_fp16(out / f"{g}.onnx", out / f"{g}_fp16.onnx")
        onnx.checker.check_model(str(out / f"{g}_fp16.onnx"))
        feed = x if g == "patch" else x[None, None]
        rng = np.random.default_rng(2)
        if g == "patch":
            extra = rng.uniform(size=(len(x), 3)) if loc else None
        else:
            extra = rng.uniform(size=(1, 3, *contract.dense_output_shape(x.shape))) if loc else None
        err.update({f"{g}_fp16_{k}": v for k, v in
                    fp16_error(out / f"{g}.onnx", out / f"{g}_fp16.onnx", feed, extra).items()})
    return err
