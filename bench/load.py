"""`noduleflow bench load`: DICOM series load time, engine.io.load_volume against SimpleITK's
ImageSeriesReader.

    noduleflow bench load [--shape 300 512 512] [--repeats 3] [--workers N] [--out DIR]
    python -m noduleflow.bench.load ...   (the same options)

A phantom (512 x 512 x 300 by default) is written as a DICOM series (one file per
slice, shuffled names, int16 stored values) into a temporary folder; both readers
then load the same files, warm (one untimed load each first, so the page cache and
the import of either library are not measured), best of ``repeats``. SimpleITK's
time includes GetGDCMSeriesFileNames (its file discovery and ordering), as ours
includes the folder scan and slice ordering. Both results are checked voxel-equal.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import machine, standalone

log = logging.getLogger(__name__)
HELP = "DICOM load time vs SimpleITK ImageSeriesReader (512x512x300 phantom)"
DESCRIPTION = ("Write a phantom as a DICOM series and time engine.io.load_volume against SimpleITK's "
               "ImageSeriesReader on the same files (warm, best of N); writes load.json.")


def versions() -> dict:
    """`common.machine` with the DICOM readers' versions (pydicom, SimpleITK)."""
    import pydicom
    import SimpleITK as sitk

    return {**machine(), "pydicom": pydicom.__version__, "SimpleITK": sitk.Version_VersionString()}


def _best(fn, repeats: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), times, out


def sitk_load(folder: Path) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def run(shape_zyx=(300, 512, 512), spacing_zyx_mm=(1.0, 0.7, 0.7), repeats: int = 3, seed: int = 7,
        workers: int | None = None, command: str = "python -m noduleflow.bench.load") -> dict:
    from noduleflow.engine.io import load_volume
    from noduleflow.engine.io.dicom_write import write_dicom_series
    from noduleflow.synthetic.phantom import generate_phantom

    vol = generate_phantom(seed, shape_zyx=tuple(shape_zyx), spacing_zyx_mm=tuple(spacing_zyx_mm)).volume
    with tempfile.TemporaryDirectory(prefix="nf-bench-load-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        files = write_dicom_series(vol, folder, seed=seed)
        t_write = time.perf_counter() - t0
        nbytes = sum(f.stat().st_size for f in files)
        # warm-up: page cache, imports, thread pool start
        t0 = time.perf_counter()
        load_volume(folder, workers=workers)
        t_ours_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        sitk_load(folder)
        t_sitk_first = time.perf_counter() - t0
        t_ours, ours_all, ours = _best(lambda: load_volume(folder, workers=workers), repeats)
        t_sitk, sitk_all, ref = _best(lambda: sitk_load(folder), repeats)
    equal = bool(ours.hu.shape == ref.shape and np.array_equal(ours.hu, ref))
    if not equal:
        log.warning("load_volume and SimpleITK disagree on the voxels")
    return {
        "command": command, "machine": versions(),
        "series": {"shape_zyx": list(vol.shape), "spacing_zyx_mm": list(vol.spacing_zyx_mm),
                   "files": len(files), "bytes_on_disk": nbytes, "write_s": t_write},
        "ours": {"what": "noduleflow.engine.io.load_volume", "workers": workers, "first_s": t_ours_first,
                 "best_s": t_ours, "runs_s": ours_all},
        "simpleitk": {"what": "ImageSeriesReader(GetGDCMSeriesFileNames) + Execute + GetArrayFromImage",
                      "first_s": t_sitk_first, "best_s": t_sitk, "runs_s": sitk_all},
        "voxel_equal": equal,
        "speedup_vs_simpleitk": t_sitk / t_ours,
        "goal": "not slower than SimpleITK (speedup >= 1)",
    }


def summary(r: dict) -> str:
    s = r["series"]
    return (f"load {s['shape_zyx'][2]}x{s['shape_zyx'][1]}x{s['shape_zyx'][0]} DICOM series ({s['files']} files, "
            f"{s['bytes_on_disk'] / 1e6:.0f} MB): load_volume {r['ours']['best_s']:.3f} s, "
            f"SimpleITK {r['simpleitk']['best_s']:.3f} s (best of {len(r['ours']['runs_s'])}, warm) -> "
            f"{r['speedup_vs_simpleitk']:.2f}x SimpleITK; voxel-equal: {r['voxel_equal']}")


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `noduleflow bench load` (and of ``python -m noduleflow.bench.load``)."""
    p.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("Z", "Y", "X"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=None, help="decode threads for load_volume (default: its own)")
    p.add_argument("--out", default="bench-load", help="folder for load.json (default ./bench-load)")
    p.set_defaults(func=command)
    return p


def register(sub) -> None:
    build_parser(sub.add_parser("load", help=HELP, description=DESCRIPTION))


def command(args: argparse.Namespace) -> int:
    cmd = "noduleflow bench load" + ("" if tuple(args.shape) == (300, 512, 512) else
                                     " --shape " + " ".join(map(str, args.shape)))
    r = run(tuple(args.shape), repeats=args.repeats, workers=args.workers, command=cmd)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "load.json").write_text(json.dumps(r, indent=1))
    print(summary(r))
    return 0


def main(argv=None) -> int:
    return standalone(build_parser, "load", DESCRIPTION, argv)


if __name__ == "__main__":
    raise SystemExit(main())
