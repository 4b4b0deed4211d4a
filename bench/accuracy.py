"""`noduleflow bench accuracy`: detect on evaluation sources and score each with the LUNA16 protocol.

    noduleflow bench accuracy --source NAME=DIR [--source NAME=DIR ...] [--cohort heldout]
                              [--realct DIR] [--model PKG] --out DIR
    noduleflow bench accuracy --cohort heldout [--model PKG] [--out DIR]
    noduleflow bench accuracy --data COHORT_DIR [--model PKG] [--out DIR]
    noduleflow bench accuracy --phantoms 10 --seed 3000 [--model PKG] [--out DIR]
    python -m noduleflow.bench.accuracy ...   (the same options)

``--source NAME=DIR``: an evaluation-source folder (scans, annotations.csv,
annotations_excluded.csv, findings.csv, source.json: `trainer.evaluate.sources`). With one or
more, the detector (`Detector.detect`, the whole path on the files) runs on every scan of each
source, and each source is reported on its own, in the order given (give the source furthest
from training first), beside the cached phantom cohort of ``--cohort`` where that option is
among them: sensitivity at 5/15/100 candidates per scan, CPM with bootstrap 95 % intervals, the
stratified table (diameter, kind, location, shape; juxta-pleural 10-30 mm), false candidates per
scan at p >= 0.5 and 0.9, and the calibration error over each scan's top 15 and top 100. The
report's header names the package (id, sha256), what its manifest says trained it, and each
source's role. ``--realct DIR`` adds the real scan's check (evaluation only): the rank and
probability of its annotated nodule(s) and the candidates at p >= 0.9 in the right lung. Writes
``accuracy.json``, ``accuracy.md`` and, per source, ``NAME/candidates.json`` and ``NAME/froc.png``.

``--cohort`` alone runs `trainer.evaluate.cohort` (overall and per-stratum figures, calibration)
on a cached phantom cohort, as ``python -m noduleflow.trainer.evaluate.cohort`` does.
``--data COHORT_DIR``: a folder written by `noduleflow synth`, or any folder of DICOM series /
.mhd scans with a LUNA16-style annotations.csv (and optionally annotations_excluded.csv).
``--phantoms`` generates phantom scans in memory (seeds S, S+1, ...; which seeds trained, validated
and tuned the models: `trainer.data.cohort.COHORTS`). Synthetic phantoms are a regression signal,
not clinical evidence.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from .common import standalone

HELP = "detect on evaluation sources and score each (FROC, CPM, sensitivity at top-K, strata)"
DESCRIPTION = __doc__.split("\n\n")[0]
# the strata drawn in each source's FROC figure (and the juxta-pleural 10-30 mm row, `strata.JUXTA_PLEURAL_STRATUM`)
SOURCE_CURVES = ("all", "kind ground_glass", "kind part_solid", "diameter 3-6 mm")
REPORT_KS = (5, 15, 100)


class _InOrder(argparse.Action):
    """``--source`` (appended) and ``--cohort`` (stored), each also noted in ``sources_in_order``:
    the report keeps the order the user gave them in."""

    def __call__(self, parser, namespace, values, option_string=None):
        if self.dest == "source":
            namespace.source = list(getattr(namespace, "source", None) or []) + [values]
        else:
            setattr(namespace, self.dest, values)
        namespace.sources_in_order = list(getattr(namespace, "sources_in_order", None) or []) + [(self.dest, values)]


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `noduleflow bench accuracy` (and of ``python -m noduleflow.bench.accuracy``)."""
    p.add_argument("--source", action=_InOrder, metavar="NAME=DIR",
                   help="an evaluation-source folder (repeatable; reported separately, in the order given)")
    p.add_argument("--cohort", action=_InOrder, help="a cached phantom cohort by name (heldout, tuning, ...: "
                   "trainer.data.cohort.COHORTS) or FIRST-LAST seeds; alone: overall and per-stratum figures "
                   "(trainer.evaluate.cohort); with --source: one more source, in its place among them")
    p.add_argument("--realct", metavar="DIR", help="also report the annotated nodule's rank and the right lung's "
                                                   "candidates at p >= 0.9 on this real LUNA16-style folder "
                                                   "(evaluation only)")
    p.add_argument("--data", help="cohort folder with annotations.csv (LUNA16 figures, no strata)")
    p.add_argument("--phantoms", type=int, help="number of held-out phantom scans generated in memory")
    p.add_argument("--seed", type=int, default=3000, help="first phantom seed (with --phantoms)")
    p.add_argument("--model", help="model package (default: the shipped one)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--mode", choices=("dense", "patch"), default="dense")
    p.add_argument("--clustering", choices=("nms", "components"), default="components")
    p.add_argument("--no-refine", action="store_true", help="keep the grid-derived centres (no blob refinement)")
    p.add_argument("--top-k", type=int, default=15, help="candidates per scan for the top-K figure (15)")
    p.add_argument("--keep", type=int, default=100, help="candidates kept per scan for the FROC (100)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95 %% intervals")
    p.add_argument("--out", default="bench-accuracy", help="output folder (accuracy.json, accuracy.md, ...)")
    p.set_defaults(func=command, sources_in_order=None)
    return p


