"""Patch-level ROC AUC of trainer checkpoints on held-out phantoms (seeds never used in training,
validation or tuning), patches sampled exactly as for training.

    python -m noduleflow.trainer.evaluate.patch_auc --seed 3000 --scans 10 CKPT [CKPT ...] --json OUT.json

Synthetic phantoms: a regression signal, not clinical evidence.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    from noduleflow.engine.preprocess import PreprocessSpec
    from noduleflow.trainer.checkpoint import load_checkpoint
    from noduleflow.trainer.data.phantoms import phantom_patches
    from noduleflow.trainer.data.sampling import SamplingSpec
    from noduleflow.trainer.train import evaluate, roc_auc

    ap = argparse.ArgumentParser(prog="python -m noduleflow.trainer.evaluate.patch_auc", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--seed", type=int, default=3000)
    ap.add_argument("--scans", type=int, default=10)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    ps = phantom_patches(range(a.seed, a.seed + a.scans), PreprocessSpec(), SamplingSpec())
    out = {"seeds": [a.seed, a.seed + a.scans - 1], "patches": len(ps), "positives": int(ps.labels.sum()),
           "auc": {}}
    for ck in a.checkpoints:
        model, cfg = load_checkpoint(ck)
        out["auc"][ck] = round(roc_auc(*evaluate(model, ps)), 4)
        print(f"{ck}: patch ROC AUC {out['auc'][ck]:.4f} ({len(ps)} patches, {out['positives']} positive)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
