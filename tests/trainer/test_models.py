"""The model zoo: shapes, dense equivalence, a short training run of every model."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from noduleflow.trainer.models import DENSE_MODELS, MODEL_NAMES, build_model  # noqa: E402
from noduleflow.trainer.train import TrainConfig, roc_auc, train  # noqa: E402


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward(name):
    m = build_model(name)
    x = torch.rand(2, 1, 41, 41, 41, requires_grad=True)
    y = m(x, torch.rand(2, 3))
    assert y.shape == (2,)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", DENSE_MODELS)
def test_dense_equals_patch_model(name):
    torch.manual_seed(0)
    m = build_model(name).eval()
    s = m.dense_stride
    tile = torch.rand(1, 1, 41 + s * 3, 41 + s * 2 + 3, 41 + s * 4 + 1)  # trailing voxels are trimmed
    out_shape = (4, 3, 5)
    loc = torch.rand(1, 3, *out_shape)
    with torch.no_grad():
        dense = m.dense_forward(tile, loc if m.loc else None)
        assert tuple(dense.shape[1:]) == out_shape
        err = 0.0
        for i in range(out_shape[0]):
            for j in range(out_shape[1]):
                for k in range(out_shape[2]):
                    p = tile[:, :, s * i:s * i + 41, s * j:s * j + 41, s * k:s * k + 41]
                    ref = m(p, loc[:, :, i, j, k] if m.loc else None)
                    err = max(err, float((ref - dense[:, i, j, k]).abs().max()))
    assert err <= 1e-4


def _inceptions(m):
    from noduleflow.trainer.models.blocks import Inception

    return [mod for mod in m.modules() if isinstance(mod, Inception)]


@pytest.mark.parametrize("name", DENSE_MODELS)
def test_inference_form_equals_training_form(name):
    """Inference trims the inception branches' inputs (not their outputs) and reads only the first
    `input_extent` voxels of a patch: the logits of the training form, run in eval, on the whole
    patch with the branches trimmed after."""
    torch.manual_seed(0)
    m = build_model(name).eval()
    for mod in m.modules():  # BatchNorm statistics away from the identity
        if isinstance(mod, torch.nn.BatchNorm3d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    x, loc = torch.rand(3, 1, 41, 41, 41), torch.rand(3, 3)
    with torch.no_grad():
        got = m(x, loc if m.loc else None)
        for inc in _inceptions(m):
            inc.trim_inputs = False
        ref = m._logits(x, loc[:, :, None, None, None] if m.loc else None).reshape(3)
    assert float((got - ref).abs().max()) <= 1e-5
    assert float(ref.std()) > 0  # three different patches, three different logits


@pytest.mark.parametrize("name", ["3d-1", "3d-e"])
def test_input_extent_is_what_the_logit_reads(name):
    """The network itself (no trim) ignores a patch's voxels from `input_extent` on along every
    axis and depends on the one before it, so the inference trim drops exactly the unread voxels."""
    torch.manual_seed(1)
    m = build_model(name).eval()
    e = m.input_extent
    x = torch.rand(1, 1, 41, 41, 41)
    with torch.no_grad():
        ref = m._logits(x)
        for axis in (2, 3, 4):
            for k in (e - 1, e, 40):
                x2 = x.clone()
                index = [slice(None)] * 5
                index[axis] = k
                x2[tuple(index)] = torch.rand_like(x2[tuple(index)])
                changed = not torch.equal(m._logits(x2), ref)
                assert changed == (k < e), (axis, k)


@pytest.mark.parametrize("name", ["3d-1", "3d-e"])
def test_patch_of_the_wrong_size_refused(name):
    with pytest.raises(ValueError, match="41"):
        build_model(name).eval()(torch.rand(1, 1, 42, 42, 42))


def test_3d_e_geometry():
    """3D-E: the dense contract of 3D-1 (stride 4, offset 20), no poolings or concatenations, every
    3^3 layer's channels a multiple of 16; a depth without the receptive field of 40 is refused."""
    m = build_model("3d-e")
    assert (m.dense_stride, m.dense_offset, m.input_extent) == (4, 20, 40)
    assert not any(isinstance(x, (torch.nn.MaxPool3d, torch.nn.AvgPool3d)) for x in m.modules())
    wide = [x for x in m.modules() if isinstance(x, torch.nn.Conv3d) and x.kernel_size == (3, 3, 3)]
    assert len(wide) == 5 and all(x.out_channels % 16 == 0 for x in wide)
    with pytest.raises(ValueError, match="depth 4"):
        build_model("3d-e", depth=3)


def test_unknown_model():
    from noduleflow.engine import ConfigError

    with pytest.raises(ConfigError, match="unknown model"):
        build_model("4d-9")


def test_roc_auc_by_hand():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_short_training_run(name, tmp_path, toy):
    rng = np.random.default_rng(0)
    tr, va = toy(24, rng), toy(8, rng)
    cfg = TrainConfig(model=name, epochs=2, batch_size=4, steps_per_epoch=3, rotate_deg=10, seed=1, threads=2)
    summary = train(cfg, tr, va, tmp_path, progress=False)
    assert (tmp_path / "best.safetensors").exists() and (tmp_path / "best.json").exists()
    log = (tmp_path / "train_log.csv").read_text().splitlines()
    assert len(log) == 3 and np.isfinite(summary["best_val_auc"])
    # resume: a second call with more epochs continues from the saved state
    cfg2 = TrainConfig(model=name, epochs=3, batch_size=4, steps_per_epoch=1, seed=1, threads=2)
    train(cfg2, tr, va, tmp_path, progress=False)
    assert len((tmp_path / "train_log.csv").read_text().splitlines()) == 4


def test_training_learns_the_toy_task(tmp_path, toy):
    rng = np.random.default_rng(1)
    tr, va = toy(96, rng), toy(32, rng)
    cfg = TrainConfig(model="3d-1", epochs=4, batch_size=16, steps_per_epoch=12, rotate_deg=0, seed=0, threads=2)
    assert train(cfg, tr, va, tmp_path, progress=False)["best_val_auc"] > 0.9


def test_checkpoint_roundtrip(tmp_path):
    from noduleflow.trainer.checkpoint import load_checkpoint, save_checkpoint

    m = build_model("3d-2").eval()
    save_checkpoint(tmp_path, m, {"model": "3d-2", "model_kwargs": {}})
    m2, cfg = load_checkpoint(tmp_path / "model.safetensors")
    x = torch.rand(1, 1, 41, 41, 41)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x)) and cfg["model"] == "3d-2"
