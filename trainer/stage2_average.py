"""Average stage-2 checkpoints of one run (stochastic weight averaging, Izmailov et al. 2018).

    python -m noduleflow.trainer.stage2_average --checkpoints RUN/epoch4.safetensors RUN/epoch5.safetensors \
        RUN/epoch6.safetensors --data DIR [DIR ...] --train-seeds train_more --out RUN/avg456

The weights of the later epochs of one run lie in one basin; their mean usually generalises
better than any one of them and costs nothing at inference (one network, as before). The batch
norms' running statistics of an averaged network are not the mean of theirs, so they are
recomputed (`torch.optim.swa_utils.update_bn`) on ``--bn-batches`` batches drawn from the
training data as training draws them (half positives), without augmentation. Writes
``<out>.safetensors`` and ``<out>.json`` (the sources and the validation ROC AUC before and after).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def average_state(states: list[dict]) -> dict:
    """The element-wise mean of floating-point tensors; integer ones (BN batch counters) from the last."""
    import torch

    if not states:
        raise ValueError("need at least one checkpoint to average")
    keys = set(states[0])
    for s in states[1:]:
        if set(s) != keys:
            raise ValueError(f"checkpoints differ in their tensors: {sorted(keys ^ set(s))[:5]}")
    return {k: (torch.stack([s[k].float() for s in states]).mean(0).to(states[0][k].dtype)
                if states[0][k].is_floating_point() else states[-1][k].clone()) for k in states[0]}


def recompute_bn(model, x_u8: np.ndarray, y: np.ndarray, batches: int, batch_size: int = 32, seed: int = 0) -> None:
    """Reset and re-estimate every batch norm's running mean/variance from ``batches`` balanced batches."""
    import torch
    from torch.optim.swa_utils import update_bn

    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    half = batch_size // 2
    loader = [torch.from_numpy(x_u8[np.r_[rng.choice(pos, half), rng.choice(neg, batch_size - half)]]
                               .astype(np.float32) / 255.0) for _ in range(batches)]
    update_bn(loader, model)
    model.eval()


def main(argv=None) -> int:
    import torch
    from safetensors.torch import load_file

    from .checkpoint import save_checkpoint
    from .data.cohort import cohort_seeds
    from .models import build_model
    from .stage2_train import STAGE2_CONFIG, load_examples, predict, present_files
    from .train import roc_auc

    ap = argparse.ArgumentParser(prog="python -m noduleflow.trainer.stage2_average", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", nargs="+", required=True, help="stage-2 .safetensors of one run")
    ap.add_argument("--data", nargs="+", required=True, help="stage-2 data folders (as for stage2_train)")
    ap.add_argument("--train-seeds", nargs="+", default=["train_more"], help="cohorts whose data re-estimates the BN")
    ap.add_argument("--bn-scans", type=int, default=60, help="training scans loaded for the BN statistics")
    ap.add_argument("--bn-batches", type=int, default=200, help="batches of 32 for the BN statistics")
    ap.add_argument("--out", required=True, help="output path without suffix (writes .safetensors and .json)")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    missing = [c for c in a.checkpoints if not Path(c).is_file()]
    if missing:
        raise SystemExit(f"checkpoint(s) not found: {missing}")
    model = build_model("ms-3d1")
    model.load_state_dict(average_state([load_file(c) for c in a.checkpoints]))
    seeds = [s for name in a.train_seeds for s in cohort_seeds(name)]
    rng = np.random.default_rng(0)
    present = present_files(a.data, seeds)
    if not present:
        raise SystemExit(f"no training data for {a.train_seeds} in {a.data[0]}")
    pick = sorted(rng.choice(present, min(a.bn_scans, len(present)), replace=False).tolist())
    x, y, _ = load_examples(a.data, pick)
    xv, yv, _ = load_examples(a.data, cohort_seeds("validation"))
    auc_mean_bn = roc_auc(yv, predict(model, xv))
    recompute_bn(model, x, y, a.bn_batches)
    auc = roc_auc(yv, predict(model, xv))
    log.info("averaged %d checkpoints: validation AUC %.4f (BN statistics averaged %.4f)", len(a.checkpoints),
             auc, auc_mean_bn)
    out = Path(a.out)
    meta = {**STAGE2_CONFIG, "averaged": [str(c) for c in a.checkpoints], "bn_scans": pick,
            "bn_batches": a.bn_batches, "metrics": {"val_auc": auc, "val_auc_averaged_bn": auc_mean_bn}}
    save_checkpoint(out.parent, model, meta, out.name)
    print(json.dumps(meta["metrics"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
