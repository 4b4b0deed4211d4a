"""`noduleflow bench preprocess`: the numba preprocessing kernels against their references, in
one run, on one phantom scan.

    noduleflow bench preprocess [--shape 300 512 512] [--repeats 3] [--ref-repeats 1]
                                [--dice-scans 10] [--resample-slices 100 200 300]
                                [--realct ../shared/realct] [--baseline-commit REV] [--out DIR]
    python -m noduleflow.bench.preprocess ...   (the same options)

On one phantom (512 x 512 x 300, spacing (1.0, 0.7, 0.7) mm by default):
  - lung mask: engine.lung_mask vs bench.reference.lung_mask (scipy.ndimage + skimage, the
    same algorithm on every voxel; ours runs its topology on a ~2 mm block grid), with the
    default parameters and with the detection pipeline's (3 mm dilation);
  - crop + 1 mm resampling: engine.resample (trilinear) on the lung box (+ 23 mm margin)
    vs SimpleITK ResampleImageFilter (linear, same output grid) and scipy.ndimage.zoom
    (order 3, seed 001's method); and whole 512 x 512 x N scans (the phantom's first N
    slices, N from ``--resample-slices``) to 1 mm vs SimpleITK;
  - connected components: engine.ccl.label vs scipy.ndimage.label (6-connectivity) on
    the lung mask's first step (HU < -320);
  - candidates: engine.candidates vs bench.reference.candidates on the 1 mm volume
    (default rules, and the seed's 5x5x5 box rule);
  - patch gather: bytes written per second by engine.patches.gather (41^3 float32,
    windowed) vs np.copyto of the same number of bytes, and vs bench.reference.gather.
numba's first call in the process (a compile, or a load from numba's cache when one is
present: ``numba_cache_files`` says which) is reported apart; warm times are the best
of ``repeats`` (ours) and ``ref_repeats`` (references). Then the lung mask's Dice
against the true mask on ``dice_scans`` default-size phantoms, incl. touching lungs
and one-lung scans. With a real scan (``--realct``, default ../shared/realct when it
exists): the lung mask and the resampling against their references on it. With
``--baseline-commit``: the Dice of today's mask against that commit's engine mask (on
the Dice phantoms and the real scan), and both masks' peak memory (max RSS growth of a
fresh process, same scan). The machine's load average is recorded before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .common import standalone, write_report
from .load import versions

HELP = "numba kernels vs scipy/skimage/SimpleITK references (512x512x300 phantom)"
DESCRIPTION = ("Time the lung mask, crop + resampling (and whole-scan resampling at several sizes), connected "
               "components, candidate rules and patch gather against their reference implementations in one run "
               "(numba first call apart from warm runs), the lung-mask Dice on phantoms, and the mask and "
               "resampling on the real scan in ../shared/realct when present; writes preprocess.json and "
               "preprocess.md.")


def _best(fn, repeats: int):
    times, out = [], None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def _first(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _cache_files() -> dict:
    """Number of numba cache index files present per engine kernel module (before the run)."""
    root = Path(__file__).resolve().parents[1] / "engine" / "__pycache__"
    out = {}
    for mod in ("ccl", "morphology", "lungmask", "resample", "candidates", "patches"):
        out[mod] = len(list(root.glob(f"{mod}.*.nbi"))) if root.is_dir() else 0
    return out


def resample_vs_simpleitk(volume, repeats: int, ref_repeats: int) -> dict:
    """engine.resample (trilinear, int16 out) vs SimpleITK linear (float32 out) to 1 mm, same grid."""
    from noduleflow.bench import reference
    from noduleflow.engine.resample import resample

    resample(volume, (1.0, 1.0, 1.0), order=1)  # compiled or loaded from numba's cache already: warm
    ours, v1 = _best(lambda: resample(volume, (1.0, 1.0, 1.0), order=1), repeats)
    t_sitk, s1 = _best(lambda: reference.resample_sitk(volume, v1), max(ref_repeats, repeats))
    inner = (slice(1, -1),) * 3
    return {"in_shape_zyx": list(volume.shape), "in_spacing_zyx_mm": [round(x, 4) for x in volume.spacing_zyx_mm],
            "out_shape_zyx": list(v1.shape), "ours_s": ours, "simpleitk_linear_s": t_sitk,
            "speedup_vs_simpleitk": t_sitk / ours, "goal_vs_simpleitk": 3.0,
            "max_abs_diff_hu_vs_simpleitk_interior": float(np.abs(v1.hu[inner].astype(np.float32) - s1[inner]).max())}


def kernels(shape_zyx=(300, 512, 512), spacing_zyx_mm=(1.0, 0.7, 0.7), repeats: int = 3, ref_repeats: int = 1,
            n_patches: int = 256, seed: int = 11, zoom: bool = True, resample_slices=(100, 200, 300)) -> dict:
    """Time every kernel against its reference on one phantom; see the module docstring."""
    from noduleflow.bench import reference
    from noduleflow.engine.candidates import CandidateRules, candidates
    from noduleflow.engine.ccl import RunComponents, label
    from noduleflow.engine.lungmask import LungMaskParams, dice, grid_factors, lung_mask
    from noduleflow.engine.patches import Normalisation, gather
    from noduleflow.engine.preprocess import PreprocessSpec
    from noduleflow.engine.resample import crop, lung_bbox, resample
    from noduleflow.synthetic.phantom import generate_phantom

    cache = _cache_files()
    ph = generate_phantom(seed, shape_zyx=tuple(shape_zyx), spacing_zyx_mm=tuple(spacing_zyx_mm))
    vol = ph.volume
    res: dict = {"scan": {"shape_zyx": list(vol.shape), "spacing_zyx_mm": list(vol.spacing_zyx_mm), "seed": seed},
                 "numba_cache_files": cache, "repeats": repeats, "ref_repeats": ref_repeats}

    # connected components (first: the lung mask calls it too)
    air = vol.hu < -320
    first, _ = _first(lambda: label(air))
    ours, (lab, n) = _best(lambda: label(air), repeats)
    ref, (rlab, rn) = _best(lambda: reference.label(air), ref_repeats)
    res["ccl"] = {"first_s": first, "ours_s": ours, "scipy_ndimage_label_s": ref, "speedup": ref / ours,
                  "components": int(n), "components_ref": int(rn), "foreground_voxels": int(air.sum())}
    del lab, rlab
    # the lung mask's first labelling: x runs of HU < -320, sizes/border/boxes, no label image (on the
    # scan's own grid here; the mask runs it on its block grid)
    first, _ = _first(lambda: RunComponents(vol.hu, -320.0))
    ours, runs = _best(lambda: RunComponents(vol.hu, -320.0), repeats)
    res["ccl_runs"] = {"first_s": first, "ours_s": ours, "scipy_ndimage_label_s": ref, "speedup": ref / ours,
                       "components": int(runs.n), "components_equal_to_reference": bool(runs.n == rn)}
    del runs

    # lung mask: the default parameters, and the detection pipeline's (3 mm dilation)
    mask = None
    for key, p in (("lung_mask", LungMaskParams()), ("lung_mask_dilate3", PreprocessSpec().lung)):
        first, _ = _first(lambda p=p: lung_mask(vol, p))
        ours, m = _best(lambda p=p: lung_mask(vol, p), repeats)
        ref, rmask = _best(lambda p=p: reference.lung_mask(vol, p), ref_repeats)
        res[key] = {"params": asdict(p), "grid_factors_zyx": list(grid_factors(vol.spacing_zyx_mm, p.grid_mm)),
                    "first_s": first, "ours_s": ours, "reference_s": ref, "speedup": ref / ours, "goal": 20.0,
                    "dice_vs_reference": dice(m, rmask), "dice_vs_truth": dice(m, ph.lung_mask)}
        mask = m if mask is None else mask
        del rmask

    # crop to the lung box (+ 20 mm half patch + 3 mm dilation) and resample to 1 mm
    bbox = lung_bbox(mask, vol.spacing_zyx_mm, 23.0)
    cropped = crop(vol, bbox)
    first, _ = _first(lambda: resample(cropped, (1.0, 1.0, 1.0), order=1))
    ours, v1 = _best(lambda: resample(cropped, (1.0, 1.0, 1.0), order=1), repeats)
    t_sitk, s1 = _best(lambda: reference.resample_sitk(cropped, v1), ref_repeats)
    inner = (slice(1, -1),) * 3
    diff = np.abs(v1.hu[inner].astype(np.float32) - s1[inner])
    rs = {"crop_shape_zyx": list(cropped.shape), "out_shape_zyx": list(v1.shape), "first_s": first, "ours_s": ours,
          "simpleitk_linear_s": t_sitk, "speedup_vs_simpleitk": t_sitk / ours, "goal_vs_simpleitk": 3.0,
          "max_abs_diff_hu_vs_simpleitk_interior": float(diff.max()),
          "ours_includes": "trilinear + rounding to int16; SimpleITK output float32"}
    if zoom:
        t_zoom, z1 = _best(lambda: reference.resample_zoom(cropped, (1.0, 1.0, 1.0), order=3), ref_repeats)
        rs.update({"scipy_zoom_order3_s": t_zoom, "speedup_vs_zoom": t_zoom / ours, "goal_vs_zoom": 20.0,
                   "zoom_shape_zyx": list(z1.shape)})
        del z1
    res["resample"] = rs
    res["resample_sizes"] = [resample_vs_simpleitk(crop(vol, (0, n, 0, vol.shape[1], 0, vol.shape[2])), repeats,
                                               ref_repeats) for n in resample_slices if n <= vol.shape[0]]
    first_m, m1 = _first(lambda: resample(cropped.with_array(mask[bbox[0]:bbox[1], bbox[2]:bbox[3], bbox[4]:bbox[5]]),
                                          (1.0, 1.0, 1.0), order=0))
    res["resample"]["mask_nearest_first_s"] = first_m
    m1 = m1.hu

    # candidates on the 1 mm volume
    res["candidates"] = {}
    seed_box = CandidateRules(center_min_hu=100.0, box_min_hu=0.0)
    for name, rules in (("default", CandidateRules()), ("seed_box", seed_box)):
        first, _ = _first(lambda rules=rules: candidates(v1.hu, m1, rules))
        ours, c = _best(lambda rules=rules: candidates(v1.hu, m1, rules), repeats)
        ref, rc = _best(lambda rules=rules: reference.candidates(v1.hu, m1, rules), ref_repeats)
        res["candidates"][name] = {"rules": {"stride": rules.stride, "center_min_hu": rules.center_min_hu,
                                             "box_min_hu": rules.box_min_hu},
                                   "first_s": first, "ours_s": ours, "reference_s": ref, "speedup": ref / ours,
                                   "n": int(len(c)), "equal_to_reference": bool(np.array_equal(c, rc))}

    # patch gather bandwidth
    c = candidates(v1.hu, m1, CandidateRules(stride=4))
    rng = np.random.default_rng(0)
    c = c[rng.choice(len(c), size=min(n_patches, len(c)), replace=False)] if len(c) else np.zeros((0, 3), np.int64)
    norm = Normalisation()
    buf = np.empty((len(c), 1, 41, 41, 41), np.float32)
    src = np.empty_like(buf)
    src.fill(0.5)
    nbytes = buf.nbytes
    first, _ = _first(lambda: gather(v1.hu, c, buf, norm))
    ours, _ = _best(lambda: gather(v1.hu, c, buf, norm), repeats)
    t_copy, _ = _best(lambda: np.copyto(buf, src), repeats)
    t_ref, rp = _best(lambda: reference.gather(v1.hu, c, norm), ref_repeats)
    gather(v1.hu, c, buf, norm)
    res["gather"] = {"patches": int(len(c)), "bytes_written": int(nbytes), "first_s": first,
                     "ours_s": ours, "ours_GBps": nbytes / ours / 1e9,
                     "copyto_s": t_copy, "copyto_GBps": nbytes / t_copy / 1e9,
                     "fraction_of_copyto": t_copy / ours,
                     "reference_s": t_ref, "reference_GBps": nbytes / t_ref / 1e9, "speedup_vs_reference": t_ref / ours,
                     "max_abs_diff_vs_reference": float(np.abs(buf - rp).max()) if len(c) else 0.0}
    return res


def _baseline_engine(commit: str, root: Path):
    """Import the lung mask of engine/ at ``commit`` (git show into ``root``) as a separate package."""
    repo = Path(__file__).resolve().parents[1]
    pkg = root / "nf_baseline_engine"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    for mod in ("lungmask", "morphology", "ccl", "errors", "volume"):
        src = subprocess.run(["git", "show", f"{commit}:engine/{mod}.py"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout
        (pkg / f"{mod}.py").write_text(src)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import importlib

    return importlib.import_module("nf_baseline_engine.lungmask")


def _rev(commit: str) -> str:
    repo = Path(__file__).resolve().parents[1]
    return subprocess.run(["git", "rev-parse", "--short", commit], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()


_RSS_SNIPPET = """
import json, sys, time


