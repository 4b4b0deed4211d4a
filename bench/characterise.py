"""`noduleflow bench characterise`: the characterisation (segmentation, type, Lung-RADS mean
diameter, volume, solid core, category) of known lesions, at their true centres: wide or held-out
phantoms (every lesion), or an evaluation source folder (findings.csv; only lesions inside
``--region-x``, e.g. the hybrid's right lung). Phantom and hybrid lesions are a regression
signal, not clinical evidence.

The truth. Phantoms (wide, held-out): each lesion's own drawn shape (`characterise_truth`): the
inside of the surface where the renderer drew it at half its contrast, evaluated again on a fine
grid, less any part in the chest wall's place (it adds no density there); its volume, its
Lung-RADS mean diameter ((long + short) / 2 on the axial slice of largest area among the scan's
slice positions), the part-solid core's mean diameter, and the Lung-RADS v2022 category of the
true type, diameter and core. Hybrids: the same for each inserted lesion, from the fine grid it was
drawn on (`hybrid_lesions.fine_truth`, in ``lesions.json``; the real nodules have no such truth and
are left out). Other source folders carry only the drawn diameter d: there the truth is
approximate (volume pi d^3 / 6, mean diameter d, no core).

``--repeatability`` measures every phantom twice, on two noise realisations of the same scan
(`generate_phantom(noise_seed=1)`: the anatomy and lesions unchanged), and reports, as the
volumetry literature does, the repeatability coefficient RC = 2.77 x the within-subject SD of each
measurement (the volume's also relative, in %) and the agreement of type and category.

Writes bench/results/characterise/<name>.json and .md.
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

from .characterise_truth import lesion_truth
from .common import standalone

HELP = "characterisation accuracy on lesions of known size and type (phantoms, hybrids)"
DESCRIPTION = __doc__.split("\n\n")[0]
OUT = Path(__file__).resolve().parent / "results" / "characterise"
RC_FACTOR = 2.77   # 1.96 x sqrt(2): 95 % of repeat differences lie within RC
REPEATED = ("volume_mm3", "mean_diameter_mm", "long_axis_mm", "short_axis_mm", "solid_core_mm", "mean_hu")


def _phantom_cases(seeds, generator: str, noise_seed: int | None = None):
    """(name, volume, truth dicts) per phantom."""
    from noduleflow.synthetic.phantom import generate_phantom

    for seed in seeds:
        ph = generate_phantom(seed, generator=generator, noise_seed=noise_seed)
        v = ph.volume
        slice_z = v.origin_xyz_mm[2] + v.spacing_zyx_mm[0] * np.arange(v.shape[0])
        truth = []
        for n, shape in zip(ph.nodules, ph.lesion_shapes):
            if shape is None:
                continue
            t = lesion_truth(shape, n.kind, slice_z)
            truth.append({"center_xyz_mm": n.center_xyz_mm, "kind": n.kind, "shape": n.shape, "location": n.location,
                          "diameter_mm": n.diameter_mm, "true_volume_mm3": t.volume_mm3,
                          "true_mean_diameter_mm": t.mean_diameter_mm, "true_long_axis_mm": t.long_axis_mm,
                          "true_short_axis_mm": t.short_axis_mm, "true_solid_core_mm": t.core_mean_diameter_mm,
                          "true_lung_rads": t.lung_rads})
        yield f"{generator}-{seed}", v, truth


def _drawn_truth(les: dict) -> dict:
    """The truth record of one inserted lesion of a hybrid's ``lesions.json`` (its ``truth``:
    `hybrid_lesions.fine_truth`)."""
    t, kind = les["truth"], les["kind"]
    core = t.get("core_mean_diameter_mm") if kind == "part_solid" else None
    return {"center_xyz_mm": tuple(les["center_xyz_mm"]), "kind": kind, "shape": les["shape"],
            "location": les["location"], "diameter_mm": les["diameter_mm"], "true_volume_mm3": t["volume_mm3"],
            "true_mean_diameter_mm": t["mean_diameter_mm"], "true_long_axis_mm": t["long_axis_mm"],
            "true_short_axis_mm": t["short_axis_mm"], "true_solid_core_mm": core,
            "true_lung_rads": category(kind, t["mean_diameter_mm"], core)}


def _drawn_lesions(folder: Path) -> list | None:
    """The inserted lesions of a hybrid's ``lesions.json`` when each carries its drawn truth, else None."""
    drawn = folder / "lesions.json"
    lesions = json.loads(drawn.read_text()) if drawn.exists() else []
    return lesions if lesions and all("truth" in les for les in lesions) else None


