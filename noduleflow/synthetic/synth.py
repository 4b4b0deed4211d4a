"""Write a phantom cohort: scans (DICOM series or MetaImage) + LUNA16-style annotation files."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

from noduleflow.engine import ConfigError

from .phantom import Phantom, PhantomParams, generate_phantom

log = logging.getLogger(__name__)

ANNOTATION_HEADER = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]

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


def write_scan(phantom: Phantom, out_dir: Path, fmt: str, index: int, seed: int, masks: bool = False) -> Path:
    """Write one phantom scan; returns the DICOM folder or the .mhd path."""
    vol = phantom.volume
    uid = vol.series_uid
    if fmt == "dicom":
        from noduleflow.engine.io.dicom_write import write_dicom_series

        rep, intercept, slope = _DICOM_ENCODINGS[index % len(_DICOM_ENCODINGS)]
        target = out_dir / f"scan_{index:03d}"
        write_dicom_series(vol, target, pixel_representation=rep, rescale_intercept=intercept,
                           rescale_slope=slope, shuffle_names=True, reverse_instance_numbers=bool(index % 2),
                           seed=seed, patient_id=f"PHANTOM{index:03d}")
    elif fmt == "mhd":
        from noduleflow.engine.io import save_volume

        target = save_volume(vol, out_dir / f"{uid}.mhd")
    else:
        raise ConfigError(f"format must be 'dicom' or 'mhd', got {fmt!r}")
    if masks:
        from noduleflow.engine.io import save_volume

        save_volume(vol.with_array(phantom.lung_mask.astype("int16")), out_dir / "masks" / f"{uid}.mhd")
    return target


def write_cohort(out_dir, n_scans: int, seed: int, fmt: str = "dicom", masks: bool = False,
                 params: PhantomParams | None = None, shape_zyx=None, spacing_zyx_mm=None,
                 progress: bool = True, preview: bool = False) -> list[Path]:
    """Generate ``n_scans`` phantoms (seeds ``seed``, ``seed+1``, ...) into ``out_dir``.

    Writes each scan, ``annotations.csv`` (nodules >= 3 mm) and ``annotations_excluded.csv``
    (findings < 3 mm), in LUNA16's layout with seriesuid = the DICOM SeriesInstanceUID and
    world coordinates in mm; with ``masks`` the true lung masks under ``masks/``; with
    ``preview`` a PNG montage per scan under ``preview/``.
    """
    if n_scans < 1:
        raise ConfigError(f"--scans must be >= 1, got {n_scans}")
    if fmt not in ("dicom", "mhd"):
        raise ConfigError(f"format must be 'dicom' or 'mhd', got {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    written, ann, exc = [], [], []
    for i in tqdm(range(n_scans), desc="synth", unit="scan", disable=not progress):
        ph = generate_phantom(seed + i, shape_zyx=shape_zyx, spacing_zyx_mm=spacing_zyx_mm, params=params)
        written.append(write_scan(ph, out, fmt, i, seed + i, masks))
        ann += [(ph.volume.series_uid, n) for n in ph.nodules]
        exc += [(ph.volume.series_uid, n) for n in ph.excluded]
        if preview:
            from .preview import phantom_montage

            phantom_montage(ph, out / "preview" / f"{ph.volume.series_uid}.png")
    write_annotations(out / "annotations.csv", ann)
    write_annotations(out / "annotations_excluded.csv", exc)
    log.info("wrote %d scans, %d nodules, %d excluded findings to %s", n_scans, len(ann), len(exc), out)
    return written
