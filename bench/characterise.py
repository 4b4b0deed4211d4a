"""`noduleflow bench characterise`: the characterisation (segmentation, type, Lung-RADS mean
diameter, volume) of known lesions, at their true centres: wide phantoms (every lesion) or an
evaluation source folder (findings.csv; only lesions inside ``--region-x``, e.g. the hybrid's
right lung). Phantom and hybrid lesions are a regression signal, not clinical evidence.

The truth: the lesion's drawn diameter (the phantom's shapes keep a sphere's volume, so the
true volume is pi d^3 / 6; the Lung-RADS mean diameter of a non-round shape differs from d by
its shape) and its kind. Writes bench/results/characterise/<name>.json and .md.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from noduleflow.engine.characterise import characterise_scan
from noduleflow.engine.characterise.lungrads import category
from noduleflow.engine.io import load_volume
from noduleflow.engine.preprocess import preprocess

from .common import standalone

HELP = "characterisation accuracy on lesions of known size and type (phantoms, hybrids)"
DESCRIPTION = __doc__.split("\n\n")[0]
OUT = Path(__file__).resolve().parent / "results" / "characterise"


def _phantom_cases(seeds):
    from noduleflow.synthetic.phantom import generate_phantom

    for seed in seeds:
        ph = generate_phantom(seed, generator="wide")
        yield f"wide-{seed}", ph.volume, [(n.center_xyz_mm, n.diameter_mm, n.kind, n.shape, n.location)
                                          for n in ph.nodules]


def _source_cases(folder: Path, region_x):
    rows = list(csv.DictReader(open(folder / "findings.csv")))
    for uid in sorted({r["seriesuid"] for r in rows}):
        truth = [((float(r["coordX"]), float(r["coordY"]), float(r["coordZ"])), float(r["diameter_mm"]), r["kind"],
                  r["shape"], r["location"]) for r in rows if r["seriesuid"] == uid]
        if region_x is not None:
            truth = [t for t in truth if region_x[0] <= t[0][0] <= region_x[1]]
        if truth:
            yield uid[-12:], load_volume(folder / f"{uid}.mhd"), truth


def measure(cases) -> list[dict]:
    """One record per lesion: truth, measurement, seconds per lesion."""
    out = []
    for name, vol, truth in cases:
        pre = preprocess(vol)
        t = time.perf_counter()
        fs = characterise_scan(vol, pre.volume, pre.mask, [c for c, *_ in truth])
        dt = (time.perf_counter() - t) / max(len(truth), 1)
        for (_c, d, kind, shape, loc), f in zip(truth, fs):
            true_cat = category(kind, d, None) if kind != "part_solid" else None
            out.append({"scan": name, "kind": kind, "shape": shape, "location": loc, "diameter_mm": d,
                        "type": f.type, "mean_diameter_mm": f.mean_diameter_mm, "volume_mm3": f.volume_mm3,
                        "true_volume_mm3": round(np.pi * d ** 3 / 6, 2), "lung_rads": f.lung_rads,
                        "true_lung_rads_no_core": true_cat, "seconds": round(dt, 3)})
    return out


def summarise(rec: list[dict]) -> dict:
    def block(rs):
        if not rs:
            return {"n": 0}
        err = np.array([abs(r["mean_diameter_mm"] - r["diameter_mm"]) for r in rs])
        verr = np.array([abs(r["volume_mm3"] - r["true_volume_mm3"]) / r["true_volume_mm3"] for r in rs])
        return {"n": len(rs), "type_accuracy": round(float(np.mean([r["type"] == r["kind"] for r in rs])), 3),
                "mean_diameter_abs_err_median_mm": round(float(np.median(err)), 2),
                "mean_diameter_within_1_5mm": round(float(np.mean(err <= 1.5)), 3),
                "volume_abs_rel_err_median": round(float(np.median(verr)), 3)}

    s = {"all": block(rec)}
    for k in sorted({r["kind"] for r in rec}):
        s[k] = block([r for r in rec if r["kind"] == k])
    for k in sorted({r["location"] for r in rec}):
        s[k] = block([r for r in rec if r["location"] == k])
    s["round_isolated"] = block([r for r in rec if r["shape"] == "round" and r["location"] == "isolated"])
    conf = {}
    for r in rec:
        conf.setdefault(r["kind"], {}).setdefault(r["type"], 0)
        conf[r["kind"]][r["type"]] += 1
    s["confusion_true_to_measured"] = conf
    return s


def run(args: argparse.Namespace) -> int:
    if args.source:
        cases = _source_cases(Path(args.source), args.region_x)
        name = args.name or Path(args.source).name
    else:
        cases = _phantom_cases(range(args.seed, args.seed + args.scans))
        name = args.name or f"wide_{args.seed}-{args.seed + args.scans - 1}"
    rec = measure(cases)
    s = summarise(rec)
    cmd = "noduleflow bench characterise " + (f"--source {args.source}" + (
        f" --region-x {args.region_x[0]} {args.region_x[1]}" if args.region_x else "") if args.source
        else f"--seed {args.seed} --scans {args.scans}")
    OUT.mkdir(parents=True, exist_ok=True)
    doc = {"command": cmd, "note": "synthetic lesions at their true centres: a regression signal, not clinical "
                                   "evidence", "summary": s, "lesions": rec}
    (OUT / f"{name}.json").write_text(json.dumps(doc, indent=1))
    lines = [f"# characterise: {name}", "", f"`{cmd}`", "", doc["note"], "",
             "| stratum | n | type acc | mean-diam |err| median mm | within 1.5 mm | volume |rel err| median |",
             "|---|---|---|---|---|---|"]
    for k, b in s.items():
        if k != "confusion_true_to_measured" and b.get("n"):
            lines.append(f"| {k} | {b['n']} | {b['type_accuracy']} | {b['mean_diameter_abs_err_median_mm']} | "
                         f"{b['mean_diameter_within_1_5mm']} | {b['volume_abs_rel_err_median']} |")
    lines += ["", f"confusion (true -> measured): {json.dumps(s['confusion_true_to_measured'])}"]
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--seed", type=int, default=100, help="first wide-phantom seed (default 100)")
    p.add_argument("--scans", type=int, default=10, help="wide phantoms (default 10)")
    p.add_argument("--source", help="an evaluation source folder (findings.csv + .mhd) instead of phantoms")
    p.add_argument("--region-x", type=float, nargs=2, metavar=("LO", "HI"),
                   help="only lesions with world x in [LO, HI] mm (the hybrid's evaluation lung)")
    p.add_argument("--name", help="report name (default from the source or seeds)")
    p.set_defaults(func=run)
    return p


def register(sub) -> None:
    build_parser(sub.add_parser("characterise", help=HELP, description=DESCRIPTION))


def main(argv=None) -> int:
    return standalone(build_parser, "characterise", DESCRIPTION, argv)


if __name__ == "__main__":
    raise SystemExit(main())
