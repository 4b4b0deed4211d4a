"""`noduleflow follow PRIOR CURRENT`: each nodule of a prior scan against a current one."""
from __future__ import annotations

import argparse
import logging

from .options import add_detector_options, add_model_options, backend_options, detector_config

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser(
        "follow", help="compare a prior scan with a current one, nodule by nodule (growth, new, resolved)",
        description="Follow-up of lung nodules. PRIOR and CURRENT are each a series (DICOM folder or file, "
                    ".mhd/.mha, .nii/.nii.gz) or a result JSON of `noduleflow detect` with characterised "
                    "findings (--characterise-top; its scan is loaded from the JSON's meta.source). Both "
                    "scans are detected and characterised, the prior is registered onto the current one "
                    "(lungs' centres of mass, rigid, affine, optionally a B-spline; SimpleITK), the findings "
                    "are matched one to one, and each nodule is reported as matched, new or resolved with "
                    "its diameter and volume change, volume-doubling time (from the StudyDates, or "
                    "--interval-days) and the Lung-RADS v2022 follow-up category: a proposal for a reader "
                    "to confirm, not a diagnosis. Writes OUT/follow.json, OUT/follow.csv, OUT/pair_<n>.png "
                    "(prior and current crops with contours, per matched nodule), each scan's "
                    "detections (OUT/prior_detections.json, OUT/current_detections.json) and, for a DICOM "
                    "current scan, OUT/follow_sr.dcm (TID 1500; a matched nodule keeps the prior report's "
                    "tracking UID).")
    p.add_argument("prior", metavar="PRIOR")
    p.add_argument("current", metavar="CURRENT")
    p.add_argument("--out", default="noduleflow-follow", help="output folder (default ./noduleflow-follow)")
    p.add_argument("--series", metavar="UID", help="the SeriesInstanceUID to take from DICOM folders of several")
    p.add_argument("--interval-days", type=float, metavar="DAYS",
                   help="days between the scans (default: from their StudyDates; MetaImage and NIfTI have none)")
    p.add_argument("--transform", choices=("rigid", "affine"), default="affine",
                   help="the last linear registration stage (default affine)")
    p.add_argument("--deformable", action="store_true",
                   help="add a B-spline registration stage (breathing; several seconds more)")
    p.add_argument("--match-mm", type=float, default=10.0, metavar="MM",
                   help="a pair may be this far apart after registration, or 1.5 x the larger radius (default 10)")
    p.add_argument("--min-prob", type=float, default=0.0, metavar="P",
                   help="findings below this probability take no part (default 0)")
    p.add_argument("--no-png", action="store_true", help="skip the pictures")
    p.add_argument("--no-sr", action="store_true",
                   help="skip OUT/follow_sr.dcm, the DICOM SR of the current scan that tracks each nodule by the "
                        "prior report's UID (written when CURRENT is a DICOM series and the 'serve' extra is "
                        "installed)")
    add_model_options(p)
    add_detector_options(p, defaults={"characterise_top": 10})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from noduleflow.engine.detector import Detector
    from noduleflow.engine.package import printable
    from noduleflow.engine.results import ResultFolder
    from noduleflow.follow import FollowConfig, RegistrationParams, follow

    out = Path(args.out)
    with ResultFolder(out):   # OUT checked (a folder this user can write, not busy) before minutes of work
        pass
    dcfg = detector_config(args)
    cfg = FollowConfig(characterise_top=dcfg.characterise_top, min_prob=args.min_prob,
                       match_min_mm=args.match_mm,
                       registration=RegistrationParams(transform=args.transform, deformable=args.deformable))
    # a detector only for the inputs that are series, not result JSONs
    needs_detector = any(not (Path(s).is_file() and Path(s).suffix.lower() == ".json")
                         for s in (args.prior, args.current))
    det = Detector(args.model, backend=args.backend, config=dcfg, backend_options=backend_options(args)) \
        if needs_detector else None
    try:
        res = follow(args.prior, args.current, det, config=cfg, interval_days=args.interval_days,
                     series_uid=args.series)
    finally:
        if det is not None:
            det.close()
    for w in res.warnings:
        print(f"warning: {printable(w)}")
    for line in res.table():
        print(line)
    written = res.save(out, png=not args.no_png, sr=None if args.no_sr else _sr_bytes(res))
    print(f"wrote {printable(out)}: " + ", ".join(sorted(p.name for p in written.values())))
    return 0


def _sr_bytes(res) -> bytes | None:
    """The follow-up SR, encoded; None (with the reason printed) when it cannot be written."""
    import io

    from noduleflow.engine import __version__
    from noduleflow.engine.errors import ConfigError
    from noduleflow.engine.extras import require_extra
    from noduleflow.follow.sr import build_follow_sr, series_headers

    try:
        require_extra("serve", "the follow-up SR")
        tp = res.current_tp
        evidence = series_headers(tp.volume) if tp is not None else []
        sr = build_follow_sr(res, evidence, model_id=tp.detections.model_id if tp is not None else "",
                             engine_version=__version__)
    except ConfigError as e:
        print(f"no follow_sr.dcm: {e}")
        return None
    buf = io.BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
