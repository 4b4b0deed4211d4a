"""`noduleflow detect PATH...`: nodule candidates for one or many CT series."""
from __future__ import annotations

import argparse
import logging
import sys

from .options import add_detector_options, add_model_options, backend_options, detector_config

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser(
        "detect", help="detect nodule candidates in CT series (DICOM, .mhd, .nii.gz)",
        description="Detect lung-nodule candidates. Each PATH is a DICOM series folder, a folder tree "
                    "of several series (each one is detected), a DICOM file, or a .mhd/.mha/.nii.gz. "
                    "Writes OUT/candidates.csv (LUNA16 submission layout, all scans), "
                    "OUT/findings.csv (the same columns, then each characterised finding's type, sizes, "
                    "attributes, place and proposed Lung-RADS v2022 category), "
                    "OUT/<seriesuid>.json (candidates, stage timings, backend, model, warnings) and "
                    "OUT/<seriesuid>.png (an overview of the lungs with every candidate, and three planes "
                    "through each). OUT is checked before anything is detected (a folder this user can "
                    "write; created 0700) and locked: a second process given the same OUT refuses at "
                    "once. Results are written at the end, all together (temporary names, then renames; "
                    "files 0600): a write that fails, e.g. a full disk, leaves none of them. A series "
                    "that fails is reported and skipped; the exit code is 1 if any failed.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    add_model_options(p)
    add_detector_options(p)
    p.add_argument("--series", metavar="UID", help="only this SeriesInstanceUID")
    p.add_argument("--out", default="noduleflow-out", help="output folder (default ./noduleflow-out)")
    p.add_argument("--no-png", action="store_true", help="skip the pictures")
    p.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=None,
                   help="load the next series in the background while the current one is detected (one "
                        "more scan in memory). Default: when the scoring runs on a GPU; on the CPU the "
                        "detection already keeps every core busy")
    p.set_defaults(func=run)


def expand(paths, series):
    """(path, series_uid or None) for every series named by the arguments."""
    from pathlib import Path

    from noduleflow.engine.io import IMAGE_SUFFIXES
    from noduleflow.engine.io.dicom import list_series

    out = []
    for p in map(Path, paths):
        if p.is_dir():
            images = sorted(f for f in p.rglob("*") if f.name.lower().endswith(IMAGE_SUFFIXES) and
                            not f.name.lower().endswith(".raw"))
            uids = list_series(p)
            out += [(f, None) for f in images]
            out += [(p, u) for u in uids if series in (None, u)]
            if not images and not uids:
                out.append((p, series))  # let the loader say what is wrong
        else:
            out.append((p, series))
    return out


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from noduleflow.engine import NoduleflowError
    from noduleflow.engine.detector import Detector
    from noduleflow.engine.io import load_volume
    from noduleflow.engine.jitclock import compile_note
    from noduleflow.engine.package import printable
    from noduleflow.engine.results import ResultFolder

    out = Path(args.out)
    # OUT first: an unusable or busy folder fails in a moment, not after the whole detection
    with ResultFolder(out) as results:
        det = Detector(args.model, backend=args.backend, config=detector_config(args),
                       backend_options=backend_options(args))
        how = f"two stages (stage 1: {det.contract.stage1.generator})" if det.two_stage \
            else f"mode {det.config.mode}"
        print(f"model {det.package.manifest.model_id} ({det.package.manifest.architecture}), backend "
              f"{det.backend_name}, {how}, ready in {det.cold_start_s:.2f} s")
        rows, finding_rows, failed, seen = [], [], 0, {}
        jobs = expand(args.paths, args.series)
        loads = det.loading(jobs, lambda job: load_volume(job[0], series_uid=job[1]), args.prefetch)
        for item in tqdm(loads, total=len(jobs), desc="detect", unit="scan", disable=len(jobs) < 2):
            d = None  # the previous scan's volume freed before this one's detection (the next is loading)
            path, uid = item.job
            where = printable(f"{path}{' ' + uid if uid else ''}")
            try:
                if item.error is not None:
                    raise item.error
                d = det.detect(item.value, keep_preprocessed=not args.no_png, load_s=item.seconds)
            except NoduleflowError as exc:
                failed += 1
                print(f"FAILED {where}: {printable(exc)}", file=sys.stderr)
                continue
            except Exception as exc:  # a bug must not cost the other scans their results
                failed += 1
                log.debug("traceback of %s", where, exc_info=True)
                print(f"FAILED {where}: internal error {type(exc).__name__}: {printable(exc)} "
                      "(-vv shows the traceback)", file=sys.stderr)
                continue
            # two inputs with one id (a/ct.nii.gz and b/ct.nii.gz are both "ct"): keep both, say so
            n = seen.get(d.name, 0)
            seen[d.name] = n + 1
            name = d.name if n == 0 else f"{d.name}-{n + 1}"
            if n:
                print(f"note: {printable(path)} repeats series id {printable(d.series_uid)!r}: written as {name}",
                      file=sys.stderr)
            results.add(d, name=name, png=not args.no_png)
            rows += [(name if n else r[0], *r[1:]) for r in d.rows()]
            for w in d.meta.get("warnings", []):
                print(f"warning: {printable(path)}: {printable(w)}", file=sys.stderr)
            print(f"{printable(d.series_uid)}: {len(d)} candidates, top p={d[0].prob if len(d) else 0:.3f}; "
                  + " ".join(f"{k} {v:.2f}s" for k, v in d.timings_s.items()) + compile_note(d.meta))
            for line in d.findings_report():
                print(line)
            finding_rows += [(name if n else r[0], *r[1:]) for r in d.findings_rows()]
        results.add_csv(rows)
        if det.config.characterise_top:
            results.add_findings_csv(finding_rows)
    print(f"wrote {printable(out / 'candidates.csv')} ({len(rows)} candidates from {len(jobs) - failed} scans)"
          + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0
