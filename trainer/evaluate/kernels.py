"""The shipped detector under the three reconstruction kernels of the phantom generator.

    python -m noduleflow.trainer.evaluate.kernels [--model PKG] [--seeds 5000-5019] [--out DIR]

Each seed is made three times, identical but for the reconstruction kernel
(`synthetic.phantom.RECON_KERNELS`: smooth, standard, sharp; same anatomy, nodules and noise
draw), preprocessed and cached like any cohort (`trainer.data.cohort.CohortCache`, the kernel in
its key), and detected with the package's own pipeline (`Detector.find`). Reports sensitivity at
5-100 candidates per scan and the CPM per kernel, and the nodules found in the top 15 under one
kernel and not under another (paired). The default models up to v11 were trained on "standard"
phantoms only, so for them this measures robustness to what they never saw; v12's training
phantoms include smooth and sharp ones (66 of 400), never these seeds. Phantoms: a regression
signal, not clinical evidence; the held-out seeds are reported on, never tuned on.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .cohort import detect_package, run_cohort
from .strata import found_at, score_cohort

KS = ("5", "10", "15", "25", "50", "100")


def main(argv=None) -> int:
    from noduleflow.engine.detector import Detector
    from noduleflow.synthetic.phantom import RECON_KERNELS
    from noduleflow.trainer.data.cohort import cohort_seeds, kernel_cache

    ap = argparse.ArgumentParser(prog="python -m noduleflow.trainer.evaluate.kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model package (default: the shipped one)")
    ap.add_argument("--seeds", default="5000-5019", help="a cohort name or FIRST-LAST (default 5000-5019)")
    ap.add_argument("--out", default="bench-kernels")
    a = ap.parse_args(argv)
    seeds = cohort_seeds(a.seeds)
    det = Detector(a.model)
    rows, hits = [], {}
    for kernel in RECON_KERNELS:
        # "standard" is the generator's default: the cohorts' own cache entries serve it
        results, secs = run_cohort(lambda scan: detect_package(det, scan), seeds, kernel_cache(kernel))
        r = score_cohort(results, bootstrap=0)["all"]
        hits[kernel] = np.concatenate([found_at(x) for x in results])
        rows.append({"kernel": kernel, "nodules": int(len(hits[kernel])),
                     "sensitivity_at_k": {k: r["sensitivity_at_k"][k]["sensitivity"] for k in KS}, "cpm": r["cpm"],
                     "seconds_per_scan_median": float(np.median(secs))})
    paired = {f"{x}_not_{y}": int((hits[x] & ~hits[y]).sum()) for x in RECON_KERNELS for y in RECON_KERNELS if x != y}
    cmd = "python -m noduleflow.trainer.evaluate.kernels " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernel_robustness.json").write_text(json.dumps(
        {"model_id": det.package.manifest.model_id, "seeds": [seeds[0], seeds[-1]], "command": cmd, "rows": rows,
         "found_at_15_paired": paired}, indent=1))
    lines = [f"# Reconstruction kernels, phantom seeds {seeds[0]}-{seeds[-1]} ({len(seeds)} scans, "
             f"{rows[0]['nodules']} nodules)", "",
             f"`{cmd}`; model `{det.package.manifest.model_id}` (for what it was trained on, see its recipe). The same "
             "scans under each kernel. Phantoms: a regression signal, not clinical evidence.", "",
             "| kernel | " + " | ".join(f"sens@{k}" for k in KS) + " | CPM | s/scan (find) |",
             "|---|" + "---:|" * (len(KS) + 2)]
    for r in rows:
        lines.append(f"| {r['kernel']} | " + " | ".join(f"{r['sensitivity_at_k'][k]:.3f}" for k in KS)
                     + f" | {r['cpm']:.3f} | {r['seconds_per_scan_median']:.2f} |")
    lines += ["", "Nodules in the top 15 under one kernel and not under another: "
              + ", ".join(f"{k.replace('_not_', ' not ')} {v}" for k, v in paired.items())]
    (out / "kernel_robustness.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