def _source_cases(folder: Path, region_x):
    """(name, volume, truth dicts) per scan of a source folder. Hybrids whose ``lesions.json``
    carries each inserted lesion's drawn truth are measured against it (their real nodules have
    none and are left out); other folders against the drawn diameter of ``findings.csv``."""
    lesions = _drawn_lesions(folder)
    if lesions is not None:
        for uid in sorted({les["seriesuid"] for les in lesions}):
            truth = [_drawn_truth(les) for les in lesions if les["seriesuid"] == uid
                     and (region_x is None or region_x[0] <= les["center_xyz_mm"][0] <= region_x[1])]
            if truth:
                yield uid[-12:], load_volume(folder / f"{uid}.mhd"), truth
        return
    rows = list(csv.DictReader(open(folder / "findings.csv")))
    for uid in sorted({r["seriesuid"] for r in rows}):
        truth = []
        for r in rows:
            c = (float(r["coordX"]), float(r["coordY"]), float(r["coordZ"]))
            if r["seriesuid"] != uid or (region_x is not None and not region_x[0] <= c[0] <= region_x[1]):
                continue
            d, kind = float(r["diameter_mm"]), r["kind"]
            truth.append({"center_xyz_mm": c, "kind": kind, "shape": r["shape"], "location": r["location"],
                          "diameter_mm": d, "true_volume_mm3": round(np.pi * d ** 3 / 6, 2), "true_mean_diameter_mm": d,
                          "true_long_axis_mm": None, "true_short_axis_mm": None, "true_solid_core_mm": None,
                          "true_lung_rads": category(kind, d) if kind != "part_solid" else None})
        if truth:
            yield uid[-12:], load_volume(folder / f"{uid}.mhd"), truth


def _measured(f) -> dict:
    return {"type": f.type, "mean_diameter_mm": f.mean_diameter_mm, "long_axis_mm": f.long_axis_mm,
            "short_axis_mm": f.short_axis_mm, "volume_mm3": f.volume_mm3,
            "solid_core_mm": f.solid_core_mean_diameter_mm, "mean_hu": f.mean_hu, "lung_rads": f.lung_rads}


def _characterise(vol, truth):
    pre = preprocess(vol)
    t = time.perf_counter()
    fs = characterise_scan(vol, pre.volume, pre.mask, [r["center_xyz_mm"] for r in truth])
    return fs, (time.perf_counter() - t) / max(len(truth), 1)


def measure(cases, repeats=None) -> list[dict]:
    """One record per lesion: its truth, the measurement (and, with ``repeats``, the same cases on
    a second noise realisation: the measurement again, keys ``rep_*``), seconds per lesion."""
    out = []
    repeats = iter(repeats) if repeats is not None else None
    for name, vol, truth in cases:
        fs, dt = _characterise(vol, truth)
        rep = None
        if repeats is not None:
            _name2, vol2, truth2 = next(repeats)
            rep, _ = _characterise(vol2, truth2)
        for i, (r, f) in enumerate(zip(truth, fs)):
            rec = {"scan": name, **{k: v for k, v in r.items() if k != "center_xyz_mm"}, **_measured(f),
                   "seconds": round(dt, 3)}
            if rep is not None:
                rec.update({f"rep_{k}": v for k, v in _measured(rep[i]).items()})
            out.append(rec)
    return out


def _rate(x) -> float | None:
    return round(float(np.mean(x)), 3) if len(x) else None


