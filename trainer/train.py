"""Training loop: RMSprop (the seed's settings), balanced batches, on-the-fly rotation/flip
augmentation, best checkpoint by validation ROC AUC, CSV log, resumable.

The data come in one of two forms, behind one batch-source interface (`batch_source`):
an in-memory `trainer.data.phantoms.PatchSet` (balanced random batches, augmented here) or a
`trainer.data.dataset.PatchStream` (patches cut from the scan cache as they are needed,
balanced and augmented by the stream itself, through a torch DataLoader)."""
from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import tomllib

from noduleflow.engine import ConfigError

log = logging.getLogger(__name__)

# seed 000: 3-D models lr 0.002, decay 0.87, eps 1.0; 2.5-D models lr 0.04, decay 0.9, eps 1.0
SEED_RMSPROP = {"3d": (0.002, 0.87, 1.0), "2.5d": (0.04, 0.9, 1.0)}


@dataclass(frozen=True)
class TrainConfig:
    model: str = "3d-1"
    epochs: int = 8
    batch_size: int = 32
    steps_per_epoch: int = 0          # 0: one pass over the positives x 2 (balanced)
    optimizer: str = "rmsprop"        # rmsprop | adam | sgd
    lr: float | None = None           # None: the seed's value for the model family
    rmsprop_alpha: float | None = None
    rmsprop_eps: float = 1.0
    weight_decay: float = 0.0
    rotate_deg: float = 15.0          # limited-angle 3-D rotations (0: off)
    flip: bool = True
    seed: int = 0
    device: str = "cpu"
    threads: int = 0                  # torch CPU threads (0: torch's default)
    workers: int = 0                  # DataLoader workers for streamed data (0: in the main process)
    init: str | None = None           # start from these weights (a .safetensors checkpoint)
    teacher: str | None = None        # distil from this trained checkpoint's logits (any model taking 41^3)
    distill: float = 0.0              # the teacher term's weight in the loss (0: labels only, 1: teacher only)
    distill_temperature: float = 2.0  # both logits are divided by it in the teacher term

    def __post_init__(self) -> None:
        if self.optimizer not in ("rmsprop", "adam", "sgd"):
            raise ConfigError(f"optimizer must be rmsprop, adam or sgd, got {self.optimizer!r}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError(f"epochs >= 1 and batch_size >= 2 needed, got {self.epochs}, {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if not 0.0 <= self.distill <= 1.0:
            raise ConfigError(f"distill must be in [0, 1], got {self.distill}")
        if self.distill > 0 and not self.teacher:
            raise ConfigError(f"distill = {self.distill} needs a teacher checkpoint")
        if self.teacher and self.distill == 0:
            raise ConfigError("a teacher was given with distill = 0: set its weight (e.g. 0.5)")
        if self.distill_temperature <= 0:
            raise ConfigError(f"distill_temperature must be > 0, got {self.distill_temperature}")

    @classmethod
    def from_toml(cls, path, **overrides) -> TrainConfig:
        data = tomllib.loads(Path(path).read_text()).get("train", {}) if path else {}
        known = {f.name for f in fields(cls)}
        bad = set(data) - known
        if bad:
            raise ConfigError(f"unknown [train] keys in {path}: {sorted(bad)}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = np.asarray(scores)[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class DistillLoss:
    """Knowledge distillation for a binary classifier: ``(1 - w) BCE(s, y) + w T^2 BCE(s / T,
    sigmoid(t / T))`` with the student's logits ``s``, the labels ``y`` and a frozen teacher's logits
    ``t`` on the same (augmented) batch; the T^2 keeps the teacher term's gradient on the scale of
    the label term's (Hinton et al. 2015). ``w = 0`` is the plain label loss."""

    def __init__(self, teacher, weight: float, temperature: float):
        import torch

        self.teacher, self.w, self.t = teacher, float(weight), float(temperature)
        self.bce = torch.nn.BCEWithLogitsLoss()

    def teacher_logits(self, x, loc):
        import torch

        with torch.no_grad():
            return self.teacher(x, loc).float()

    def __call__(self, student_logits, y, x=None, loc=None):
        import torch

        loss = self.bce(student_logits, y)
        if self.teacher is None or self.w == 0:
            return loss
        soft = torch.sigmoid(self.teacher_logits(x, loc) / self.t)
        return (1 - self.w) * loss + self.w * self.t ** 2 * self.bce(student_logits / self.t, soft)


def load_teacher(path, device):
    """A trained checkpoint as a frozen teacher (inference form: eval mode, no gradients)."""
    from .checkpoint import load_checkpoint

    teacher, tcfg = load_checkpoint(path)
    if tcfg.get("stage", 1) != 1:
        raise ConfigError(f"teacher {path} is a stage-{tcfg['stage']} model ({tcfg['model']}, input "
                          f"{tcfg.get('input', '?')}); a teacher takes the student's 41^3 one-channel patches")
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, tcfg


def _augment(x, cfg: TrainConfig, gen):
    import torch
    import torch.nn.functional as F

    if cfg.rotate_deg > 0:
        n = x.shape[0]
        axis = F.normalize(torch.randn(n, 3, generator=gen), dim=1)
        ang = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(cfg.rotate_deg)
        # Rodrigues: R = I + sin(a) K + (1 - cos(a)) K^2
        k = torch.zeros(n, 3, 3)
        k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
        k = k - k.transpose(1, 2)
        rot = torch.eye(3) + torch.sin(ang)[:, None, None] * k + (1 - torch.cos(ang))[:, None, None] * k @ k
        theta = torch.cat([rot, torch.zeros(n, 3, 1)], dim=2)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, align_corners=False, padding_mode="border")
    if cfg.flip:
        for d in (2, 3, 4):
            m = torch.rand(x.shape[0], generator=gen) < 0.5
            x[m] = x[m].flip(d)
    return x


def _to_tensor(patches_u8, idx):
    import torch

    return torch.from_numpy(patches_u8[idx].astype(np.float32) / 255.0)


# -- batch sources: where the training batches and the validation items come from -------------

class PatchSetBatches:
    """Balanced random batches from an in-memory PatchSet, augmented here (`_augment`)."""

    def __init__(self, data, cfg: TrainConfig, rng: np.random.Generator, gen):
        self.data, self.cfg, self.rng, self.gen = data, cfg, rng, gen
        self.pos = np.flatnonzero(data.labels == 1)
        self.neg = np.flatnonzero(data.labels == 0)
        if len(self.pos) == 0 or len(self.neg) == 0:
            raise ConfigError(f"training set needs positives and negatives, got {len(self.pos)} and {len(self.neg)}")

    def default_steps(self) -> int:
        return max(1, 2 * len(self.pos) // self.cfg.batch_size)

    def batches(self, epoch: int, steps: int):
        """``steps`` (x, y, location) CPU tensor batches."""
        import torch

        half = self.cfg.batch_size // 2
        for _ in range(steps):
            idx = np.r_[self.rng.choice(self.pos, half), self.rng.choice(self.neg, self.cfg.batch_size - half)]
            x = _augment(_to_tensor(self.data.patches, idx), self.cfg, self.gen)
            yield (x, torch.from_numpy(self.data.labels[idx].astype(np.float32)),
                   torch.from_numpy(self.data.locations[idx]))


class StreamBatches:
    """Batches from a `PatchStream` (balanced and augmented by the stream when it is a training
    stream) through a DataLoader with ``cfg.workers`` workers; nothing is held in memory beyond
    the batches in flight. Epoch ``e`` uses the stream's order of epoch ``e`` (resumable); when
    ``steps`` asks for more than one pass, the next passes use further orders of that epoch."""

    def __init__(self, stream, cfg: TrainConfig):
        from .data.torch_dataset import TorchPatchDataset

        if cfg.workers:
            fork_safe_numba()
        self.stream, self.cfg = stream, cfg
        self.dataset = TorchPatchDataset(stream)  # builds the index: fills the scan cache once
        if stream.training:
            labels = stream.index.label
            if not (labels == 1).any() or not (labels == 0).any():
                raise ConfigError(f"training set needs positives and negatives, got {int((labels == 1).sum())} "
                                  f"and {int((labels == 0).sum())}")

    def default_steps(self) -> int:
        return max(1, len(self.stream) // self.cfg.batch_size)

    def _loader(self, batch_size: int):
        from torch.utils.data import DataLoader

        return DataLoader(self.dataset, batch_size=batch_size, num_workers=self.cfg.workers)

    def batches(self, epoch: int, steps: int):
        done, rerun = 0, 0
        while done < steps:
            # pass 0 of epoch e is the stream's epoch e; further passes get orders no epoch uses
            self.dataset.set_epoch(epoch if rerun == 0 else 1_000_000 * rerun + epoch)
            for x, y, loc in self._loader(self.cfg.batch_size):
                yield x, y, loc
                done += 1
                if done == steps:
                    return
            rerun += 1


def fork_safe_numba() -> None:
    """DataLoader workers are forked, and a process forked after numba ran on the GNU OpenMP
    threading layer is killed at its first parallel call. Pick a fork-safe layer (TBB, or the
    built-in workqueue) while that is still possible (before the first parallel call), else
    refuse."""
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # not started yet
        numba.config.THREADING_LAYER = "forksafe"
        return
    if layer == "omp":
        raise ConfigError("data-loader workers need a fork-safe numba threading layer, but this process "
                          "already runs numba on OpenMP: set NUMBA_THREADING_LAYER=workqueue or use workers = 0")


def batch_source(data, cfg: TrainConfig, rng: np.random.Generator, gen):
    """A PatchSet -> `PatchSetBatches`; a `PatchStream` -> `StreamBatches`."""
    return PatchSetBatches(data, cfg, rng, gen) if _is_patchset(data) else StreamBatches(data, cfg)


def eval_batches(data, workers: int = 0, batch_size: int = 64):
    """Every validation item once, unaugmented, in order: (x, y, location) tensor batches
    from a PatchSet or an evaluation `PatchStream`."""
    import torch

    if _is_patchset(data):
        for s in range(0, len(data), batch_size):
            idx = np.arange(s, min(s + batch_size, len(data)))
            yield (_to_tensor(data.patches, idx), torch.from_numpy(data.labels[idx].astype(np.float32)),
                   torch.from_numpy(data.locations[idx]))
        return
    from torch.utils.data import DataLoader

    from .data.torch_dataset import TorchPatchDataset

    yield from DataLoader(TorchPatchDataset(data), batch_size=batch_size, num_workers=workers)


def evaluate(model, data, device="cpu", workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) of every validation item of ``data`` (PatchSet or evaluation stream)."""
    import torch

    model.eval()
    labels, scores = [], []
    with torch.no_grad():
        for x, y, loc in eval_batches(data, workers):
            scores.append(model(x.to(device), loc.to(device)).float().cpu().numpy())
            labels.append(y.numpy())
    if not labels:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(labels), np.concatenate(scores)


def train(cfg: TrainConfig, train_set, val_set, out_dir, extra_config: dict | None = None, progress=True) -> dict:
    """Train ``cfg.model``; writes best/last checkpoints and train_log.csv into out_dir.

    ``train_set`` / ``val_set``: each an in-memory PatchSet or a `PatchStream` (a training
    stream for ``train_set``, an evaluation stream for ``val_set``).

    Returns a summary dict (best validation AUC, epoch, seconds, checkpoint path).
    """
    import torch
    from tqdm import tqdm

    from .checkpoint import load_checkpoint, save_checkpoint
    from .models import build_model

    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg.model).to(device)
    if cfg.init:
        init_model, init_cfg = load_checkpoint(cfg.init)
        if init_cfg["model"] != cfg.model:
            raise ConfigError(f"--init checkpoint is a {init_cfg['model']}, not a {cfg.model}")
        model.load_state_dict(init_model.state_dict())
    family = "2.5d" if cfg.model.startswith("2.5d") else "3d"
    lr0, alpha0, eps0 = SEED_RMSPROP[family]
    lr = cfg.lr if cfg.lr is not None else lr0
    if cfg.optimizer == "rmsprop":
        opt = torch.optim.RMSprop(model.parameters(), lr=lr, alpha=cfg.rmsprop_alpha or alpha0,
                                  eps=cfg.rmsprop_eps if cfg.rmsprop_eps is not None else eps0,
                                  weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr or 1e-3, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr or 0.01, momentum=0.9, weight_decay=cfg.weight_decay)
    scaler_ctx = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else None
    start_epoch, best = 0, {"auc": -1.0, "epoch": -1}
    state_path = out / "last_state.json"
    if state_path.exists() and (out / "last.safetensors").exists():
        m, _ = load_checkpoint(out / "last.safetensors")
        model.load_state_dict(m.state_dict())
        st = json.loads(state_path.read_text())
        start_epoch, best = st["epoch"] + 1, st["best"]
        log.info("resuming at epoch %d", start_epoch)
    batches = batch_source(train_set, cfg, rng, gen)
    steps = cfg.steps_per_epoch or batches.default_steps()
    teacher = None
    if cfg.teacher:
        teacher, tcfg = load_teacher(cfg.teacher, device)
        log.info("distilling from %s (%s), weight %.2f, temperature %.1f", cfg.teacher, tcfg["model"],
                 cfg.distill, cfg.distill_temperature)
    loss_fn = DistillLoss(teacher, cfg.distill, cfg.distill_temperature)
    config = {"model": cfg.model, "model_kwargs": {}, "train": asdict(cfg), **(extra_config or {})}
    log_path = out / "train_log.csv"
    new_log = not log_path.exists() or start_epoch == 0
    t_start = time.perf_counter()
    with open(log_path, "w" if new_log else "a", newline="") as f:
        w = csv.writer(f)
        if new_log:
            w.writerow(["epoch", "train_loss", "val_auc", "seconds"])
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            losses = []
            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
            for x, y, loc in batches.batches(epoch, steps):
                x, y, loc = x.to(device), y.to(device), loc.to(device)
                opt.zero_grad(set_to_none=True)
                if scaler_ctx is not None:
                    with scaler_ctx:
                        loss = loss_fn(model(x, loc).float(), y, x, loc)
                else:
                    loss = loss_fn(model(x, loc), y, x, loc)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                bar.update()
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            bar.close()
            auc = roc_auc(*evaluate(model, val_set, device=device, workers=cfg.workers))
            w.writerow([epoch + 1, f"{np.mean(losses):.5f}", f"{auc:.5f}", f"{time.perf_counter() - t_start:.1f}"])
            f.flush()
            log.info("epoch %d loss %.4f val AUC %.4f", epoch + 1, np.mean(losses), auc)
            if progress:
                print(f"epoch {epoch + 1}/{cfg.epochs}: loss {np.mean(losses):.4f}, validation ROC AUC {auc:.4f}")
            if auc > best["auc"]:
                best = {"auc": auc, "epoch": epoch + 1}
                save_checkpoint(out, model, {**config, "metrics": {"val_auc": auc, "epoch": epoch + 1}}, "best")
            save_checkpoint(out, model, config, "last")
            state_path.write_text(json.dumps({"epoch": epoch, "best": best}))
    return {"best_val_auc": best["auc"], "best_epoch": best["epoch"], "seconds": time.perf_counter() - t_start,
            "checkpoint": str(out / "best.safetensors"), "train_patches": len(train_set),
            "val_patches": len(val_set)}


def _is_patchset(data) -> bool:
    from .data.phantoms import PatchSet

    return isinstance(data, PatchSet)


def with_overrides(cfg: TrainConfig, **kw) -> TrainConfig:
    return replace(cfg, **{k: v for k, v in kw.items() if v is not None})
