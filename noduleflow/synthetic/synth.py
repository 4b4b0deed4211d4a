"""Write a phantom cohort: scans (DICOM series or MetaImage) + LUNA16-style annotation files.

The folder is an evaluation source (see the project's shared layout): the scans, ``annotations.csv``
and ``annotations_excluded.csv`` (LUNA16), ``findings.csv`` (the same rows with kind, shape and
location) and ``source.json`` (what made it: generator, settings, seeds, command).
"""
from __future__ import annotations

import csv
import json
import logging
import shlex
from dataclasses import asdict, fields
from pathlib import Path

from tqdm import tqdm

from noduleflow.engine import ConfigError
from noduleflow.engine.io import save_volume
from noduleflow.engine.io.dicom_write import write_dicom_series

from .phantom import HELDOUT, WIDE, GeneratorConfig, Phantom, PhantomParams, generate_phantom
from .phantom_base import resolve_generator
from .preview import phantom_montage

log = logging.getLogger(__name__)

ANNOTATION_HEADER = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
FINDINGS_HEADER = ANNOTATION_HEADER + ["kind", "shape", "location"]

_DESCRIPTIONS = {
    "default": "synthetic chest-CT phantoms of the default generator (the one the shipped model trains on)",
    "wide": "synthetic chest-CT phantoms of the wide generator (phantom_base.WIDE): every knob randomised wide",
    "custom": "synthetic chest-CT phantoms of a custom GeneratorConfig (see generator.config)",
    "heldout": "synthetic chest-CT phantoms of the held-out generator configuration (phantom_base.HELDOUT): its "
               "own noise texture, reconstruction, lesion shape model and anatomy, never trained, tuned or "
               "calibrated on",
}

# (pixel_representation, rescale_intercept, rescale_slope): what real scanners write.
# Unsigned data needs an intercept at or below the -2048 field-of-view padding.
_DICOM_ENCODINGS = [(1, -1024.0, 1.0), (0, -2048.0, 1.0), (1, -8192.0, 1.0), (0, -3072.0, 1.0)]


def write_annotations(path: Path, rows) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(ANNOTATION_HEADER)
        for uid, n in rows:
            x, y, z = n.center_xyz_mm
            w.writerow([uid, f"{x:.4f}", f"{y:.4f}", f"{z:.4f}", f"{n.diameter_mm:.2f}"])
    return path