def register(sub) -> None:
    build_parser(sub.add_parser("accuracy", help=HELP, description=DESCRIPTION))


def command(args: argparse.Namespace) -> int:
    from noduleflow.engine.errors import ConfigError
    from noduleflow.engine.extras import require_extra

    require_extra("bench", "noduleflow bench accuracy")
    modes = [m for m, on in (("--data", args.data), ("--phantoms", args.phantoms),
                             ("--source/--cohort/--realct", args.source or args.cohort or args.realct)) if on]
    if len(modes) != 1:
        raise ConfigError("give one of --source NAME=DIR (and/or --cohort NAME), --data DIR or --phantoms N, "
                          f"got {' and '.join(modes) or 'none'}")
    if args.keep < 1 or args.bootstrap < 0:
        raise ConfigError(f"--keep must be >= 1 and --bootstrap >= 0, got {args.keep} and {args.bootstrap}")
    if args.source or args.realct:
        return run_sources(args)
    if args.cohort:
        from noduleflow.trainer.evaluate import cohort

        cmd = (f"noduleflow bench accuracy --cohort {args.cohort} --keep {args.keep} --backend {args.backend}"
               + (f" --model {args.model}" if args.model else ""))
        cohort.run(args.cohort, Path(args.out), args.model, args.backend, args.keep, args.bootstrap, command=cmd)
        print((Path(args.out) / "accuracy.md").read_text())
        return 0
    return run_scans(args)


def _scans(args):
    """Yield (volume, nodules (n,4), excluded (n,4))."""
    from noduleflow.engine.io import load_volume

    if args.phantoms:
        from noduleflow.synthetic.phantom import generate_phantom
        from noduleflow.trainer.data.annotations import as_xyzd

        for i in range(args.phantoms):
            ph = generate_phantom(args.seed + i)
            yield ph.volume, as_xyzd(ph.nodules), as_xyzd(ph.excluded)
        return
    from noduleflow.trainer.data.annotations import read_annotations

    folder = Path(args.data)
    ann = read_annotations(folder / "annotations.csv")
    exc = read_annotations(folder / "annotations_excluded.csv")
    scans = sorted(folder.rglob("*.mhd")) + sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("*.dcm")))
    for path in scans:
        vol = load_volume(path)
        yield vol, ann.get(vol.series_uid, np.zeros((0, 4))), exc.get(vol.series_uid, np.zeros((0, 4)))


def run_scans(args: argparse.Namespace) -> int:
    """``--data`` / ``--phantoms``: one cohort, LUNA16 figures (no strata)."""
    from tqdm import tqdm

    from noduleflow.engine.detector import Detector, DetectorConfig
    from noduleflow.engine.results import write_candidates_csv
    from noduleflow.trainer.evaluate.froc import Candidates, Findings, evaluate, format_table, save_json
    from noduleflow.trainer.evaluate.plots import plot_froc

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    det = Detector(args.model, backend=args.backend, config=DetectorConfig(
        mode=args.mode, top_k=args.keep, clustering=args.clustering, refine=not args.no_refine))
    ann, exc, cands, rows, times = {}, {}, {}, [], []
    n = args.phantoms
    for vol, nod, ex in tqdm(_scans(args), total=n, desc="scans", unit="scan"):
        t = time.perf_counter()
        d = det.detect(vol)
        times.append(time.perf_counter() - t)
        uid = vol.series_uid
        ann[uid], exc[uid] = nod, ex
        xyz = np.array([c.center_xyz_mm for c in d.candidates]).reshape(-1, 3)
        prob = np.array([c.prob for c in d.candidates])
        cands[uid] = (xyz, prob)
        rows += [(uid, *c.center_xyz_mm, c.prob) for c in d.candidates]
    write_candidates_csv(out / "candidates.csv", rows)
    res = evaluate(Findings({k: v for k, v in ann.items() if len(v)}), Candidates(cands),
                   Findings({k: v for k, v in exc.items() if len(v)}), seriesuids=sorted(ann), top_k=args.top_k,
                   bootstrap=args.bootstrap)
    save_json(res, out / "accuracy.json")
    meta = {"model_id": det.package.manifest.model_id, "backend": det.backend_name, "mode": args.mode,
            "clustering": args.clustering, "refine": not args.no_refine,
            "data": args.data or f"phantoms seeds {args.seed}..{args.seed + args.phantoms - 1}",
            "scan_seconds_median": float(np.median(times))}
    (out / "accuracy_meta.json").write_text(json.dumps(meta, indent=2))
    plot_froc({meta["model_id"]: res}, out / "froc.png", title=f"FROC on {meta['data']}")
    print(format_table(res))
    print(json.dumps(meta))
    return 0


