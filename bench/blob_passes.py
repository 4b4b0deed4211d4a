"""The stage-1 blob passes against those of another checkout of this repository, in one process.

    git worktree add /tmp/ref <commit>
    python -m noduleflow.bench.blob_passes --reference-tree /tmp/ref --identity heldout --out DIR

The default detection's stage 1 runs three blob passes (`engine.blobs.detect_blobs`: the Hessian
blobs; `engine.stage1.subsolid_blobs` and `wall_blobs`: the subsolid and pleural passes), the
largest CPU stages of a scan beside stage 2. This bench imports the reference checkout's
``engine/stage1.py`` with its own ``blobs.py``, ``morphology.py`` and the rest of its engine,
beside this one's (their numba kernels compiled from a copy of its files: a minute or so of
compiling before the first figure), and measures:

1. ``--identity COHORT``: on every lung box of a phantom cohort (`trainer.data.cohort`, cached),
   whether the three passes give the same blobs (centres, extents, responses, bit for bit), and
   the seconds each version took over the cohort (one after the other, per scan);
2. the three passes on the lung boxes of ``--scans`` phantom DICOM series (bench speed's, about
   200 x 512 x 512) and of each ``--series`` given, ``--repeats`` times per version, alternating
   (and which goes first): per pass the median seconds and the ratio reference / this one;
3. the default detection of those series (load excluded) with each version's stage 1 (its blob
   passes and how it combines them; everything else the same), alternating: per stage the
   medians, the detection's ratio, and whether the candidates are the same.

Absolute seconds on a shared 2-core machine are noise; the ratios are what is reported.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

PASSES = ("blobs", "subsolid", "wall")


def load_reference(tree) -> object:
    """``engine/stage1.py`` of the checkout ``tree``, imported with that checkout's own
    ``engine/blobs.py``, ``morphology.py`` and the rest of its engine: a package
    ``noduleflow.engine._reference`` over a temporary copy of the tree's ``engine`` sources (numba
    keeps a module's name in its cache files, so the reference's kernels compile into the copy
    and never share a cache folder with a module of another name). Its ``detect_blobs``,
    ``subsolid_blobs``, ``wall_blobs`` and ``stage1_candidates`` are the reference's."""
    import atexit
    import shutil
    import types

    engine = Path(tree).resolve() / "engine"
    if not (engine / "blobs.py").is_file() or not (engine / "stage1.py").is_file():
        raise SystemExit(f"no engine/blobs.py and engine/stage1.py under the reference tree {tree}")
    copy = Path(tempfile.mkdtemp(prefix="noduleflow-reference-engine-"))
    atexit.register(shutil.rmtree, copy, True)
    shutil.copytree(engine, copy, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "models", "*.pyc"))
    importlib.import_module("noduleflow.engine")  # the parent of the package made below
    name = "noduleflow.engine._reference"
    for k in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[k]  # another tree loaded before: its modules go
    pkg = types.ModuleType(name)
    pkg.__path__ = [str(copy)]
    pkg.__package__ = name
    sys.modules[name] = pkg
    return importlib.import_module(name + ".stage1")


@contextmanager
def using(version):
    """The detector's stage 1 runs ``version``'s `stage1_candidates` (a stage-1 module: this
    checkout's `engine.stage1` or `load_reference`'s) inside the block."""
    from noduleflow.engine import stage1

    before = stage1.stage1_candidates
    stage1.stage1_candidates = version.stage1_candidates
    try:
        yield
    finally:
        stage1.stage1_candidates = before


def three_passes(version, hu, mask) -> tuple[dict, dict]:
    """The three passes of a lung box with ``version`` (a stage-1 module) -> (name -> `Blobs`,
    name -> seconds)."""
    out, sec = {}, {}
    for name, f in (("blobs", lambda: version.detect_blobs(hu, mask)), ("subsolid", lambda: version.subsolid_blobs(hu, mask)),
                    ("wall", lambda: version.wall_blobs(hu, mask))):
        t = time.perf_counter()
        out[name] = f()
        sec[name] = time.perf_counter() - t
    return out, sec


def same_blobs(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k].centres_zyx, b[k].centres_zyx) and np.array_equal(a[k].radius_mm, b[k].radius_mm)
               and np.array_equal(a[k].response, b[k].response) for k in PASSES)


def identity(ref, cohort: str, progress: bool = True) -> dict:
    """Every lung box of ``cohort``: the same blobs from both versions? Seconds of each over it."""
    from tqdm import tqdm

    from noduleflow.engine import stage1
    from noduleflow.trainer.data.cohort import CohortCache, cohort_seeds

    seeds = cohort_seeds(cohort)
    cc = CohortCache()
    differ, sec = [], {"reference": 0.0, "this": 0.0}
    for seed in tqdm(seeds, desc=f"identity {cohort}", unit="scan", disable=not progress):
        s = cc.get(seed)
        hu, mask = np.asarray(s.pre.volume.hu), np.asarray(s.pre.mask)
        a, ta = three_passes(ref, hu, mask)
        b, tb = three_passes(stage1, hu, mask)
        sec["reference"] += sum(ta.values())
        sec["this"] += sum(tb.values())
        if not same_blobs(a, b):
            differ.append(int(seed))
    return {"cohort": cohort, "seeds": [seeds[0], seeds[-1]], "scans": len(seeds), "differ": differ,
            "seconds": sec, "reference_over_this": sec["reference"] / sec["this"]}