def hwm_kb():
    # VmHWM: this process's own peak RSS; ru_maxrss would carry over the parent's peak across fork + exec
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
import numpy as np
sys.path.insert(0, sys.argv[5])
from noduleflow.engine import Volume
hu = np.load(sys.argv[1])
vol = Volume(hu, tuple(json.loads(sys.argv[2])), (0.0, 0.0, 0.0))
if sys.argv[3] == "ours":
    from noduleflow.engine.lungmask import lung_mask
else:
    from nf_baseline_engine.lungmask import lung_mask
# compile / load the cache and touch every import on a 24-slice slab of the same scan (same code path,
# a small fraction of the memory), so that the measured call's peak is its own
mid = hu.shape[0] // 2
try:
    lung_mask(vol.with_array(np.ascontiguousarray(hu[mid - 12:mid + 12])), dilate_mm=float(sys.argv[4]))
except Exception:  # no lung in the slab (either engine's own error type): what ran is loaded all the same
    pass
before = hwm_kb()
m = lung_mask(vol, dilate_mm=float(sys.argv[4]))
print(json.dumps({"peak_growth_mb": (hwm_kb() - before) / 1024}))
"""


def peak_memory(volume, dilate_mm: float, baseline_root: Path | None) -> dict:
    """Growth of max RSS (MB) during one lung-mask call on ``volume``, over the process's RSS with the scan
    loaded, in a fresh process per engine: ours and, when ``baseline_root`` holds the baseline package, the
    baseline's. A first call on a 24-slice slab loads the kernels (from numba's cache, filled by a first
    process) beforehand, so the figure is the mask's own transient memory."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hu.npy"
        np.save(path, volume.hu)
        for kind in ("ours", "baseline") if baseline_root else ("ours",):
            # twice: a compile in the first process (a stale or missing numba cache) peaks higher than the
            # mask itself and would hide it; the second process loads the kernels from the cache
            for _ in range(2):
                r = subprocess.run([sys.executable, "-c", _RSS_SNIPPET, str(path),
                                    json.dumps(list(volume.spacing_zyx_mm)), kind, str(dilate_mm),
                                    str(baseline_root or tmp)], capture_output=True, text=True)
            out[kind] = json.loads(r.stdout)["peak_growth_mb"] if r.returncode == 0 else r.stderr[-300:]
    return out