def _read_entries(args):
    """The sources in the order given: `EvalSource`s read (a bad folder is an error before any
    detection) and cohort names; the real folder read too (its name "realct" reserved)."""
    from noduleflow.engine.errors import ConfigError
    from noduleflow.trainer.data.cohort import cohort_seeds
    from noduleflow.trainer.evaluate.sources import parse_source_arg, read_source

    entries, names = [], {"realct"} if args.realct else set()
    for kind, value in args.sources_in_order or []:
        if kind == "source":
            name, folder = parse_source_arg(value)
            entry = read_source(name, folder)
        else:
            cohort_seeds(value)  # a bad name is an error now, not after the other sources ran
            name = entry = value
        if name in names:
            raise ConfigError(f"source name {name!r} given twice ('realct' is the --realct folder's)")
        names.add(name)
        entries.append(entry)
    if args.realct:
        if not Path(args.realct).is_dir():
            raise ConfigError(f"--realct {args.realct} is not a folder")
        read_source("realct", args.realct)
    return entries


def source_role(entry) -> tuple[str, str]:
    """(role, description) of a source: its source.json's, or for a cached phantom cohort what
    `trainer.data.cohort.COHORTS` says its seeds are for."""
    from noduleflow.trainer.data.cohort import cohort_seeds

    if not isinstance(entry, str):
        return (str(entry.info.get("role", "unknown (no source.json)")),
                str(entry.info.get("description", f"LUNA16-style folder {entry.folder}")))
    seeds = cohort_seeds(entry)
    role = {"heldout": "evaluation", "heldout_v6": "evaluation", "tuning": "tuning", "tuning_v6": "tuning",
            "validation": "model selection"}.get(entry, "training" if entry.startswith("train") else "unknown")
    return role, f"cached phantom cohort {entry}: seeds {seeds[0]}-{seeds[-1]} (trainer.data.cohort.COHORTS)"