def pass_timing(ref, boxes: dict, repeats: int) -> dict:
    """``boxes``: name -> (hu, mask). Each box's three passes ``repeats`` times per version,
    alternating (and which goes first), after one warm-up each: per pass the medians over every
    box and repeat, and reference / this."""
    from noduleflow.engine import stage1

    versions = {"reference": ref, "this": stage1}
    times = {k: {p: [] for p in PASSES} for k in versions}
    same = {}
    for name, (hu, mask) in boxes.items():
        got = {k: three_passes(f, hu, mask)[0] for k, f in versions.items()}  # warm-up
        same[name] = same_blobs(got["reference"], got["this"])
        for rep in range(repeats):
            for k in (list(versions) if rep % 2 == 0 else list(versions)[::-1]):
                for p, s in three_passes(versions[k], hu, mask)[1].items():
                    times[k][p].append(s)
    med = {k: {p: statistics.median(v) for p, v in t.items()} for k, t in times.items()}
    for k in med:
        med[k]["all three"] = sum(med[k][p] for p in PASSES)
    return {"boxes": {n: list(np.asarray(b[0]).shape) for n, b in boxes.items()}, "repeats": repeats,
            "same_blobs": same, "median_s": med,
            "reference_over_this": {p: med["reference"][p] / med["this"][p] for p in med["this"]}}


def scan_timing(ref, series: list, repeats: int, model=None, backend: str = "auto", volumes=None) -> dict:
    """The default detection of each DICOM series with each version's stage 1, ``repeats``
    times per version, alternating (and which goes first), after one warm-up: per stage the
    medians over every detection, the whole scan's and the blob passes' ratios, whether every
    detection of a scan gave the same candidates (centres and probabilities). ``volumes``: the
    series already loaded (`engine.io.load_volume`), else they are loaded here."""
    from noduleflow.engine import stage1
    from noduleflow.engine.detector import Detector
    from noduleflow.engine.io import load_volume

    versions = {"reference": ref, "this": stage1}
    vols = list(volumes) if volumes is not None else [load_volume(s) for s in series]
    times = {k: {} for k in versions}
    cands, same = {}, True  # scan -> its first detection's candidates
    with Detector(model, backend=backend) as det:
        for version in versions.values():  # warm-up
            with using(version):
                det.detect(vols[0])
        for rep in range(repeats):
            for i, v in enumerate(vols):
                for k in (list(versions) if rep % 2 == 0 else list(versions)[::-1]):
                    with using(versions[k]):
                        t = time.perf_counter()
                        r = det.detect(v)
                        wall = time.perf_counter() - t
                    for stage, sec in r.timings_s.items():
                        times[k].setdefault(stage, []).append(sec)
                    times[k].setdefault("detect", []).append(wall)
                    c = np.array([[x.x, x.y, x.z, x.prob] for x in r]).reshape(-1, 4)
                    same &= bool(np.array_equal(c, cands.setdefault(i, c)))  # against the scan's first
        name = det.backend_name
    med = {k: {s: statistics.median(v) for s, v in t.items()} for k, t in times.items()}
    for k in med:
        med[k]["blob passes"] = sum(med[k].get(p, 0.0) for p in PASSES)
    return {"series": [str(s) for s in series], "repeats": repeats, "backend": name, "median_s": med,
            "same_candidates": same,
            "reference_over_this": {s: med["reference"][s] / med["this"][s] for s in ("detect", "blob passes")}}