def realct(path: Path, repeats: int, ref_repeats: int, baseline=None, baseline_root=None) -> dict:
    """The lung mask and the resampling on the one real scan (anatomy check and timing; no tuning)."""
    from noduleflow.bench import reference
    from noduleflow.engine.io import load_volume
    from noduleflow.engine.lungmask import LungMaskParams, dice, lung_mask
    from noduleflow.engine.preprocess import PreprocessSpec

    vol = load_volume(path)
    res: dict = {"path": str(path), "series_uid": vol.series_uid, "shape_zyx": list(vol.shape),
                 "spacing_zyx_mm": [round(x, 4) for x in vol.spacing_zyx_mm]}
    for key, p in (("lung_mask", LungMaskParams()), ("lung_mask_dilate3", PreprocessSpec().lung)):
        lung_mask(vol, p)
        ours, m = _best(lambda p=p: lung_mask(vol, p), repeats)
        ref, rmask = _best(lambda p=p: reference.lung_mask(vol, p), ref_repeats)
        row = {"ours_s": ours, "reference_s": ref, "speedup": ref / ours, "dice_vs_reference": dice(m, rmask)}
        if baseline is not None:
            row["dice_vs_baseline"] = dice(m, baseline.lung_mask(vol, dilate_mm=p.dilate_mm))
            row["peak_rss_growth_mb"] = peak_memory(vol, p.dilate_mm, baseline_root)
        res[key] = row
        del rmask
    res["resample"] = resample_vs_simpleitk(vol, repeats, ref_repeats)
    return res


