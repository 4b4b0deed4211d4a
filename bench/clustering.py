"""Clustering and centre refinement, chosen by FROC: `python -m noduleflow.bench.clustering [--phantoms 10]`.

Scores every output-grid point of held-out phantom scans once (dense mode), then turns the
same scores into candidates six ways — greedy radius NMS or connected components; raw, with
the blob refinement of the centres, and refined with the lung-mask check — and scores each with the LUNA16 protocol
(100 candidates per scan kept, sensitivity at the top 15). Writes clustering.json/.md.
Phantoms are a regression signal, not clinical evidence.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

VARIANTS = {"nms": ("nms", False, False), "nms + refine": ("nms", True, False),
            "nms + refine + in mask": ("nms", True, True),
            "components": ("components", False, False), "components + refine": ("components", True, False),
            "components + refine + in mask": ("components", True, True)}


def run(model=None, phantoms: int = 10, seed: int = 3000, keep: int = 100, phantom_kwargs=None) -> dict:
    from dataclasses import replace

    from tqdm import tqdm

    from noduleflow.bench.froc import Candidates, Findings, evaluate
    from noduleflow.engine.detector import Detector, _sigmoid
    from noduleflow.engine.preprocess import preprocess
    from noduleflow.trainer.data.annotations import as_xyzd
    from noduleflow.synthetic.phantom import generate_phantom

    det = Detector(model)
    out = {k: {} for k in VARIANTS}
    ann, exc = {}, {}
    t0 = time.perf_counter()
    for s in tqdm(range(seed, seed + phantoms), desc="phantoms", unit="scan"):
        ph = generate_phantom(s, **(phantom_kwargs or {}))
        uid = ph.volume.series_uid
        ann[uid], exc[uid] = as_xyzd(ph.nodules), as_xyzd(ph.excluded)
        pre = preprocess(ph.volume, det.spec)
        c = det.grid_centres(pre)
        lg = det.score(pre, c)
        p = _sigmoid(lg)
        for name, (kind, refine, in_mask) in VARIANTS.items():
            cfg = replace(det.config, top_k=keep, clustering=kind, refine=refine, in_mask=in_mask)
            f = det.cluster(pre, c, p, lg, cfg)
            xyz = np.array([pre.volume.voxel_to_world(cc) for cc, _, _ in f]).reshape(-1, 3)
            out[name][uid] = (xyz, np.array([pp for _, pp, _ in f]))
    a = Findings({k: v for k, v in ann.items() if len(v)})
    e = Findings({k: v for k, v in exc.items() if len(v)})
    rows = []
    for name in VARIANTS:
        r = evaluate(a, Candidates(out[name]), e, seriesuids=sorted(ann), top_k=15, bootstrap=200)
        rows.append({"variant": name, "cpm": r.cpm, "sensitivity_at_top_15": r.sensitivity_at_top_k,
                     "sensitivity_all": r.sensitivity, "candidates_per_scan": r.candidates_per_scan})
    return {"model_id": det.package.manifest.model_id, "phantoms": f"seeds {seed}..{seed + phantoms - 1}",
            "nodules": int(sum(len(v) for v in ann.values())), "keep": keep, "rows": rows,
            "seconds": time.perf_counter() - t0}


def markdown(r: dict) -> str:
    lines = [f"Clustering on held-out phantoms ({r['phantoms']}, {r['nodules']} nodules), model {r['model_id']}, "
             f"same dense scores for every variant. Command: `python -m noduleflow.bench.clustering`.", "",
             "| variant | CPM | sensitivity at top 15 | sensitivity (100/scan) |", "|---|---:|---:|---:|"]
    lines += [f"| {x['variant']} | {x['cpm']:.3f} | {x['sensitivity_at_top_15']:.3f} | {x['sensitivity_all']:.3f} |"
              for x in r["rows"]]
    return "\n".join(lines) + "\n\nSynthetic phantoms: a regression signal, not clinical evidence.\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--phantoms", type=int, default=10)
    ap.add_argument("--seed", type=int, default=3000)
    ap.add_argument("--out", default="bench-clustering", help="output folder (default ./bench-clustering)")
    a = ap.parse_args(argv)
    r = run(a.model, a.phantoms, a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "clustering.json").write_text(json.dumps(r, indent=2))
    (out / "clustering.md").write_text(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
