"""Train the stage-2 classifier (`trainer.models.stage2`) on stage 1's candidates.

    python -m noduleflow.trainer.stage2_train --data DIR --out runs/stage2 [--init CKPT] [--epochs N]
    python -m noduleflow.trainer.stage2_train --data DIR --out runs/stage2_ft --init-stage2 STAGE2_CKPT \
        --train-seeds train train_extra --lr 1e-4 --epochs 12

Data: the per-scan files of `trainer.data.stage2` (train seeds for training, validation seeds
for choosing the epoch). The training files are re-listed every epoch, so training can start
while the data builder is still writing them. Balanced batches (half positives), augmented by
random flips of each axis and a random in-plane transpose (both scales alike). Adam.

Hard negatives (``--hard-negatives F``): stage 2 ranks candidates within a scan, so the negatives
that matter are the few that look most like nodules, and a uniform draw of 1,600 negatives per
epoch from ~25,000 rarely shows them. With F > 0 every ``--rescore-every`` epochs the current
model scores all training negatives (one view each) and a fraction F of each batch's negatives is
drawn from the ``--hard-pool`` highest-scoring ones (the rest uniformly, so easy negatives are not
forgotten). ``--hard-score N`` scores only the current pool and N other negatives drawn afresh
each time, instead of all of them.

Every epoch writes ``last.safetensors`` (+ ``last.json``, ``state.json``) and, when the
validation ROC AUC improves, ``best.safetensors``; ``train_log.csv`` has one row per epoch. A
rerun with the same ``--out`` resumes after the last finished epoch (the optimizer's moments
restart; the weights, the epoch count, the best AUC and the hard-negative pool, ``hard_pool.npz``,
carry over).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# what every stage-2 checkpoint's JSON says of its network (training runs and averaged ones)
STAGE2_CONFIG = {"model": "ms-3d1", "model_kwargs": {}, "stage": 2, "input": "(N, 2, 41, 41, 41): 1 mm + 2 mm context"}


def augment(x, gen):
    """Random flips of z, y, x and a random y/x transpose, per sample, both channels alike."""
    import torch

    for d in (2, 3, 4):
        m = torch.rand(x.shape[0], generator=gen) < 0.5
        x[m] = x[m].flip(d)
    m = torch.rand(x.shape[0], generator=gen) < 0.5
    x[m] = x[m].transpose(3, 4)
    return x


def predict(model, patches_u8, batch: int = 64, tta: bool = False) -> np.ndarray:
    """Logits (N,) for uint8 patches (N, 2, 41, 41, 41); ``tta``: the mean over the 8 flips."""
    import torch

    model.eval()
    out = []
    flips = [()] + ([(2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)] if tta else [])
    with torch.no_grad():
        for i in range(0, len(patches_u8), batch):
            x = torch.from_numpy(patches_u8[i:i + batch].astype(np.float32) / 255.0)
            out.append(np.mean([model(x.flip(f) if f else x).numpy() for f in flips], axis=0))
    return np.concatenate(out) if out else np.zeros(0)


def hard_pool(model, x, neg, k: int, score: int = 0, previous=None, rng=None) -> np.ndarray:
    """Indices (into ``x``) of the ``k`` negatives the model scores highest (one view each).
    ``score`` > 0: score only the ``previous`` pool and ``score`` other negatives drawn at random
    (each scoring of all of them costs ~10-30 min on 2 cores; the hard ones found before stay
    candidates, and a fresh random draw each time finds new ones)."""
    t = time.perf_counter()
    if score and score < len(neg):
        prev = np.zeros(0, np.int64) if previous is None else np.intersect1d(previous, neg)
        rest = np.setdiff1d(neg, prev)
        neg = np.union1d(prev, (rng or np.random.default_rng(0)).choice(rest, min(score, len(rest)), replace=False))
    z = np.concatenate([predict(model, x[neg[i:i + 2048]]) for i in range(0, len(neg), 2048)])
    top = neg[np.argsort(-z, kind="stable")[:k]]
    log.info("scored %d negatives in %.0f s: the hard pool's %d lowest logit %.2f (median of all %.2f)",
             len(neg), time.perf_counter() - t, len(top), float(np.sort(z)[::-1][min(k, len(z)) - 1]),
             float(np.median(z)))
    return top


def present_files(data_dirs, seeds):
    """Seeds whose file exists in one of the folders (a scan's examples may come from several:
    main data and supplements of the same seeds, or sources of their own seeds)."""
    return [s for s in seeds if any((Path(d) / f"{s}.npz").exists() for d in data_dirs)]


def load_examples(data_dirs, seeds):
    from .data.stage2 import load_many

    return load_many([(d, [s for s in seeds if (Path(d) / f"{s}.npz").exists()]) for d in data_dirs])


def main(argv=None) -> int:
    import torch
    from safetensors.torch import load_file

    from .checkpoint import save_checkpoint
    from .data.cohort import cohort_seeds
    from .models import build_model
    from .models.stage2 import from_stage1
    from .train import roc_auc

    ap = argparse.ArgumentParser(prog="python -m noduleflow.trainer.stage2_train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, nargs="+",
                    help="stage-2 data folders (trainer.data.stage2); a scan's examples are taken from each "
                         "that has it")
    ap.add_argument("--out", required=True)
    ap.add_argument("--init", default=str(Path(__file__).parent / "checkpoints" / "stage1_3d1_v6" / "best.safetensors"),
                    help="stage-1 3D-1 weights to start from (default: the shipped v6)")
    ap.add_argument("--init-stage2", help="stage-2 weights to continue from (fine-tuning; instead of --init)")
    ap.add_argument("--train-seeds", nargs="+", default=["train"],
                    help="training cohorts: names or FIRST-LAST seed ranges (default: train)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=100, help="batches per epoch")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--min-train-scans", type=int, default=8, help="wait until this many training scans exist")
    ap.add_argument("--hard-negatives", type=float, default=0.0,
                    help="fraction of each batch's negatives drawn from the highest-scoring ones (0: uniform)")
    ap.add_argument("--hard-pool", type=int, default=2000,
                    help="how many of the highest-scoring negatives form the pool")
    ap.add_argument("--keep-epochs", action="store_true",
                    help="also keep every epoch's weights as epochN.safetensors (to compare them on the tuning cohort)")
    ap.add_argument("--rescore-every", type=int, default=2, help="epochs between scorings of the negatives")
    ap.add_argument("--hard-score", type=int, default=0, metavar="N",
                    help="score only the current hard pool and N other negatives drawn at random (default 0: all)")
    a = ap.parse_args(argv)
    if not 0.0 <= a.hard_negatives <= 1.0:
        raise SystemExit(f"--hard-negatives must be in [0, 1], got {a.hard_negatives}")
    if a.hard_pool < 1 or a.rescore_every < 1 or a.hard_score < 0:
        raise SystemExit(f"--hard-pool and --rescore-every must be >= 1 and --hard-score >= 0, got {a.hard_pool}, "
                         f"{a.rescore_every}, {a.hard_score}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    train_seeds = [s for name in a.train_seeds for s in cohort_seeds(name)]
    val_seeds = cohort_seeds("validation")
    if set(train_seeds) & set(val_seeds):
        raise SystemExit(f"training and validation seeds overlap: {sorted(set(train_seeds) & set(val_seeds))[:5]}")
    while (len(present_files(a.data, train_seeds)) < a.min_train_scans
           or len(present_files(a.data, val_seeds)) < len(val_seeds)):
        log.info("waiting for data: %d train scans, %d/%d validation scans", len(present_files(a.data, train_seeds)),
                 len(present_files(a.data, val_seeds)), len(val_seeds))
        time.sleep(60)
    xv, yv, _ = load_examples(a.data, val_seeds)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    state_path = out / "state.json"
    config = {**STAGE2_CONFIG, "init": a.init, "data": str(a.data), "args": vars(a)}
    if state_path.exists():
        st = json.loads(state_path.read_text())
        model = build_model("ms-3d1")
        model.load_state_dict(load_file(str(out / "last.safetensors")))
        start, best = st["epoch"] + 1, st["best"]
        log.info("resuming after epoch %d (best AUC %.4f at epoch %d)", st["epoch"] + 1, best["auc"], best["epoch"])
    else:
        if a.init_stage2:
            model = build_model("ms-3d1")
            model.load_state_dict(load_file(a.init_stage2))
            config["init"] = a.init_stage2
            what = "the stage-2 weights continued from"
        else:
            model = from_stage1(load_file(a.init))
            what = "stage 1's patch classifier"
        start, best = 0, {"auc": -1.0, "epoch": 0}
        auc0 = roc_auc(yv, predict(model, xv))
        log.info("before training (= %s): validation AUC %.4f", what, auc0)
        (out / "init.json").write_text(json.dumps({"val_auc_before_training": auc0}))
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    log_path = out / "train_log.csv"
    new = not log_path.exists() or start == 0
    with open(log_path, "w" if new else "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["epoch", "train_scans", "train_pos", "train_neg", "loss", "val_auc", "seconds"])
        hard, hard_n = None, -1
        pool_path = out / "hard_pool.npz"
        if start and pool_path.exists():  # a resumed run keeps the pool it had (valid while the data is the same)
            with np.load(pool_path) as z:
                hard, hard_n = z["pool"], int(z["negatives"])
        for epoch in range(start, a.epochs):
            t0 = time.perf_counter()
            seeds = present_files(a.data, train_seeds)
            x, y, _ = load_examples(a.data, seeds)
            pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
            half = a.batch_size // 2
            n_hard = int(round(a.hard_negatives * (a.batch_size - half)))
            if n_hard and (hard is None or hard_n != len(neg) or epoch % a.rescore_every == 0):
                hard, hard_n = hard_pool(model, x, neg, a.hard_pool, a.hard_score,
                                         hard if hard_n == len(neg) else None, rng), len(neg)
                np.savez(pool_path, pool=hard, negatives=np.int64(hard_n))
            model.train()
            losses = []
            for _ in range(a.steps):
                idx = np.r_[rng.choice(pos, half), rng.choice(neg, a.batch_size - half - n_hard),
                            rng.choice(hard, n_hard) if n_hard else np.zeros(0, np.int64)]
                xb = augment(torch.from_numpy(x[idx].astype(np.float32) / 255.0), gen)
                yb = torch.from_numpy(y[idx].astype(np.float32))
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xb), yb)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            del x
            auc = roc_auc(yv, predict(model, xv))
            secs = time.perf_counter() - t0
            w.writerow([epoch + 1, len(seeds), len(pos), len(neg), f"{np.mean(losses):.5f}", f"{auc:.5f}",
                        f"{secs:.1f}"])
            f.flush()
            log.info("epoch %d: %d scans (%d pos, %d neg), loss %.4f, validation AUC %.4f, %.0f s", epoch + 1,
                     len(seeds), len(pos), len(neg), np.mean(losses), auc, secs)
            meta = {**config, "metrics": {"val_auc": auc, "epoch": epoch + 1, "train_scans": len(seeds)}}
            if auc > best["auc"]:
                best = {"auc": auc, "epoch": epoch + 1}
                save_checkpoint(out, model, meta, "best")
            save_checkpoint(out, model, meta, "last")
            if a.keep_epochs:
                save_checkpoint(out, model, meta, f"epoch{epoch + 1}")
            state_path.write_text(json.dumps({"epoch": epoch, "best": best}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
