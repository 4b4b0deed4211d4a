"""`noduleflow bench follow`: ``noduleflow follow`` on synthetic follow-up pairs with a known
motion and known lesion changes (`noduleflow.synthetic.followup`), scored against the truth.
Synthetic pairs are a regression signal, not clinical evidence.

Each pair is written as two DICOM series with their StudyDates and given to
`noduleflow.follow.follow` with the shipped default model, as a user would run ``noduleflow follow
PRIOR CURRENT``. A finding *hits* a true lesion of its scan when its segmentation's centroid lies
within max(the lesion's radius, 3 mm) of the lesion's true centre (the nearest lesion wins). Per
lesion, then: persistent lesions (stable, grown, shrunk) are *matched correctly* when one matched
finding hits the lesion on both sides; growth is *reported* when that finding's volume change is
>= +25 % (`GROWTH_PCT`), or when Lung-RADS' growth criterion (`growing`: mean diameter up by > 1.5
mm) holds; shrinkage at <= -25 %; a new lesion is reported new when the current finding that hits
it is "new", a resolved one when its prior finding is "resolved". Every figure is given over all
lesions of its kind and over those that were detected on both sides (on the current side for new
lesions, the prior side for resolved ones): the first includes the detector's misses, the second
isolates the follow-up logic (registration, matching, measurement). Also: false "new" and
"resolved" reports per pair (findings that hit no true new or resolved lesion; also those with a
detection probability >= 0.5, `REPORT_PROB`: ``follow`` reports every characterised finding), and the
registration error, the distance between each lesion's true prior centre mapped by follow's
registration (its 4x4 matrix: the whole map for the default rigid/affine registration) and the
same point's true place in the current scan. Writes OUT/<name>.json and .md (``--out``, default
./bench-follow) and one example picture (follow's own pair_<n>.png of a correctly matched grown lesion).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .common import machine, standalone

log = logging.getLogger(__name__)

HELP = "follow-up (registration, matching, growth) on synthetic pairs with known changes"
DESCRIPTION = __doc__.split("\n\n")[0]
HIT_MIN_MM = 3.0        # a finding hits a lesion within max(its radius, this) of its centre
GROWTH_PCT = 25.0       # measured volume change that counts as growth (and -25 % as shrinkage)
REPORT_PROB = 0.5       # false reports are also counted among the findings at least this probable
PERSISTENT = ("stable", "grown", "shrunk")
SHAPE = (100, 256, 256)        # a pair's grid: small enough for 30 pairs in minutes on 2 cores
SPACING = (2.0, 1.25, 1.25)
NOTE = ("synthetic follow-up pairs (phantoms): a regression signal for the follow-up pipeline, not clinical "
        "evidence")


def hit(xyz, centres, radii_mm) -> int | None:
    """The index of the true lesion (centres (n, 3) mm, radii (n,) mm) that the point ``xyz`` (x, y,
    z mm) hits: the nearest within max(radius, `HIT_MIN_MM`); None when none."""
    if xyz is None or len(centres) == 0:
        return None
    d = np.linalg.norm(np.asarray(centres, float) - np.asarray(xyz, float), axis=1)
    ok = d <= np.maximum(np.asarray(radii_mm, float), HIT_MIN_MM)
    return int(np.argmin(np.where(ok, d, np.inf))) if ok.any() else None


def _side_hits(lesions, findings, side: str) -> tuple[dict, list]:
    """lesion index -> the findings (indices) whose ``side`` ("prior" / "current") hits it, nearest
    first; and per finding the lesion it hits (or None)."""
    idx = [i for i, ls in enumerate(lesions) if getattr(ls, f"{side}_center_xyz_mm") is not None]
    centres = [getattr(lesions[i], f"{side}_center_xyz_mm") for i in idx]
    radii = [getattr(lesions[i], f"{side}_diameter_mm") / 2 for i in idx]
    per_finding = []
    by_lesion: dict[int, list] = {}
    for j, f in enumerate(findings):
        k = hit(getattr(f, f"{side}_xyz_mm"), centres, radii)
        per_finding.append(None if k is None else idx[k])
        if k is not None:
            d = float(np.linalg.norm(np.asarray(getattr(f, f"{side}_xyz_mm")) - np.asarray(centres[k])))
            by_lesion.setdefault(idx[k], []).append((d, j))
    return {i: [j for _, j in sorted(v)] for i, v in by_lesion.items()}, per_finding


def score_pair(lesions, findings, matrix=None, to_current=None, pair: str = "",
               probs=None) -> tuple[list[dict], dict]:
    """Score one follow-up against its truth.

    ``lesions``: `PairLesion`s; ``findings``: the `FollowFinding`s of ``follow`` (matched, new,
    resolved); ``matrix``: follow's 4x4 prior -> current map (``registration
    ["matrix_prior_to_current"]``) and ``to_current``: the true map (prior world points (n, 3) ->
    current (n, 3)), both optional (registration error); ``probs``: optional, per finding the
    detection probability of the scan that reports it (current for new, prior for resolved). ->
    (one record per lesion, the pair's counts: false new / resolved reports, what they hit, and
    how many of them have a probability >= `REPORT_PROB`)."""
    prior_hits, prior_of = _side_hits(lesions, findings, "prior")
    cur_hits, cur_of = _side_hits(lesions, findings, "current")
    out = []
    for i, ls in enumerate(lesions):
        det_p = bool(prior_hits.get(i)) if ls.prior_center_xyz_mm is not None else None
        det_c = bool(cur_hits.get(i)) if ls.current_center_xyz_mm is not None else None
        rec = {"pair": pair, "lesion_id": ls.lesion_id, "status": ls.status, "kind": ls.kind, "shape": ls.shape,
               "location": ls.location, "prior_diameter_mm": ls.prior_diameter_mm,
               "current_diameter_mm": ls.current_diameter_mm, "true_volume_ratio": ls.volume_ratio,
               "detected_prior": det_p, "detected_current": det_c, "outcome": "missed",
               "volume_change_pct": None, "diameter_change_mm": None, "growing": None,
               "registration_error_mm": None, "motion_mm": None, "finding_index": None}
        if ls.status in PERSISTENT:
            both = [j for j in prior_hits.get(i, []) if findings[j].status == "matched" and cur_of[j] == i]
            if both:
                f = findings[both[0]]
                rec.update(outcome="matched", volume_change_pct=f.volume_change_pct,
                           diameter_change_mm=f.diameter_change_mm, growing=f.growing, finding_index=both[0] + 1)
            elif det_p and det_c:
                wrong = any(findings[j].status == "matched" for j in prior_hits[i] + cur_hits[i])
                rec["outcome"] = "matched_wrong" if wrong else "unmatched"
        elif ls.status == "new" and det_c:
            rec["outcome"] = "new" if any(findings[j].status == "new" for j in cur_hits[i]) else "matched_wrong"
        elif ls.status == "resolved" and det_p:
            rec["outcome"] = ("resolved" if any(findings[j].status == "resolved" for j in prior_hits[i])
                              else "matched_wrong")
        if ls.prior_center_xyz_mm is not None and matrix is not None and to_current is not None:
            p = np.asarray(ls.prior_center_xyz_mm, float)
            truth = np.asarray(to_current(p[None]), float).reshape(3)
            mapped = (np.asarray(matrix, float) @ np.append(p, 1.0))[:3]
            rec["registration_error_mm"] = round(float(np.linalg.norm(mapped - truth)), 3)
            rec["motion_mm"] = round(float(np.linalg.norm(p - truth)), 3)
        out.append(rec)
    status = {ls.status for ls in lesions}
    counts = {"false_new": 0, "false_new_persistent": 0, "false_new_confident": 0, "false_resolved": 0,
              "false_resolved_persistent": 0, "false_resolved_confident": 0, "n_findings": len(findings)}
    for j, f in enumerate(findings):
        if f.status not in ("new", "resolved"):
            continue
        k = cur_of[j] if f.status == "new" else prior_of[j]
        if k is None or lesions[k].status != f.status:
            counts[f"false_{f.status}"] += 1
            counts[f"false_{f.status}_persistent"] += int(k is not None and lesions[k].status in PERSISTENT)
            counts[f"false_{f.status}_confident"] += int(probs is not None and probs[j] >= REPORT_PROB)
    counts["statuses"] = sorted(status)
    return out, counts


def _share(num: int, den: int) -> dict:
    return {"share": round(num / den, 3) if den else None, "n": int(num), "of": int(den)}


def summarise(records: list[dict], pairs: list[dict]) -> dict:
    """The figures (see the module docstring) from `score_pair`'s records and pair counts: each
    figure ``{"all": {share, n, of}, "detected": {...}}``, plus the false reports per pair and the
    registration error."""
    def of(status):
        return [r for r in records if r["status"] in status]

    def both(rs):
        return [r for r in rs if r["detected_prior"] is not False and r["detected_current"] is not False]

    def figure(rs, ok):
        return {"all": _share(sum(map(ok, rs)), len(rs)), "detected": _share(sum(map(ok, both(rs))), len(both(rs)))}

    def grew(r):
        return r["outcome"] == "matched" and r["volume_change_pct"] is not None and r["volume_change_pct"] >= GROWTH_PCT

    def shrank(r):
        return r["outcome"] == "matched" and r["volume_change_pct"] is not None and \
            r["volume_change_pct"] <= -GROWTH_PCT

    persistent = of(PERSISTENT)
    s = {"persistent_matched_correctly": figure(persistent, lambda r: r["outcome"] == "matched"),
         "persistent_matched_wrongly": figure(persistent, lambda r: r["outcome"] == "matched_wrong"),
         "grown_volume_growth_reported": figure(of(("grown",)), grew),
         "grown_lungrads_growing": figure(of(("grown",)), lambda r: r["outcome"] == "matched" and bool(r["growing"])),
         "stable_false_volume_growth": figure(of(("stable",)), grew),
         "stable_false_lungrads_growing": figure(of(("stable",)),
                                                 lambda r: r["outcome"] == "matched" and bool(r["growing"])),
         "shrunk_volume_shrinkage_reported": figure(of(("shrunk",)), shrank),
         "new_reported_new": figure(of(("new",)), lambda r: r["outcome"] == "new"),
         "resolved_reported_resolved": figure(of(("resolved",)), lambda r: r["outcome"] == "resolved")}
    s["detected_prior"] = _share(sum(bool(r["detected_prior"]) for r in records),
                                 sum(r["detected_prior"] is not None for r in records))
    s["detected_current"] = _share(sum(bool(r["detected_current"]) for r in records),
                                   sum(r["detected_current"] is not None for r in records))
    n = max(len(pairs), 1)
    for k in ("false_new", "false_new_persistent", "false_new_confident", "false_resolved",
              "false_resolved_persistent", "false_resolved_confident"):
        s[f"{k}_per_pair"] = round(sum(p[k] for p in pairs) / n, 2)
    err = np.array([r["registration_error_mm"] for r in records if r["registration_error_mm"] is not None])
    mot = np.array([r["motion_mm"] for r in records if r["motion_mm"] is not None])
    s["registration_error_mm"] = ({"mean": round(float(err.mean()), 2), "median": round(float(np.median(err)), 2),
                                   "p95": round(float(np.percentile(err, 95)), 2), "max": round(float(err.max()), 2),
                                   "n": int(len(err))} if len(err) else None)
    s["true_motion_mm_mean"] = round(float(mot.mean()), 2) if len(mot) else None
    m = [r for r in records if r["outcome"] == "matched" and r["volume_change_pct"] is not None]
    dv = np.array([r["volume_change_pct"] - 100 * (r["true_volume_ratio"] - 1) for r in m])
    s["volume_change_error_pct_points"] = ({"median_abs": round(float(np.median(np.abs(dv))), 1),
                                            "mean": round(float(dv.mean()), 1), "n": int(len(dv))} if len(dv) else None)
    s["counts"] = {st: len(of((st,))) for st in ("stable", "grown", "shrunk", "new", "resolved")}
    kinds = [p["registration_kind"] for p in pairs if "registration_kind" in p]
    s["registration_kinds"] = {k: kinds.count(k) for k in sorted(set(kinds))}
    s["pairs"] = len(pairs)
    return s


ROWS = (("persistent_matched_correctly", "persistent lesions (stable, grown, shrunk) matched correctly"),
        ("persistent_matched_wrongly", "persistent lesions matched to another finding"),
        ("grown_volume_growth_reported", "grown (true +25..+100 % volume): volume change >= +25 % reported"),
        ("grown_lungrads_growing", "grown: Lung-RADS growth (mean diameter > +1.5 mm) reported"),
        ("stable_false_volume_growth", "stable: false volume growth >= +25 %"),
        ("stable_false_lungrads_growing", "stable: false Lung-RADS growth"),
        ("shrunk_volume_shrinkage_reported", "shrunk: volume change <= -25 % reported"),
        ("new_reported_new", "new lesions reported new"),
        ("resolved_reported_resolved", "resolved lesions reported resolved"))


def report_md(doc: dict) -> str:
    s = doc["summary"]

    def cell(f):
        return "-" if f["share"] is None else f"{f['share']:.3f} ({f['n']}/{f['of']})"

    reg = s["registration_error_mm"] or {}
    dv = s["volume_change_error_pct_points"] or {}
    v = doc["versions"]
    lines = [f"# follow: {doc['name']}", "", f"`{doc['command']}`", "", f"{NOTE}.", "",
             f"{s['pairs']} pairs, lesions: " + ", ".join(f"{k} {n}" for k, n in s["counts"].items()) +
             f". Grid {doc['settings']['shape_zyx']} voxels of {doc['settings']['spacing_zyx_mm']} mm; default "
             f"`FollowConfig` ({doc['settings']['follow']['characterise_top']} findings characterised per scan, "
             f"min_prob {doc['settings']['follow']['min_prob']}).", "",
             "| figure | all lesions | detected on both sides (new: current, resolved: prior) |", "|---|---|---|"]
    lines += [f"| {label} | {cell(s[k]['all'])} | {cell(s[k]['detected'])} |" for k, label in ROWS]
    lines += ["", "| figure | value |", "|---|---|",
              f"| lesions detected in the prior / current scan | {cell(s['detected_prior'])} / "
              f"{cell(s['detected_current'])} |",
              f"| false 'new' reports per pair (of which a persistent lesion) | {s['false_new_per_pair']} "
              f"({s['false_new_persistent_per_pair']}) |",
              f"| false 'resolved' reports per pair (of which a persistent lesion) | {s['false_resolved_per_pair']} "
              f"({s['false_resolved_persistent_per_pair']}) |",
              f"| ... of them with detection probability >= {REPORT_PROB}: false 'new' / 'resolved' per pair | "
              f"{s['false_new_confident_per_pair']} / {s['false_resolved_confident_per_pair']} |",
              f"| registration error mm: mean / median / p95 / max (n) | {reg.get('mean')} / {reg.get('median')} / "
              f"{reg.get('p95')} / {reg.get('max')} ({reg.get('n')}) |",
              f"| true motion of the lesion sites, mean mm (no registration) | {s['true_motion_mm_mean']} |",
              "| registrations by the stages kept | " + (", ".join(f"{k} {n}" for k, n in
                                                          s["registration_kinds"].items()) or "-") + " |",
              f"| volume change error, correctly matched: median abs / mean, % points (n) | {dv.get('median_abs')} / "
              f"{dv.get('mean')} ({dv.get('n')}) |",
              f"| seconds per pair: make + write / follow | {doc['seconds_per_pair']['make']} / "
              f"{doc['seconds_per_pair']['follow']} |", "",
              f"Model {v['package_id']} (manifest sha256 {v['package_sha256'][:12]}...), engine {v['engine_version']}, "
              f"backend {v['backend']}; {v['machine']['cpu']}, {v['machine']['cores']} cores, numpy "
              f"{v['machine']['numpy']}, SimpleITK {v['simpleitk']}. Pair seeds {doc['seeds'][0]}-{doc['seeds'][-1]}: "
              "never trained, tuned or selected on.", ""]
    if doc.get("example_png"):
        lines += [f"Example: `{doc['example_png']}` (follow's own picture of a correctly matched grown lesion).", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import SimpleITK as sitk
    from tqdm import tqdm

    from noduleflow.engine.config import DetectorConfig
    from noduleflow.engine.detector import Detector
    from noduleflow.follow import FollowConfig, follow
    from noduleflow.synthetic.followup import FollowupParams, make_pair

    seeds = list(range(args.seed, args.seed + args.pairs))
    name = args.name or f"pairs_{seeds[0]}-{seeds[-1]}"
    cfg = FollowConfig(min_prob=args.min_prob)
    params = FollowupParams()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="noduleflow-bench-follow-"))
    records, pairs, example = [], [], None
    t_make = t_follow = 0.0
    with Detector(backend=args.backend, config=DetectorConfig(characterise_top=cfg.characterise_top)) as det:
        bar = tqdm(seeds, desc="pairs", unit="pair")
        for seed in bar:
            t = time.perf_counter()
            pair = make_pair(seed, shape_zyx=tuple(args.shape), spacing_zyx_mm=tuple(args.spacing), params=params)
            prior_dir, current_dir = pair.save(work / f"pair_{seed}")
            t1 = time.perf_counter()
            res = follow(prior_dir, current_dir, det, config=cfg)
            t_make, t_follow = t_make + t1 - t, t_follow + time.perf_counter() - t1
            saved = res.save(work / f"pair_{seed}" / "follow", detections=False)
            probs = [(res.current_tp if f.status == "new" else res.prior_tp).detections[
                (f.current_rank if f.status == "new" else f.prior_rank) - 1].prob for f in res.findings]
            rec, counts = score_pair(pair.lesions, res.findings, res.registration["matrix_prior_to_current"],
                                     pair.motion.to_current, pair=str(seed), probs=probs)
            for r in rec:   # the example picture: the first correctly matched grown lesion
                if example is None and r["status"] == "grown" and r["outcome"] == "matched":
                    example = (seed, saved.get(f"pair_{r['finding_index']}"))
            records += rec
            pairs.append({"seed": seed, **counts, "interval_days": pair.interval_days,
                          "interval_reported": res.interval_days, "interval_source": res.interval_source,
                          "lung_dice": res.registration["lung_dice"], "registration_kind": res.registration["kind"],
                          "motion": pair.motion.to_dict(),
                          "timings_s": {k: round(v, 2) for k, v in res.timings_s.items()}})
            ok = sum(r["outcome"] == "matched" for r in records)
            bar.set_postfix(matched=f"{ok}/{sum(r['status'] in PERSISTENT for r in records)}")
        prov = det.provenance()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = None
    if example and example[1]:
        png = f"{name}_example_pair_{example[0]}.png"
        shutil.copyfile(example[1], out / png)
    cmd = f"noduleflow bench follow --pairs {args.pairs} --seed {args.seed}" + (
        f" --shape {' '.join(map(str, args.shape))}" if list(args.shape) != list(SHAPE) else "") + (
        f" --spacing {' '.join(map(str, args.spacing))}" if list(args.spacing) != list(SPACING) else "") + (
        f" --min-prob {args.min_prob}" if args.min_prob else "")
    wrong_interval = [p["seed"] for p in pairs if p["interval_reported"] != p["interval_days"]]
    doc = {"name": name, "command": cmd, "note": NOTE, "seeds": seeds,
           "versions": {"package_id": prov["package_id"], "package_sha256": prov["package_sha256"],
                        "engine_version": prov["engine_version"], "backend": prov["backend"],
                        "simpleitk": sitk.Version.VersionString(), "machine": machine()},
           "settings": {"shape_zyx": list(args.shape), "spacing_zyx_mm": list(args.spacing), "follow": asdict(cfg),
                        "pairs": asdict(params), "hit_min_mm": HIT_MIN_MM, "growth_pct": GROWTH_PCT,
                        "detector": prov["settings"]},
           "seconds_per_pair": {"make": round(t_make / len(seeds), 1), "follow": round(t_follow / len(seeds), 1)},
           "intervals_wrong": wrong_interval, "example_png": png,
           "summary": summarise(records, pairs), "pairs": pairs, "lesions": records}
    (out / f"{name}.json").write_text(json.dumps(doc, indent=1))
    text = report_md(doc)
    (out / f"{name}.md").write_text(text)
    print(text)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--pairs", type=int, default=30, help="follow-up pairs (default 30)")
    p.add_argument("--seed", type=int, default=9000, help="first pair seed (default 9000)")
    p.add_argument("--shape", type=int, nargs=3, default=list(SHAPE), metavar=("Z", "Y", "X"),
                   help="voxels per scan (default 100 256 256)")
    p.add_argument("--spacing", type=float, nargs=3, default=list(SPACING), metavar=("Z", "Y", "X"),
                   help="voxel size mm (default 2.0 1.25 1.25: 200 x 320 x 320 mm)")
    p.add_argument("--min-prob", type=float, default=0.0,
                   help="FollowConfig.min_prob: findings below it take no part (default 0, follow's default)")
    p.add_argument("--backend", default="auto", help="detector backend (default auto)")
    p.add_argument("--work", help="keep each pair's DICOM series, truth and follow output here (default: a "
                                  "temporary folder, removed)")
    p.add_argument("--out", default="bench-follow", help="report folder (default ./bench-follow; the committed "
                   "figures are in bench/results/follow)")
    p.add_argument("--name", help="report name (default pairs_<first>-<last seed>)")
    p.set_defaults(func=run)
    return p


def register(sub) -> None:
    build_parser(sub.add_parser("follow", help=HELP, description=DESCRIPTION))


def main(argv=None) -> int:
    return standalone(build_parser, "follow", DESCRIPTION, argv)


if __name__ == "__main__":
    raise SystemExit(main())
