"""Knowledge distillation in the trainer: the loss, the frozen teacher, and a student that learns
the task from the teacher's logits alone."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from noduleflow.engine import ConfigError  # noqa: E402
from noduleflow.trainer.train import DistillLoss, TrainConfig, evaluate, roc_auc, train  # noqa: E402


class _Fixed(torch.nn.Module):
    """A 'teacher' whose logit is the patch's mean intensity times a scale (no parameters used)."""

    def __init__(self, scale=10.0):
        super().__init__()
        self.scale = scale

    def forward(self, x, loc=None):
        return self.scale * (x.mean(dim=(1, 2, 3, 4)) - 0.05)


def test_weight_zero_is_the_label_loss():
    s, y = torch.randn(8), (torch.rand(8) < 0.5).float()
    x = torch.rand(8, 1, 41, 41, 41)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(s, y)
    assert torch.allclose(DistillLoss(None, 0.0, 2.0)(s, y), ref)
    assert torch.allclose(DistillLoss(_Fixed(), 0.0, 2.0)(s, y, x), ref)


def test_teacher_term_value_and_its_minimum_at_the_teacher_logits():
    x = torch.rand(6, 1, 41, 41, 41)
    y = torch.tensor([1.0, 0, 1, 0, 1, 0])
    teacher = _Fixed()
    t = teacher(x)
    w, temp = 0.3, 2.0
    s = torch.randn(6, requires_grad=True)
    loss = DistillLoss(teacher, w, temp)(s, y, x)
    p = torch.sigmoid(t / temp)
    q = torch.sigmoid(s / temp)
    by_hand = (1 - w) * torch.nn.functional.binary_cross_entropy_with_logits(s, y) \
        + w * temp ** 2 * -(p * torch.log(q) + (1 - p) * torch.log(1 - q)).mean()
    assert torch.allclose(loss, by_hand, atol=1e-6)
    # teacher only (w = 1): the gradient vanishes where the student's logits are the teacher's
    s2 = t.clone().requires_grad_(True)
    DistillLoss(teacher, 1.0, temp)(s2, y, x).backward()
    assert float(s2.grad.abs().max()) < 1e-6
    s3 = (t + 1.0).requires_grad_(True)
    DistillLoss(teacher, 1.0, temp)(s3, y, x).backward()
    assert bool((s3.grad > 0).all())


@pytest.mark.parametrize("kw, msg", [({"distill": 0.5}, "needs a teacher"),
                                     ({"teacher": "t.safetensors"}, "distill = 0"),
                                     ({"teacher": "t.safetensors", "distill": 1.5}, "distill must be in"),
                                     ({"teacher": "t.safetensors", "distill": 0.5, "distill_temperature": 0},
                                      "distill_temperature")])
def test_bad_distill_settings_refused(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        TrainConfig(**kw)


def test_a_stage2_teacher_is_refused():
    from pathlib import Path

    from noduleflow.trainer.train import load_teacher

    stage2 = Path(__file__).resolve().parents[2] / "trainer" / "checkpoints" / "stage2" / "best.safetensors"
    if not stage2.exists():
        pytest.skip("no stage-2 checkpoint in this tree")
    with pytest.raises(ConfigError, match="stage-2 model"):
        load_teacher(stage2, "cpu")


def test_student_learns_from_the_teacher_alone(tmp_path, toy):
    """A 3D-1 teacher trained on the toy task; 3D-E students trained on the same patches with every
    label inverted. With the teacher term only (distill = 1) the student separates the validation
    set's true labels the teacher's way; without a teacher it learns the inverted labels. The
    teacher's checkpoint is not changed by the student's training."""
    from noduleflow.trainer.checkpoint import load_checkpoint

    rng = np.random.default_rng(1)
    tr, va = toy(96, rng), toy(32, rng)
    tdir = tmp_path / "teacher"
    cfg = TrainConfig(model="3d-1", epochs=4, batch_size=16, steps_per_epoch=12, rotate_deg=0, seed=0, threads=2)
    assert train(cfg, tr, va, tdir, progress=False)["best_val_auc"] > 0.9
    before = (tdir / "best.safetensors").read_bytes()

    inverted = tr.__class__(tr.patches, (1 - tr.labels).astype(np.int8), tr.locations, tr.scan)
    common = dict(model="3d-e", epochs=6, batch_size=16, steps_per_epoch=12, rotate_deg=0, seed=0, threads=2,
                  lr=0.001)

    def last_auc(out, **kw):
        train(TrainConfig(**common, **kw), inverted, va, out, progress=False)
        student, scfg = load_checkpoint(out / "last.safetensors")
        return roc_auc(*evaluate(student.eval(), va)), scfg

    taught, scfg = last_auc(tmp_path / "taught", teacher=str(tdir / "best.safetensors"), distill=1.0)
    plain, _ = last_auc(tmp_path / "plain")
    assert taught > 0.7 and plain < 0.3, (taught, plain)
    assert scfg["train"]["teacher"].endswith("best.safetensors") and scfg["train"]["distill"] == 1.0
    assert (tdir / "best.safetensors").read_bytes() == before