def dice_study(n_scans: int = 10, seed0: int = 6000, shape_zyx=None, spacing_zyx_mm=None, baseline=None) -> dict:
    """Lung-mask Dice vs the phantoms' true masks; the last scans are touching-lungs and one-lung cases.

    With ``baseline`` (a lungmask module of another commit): also the Dice of ours against the
    baseline's mask, without and with the pipeline's 3 mm dilation."""
    from noduleflow.engine.lungmask import dice, lung_mask
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    n_special = max(1, n_scans // 5)
    cases = ["normal"] * (n_scans - 2 * n_special) + ["touching_lungs"] * n_special + ["one_lung"] * n_special
    rows = []
    for i, case in enumerate(cases):
        params = PhantomParams(touching_lungs=case == "touching_lungs", one_lung=case == "one_lung")
        ph = generate_phantom(seed0 + i, shape_zyx=shape_zyx, spacing_zyx_mm=spacing_zyx_mm, params=params)
        m = lung_mask(ph.volume)
        row = {"seed": seed0 + i, "case": case, "shape_zyx": list(ph.volume.shape),
               "spacing_zyx_mm": [round(s, 3) for s in ph.volume.spacing_zyx_mm], "dice": dice(m, ph.lung_mask)}
        if baseline is not None:
            row["dice_vs_baseline"] = dice(m, baseline.lung_mask(ph.volume))
            row["dice_vs_baseline_dilate3"] = dice(lung_mask(ph.volume, dilate_mm=3.0),
                                                   baseline.lung_mask(ph.volume, dilate_mm=3.0))
        rows.append(row)
    d = np.array([r["dice"] for r in rows])
    out = {"scans": rows, "min": float(d.min()), "mean": float(d.mean()), "goal_min": 0.97,
           "by_case_min": {c: float(min(r["dice"] for r in rows if r["case"] == c)) for c in dict.fromkeys(cases)}}
    if baseline is not None:
        out["min_dice_vs_baseline"] = float(min(min(r["dice_vs_baseline"], r["dice_vs_baseline_dilate3"])
                                                for r in rows))
    return out


def _mask_rows(rows: dict, machine_note: str) -> list[str]:
    out = []
    for key, name in (("lung_mask", "lung mask (default: no dilation)"),
                      ("lung_mask_dilate3", "lung mask (detection pipeline: 3 mm dilation)")):
        if key in rows:
            x = rows[key]
            first = f"{x['first_s']:.2f}" if "first_s" in x else ""
            out.append(f"| {name}{machine_note} | scipy.ndimage + skimage, every voxel | {first} | "
                       f"{x['ours_s']:.3f} | {x['reference_s']:.3f} | {x['speedup']:.1f}x | >= 20x |")
    return out


def markdown(r: dict) -> str:
    k = r["kernels"]
    s = k["scan"]
    rs, cc, g = k["resample"], k["ccl"], k["gather"]
    load = r.get("load_average", {})
    lines = [f"Preprocessing kernels vs references, one run, phantom {s['shape_zyx'][2]}x{s['shape_zyx'][1]}x"
             f"{s['shape_zyx'][0]} at {tuple(s['spacing_zyx_mm'])} mm; {r['machine']['cpu']}, "
             f"{r['machine']['cores']} cores, numba threads {r['machine']['numba_threads']}; load average (1 min) "
             f"{load.get('before', ['?'])[0]} before, {load.get('after', ['?'])[0]} after (other work shares the "
             f"cores: ratios are measured side by side, absolute times are not the machine's best). "
             f"Command: `{r['command']}`. Warm: best of {k['repeats']} (ours), {k['ref_repeats']} (references).", "",
             "| kernel | reference | numba first call s | ours warm s | reference s | ratio | goal |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += _mask_rows(k, "")
    lines.append(f"| crop + 1 mm trilinear ({'x'.join(map(str, rs['crop_shape_zyx'][::-1]))} -> "
                 f"{'x'.join(map(str, rs['out_shape_zyx'][::-1]))}) | SimpleITK ResampleImageFilter linear | "
                 f"{rs['first_s']:.2f} | {rs['ours_s']:.3f} | {rs['simpleitk_linear_s']:.3f} | "
                 f"{rs['speedup_vs_simpleitk']:.1f}x | >= 3x |")
    if "scipy_zoom_order3_s" in rs:
        lines.append(f"| (same) | scipy.ndimage.zoom order 3 | | {rs['ours_s']:.3f} | "
                     f"{rs['scipy_zoom_order3_s']:.3f} | {rs['speedup_vs_zoom']:.1f}x | >= 20x |")
    for x in k.get("resample_sizes", []):
        out_xyz = "x".join(map(str, x["out_shape_zyx"][::-1]))
        lines.append(f"| whole scan 512x512x{x['in_shape_zyx'][0]} -> 1 mm ({out_xyz}) "
                     f"| SimpleITK ResampleImageFilter linear | | {x['ours_s']:.3f} | {x['simpleitk_linear_s']:.3f} | "
                     f"{x['speedup_vs_simpleitk']:.1f}x | >= 3x |")
    lines.append(f"| CCL (HU < -320, {cc['components']} components) | scipy.ndimage.label | {cc['first_s']:.2f} | "
                 f"{cc['ours_s']:.3f} | {cc['scipy_ndimage_label_s']:.3f} | {cc['speedup']:.1f}x | |")
    if "ccl_runs" in k:
        c = k["ccl_runs"]
        lines.append(f"| CCL as x runs (RunComponents: sizes, border, boxes; no label image) | scipy.ndimage.label | "
                     f"{c['first_s']:.2f} | {c['ours_s']:.3f} | {c['scipy_ndimage_label_s']:.3f} | "
                     f"{c['speedup']:.1f}x | |")
    for name, c in k["candidates"].items():
        lines.append(f"| candidates ({name}: stride {c['rules']['stride']}, centre >= {c['rules']['center_min_hu']:.0f}"
                     f"{'' if c['rules']['box_min_hu'] is None else ', box min >= 0'}; {c['n']} found) | "
                     f"noduleflow.bench.reference.candidates | {c['first_s']:.2f} | {c['ours_s']:.4f} | "
                     f"{c['reference_s']:.4f} | {c['speedup']:.1f}x | |")
    lines += [f"| patch gather ({g['patches']} x 41^3 float32, {g['bytes_written'] / 1e6:.0f} MB) | "
              f"np.copyto same bytes | {g['first_s']:.2f} | {g['ours_s']:.4f} ({g['ours_GBps']:.2f} GB/s) | "
              f"{g['copyto_s']:.4f} "
              f"({g['copyto_GBps']:.2f} GB/s) | {g['fraction_of_copyto']:.2f}x of copyto | |",
              f"| (same) | bench.reference.gather | | {g['ours_s']:.4f} | {g['reference_s']:.4f} | "
              f"{g['speedup_vs_reference']:.1f}x | |", ""]
    lm, lm3 = k["lung_mask"], k["lung_mask_dilate3"]
    max_diff = max([rs["max_abs_diff_hu_vs_simpleitk_interior"]]
                   + [x["max_abs_diff_hu_vs_simpleitk_interior"] for x in k.get("resample_sizes", [])])
    lines += [f"Quality: lung mask Dice vs the reference (same algorithm on every voxel) {lm['dice_vs_reference']:.4f} "
              f"(3 mm dilation: {lm3['dice_vs_reference']:.4f}); vs the phantom's true mask {lm['dice_vs_truth']:.4f}; "
              f"topology grid {lm['grid_factors_zyx']} voxels per block; resampling max |ours - SimpleITK| on interior "
              f"voxels {max_diff:.2f} HU; "
              f"candidates equal to the reference: {all(c['equal_to_reference'] for c in k['candidates'].values())}."]
    rc = r.get("realct")
    if rc:
        lines += ["", f"Real scan ({Path(rc['path']).name}, {'x'.join(map(str, rc['shape_zyx'][::-1]))} at "
                      f"{tuple(rc['spacing_zyx_mm'])} mm; anatomy and timing only, never tuned on):", "",
                  "| kernel | reference | | ours warm s | reference s | ratio | goal |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        lines += _mask_rows(rc, " (real scan)")
        x = rc["resample"]
        lines.append(f"| whole scan -> 1 mm (real scan) | SimpleITK ResampleImageFilter linear | | {x['ours_s']:.3f} | "
                     f"{x['simpleitk_linear_s']:.3f} | {x['speedup_vs_simpleitk']:.1f}x | >= 3x |")
        lines += ["", "Real-scan lung mask Dice vs the reference: " + ", ".join(
            f"{key} {rc[key]['dice_vs_reference']:.4f}" for key in ("lung_mask", "lung_mask_dilate3"))]
        if "dice_vs_baseline" in rc["lung_mask"]:
            lines.append(f"Real-scan Dice vs the baseline commit's mask ({r['baseline_commit']}, full resolution): "
                         + ", ".join(f"{key} {rc[key]['dice_vs_baseline']:.4f}"
                                     for key in ("lung_mask", "lung_mask_dilate3"))
                + "; peak RSS growth of one warm call, MB (fresh process each): " + ", ".join(
                f"{key} {rc[key]['peak_rss_growth_mb']}" for key in ("lung_mask", "lung_mask_dilate3")))
    if r.get("dice"):
        d = r["dice"]
        base = "dice_vs_baseline" in d["scans"][0]
        lines += ["", f"Lung-mask Dice vs true mask on {len(d['scans'])} default-size phantoms: min {d['min']:.4f}, "
                      f"mean {d['mean']:.4f} (goal >= 0.97); min by case: "
                      + ", ".join(f"{c} {v:.4f}" for c, v in d["by_case_min"].items())
                      + (f"; min Dice vs the baseline commit's mask ({r['baseline_commit']}): "
                         f"{d['min_dice_vs_baseline']:.4f} (goal >= 0.99)" if base else ""), "",
                  "| seed | case | shape zyx | spacing zyx mm | Dice vs truth |"
                  + (" vs baseline | vs baseline, 3 mm dilation |" if base else ""),
                  "|---:|---|---|---|---:|" + ("---:|---:|" if base else "")]
        lines += [f"| {x['seed']} | {x['case']} | {x['shape_zyx']} | {x['spacing_zyx_mm']} | {x['dice']:.4f} |"
                  + (f" {x['dice_vs_baseline']:.4f} | {x['dice_vs_baseline_dilate3']:.4f} |" if base else "")
                  for x in d["scans"]]
    return "\n".join(lines) + "\n"


def default_realct() -> Path | None:
    """../shared/realct beside the repository, when present."""
    p = Path(__file__).resolve().parents[1].parent / "shared" / "realct"
    return p if p.is_dir() else None


def run(shape_zyx=(300, 512, 512), spacing_zyx_mm=(1.0, 0.7, 0.7), repeats: int = 3, ref_repeats: int = 1,
        dice_scans: int = 10, dice_shape_zyx=None, dice_spacing_zyx_mm=None, n_patches: int = 256, zoom: bool = True,
        resample_slices=(100, 200, 300), realct_path: Path | None = None, baseline_commit: str | None = None,
        command: str = "python -m noduleflow.bench.preprocess") -> dict:
    import numba

    m = {**versions(), "numba_threads": numba.get_num_threads()}
    for mod in ("scipy", "skimage"):
        m[mod] = __import__(mod).__version__
    t0 = time.perf_counter()
    out = {"command": command, "machine": m, "load_average": {"before": [round(x, 2) for x in os.getloadavg()]}}
    with tempfile.TemporaryDirectory() as tmp:
        baseline = None
        if baseline_commit:
            out["baseline_commit"] = _rev(baseline_commit)
            baseline = _baseline_engine(baseline_commit, Path(tmp))
        out["kernels"] = kernels(shape_zyx, spacing_zyx_mm, repeats, ref_repeats, n_patches=n_patches, zoom=zoom,
                                 resample_slices=resample_slices)
        if realct_path is not None:
            out["realct"] = realct(Path(realct_path), repeats, ref_repeats, baseline, Path(tmp) if baseline else None)
        out["dice"] = dice_study(dice_scans, shape_zyx=dice_shape_zyx, spacing_zyx_mm=dice_spacing_zyx_mm,
                                 baseline=baseline) if dice_scans else None
    out["load_average"]["after"] = [round(x, 2) for x in os.getloadavg()]
    out["wall_s"] = time.perf_counter() - t0
    return out


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `noduleflow bench preprocess` (and of ``python -m noduleflow.bench.preprocess``)."""
    p.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("Z", "Y", "X"))
    p.add_argument("--repeats", type=int, default=3, help="warm runs of ours (best of)")
    p.add_argument("--ref-repeats", type=int, default=1, help="runs of each reference (best of)")
    p.add_argument("--dice-scans", type=int, default=10, help="default-size phantoms for the Dice study (0: skip)")
    p.add_argument("--resample-slices", type=int, nargs="*", default=[100, 200, 300],
                   help="whole-scan resampling at 512 x 512 x N for each N (the phantom's first N slices)")
    p.add_argument("--realct", default=None, help="a real DICOM series folder (default: ../shared/realct if present; "
                                                  "'none' to skip)")
    p.add_argument("--baseline-commit", default=None,
                   help="git revision whose engine lung mask ours is compared with (Dice, peak memory)")
    p.add_argument("--out", default="bench-preprocess", help="output folder (default ./bench-preprocess)")
    p.set_defaults(func=command)
    return p


def register(sub) -> None:
    build_parser(sub.add_parser("preprocess", help=HELP, description=DESCRIPTION))


def command(args: argparse.Namespace) -> int:
    cmd = "noduleflow bench preprocess" + ("" if tuple(args.shape) == (300, 512, 512) else
                                           " --shape " + " ".join(map(str, args.shape)))
    for name, default in (("repeats", 3), ("ref_repeats", 1), ("dice_scans", 10)):
        if getattr(args, name) != default:
            cmd += f" --{name.replace('_', '-')} {getattr(args, name)}"
    if args.resample_slices != [100, 200, 300]:
        cmd += " --resample-slices " + " ".join(map(str, args.resample_slices))
    if args.realct:
        cmd += f" --realct {args.realct}"
    if args.baseline_commit:
        cmd += f" --baseline-commit {args.baseline_commit}"
    realct_path = None if args.realct == "none" else (Path(args.realct) if args.realct else default_realct())
    r = run(tuple(args.shape), repeats=args.repeats, ref_repeats=args.ref_repeats, dice_scans=args.dice_scans,
            resample_slices=tuple(args.resample_slices), realct_path=realct_path,
            baseline_commit=args.baseline_commit, command=cmd)
    write_report(Path(args.out), "preprocess", r, markdown(r))
    return 0


def main(argv=None) -> int:
    return standalone(build_parser, "preprocess", DESCRIPTION, argv)


if __name__ == "__main__":
    raise SystemExit(main())