def _git_head(tree) -> str:
    """The checkout's commit, with "+ changes" when its tracked files differ from it."""
    try:
        def git(*a):
            return subprocess.run(["git", "-C", str(tree), *a], capture_output=True, text=True, check=True).stdout.strip()
        head = git("rev-parse", "--short", "HEAD")
        return head + (" + changes" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(res: dict) -> str:
    lines = ["# Stage-1 blob passes: this checkout against a reference checkout", "",
             f"This: {res['this_commit']}; reference: {res['reference_commit']} ({res['reference_tree']}). "
             f"Machine: {res['machine'].get('cpu')}, {res['machine'].get('cores')} cores, numba "
             f"{res['machine'].get('numba')}; load average at the end {', '.join(f'{x:.1f}' for x in res['load_average'])}. "
             f"Command: `{res['command']}`.", ""]
    ident = res.get("identity")
    if ident:
        lines += [f"Identity on the {ident['cohort']} phantoms {ident['seeds'][0]}-{ident['seeds'][1]} ({ident['scans']} "
                  f"lung boxes): the three passes' blobs differ on {len(ident['differ'])} "
                  + (f"({', '.join(map(str, ident['differ']))})" if ident["differ"] else "(bit for bit the same)")
                  + f"; over the cohort the reference took {ident['seconds']['reference']:.1f} s and this one "
                  f"{ident['seconds']['this']:.1f} s ({ident['reference_over_this']:.2f}x; one after the other per scan).", ""]
    pt = res.get("passes")
    if pt:
        m = pt["median_s"]
        cols = [*PASSES, "all three"]
        lines += [f"The three passes on {len(pt['boxes'])} lung box(es) ("
                  + ", ".join(f"{n}: {'x'.join(map(str, s))}" for n, s in pt["boxes"].items())
                  + f"), {pt['repeats']} times per version, alternating; medians, seconds:", "",
                  "| version | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for k in ("reference", "this"):
            lines.append(f"| {k} | " + " | ".join(f"{m[k][c]:.3f}" for c in cols) + " |")
        lines.append("| reference / this | " + " | ".join(f"{pt['reference_over_this'][c]:.2f}x" for c in cols) + " |")
        lines += ["", "Same blobs on every box: " + ("yes" if all(pt["same_blobs"].values()) else
                                                     f"no ({[n for n, v in pt['same_blobs'].items() if not v]})"), ""]
    st = res.get("scans")
    if st:
        m = st["median_s"]
        stages = [s for s in m["this"] if s not in ("detect",)]
        lines += [f"The default detection ({st['backend']}) of {len(st['series'])} DICOM series, {st['repeats']} times per "
                  "version, alternating (each version's stage 1, everything else the same); medians, seconds "
                  "(detect: the call's wall time, load excluded):", "",
                  "| version | detect | " + " | ".join(stages) + " |", "|---|---:|" + "---:|" * len(stages)]
        for k in ("reference", "this"):
            lines.append(f"| {k} | {m[k]['detect']:.2f} | " + " | ".join(f"{m[k][s]:.2f}" for s in stages) + " |")
        r = st["reference_over_this"]
        lines += ["", f"Reference / this: the detection {r['detect']:.2f}x, the blob passes {r['blob passes']:.2f}x. "
                  "The same candidates (centres and probabilities) from both versions in every detection: "
                  + ("yes" if st["same_candidates"] else "no") + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m noduleflow.bench.blob_passes", description=__doc__.splitlines()[0])
    ap.add_argument("--reference-tree", required=True,
                    help="another checkout of this repository (e.g. `git worktree add /tmp/ref <commit>`)")
    ap.add_argument("--identity", metavar="COHORT",
                    help="also check bit-identical blobs on every lung box of this phantom cohort (e.g. heldout)")
    ap.add_argument("--scans", type=int, default=3, help="phantom DICOM series timed (bench speed's; default 3)")
    ap.add_argument("--series", nargs="*", default=[], help="more DICOM series (or volumes) to time")
    ap.add_argument("--repeats", type=int, default=4, help="runs per version and input (default 4)")
    ap.add_argument("--no-detect", action="store_true", help="skip the whole-detection timing")
    ap.add_argument("--backend", default="auto", help="the detection's backend (default auto)")
    ap.add_argument("--out", default="bench-blob-passes", help="output folder")
    a = ap.parse_args(argv)
    if a.repeats < 1 or a.scans < 0:
        ap.error(f"--repeats must be >= 1 and --scans >= 0, got {a.repeats} and {a.scans}")
    from noduleflow.engine.io import load_volume
    from noduleflow.engine.preprocess import preprocess

    from .int8 import write_report
    from .speed import machine, phantom_series

    ref = load_reference(a.reference_tree)
    here = Path(__file__).resolve().parents[1]
    res = {"machine": machine(), "this_commit": _git_head(here), "reference_commit": _git_head(a.reference_tree),
           "reference_tree": str(a.reference_tree),
           "command": "python -m noduleflow.bench.blob_passes " + " ".join(argv if argv is not None else sys.argv[1:])}
    if a.identity:
        res["identity"] = identity(ref, a.identity)
    with tempfile.TemporaryDirectory(prefix="noduleflow-blob-passes-") as tmp:
        series = phantom_series(Path(tmp), a.scans) + [Path(s) for s in a.series]
        if series:
            vols = [load_volume(s) for s in series]  # loaded once: the passes' lung boxes, then the detections
            boxes = {}
            for s, v in zip(series, vols):
                pre = preprocess(v)
                boxes[s.name if s.parent == Path(tmp) else str(s)] = (pre.volume.hu, pre.mask)
            res["passes"] = pass_timing(ref, boxes, a.repeats)
            del boxes
            if not a.no_detect:
                res["scans"] = scan_timing(ref, series, a.repeats, backend=a.backend, volumes=vols)
    res["load_average"] = os.getloadavg()
    write_report(Path(a.out), "blob_passes", res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