def write_findings(path: Path, rows) -> Path:
    """``findings.csv``: the rows of ``annotations.csv`` (same order and numbers) with each nodule's
    kind, shape and location. ``rows``: (seriesuid, `Nodule`) pairs."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FINDINGS_HEADER)
        for uid, n in rows:
            x, y, z = n.center_xyz_mm
            w.writerow([uid, f"{x:.4f}", f"{y:.4f}", f"{z:.4f}", f"{n.diameter_mm:.2f}", n.kind, n.shape, n.location])
    return path


def synth_command(out_dir, n_scans: int, seed: int, fmt: str, generator: str, params: PhantomParams,
                  shape_zyx=None, spacing_zyx_mm=None, masks: bool = False, preview: bool = False) -> str | None:
    """The `noduleflow synth` command line that writes this cohort, or None when ``params`` set a knob
    the command has no option for."""
    cli_knobs = {"n_nodules", "kernel", "noise_hu"}
    if any(getattr(params, f.name) != f.default for f in fields(PhantomParams) if f.name not in cli_knobs):
        return None
    argv = ["noduleflow", "synth", str(out_dir), "--generator", generator, "--format", fmt,
            "--scans", str(n_scans), "--seed", str(seed)]
    for flag, value in (("--shape", shape_zyx), ("--spacing", spacing_zyx_mm)):
        if value is not None:
            argv += [flag, *(f"{v:g}" for v in value)]
    if params.n_nodules is not None:
        argv += ["--nodules", str(params.n_nodules)]
    if params.kernel != "standard":
        argv += ["--kernel", params.kernel]
    if params.noise_hu is not None:
        argv += ["--noise", f"{params.noise_hu:g}"]
    argv += ["--masks"] * masks + ["--preview"] * preview
    return shlex.join(argv)


def write_scan(phantom: Phantom, out_dir: Path, fmt: str, index: int, seed: int, masks: bool = False) -> Path:
    """Write one phantom scan; returns the DICOM folder or the .mhd path."""
    vol = phantom.volume
    uid = vol.series_uid
    if fmt == "dicom":
        rep, intercept, slope = _DICOM_ENCODINGS[index % len(_DICOM_ENCODINGS)]
        if rep == 0 and int(vol.hu.min()) < intercept:  # -3024 padding (wide / held-out): below -2048
            intercept = -3072.0
        target = out_dir / f"scan_{index:03d}"
        write_dicom_series(vol, target, pixel_representation=rep, rescale_intercept=intercept,
                           rescale_slope=slope, shuffle_names=True, reverse_instance_numbers=bool(index % 2),
                           seed=seed, patient_id=f"PHANTOM{index:03d}")
    elif fmt == "mhd":
        target = save_volume(vol, out_dir / f"{uid}.mhd")
    else:
        raise ConfigError(f"format must be 'dicom' or 'mhd', got {fmt!r}")
    if masks:
        save_volume(vol.with_array(phantom.lung_mask.astype("int16")), out_dir / "masks" / f"{uid}.mhd")
    return target


def write_cohort(out_dir, n_scans: int, seed: int, fmt: str = "dicom", masks: bool = False,
                 params: PhantomParams | None = None, shape_zyx=None, spacing_zyx_mm=None,
                 progress: bool = True, preview: bool = False, generator: str | GeneratorConfig | None = None,
                 role: str | None = None) -> list[Path]:
    """Generate ``n_scans`` phantoms (seeds ``seed``, ``seed+1``, ...) into ``out_dir``.

    Writes each scan, ``annotations.csv`` (nodules >= 3 mm) and ``annotations_excluded.csv``
    (findings < 3 mm), in LUNA16's layout with seriesuid = the DICOM SeriesInstanceUID and
    world coordinates in mm, ``findings.csv`` (the same rows with kind, shape and location) and
    ``source.json`` (generator and settings, seeds, command); with ``masks`` the true lung masks
    under ``masks/``; with ``preview`` a PNG montage per scan under ``preview/``.
    ``generator``: see `generate_phantom` (default: the default generator). ``role`` in
    source.json: "evaluation" or "training"; default "evaluation" for the held-out generator,
    "training" otherwise.
    """
    if n_scans < 1:
        raise ConfigError(f"--scans must be >= 1, got {n_scans}")
    if fmt not in ("dicom", "mhd"):
        raise ConfigError(f"format must be 'dicom' or 'mhd', got {fmt!r}")
    cfg = resolve_generator(generator)
    name = "default" if cfg is None else {WIDE: "wide", HELDOUT: "heldout"}.get(cfg, "custom")
    role = role or ("evaluation" if name == "heldout" else "training")
    if role not in ("evaluation", "training"):
        raise ConfigError(f"role must be 'evaluation' or 'training', got {role!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, ann, exc = [], [], []
    for i in tqdm(range(n_scans), desc="synth", unit="scan", disable=not progress):
        ph = generate_phantom(seed + i, shape_zyx=shape_zyx, spacing_zyx_mm=spacing_zyx_mm, params=params,
                              generator=cfg)
        written.append(write_scan(ph, out, fmt, i, seed + i, masks))
        ann += [(ph.volume.series_uid, n) for n in ph.nodules]
        exc += [(ph.volume.series_uid, n) for n in ph.excluded]
        if preview:
            phantom_montage(ph, out / "preview" / f"{ph.volume.series_uid}.png")
    write_annotations(out / "annotations.csv", ann)
    write_annotations(out / "annotations_excluded.csv", exc)
    write_findings(out / "findings.csv", ann)
    params = params or PhantomParams()
    source = {
        "name": out.name, "description": _DESCRIPTIONS[name] + "; a regression signal, not clinical data",
        "role": role,
        "generator": {"name": name, "config": None if cfg is None else asdict(cfg), "params": asdict(params),
                      "shape_zyx": None if shape_zyx is None else list(shape_zyx),
                      "spacing_zyx_mm": None if spacing_zyx_mm is None else list(spacing_zyx_mm), "format": fmt},
        "seeds": list(range(seed, seed + n_scans)),
        "command": None if name == "custom" else synth_command(out, n_scans, seed, fmt, name, params, shape_zyx,
                                                                 spacing_zyx_mm, masks, preview),
        "counts": {"scans": n_scans, "nodules": len(ann), "excluded": len(exc)},
    }
    (out / "source.json").write_text(json.dumps(source, indent=2) + "\n")
    log.info("wrote %d scans, %d nodules, %d excluded findings to %s", n_scans, len(ann), len(exc), out)
    return written
