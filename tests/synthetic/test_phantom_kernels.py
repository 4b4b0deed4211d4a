"""Reconstruction kernels of the phantom: one seed, the same anatomy, a different look."""
from __future__ import annotations

import numpy as np
import pytest

from noduleflow.engine import ConfigError
from noduleflow.synthetic.phantom import RECON_KERNELS, PhantomParams, generate_phantom

SMALL = dict(shape_zyx=(40, 160, 160), spacing_zyx_mm=(2.5, 2.0, 2.0))


@pytest.fixture(scope="module")
def by_kernel():
    return {k: generate_phantom(7, params=PhantomParams(n_nodules=3, noise_hu=30, kernel=k), **SMALL)
            for k in RECON_KERNELS}


def test_same_seed_same_anatomy_under_every_kernel(by_kernel, tmp_path):
    from noduleflow.synthetic.preview import kernel_montage

    std = by_kernel["standard"]
    assert len(std.nodules) == 3
    for k, ph in by_kernel.items():
        assert ph.meta["kernel"] == k
        assert ph.nodules == std.nodules and np.array_equal(ph.lung_mask, std.lung_mask)
    assert not np.array_equal(by_kernel["sharp"].volume.hu, std.volume.hu)
    png = kernel_montage(by_kernel, tmp_path / "k.png")
    assert png.stat().st_size > 1000
    # the default is the generator's original look
    assert PhantomParams().kernel == "standard"
    assert np.array_equal(generate_phantom(7, params=PhantomParams(n_nodules=3, noise_hu=30), **SMALL).volume.hu,
                          std.volume.hu)


def test_noise_texture_by_kernel(by_kernel):
    """The noise field (the same seed with and without noise, same kernel) inside the lungs: smooth
    keeps the standard std with a coarser grain (higher neighbour correlation), sharp is grainy
    (uncorrelated) at 1.5x; the standard std is 0.61 x noise_hu (the generator's own scaling)."""
    stats = {}
    for k, ph in by_kernel.items():
        quiet = generate_phantom(7, params=PhantomParams(n_nodules=3, noise_hu=1e-6, kernel=k), **SMALL)
        n = ph.volume.hu.astype(np.float32) - quiet.volume.hu.astype(np.float32)
        m = ph.lung_mask[:, :, 1:] & ph.lung_mask[:, :, :-1]
        a, b = n[:, :, 1:][m], n[:, :, :-1][m]
        stats[k] = (float(n[ph.lung_mask].std()), float(np.corrcoef(a, b)[0, 1]))
    (s_sm, c_sm), (s_st, c_st), (s_sh, c_sh) = stats["smooth"], stats["standard"], stats["sharp"]
    assert s_st == pytest.approx(0.61 * 30, rel=0.1) and s_sm == pytest.approx(s_st, rel=0.1), stats
    assert s_sh == pytest.approx(1.5 * s_st, rel=0.1), stats
    assert c_sm > c_st + 0.1 and c_st > c_sh + 0.3 and abs(c_sh) < 0.1, stats
    # and the sharp kernel enhances edges: without noise it differs from standard near structures
    quiet = {k: generate_phantom(7, params=PhantomParams(n_nodules=3, noise_hu=1e-6, kernel=k), **SMALL).volume.hu
             for k in ("standard", "sharp")}
    assert np.abs(quiet["sharp"].astype(np.float32) - quiet["standard"]).max() > 50


def test_unknown_kernel_is_refused_with_its_name():
    with pytest.raises(ConfigError, match="'bone'"):
        PhantomParams(kernel="bone")


def test_found_at_counts_hits_among_the_top_k():
    from noduleflow.trainer.evaluate.strata import ScanResult, found_at

    nod = np.array([[0, 0, 0, 10.0], [50, 0, 0, 6.0]])
    xyz = np.array([[100, 0, 0], [1, 1, 1], [51, 0, 0]], float)
    r = ScanResult("s", xyz, np.array([0.9, 0.8, 0.1]), nod, ("solid",) * 2, ("isolated",) * 2, np.zeros((0, 4)))
    assert found_at(r, 2).tolist() == [True, False]
    assert found_at(r, 3).tolist() == [True, True]


def test_confounder_montage_has_a_row_per_look_alike(tmp_path):
    from PIL import Image

    from noduleflow.synthetic.preview import confounder_montage

    ph = generate_phantom(8, params=PhantomParams(n_nodules=1, confounders=1), **SMALL)
    kinds = {k for k, _, _ in ph.meta["confounders"]}
    png = confounder_montage(ph, tmp_path / "c.png", per_kind=1)
    assert len(kinds) >= 3 and Image.open(png).size == (3 * 160, len(kinds) * 160)
