"""The phantom generator: determinism, geometry of the findings, the anatomy options."""
from __future__ import annotations

import numpy as np
import pytest

from noduleflow.engine import ConfigError
from noduleflow.synthetic.phantom import PAD_HU, PhantomParams, generate_phantom

SMALL = dict(shape_zyx=(56, 128, 128), spacing_zyx_mm=(5.0, 2.5, 2.5))


@pytest.fixture(scope="module")
def ph():
    return generate_phantom(7, params=PhantomParams(n_nodules=4), **SMALL)


def test_deterministic_by_seed(ph):
    again = generate_phantom(7, params=PhantomParams(n_nodules=4), **SMALL)
    np.testing.assert_array_equal(again.volume.hu, ph.volume.hu)
    assert again.nodules == ph.nodules and again.volume.series_uid == ph.volume.series_uid
    other = generate_phantom(8, params=PhantomParams(n_nodules=4), **SMALL)
    assert not np.array_equal(other.volume.hu, ph.volume.hu)


def test_volume_contract(ph):
    v = ph.volume
    assert v.hu.dtype == np.int16 and v.shape == SMALL["shape_zyx"]
    assert v.spacing_zyx_mm == SMALL["spacing_zyx_mm"]
    assert ph.lung_mask.shape == v.shape and ph.lung_mask.dtype == bool
    # circular field of view padded with -2048: the corners, not the centre
    assert v.hu[:, 0, 0].max() == PAD_HU and v.hu[:, 64, 64].min() > PAD_HU


def test_lungs_are_air_like_and_inside_the_body(ph):
    hu = ph.volume.hu
    lung_hu = np.median(hu[ph.lung_mask])
    assert -900 < lung_hu < -780
    assert 0.02 < ph.lung_mask.mean() < 0.3
    # every lung voxel is enclosed: no lung in the outermost in-plane rows/cols
    assert not ph.lung_mask[:, :5].any() and not ph.lung_mask[:, :, :5].any()


def test_nodules_sit_on_bright_voxels_in_world_coordinates():
    ph = generate_phantom(3, params=PhantomParams(n_nodules=5, noise_hu=5.0, min_nodule_mm=8.0),
                          shape_zyx=(90, 160, 160), spacing_zyx_mm=(3.0, 2.0, 2.0))
    assert len(ph.nodules) >= 3
    v = ph.volume
    for n in ph.nodules:
        assert 3.0 <= n.diameter_mm <= 30.0
        z, y, x = np.round(v.world_to_voxel(n.center_xyz_mm)).astype(int)
        centre = v.hu[z, y, x]
        # the centre is nodule tissue (far above lung), ground glass included
        assert centre > -560, (n, centre)
        if n.kind in ("solid", "calcified"):
            assert centre > -200, (n, centre)


def test_excluded_findings_are_small():
    ph = generate_phantom(4, params=PhantomParams(n_nodules=1, n_excluded=2), **SMALL)
    assert all(e.diameter_mm < 3.0 for e in ph.excluded)
    assert all(n.diameter_mm >= 3.0 for n in ph.nodules)


def _components(mask, min_voxels=100):
    """Number of 26-connected components larger than min_voxels (ignores few-voxel slivers
    where the soft lung edge meets the carving at 5 mm slices)."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    return int((np.bincount(labels.ravel())[1:] > min_voxels).sum())


def test_touching_lungs_form_one_component():
    normal = generate_phantom(5, params=PhantomParams(n_nodules=0), **SMALL)
    touching = generate_phantom(5, params=PhantomParams(n_nodules=0, touching_lungs=True), **SMALL)
    assert _components(normal.lung_mask) == 2
    assert _components(touching.lung_mask) == 1


def test_one_lung():
    ph = generate_phantom(6, params=PhantomParams(n_nodules=2, one_lung=True), **SMALL)
    assert _components(ph.lung_mask) == 1
    # the remaining lung is the patient's right: x < body centre (LPS)
    z, y, x = np.nonzero(ph.lung_mask)
    xs = ph.volume.voxel_to_world(np.stack([z, y, x], 1)[::50])[:, 0]
    assert np.all(xs < 0)


def test_nodule_sizes_follow_luna16():
    from noduleflow.synthetic.phantom_lesions import draw_diameter_mm

    rng = np.random.default_rng(0)
    d = np.array([draw_diameter_mm(rng) for _ in range(4000)])
    assert 3.0 <= d.min() and d.max() <= 30.0
    assert 5.5 < np.median(d) < 7.0  # LUNA16's median diameter is 6.4 mm


def test_bad_params():
    with pytest.raises(ConfigError, match="n_nodules"):
        PhantomParams(n_nodules=-1)
    with pytest.raises(ConfigError, match="shape_zyx"):
        generate_phantom(0, shape_zyx=(2, 64, 64), spacing_zyx_mm=(1, 1, 1))


def test_confounders_drawn_apart_from_everything_else():
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom
    from noduleflow.synthetic.phantom_confounders import KINDS

    kw = dict(shape_zyx=(60, 128, 128), spacing_zyx_mm=(4.0, 2.6, 2.6))
    plain = generate_phantom(11, **kw)
    conf = generate_phantom(11, params=PhantomParams(confounders=2), **kw)
    # the look-alikes come from their own random stream: the findings are the same
    assert [n.center_xyz_mm for n in plain.nodules] == [n.center_xyz_mm for n in conf.nodules]
    kinds = {k for k, _, _ in conf.meta["confounders"]}
    assert kinds <= set(KINDS) and {"bifurcation", "fissure"} <= kinds
    assert plain.meta["confounders"] == []
    assert (plain.volume.hu != conf.volume.hu).any()