def block(rs: list[dict]) -> dict:
    """Accuracy of one stratum of records: type accuracy, Lung-RADS mean diameter (median |error|,
    share within 1.5 mm), volume (median |relative error|), Lung-RADS category agreement."""
    if not rs:
        return {"n": 0}
    err = np.array([abs(r["mean_diameter_mm"] - r["true_mean_diameter_mm"]) for r in rs])
    verr = np.array([abs(r["volume_mm3"] - r["true_volume_mm3"]) / r["true_volume_mm3"] for r in rs])
    cats = [r["lung_rads"] == r["true_lung_rads"] for r in rs if r["true_lung_rads"] is not None]
    return {"n": len(rs), "type_accuracy": _rate([r["type"] == r["kind"] for r in rs]),
            "mean_diameter_abs_err_median_mm": round(float(np.median(err)), 2),
            "mean_diameter_within_1_5mm": _rate(err <= 1.5),
            "volume_abs_rel_err_median": round(float(np.median(verr)), 3),
            "lung_rads_agreement": _rate(cats)}


def repeatability(rs: list[dict]) -> dict:
    """RC = 2.77 x within-subject SD (sqrt of the mean of d^2 / 2 over the pairs' differences d) of
    each measurement over lesions segmented both times; the volume's relative RC (%, of each pair's
    mean); type and category agreement."""
    pairs = [r for r in rs if "rep_type" in r and r["type"] != "none" and r["rep_type"] != "none"]
    out = {"n_pairs": len(pairs), "n_segmented_once": sum(1 for r in rs if "rep_type" in r and
                                                           (r["type"] == "none") != (r["rep_type"] == "none"))}
    if not pairs:
        return out
    for k in REPEATED:
        ab = np.array([(r[k], r[f"rep_{k}"]) for r in pairs if r.get(k) is not None and r.get(f"rep_{k}") is not None],
                      float)
        if not len(ab):
            continue
        wsd = float(np.sqrt(np.mean((ab[:, 0] - ab[:, 1]) ** 2 / 2)))
        out[k] = {"n": len(ab), "wsd": round(wsd, 3), "rc": round(RC_FACTOR * wsd, 3)}
        if k == "volume_mm3":
            rel = (ab[:, 0] - ab[:, 1]) / np.maximum(ab.mean(1), 1e-6)
            out[k]["rc_percent"] = round(100 * RC_FACTOR * float(np.sqrt(np.mean(rel ** 2 / 2))), 1)
    out["type_agreement"] = _rate([r["type"] == r["rep_type"] for r in pairs])
    out["lung_rads_agreement"] = _rate([r["lung_rads"] == r["rep_lung_rads"] for r in pairs])
    return out


def summarise(rec: list[dict]) -> dict:
    s = {"all": block(rec)}
    for k in sorted({r["kind"] for r in rec}):
        s[k] = block([r for r in rec if r["kind"] == k])
    for k in sorted({r["location"] for r in rec}):
        s[k] = block([r for r in rec if r["location"] == k])
    s["solid_6mm_up"] = block([r for r in rec if r["kind"] == "solid" and r["true_mean_diameter_mm"] >= 6.0])
    s["subsolid"] = block([r for r in rec if r["kind"] in ("ground_glass", "part_solid")])
    s["under_6mm"] = block([r for r in rec if r["true_mean_diameter_mm"] < 6.0])
    conf: dict = {}
    for r in rec:
        conf.setdefault(r["kind"], {}).setdefault(r["type"], 0)
        conf[r["kind"]][r["type"]] += 1
    s["confusion_true_to_measured"] = conf
    if any("rep_type" in r for r in rec):
        s["repeatability"] = repeatability(rec)
    return s