def evaluate_sources(det, entries, out, keep: int = 100, bootstrap: int = 1000, realct=None, cohort_cache=None,
                     command: str = "", progress: bool = True) -> dict:
    """Detect with ``det`` on each of ``entries`` (`trainer.evaluate.sources.EvalSource`s and cached
    cohort names, in the order to report them), score each on its own (`sources.source_figures`),
    check the real folder ``realct`` if given (`sources.realct_check`), and write the report into
    ``out``: ``accuracy.json``, ``accuracy.md``, per source ``NAME/candidates.json``, ``NAME/froc.png``
    and ``NAME/calibration.png`` (``realct/candidates.json``, ``realct/right_lung_top15_*.png``).
    ``cohort_cache``: a `CohortCache` or its root (default ``$NODULEFLOW_COHORT_CACHE``). Returns the
    report (as ``accuracy.json``)."""
    from noduleflow.trainer.evaluate.cohort import candidate_records, compact, detect_cohort
    from noduleflow.trainer.evaluate.plots import plot_reliability, plot_strata_froc
    from noduleflow.trainer.evaluate.sources import detect_source, realct_check, source_figures
    from noduleflow.trainer.evaluate.strata import JUXTA_PLEURAL_STRATUM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    blocks = []
    for entry in entries:
        if isinstance(entry, str):
            seeds, results, times = detect_cohort(det, entry, keep, cohort_cache)
            records = candidate_records(seeds, results)
            block = {"name": entry, "cohort": entry, "info": {}, "excluded": int(sum(len(r.excluded) for r in results))}
        else:
            results, dets = detect_source(det, entry, progress)
            times = [d.timings_s.get("total", float("nan")) for d in dets]
            records = [{"uid": s.uid, "path": str(s.path.relative_to(entry.folder)), "xyz": r.xyz.tolist(),
                        "prob": r.prob.tolist()} for s, r in zip(entry.scans, results)]
            block = {"name": entry.name, "folder": str(entry.folder), "info": entry.info, "excluded": entry.n_excluded,
                     "unmatched_uids": list(entry.unmatched_uids)}
        role, description = source_role(entry)
        fig = source_figures(results, bootstrap)
        block.update(role=role, description=description, scans=len(results),
                     nodules=int(sum(len(r.nodules) for r in results)),
                     detect_seconds_median=float(np.median(times)) if times else None,
                     false_candidates=fig["false_candidates"], calibration=fig["calibration"],
                     strata=compact(fig["strata"]))
        blocks.append(block)
        folder = out / block["name"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "candidates.json").write_text(json.dumps(records))
        plot_strata_froc(fig["strata"], folder / "froc.png", f"{det.package.manifest.model_id} on {block['name']}",
                         names=SOURCE_CURVES + (JUXTA_PLEURAL_STRATUM,))
        plot_reliability(fig["calibration"], folder / "calibration.png", block["name"])
    real = None
    if realct:
        (out / "realct").mkdir(parents=True, exist_ok=True)
        real, results = realct_check(det, realct, progress, picture_dir=out / "realct")
        (out / "realct" / "candidates.json").write_text(json.dumps(
            [{"uid": r.uid, "xyz": r.xyz.tolist(), "prob": r.prob.tolist()} for r in results]))
    meta = {"package": det.provenance(), "training": det.package.manifest.training, "keep": keep,
            "bootstrap": bootstrap, "command": command, "python": platform.python_version(),
            "sources_in_order": [b["name"] for b in blocks]}
    report = {"meta": meta, "sources": blocks, "realct": real}
    (out / "accuracy.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "accuracy.md").write_text(format_sources_report(report))
    return report


def _fmt_ci(v: float, ci) -> str:
    return f"{v:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"


def _training_lines(training: dict) -> list[str]:
    """What the manifest says trained the model: its data records (top level and per stage)."""
    lines = [f"- data: `{json.dumps(training['data'], default=str)}`"] if "data" in training else []
    lines += [f"- {k} data: `{json.dumps(v['data'], default=str)}`" for k, v in training.items()
              if isinstance(v, dict) and "data" in v]
    return lines or ["- the manifest's `training` names no data"]


def format_sources_report(report: dict) -> str:
    """``accuracy.md`` of `evaluate_sources`: the header (package, its training data, the sources
    and their roles), one summary row per source, then per source its stratified table, false
    candidates and calibration; the real scan's check last."""
    from noduleflow.trainer.evaluate.strata import format_markdown

    meta, pkg = report["meta"], report["meta"]["package"]
    md = ["# Detection accuracy by evaluation source", "",
          f"Package `{pkg['package_id']}` (manifest sha256 `{pkg['package_sha256']}`), engine "
          f"{pkg['engine_version']}, backend {pkg['backend']}; {meta['keep']} candidates kept per scan; "
          f"command: `{meta['command']}`.", "", "What the package's manifest says trained it (`manifest.training`; "
          "the whole record in `accuracy.json`):", *_training_lines(meta["training"]), "",
          "Sources, reported separately in the order given (the first is meant to be the one furthest from "
          "training):"]
    for i, b in enumerate(report["sources"], 1):
        md.append(f"{i}. **{b['name']}** (role: {b['role']}): {b['description']}; {b['scans']} scans, "
                  f"{b['nodules']} nodules, {b['excluded']} excluded findings (hits ignored, as LUNA16).")
    md += ["", "Sensitivity at K candidates/scan (a candidate within the nodule's radius among the scan's K most "
           "probable), LUNA16 CPM (mean sensitivity at 1/8-8 false positives/scan), 95 % intervals by bootstrap "
           f"over scans ({meta['bootstrap']} resamples). False candidates: on no nodule and no excluded finding. "
           "ECE: expected calibration error (10 bins) against \"lies within a nodule's radius\". Synthetic "
           "phantoms and inserted lesions are a regression signal, not clinical evidence.", "",
           "| source | role | scans | nodules | sens@5 | sens@15 (95 % CI) | sens@100 | CPM (95 % CI) | "
           "false/scan p>=0.5 | false/scan p>=0.9 | ECE top 15 | ECE top 100 |",
           "|---|---|---:|---:|---:|---|---:|---|---:|---:|---:|---:|"]
    for b in report["sources"]:
        a, fc, cal = b["strata"]["all"], b["false_candidates"], b["calibration"]
        if a["nodules"]:
            sk = a["sensitivity_at_k"]
            figs = (f"{sk['5']['sensitivity']:.3f} | {_fmt_ci(sk['15']['sensitivity'], sk['15']['ci95'])} | "
                    f"{sk['100']['sensitivity']:.3f} | {_fmt_ci(a['cpm'], a['cpm_ci95'])}")
        else:
            figs = "- | - | - | -"
        md.append(f"| {b['name']} | {b['role']} | {b['scans']} | {b['nodules']} | {figs} | "
                  f"{fc['0.5']['per_scan']:.2f} | {fc['0.9']['per_scan']:.2f} | {cal['ece_top15']:.3f} | "
                  f"{cal['ece_top100']:.3f} |")
    for i, b in enumerate(report["sources"], 1):
        fc, cal = b["false_candidates"], b["calibration"]
        where = b.get("folder") or f"cached cohort {b.get('cohort')}"
        md += ["", f"## {i}. {b['name']}", "", f"{b['description']} (role: {b['role']}; {where}).",
               *([f"Generator: `{json.dumps(b['info']['generator'], default=str)}`."] if "generator" in b["info"]
                 else []),
               *([f"{len(b['unmatched_uids'])} annotated series have no scan in the folder (left out)."]
                 if b.get("unmatched_uids") else []), "",
               format_markdown(b["strata"], REPORT_KS), "",
               "False candidates per scan: " + "; ".join(
                   f"p >= {t}: {v['per_scan']:.2f} ({v['total']} in all, at most {v['max_scan']} in one scan, "
                   f"{v['scans_with_any']} of {b['scans']} scans with any)" for t, v in fc.items()) + ".",
               f"Calibration error: top 15 per scan {cal['ece_top15']:.3f} ({cal['candidates_top15']} candidates), "
               f"top 100 per scan {cal['ece_top100']:.3f} ({cal['candidates_top100']}). Figures: "
               f"`{b['name']}/froc.png`, `{b['name']}/calibration.png`; candidates: `{b['name']}/candidates.json`."]
    if report.get("realct"):
        md += ["", "## Real scan (evaluation only: its right lung is never trained, tuned or calibrated on)", "",
               f"Folder {report['realct']['folder']}; right lung: world x below the midline (patient right is -x "
               "in LPS). Rank among the detector's list (0: not in it).", "",
               "| series | nodule (x, y, z mm; diameter) | side | rank | probability | right lung p>=0.9 (false) | "
               "right lung p>=0.5 (false) |", "|---|---|---|---:|---:|---:|---:|"]
        for s in report["realct"]["scans"]:
            c9, c5 = s["at_prob"]["0.9"], s["at_prob"]["0.5"]
            counts = f"{c9['right_lung']} ({c9['right_lung_false']}) | {c5['right_lung']} ({c5['right_lung_false']})"
            for n in s["nodules"] or [None]:
                desc = (f"{tuple(n['xyz_mm'])}; {n['diameter_mm']} mm | {n['side']} | {n['rank']} | "
                        + (f"{n['prob']:.3f}" if n["prob"] is not None else "-")) if n else "none annotated | - | - | -"
                md.append(f"| {s['uid']} | {desc} | {counts} |")
        pics = [s["picture"] for s in report["realct"]["scans"] if s.get("picture")]
        if pics:
            md += ["", "The right lung's candidates among each scan's 15 most probable, in rank order (the labels "
                   "number them within the picture; their ranks in the whole list are in `realct/candidates.json`): "
                   + ", ".join(f"`realct/{p}`" for p in pics) + "."]
    return "\n".join(md) + "\n"


def run_sources(args: argparse.Namespace) -> int:
    """``--source`` (with ``--cohort`` among them) and/or ``--realct``: `evaluate_sources` with the
    detector the options make, its markdown printed."""
    from noduleflow.engine.detector import Detector, DetectorConfig

    entries = _read_entries(args)
    det = Detector(args.model, backend=args.backend, config=DetectorConfig(
        mode=args.mode, top_k=args.keep, clustering=args.clustering, refine=not args.no_refine))
    cmd = " ".join(["noduleflow bench accuracy"] + [f"--{k} {v}" for k, v in args.sources_in_order or []]
                   + ([f"--realct {args.realct}"] if args.realct else [])
                   + ([f"--model {args.model}"] if args.model else [])
                   + [f"--backend {args.backend}", f"--keep {args.keep}", f"--out {args.out}"])
    evaluate_sources(det, entries, args.out, args.keep, args.bootstrap, args.realct, command=cmd)
    print((Path(args.out) / "accuracy.md").read_text(), end="")
    return 0

def main(argv=None) -> int:
    return standalone(build_parser, "accuracy", DESCRIPTION, argv)


if __name__ == "__main__":
    raise SystemExit(main())
