"""Stage-1 recall: the share of nodules that some candidate hits (within the nodule's radius, the
LUNA16 rule) against the number of candidates per scan, for each candidate generator.

    python -m noduleflow.trainer.evaluate.stage1_recall --cohort tuning --out DIR

Generators (`engine.stage1`): ``cnn`` (the dense CNN's scores clustered as the detector does but
without its per-candidate centre refinement, ranked by probability), ``blobs`` (multi-scale
Hessian blobs, ranked by response), ``union`` (the two interleaved, merged by extent). Each
list is cut at N candidates per scan for N in --caps. Also: candidates per found nodule (1.0 =
one candidate per lesion), recall per stratum at the largest cap, and the seconds each
generator took. Settings are chosen on the tuning cohort; the held-out cohort only reports.
Phantoms are a regression signal, not clinical evidence.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from noduleflow.engine.blobs import BlobParams, detect_blobs
from noduleflow.engine.contract import Stage1Spec
from noduleflow.engine.detector import Detector
from noduleflow.engine.postprocess import cluster_scored
from noduleflow.engine.stage1 import (
    append_distinct,
    combine,
    component_radius_mm,
    subsolid_blobs,
    subsolid_params,
    wall_blobs,
    wall_params,
)
from noduleflow.trainer.data.cohort import CohortCache, cohort_seeds

from .strata import DIAMETER_BANDS_MM, band_name

CAPS = (15, 50, 100, 150, 200, 300)


def _cache_file(root, kind, key, seed):
    if root is None:
        return None
    d = Path(root) / kind / hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{int(seed)}.npz"


def cnn_list(det, scan, n: int = 300, root=None, refine: bool | None = None):
    """The detector's clustered CNN peaks of a `CohortScan`, ranked: (centres zyx (k, 3), prob (k,),
    grid points merged (k,), seconds): the engine's grid scoring and clustering
    (`engine.postprocess.cluster_scored`) with top_k=n, whose first K entries are what the detector
    returns with top_k=K (clustering and NMS are greedy in rank order). Cached under ``root`` by
    model, settings and seed."""
    cfg = det.config.replace(top_k=n, **({} if refine is None else {"refine": refine}))
    key = {"model": det.package.manifest.model_id, "config": repr(cfg), "n": n}
    f = _cache_file(root, "cnn", key, scan.seed)
    if f is not None and f.exists():
        with np.load(f) as z:
            return z["centres"], z["prob"], z["npts"], float(z["seconds"])
    t = time.perf_counter()
    pre = scan.pre
    found = cluster_scored(det.scorer.score_grid(pre), cfg, det.scorer.stride, det.contract.dense_stride or 0,
                           pre.volume.hu, pre.mask)
    out = (found.centres_zyx, found.prob, found.n_points, time.perf_counter() - t)
    if f is not None:
        np.savez(f, centres=out[0], prob=out[1], npts=out[2], seconds=out[3])
    return out


def _cached_blobs(kind, key, scan, root, run):
    """``run()`` -> `engine.blobs.Blobs` on a `CohortScan`, as (centres, response, radius_mm,
    seconds), cached under ``root/kind`` by ``key`` and seed."""
    f = _cache_file(root, kind, key, scan.seed)
    if f is not None and f.exists():
        with np.load(f) as z:
            return z["centres"], z["response"], z["radius"], float(z["seconds"])
    t = time.perf_counter()
    b = run()
    out = (b.centres_zyx, b.response, b.radius_mm, time.perf_counter() - t)
    if f is not None:
        np.savez(f, centres=out[0], response=out[1], radius=out[2], seconds=out[3])
    return out


def blob_list(scan, params, root=None):
    """`engine.blobs.detect_blobs` on a `CohortScan`: (centres, response, radius_mm, seconds), cached."""
    return _cached_blobs("blobs", {k: v for k, v in vars(params).items()}, scan, root,
                         lambda: detect_blobs(scan.pre.volume.hu, scan.pre.mask, params))


def subsolid_list(scan, root=None):
    """`engine.stage1.subsolid_blobs` (the contract's defaults) on a `CohortScan`: (centres, response,
    radius_mm, seconds), cached."""
    spec = Stage1Spec()
    return _cached_blobs("subsolid", {"solid": spec.subsolid_solid_hu, "fill": spec.subsolid_fill_hu,
                                      **vars(subsolid_params(spec))}, scan, root,
                         lambda: subsolid_blobs(scan.pre.volume.hu, scan.pre.mask, spec))


def wall_list(scan, blob_min_response: float, root=None):
    """`engine.stage1.wall_blobs` (the contract's defaults, the first pass's response threshold) on a
    `CohortScan`: (centres, response, radius_mm, seconds), cached."""
    spec = Stage1Spec(blob_min_response=blob_min_response)
    return _cached_blobs("wall", {"close": spec.wall_close_mm, "shrink": spec.wall_shrink_mm,
                                  "fill": spec.wall_fill_hu, "band": spec.wall_band_mm,
                                  **vars(wall_params(spec))}, scan, root,
                         lambda: wall_blobs(scan.pre.volume.hu, scan.pre.mask, spec))


def raw_lists(det, scan, blob_params, cnn_candidates=300, root=None, subsolid: bool = False, wall: bool = False):
    """Per scan: the ranked CNN peaks and blobs (and with ``subsolid`` the subsolid pass's blobs,
    with ``wall`` the pleural pass's), each with its extent radius, and the seconds each took."""
    cc, cp, cn, t_cnn = cnn_list(det, scan, cnn_candidates, root, refine=False)  # as engine.stage1 does
    stride = det.contract.dense_stride or det.contract.candidate_rules.stride
    bc, bv, br, t_blob = blob_list(scan, blob_params, root)
    out = {"cnn": (cc, cp, component_radius_mm(cn, stride)), "blobs": (bc, bv, br),
           "seconds": {"cnn": t_cnn, "blobs": t_blob}}
    if subsolid:
        sc, sv, sr, t_ss = subsolid_list(scan, root)
        out["subsolid"] = (sc, sv, sr)
        out["seconds"]["subsolid"] = t_ss
    if wall:
        wc, wv, wr, t_w = wall_list(scan, blob_params.min_response, root)
        out["wall"] = (wc, wv, wr)
        out["seconds"]["wall"] = t_w
    return out


def hits(centres_zyx, nodules_zyxr):
    """(n_cand, n_nod) bool: candidate strictly within the nodule's radius (1 mm grid: voxels = mm)."""
    if len(centres_zyx) == 0 or len(nodules_zyxr) == 0:
        return np.zeros((len(centres_zyx), len(nodules_zyxr)), bool)
    d2 = ((centres_zyx[:, None, :] - nodules_zyxr[None, :, :3]) ** 2).sum(-1)
    return d2 < nodules_zyxr[None, :, 3] ** 2


def evaluate_lists(per_scan, generators=("cnn", "blobs", "union"), caps=CAPS, subsolid: int = 0, wall: int = 0):
    """per_scan: [(raw_lists(...), nodules (m, 4) zyx + radius, kinds, locations)] -> table rows and
    strata. With ``subsolid`` N > 0 (and the lists' subsolid pass), one more generator,
    ``blobs+subsolid<N>``: the blobs cut at each cap, then at most N of the subsolid pass's blobs not
    already in the list (`engine.stage1.append_distinct`, as the engine does); with ``wall`` M > 0
    as well (and the lists' pleural pass), ``blobs+subsolid<N>+pleural<M>``: that list, then at
    most M of the pleural pass's blobs not already in it."""
    gens = list(generators) + ([f"blobs+subsolid{subsolid}"] if subsolid else [])
    gens += [f"blobs+subsolid{subsolid}+pleural{wall}"] if subsolid and wall else []

    rows, strata = [], {}
    n_nod = sum(len(n) for _, n, _, _ in per_scan)
    for g in gens:
        for cap in caps:
            found = n_cands = dup = 0
            per_stratum: dict = {}
            for raw, nod, kinds, locs in per_scan:
                (cc, cp, cr), (bc, bv, br) = raw["cnn"], raw["blobs"]
                if g.startswith("blobs+subsolid"):
                    sc, sv, sr = raw["subsolid"]
                    cand = append_distinct(combine(cc, cp, cr, bc, bv, br, "blobs", cap), sc, sr, sv, subsolid)
                    if "+pleural" in g:
                        wc, wv, wr = raw["wall"]
                        cand = append_distinct(cand, wc, wr, wv, wall, source=3)
                else:
                    cand = combine(cc, cp, cr, bc, bv, br, g, cap)
                h = hits(cand.centres_zyx, nod)
                f = h.any(0)
                found += int(f.sum())
                dup += int(h[:, f].sum())
                n_cands += len(cand)
                if cap == max(caps):
                    for j in range(len(nod)):
                        d = nod[j, 3] * 2
                        band = next(band_name(lo, hi) for lo, hi in DIAMETER_BANDS_MM
                                    if d < hi or hi == DIAMETER_BANDS_MM[-1][1])
                        for key in (f"diameter {band}", f"kind {kinds[j]}", f"location {locs[j]}"):
                            s = per_stratum.setdefault(key, [0, 0])
                            s[0] += int(f[j])
                            s[1] += 1
            rows.append({"generator": g, "cap": cap, "candidates_per_scan": n_cands / len(per_scan),
                         "recall": found / n_nod, "found": found, "nodules": n_nod,
                         "candidates_per_found_nodule": dup / max(found, 1)})
            if cap == max(caps):
                strata[g] = {k: {"recall": v[0] / v[1], "found": v[0], "nodules": v[1]}
                             for k, v in sorted(per_stratum.items())}
    return rows, strata


def main(argv=None) -> int:

    ap = argparse.ArgumentParser(prog="python -m noduleflow.trainer.evaluate.stage1_recall", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", default="tuning")
    ap.add_argument("--model", help="model package for the CNN generator (default: the shipped one)")
    ap.add_argument("--min-response", type=float, default=BlobParams().min_response)
    ap.add_argument("--merge-factor", type=float, default=BlobParams().merge_factor)
    ap.add_argument("--max-blobs", type=int, default=300)
    ap.add_argument("--cache", help="cohort cache root (default: $NODULEFLOW_COHORT_CACHE)")
    ap.add_argument("--lists-cache", help="folder caching each scan's CNN and blob lists (default: none)")
    ap.add_argument("--subsolid", type=int, default=0, metavar="N",
                    help="also the generator blobs + at most N candidates of the subsolid pass")
    ap.add_argument("--wall", type=int, default=0, metavar="M",
                    help="with --subsolid: also that generator + at most M candidates of the pleural pass")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    seeds = cohort_seeds(a.cohort)
    cache = CohortCache(a.cache)
    det = Detector(a.model)
    bp = replace(BlobParams(), min_response=a.min_response, merge_factor=a.merge_factor, max_blobs=a.max_blobs)
    if a.wall and not a.subsolid:
        ap.error("--wall extends the --subsolid generator: give both")
    per_scan, secs = [], {"cnn": [], "blobs": [], **({"subsolid": []} if a.subsolid else {}),
                          **({"wall": []} if a.wall else {})}
    for s in tqdm(seeds, desc="scans", unit="scan"):
        scan = cache.get(s)
        vol = scan.pre.volume
        nod = scan.xyzd()
        zyxr = np.c_[vol.world_to_voxel(nod[:, :3]).reshape(-1, 3), nod[:, 3] / 2]
        raw = raw_lists(det, scan, bp, root=a.lists_cache, subsolid=a.subsolid > 0, wall=a.wall > 0)
        for k in secs:
            secs[k].append(raw["seconds"][k])
        per_scan.append((raw, zyxr, [n.kind for n in scan.nodules], [n.location for n in scan.nodules]))
    rows, strata = evaluate_lists(per_scan, subsolid=a.subsolid, wall=a.wall)
    meta = {"model_id": det.package.manifest.model_id, "cohort": a.cohort, "seeds": [seeds[0], seeds[-1]],
            "scans": len(seeds), "blob_params": {k: v for k, v in vars(bp).items()},
            "seconds_median": {k: float(np.median(v)) for k, v in secs.items()},
            "command": "python -m noduleflow.trainer.evaluate.stage1_recall "
                       + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stage1_recall.json").write_text(json.dumps({"meta": meta, "rows": rows, "strata_at_max_cap": strata},
                                                       indent=1, default=list))
    lines = [f"# Stage-1 recall, {a.cohort} phantoms {seeds[0]}-{seeds[-1]} ({len(seeds)} scans, "
             f"{rows[0]['nodules']} nodules)", "", f"`{meta['command']}`; CNN: `{meta['model_id']}`; "
             f"median seconds per scan: CNN scoring + clustering {meta['seconds_median']['cnn']:.2f}, "
             f"blobs {meta['seconds_median']['blobs']:.2f}"
             + (f", subsolid pass {meta['seconds_median']['subsolid']:.2f}" if a.subsolid else "")
             + (f", pleural pass {meta['seconds_median']['wall']:.2f}" if a.wall else "") + ".", "",
             "| generator | cap/scan | candidates/scan | recall | found/nodules | candidates per found nodule |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['generator']} | {r['cap']} | {r['candidates_per_scan']:.1f} | {r['recall']:.3f} | "
                     f"{r['found']}/{r['nodules']} | {r['candidates_per_found_nodule']:.2f} |")
    lines += ["", f"Recall per stratum at {max(CAPS)} candidates/scan:", "",
              "| stratum | " + " | ".join(strata) + " |", "|---|" + "---:|" * len(strata)]
    for k in next(iter(strata.values())):
        lines.append(f"| {k} | " + " | ".join(f"{strata[g][k]['recall']:.3f} ({strata[g][k]['found']}/"
                                              f"{strata[g][k]['nodules']})" for g in strata) + " |")
    (out / "stage1_recall.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