def _markdown(name: str, doc: dict) -> list[str]:
    s = doc["summary"]
    lines = [f"# characterise: {name}", "", f"`{doc['command']}`", "", doc["note"], "", doc["truth"], "",
             "| stratum | n | type acc | mean-diam abs err median mm | within 1.5 mm | volume abs rel err median "
             "| Lung-RADS agreement |", "|---|---|---|---|---|---|---|"]
    for k, b in s.items():
        if isinstance(b, dict) and b.get("n"):
            lines.append(f"| {k} | {b['n']} | {b['type_accuracy']} | {b['mean_diameter_abs_err_median_mm']} | "
                         f"{b['mean_diameter_within_1_5mm']} | {b['volume_abs_rel_err_median']} | "
                         f"{b['lung_rads_agreement']} |")
    lines += ["", f"confusion (true -> measured): {json.dumps(s['confusion_true_to_measured'])}"]
    rep = s.get("repeatability")
    if rep:
        lines += ["", "## repeatability (two noise realisations of each scan)", "",
                  f"{rep['n_pairs']} lesions segmented both times ({rep['n_segmented_once']} only once); "
                  f"type agreement {rep.get('type_agreement')}, Lung-RADS agreement {rep.get('lung_rads_agreement')}.",
                  "", "| measurement | n | within-subject SD | RC = 2.77 wSD | RC % |", "|---|---|---|---|---|"]
        for k in REPEATED:
            if k in rep:
                lines.append(f"| {k} | {rep[k]['n']} | {rep[k]['wsd']} | {rep[k]['rc']} | "
                             f"{rep[k].get('rc_percent', '')} |")
    t = [r["seconds"] for r in doc["lesions"]]
    if t:
        lines += ["", f"characterisation time per lesion: median {np.median(t):.3f} s, max {max(t):.3f} s "
                      f"(this machine, {len(t)} lesions)"]
    return lines


def run(args: argparse.Namespace) -> int:
    reps = None
    if args.source:
        cases = _source_cases(Path(args.source), args.region_x)
        name = args.name or Path(args.source).name
        cmd = f"noduleflow bench characterise --source {args.source}" + (
            f" --region-x {args.region_x[0]} {args.region_x[1]}" if args.region_x else "")
        truth = ("truth: each inserted lesion's drawn shape (its half-occupancy surface on the fine grid it was drawn "
                 "on, less any part outside its lung; spicules and cavities included): volume, Lung-RADS mean diameter "
                 "on the scan's slices, solid core, category (noduleflow.synthetic.hybrid_lesions.fine_truth); the "
                 "real nodules have none and are left out" if _drawn_lesions(Path(args.source)) is not None else
                 "truth: the drawn diameter d (volume pi d^3 / 6, mean diameter d; approximate for non-round shapes)")
    else:
        seeds = range(args.seed, args.seed + args.scans)
        cases = _phantom_cases(seeds, args.generator)
        if args.repeatability:
            reps = _phantom_cases(seeds, args.generator, noise_seed=1)
        name = args.name or (f"{args.generator}_{args.seed}-{args.seed + args.scans - 1}"
                             + ("_repeatability" if args.repeatability else ""))
        cmd = (f"noduleflow bench characterise --generator {args.generator} --seed {args.seed} --scans {args.scans}"
               + (" --repeatability" if args.repeatability else ""))
        truth = ("truth: each lesion's drawn shape (its half-contrast surface on a fine grid, less any part in the "
                 "wall's place; cavities included): volume, Lung-RADS mean diameter on the scan's slices, solid "
                 "core, category (bench/characterise_truth.py)")
    rec = measure(cases, reps)
    doc = {"command": cmd, "note": "synthetic lesions at their true centres: a regression signal, not clinical "
                                   "evidence", "truth": truth, "summary": summarise(rec), "lesions": rec}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(doc, indent=1))
    lines = _markdown(name, doc)
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--generator", choices=("wide", "heldout"), default="wide",
                   help="phantom generator (default wide; heldout: never tuned on)")
    p.add_argument("--seed", type=int, default=100, help="first phantom seed (default 100)")
    p.add_argument("--scans", type=int, default=10, help="phantoms (default 10)")
    p.add_argument("--repeatability", action="store_true",
                   help="measure each phantom again on a second noise realisation; report RC per measurement")
    p.add_argument("--source", help="an evaluation source folder (findings.csv + .mhd) instead of phantoms")
    p.add_argument("--region-x", type=float, nargs=2, metavar=("LO", "HI"),
                   help="only lesions with world x in [LO, HI] mm (the hybrid's evaluation lung)")
    p.add_argument("--name", help="report name (default from the source or generator and seeds)")
    p.set_defaults(func=run)
    return p


def register(sub) -> None:
    build_parser(sub.add_parser("characterise", help=HELP, description=DESCRIPTION))


def main(argv=None) -> int:
    return standalone(build_parser, "characterise", DESCRIPTION, argv)


if __name__ == "__main__":
    raise SystemExit(main())
