"""Synthetic follow-up pairs (`noduleflow.synthetic.followup`): the truth they declare is what they
render (sizes, presence, the motion), the motion is smooth, bounded and one to one, and the pair
carries its dates. Synthetic phantoms are a regression signal, not clinical evidence."""
from __future__ import annotations

import datetime
import json

import numpy as np
import pytest
from scipy.ndimage import laplace, map_coordinates

from noduleflow.engine.errors import ConfigError
from noduleflow.engine.io import load_volume
from noduleflow.follow.timepoint import study_date
from noduleflow.synthetic.followup import (
    STATUSES,
    FollowupParams,
    draw_motion,
    make_pair,
    render_lesion_at,
    warp_to_current,
)
from noduleflow.synthetic.phantom import PhantomParams, default_scene, generate_phantom, scanner_default
from noduleflow.synthetic.phantom_base import Grid

GRID = dict(shape_zyx=(60, 160, 160), spacing_zyx_mm=(3.0, 2.0, 2.0))


def only(*statuses, **kw) -> FollowupParams:
    p = [1.0 / len(statuses) if s in statuses else 0.0 for s in STATUSES]
    return FollowupParams(status_p=tuple(p), **kw)


def canvas_volume_mm3(lesion, which: str, spacing_mm: float = 0.4) -> float:
    """The lesion as drawn in scan ``which``, alone on a blank -850 HU canvas of ``spacing_mm``
    voxels: the volume (mm^3) of the voxels above half its contrast (solid lesions: one HU)."""
    c = np.asarray(lesion.prior_center_xyz_mm if which == "prior" else lesion.current_center_xyz_mm)
    d = lesion.prior_diameter_mm if which == "prior" else lesion.current_diameter_mm
    n = int(np.ceil((1.6 * d + 6) / spacing_mm))
    origin = c - spacing_mm * (n - 1) / 2
    grid = Grid((n, n, n), (spacing_mm,) * 3, tuple(origin))
    hu = np.full((n, n, n), -850.0, np.float32)
    render_lesion_at(hu, grid, lesion, which, edge_mm=spacing_mm)
    contrast = hu.max() + 850.0
    assert contrast > 100, (lesion, contrast)
    return float((hu > -850.0 + contrast / 2).sum() * spacing_mm ** 3)


@pytest.fixture(scope="module")
def grown_pair():
    return make_pair(11, params=only("grown", "stable", n_lesions=(4, 4), kind_p=(1.0, 0.0, 0.0)), **GRID)


@pytest.fixture(scope="module")
def new_resolved_pair():
    return make_pair(12, params=only("new", "resolved", n_lesions=(4, 4), location_p=(1.0, 0.0, 0.0),
                                     noise_hu=(15.0, 15.0)), **GRID)


def test_truth_sizes_follow_the_status():
    seen = set()
    for seed in (1, 2, 3):
        pair = make_pair(seed, **GRID)
        p = FollowupParams()
        assert p.n_lesions[0] - 1 <= len(pair.lesions) <= p.n_lesions[1]
        for ls in pair.lesions:
            seen.add(ls.status)
            assert (ls.prior_center_xyz_mm is None) == (ls.status == "new") == (ls.prior_diameter_mm is None)
            assert (ls.current_center_xyz_mm is None) == (ls.status == "resolved") == (ls.current_diameter_mm is None)
            lo, hi = p.diameter_mm
            d = ls.current_diameter_mm if ls.status == "new" else ls.prior_diameter_mm
            assert lo - 1e-3 <= d <= hi + 1e-3
            r = ls.volume_ratio
            if ls.status == "stable":
                assert r == pytest.approx(1.0)
            elif ls.status == "grown":
                assert p.grown_volume[0] - 0.01 <= r <= p.grown_volume[1] + 0.01
            elif ls.status == "shrunk":
                assert p.shrunk_volume[0] - 0.01 <= r <= p.shrunk_volume[1] + 0.01
            else:
                assert r is None
        # lesions keep their distance: one to one matching is well posed
        pts = [np.asarray(ls.current_center_xyz_mm or pair.motion.to_current(ls.prior_center_xyz_mm)[0])
               for ls in pair.lesions]
        for i in range(len(pts)):
            for j in range(i):
                assert np.linalg.norm(pts[i] - pts[j]) > 8.0
    assert len(seen) >= 3


def test_grown_lesions_render_larger_by_the_drawn_ratio(grown_pair):
    grown = [ls for ls in grown_pair.lesions if ls.status == "grown"]
    assert grown and all(ls.kind == "solid" for ls in grown_pair.lesions)
    for ls in grown_pair.lesions:
        v0, v1 = canvas_volume_mm3(ls, "prior"), canvas_volume_mm3(ls, "current")
        # the shapes keep about a sphere's volume (lobulated margins within ~15 %) ...
        assert v0 == pytest.approx(ls.prior_volume_mm3, rel=0.2)
        assert v1 == pytest.approx(ls.current_volume_mm3, rel=0.2)
        # ... and one lesion's two renderings differ by its drawn ratio (same shape, same HU)
        assert v1 / v0 == pytest.approx(ls.volume_ratio, rel=0.05), ls
        if ls.status == "grown":
            assert v1 / v0 >= 1.2


def test_lesions_are_in_their_scan_at_their_true_centre(grown_pair, new_resolved_pair):
    """Each lesion shows at its true centre in each scan where it exists, and a new (resolved)
    lesion's place in the prior (current) scan is aerated lung."""
    def hu_at(vol, xyz):   # trilinear, at the point
        k = vol.world_to_voxel(np.asarray(xyz, float)).reshape(3, 1)
        return float(map_coordinates(vol.hu.astype(np.float32), k, order=1)[0])

    pair = new_resolved_pair
    statuses = {ls.status for ls in pair.lesions}
    assert statuses <= {"new", "resolved"} and len(pair.lesions) >= 3
    for ls in pair.lesions:
        if ls.status == "new":
            here = hu_at(pair.current, ls.current_center_xyz_mm)
            before = hu_at(pair.prior, pair.motion.to_prior(ls.current_center_xyz_mm)[0])
        else:
            here = hu_at(pair.prior, ls.prior_center_xyz_mm)
            before = hu_at(pair.current, pair.motion.to_current(ls.prior_center_xyz_mm)[0])
        assert before < -700 and here - before > 100, (ls, here, before)
    for ls in grown_pair.lesions:    # solid lesions: soft tissue at both centres
        assert hu_at(grown_pair.prior, ls.prior_center_xyz_mm) > -300
        assert hu_at(grown_pair.current, ls.current_center_xyz_mm) > -300


@pytest.mark.parametrize("seed", range(8))
def test_motion_is_smooth_bounded_and_invertible(seed):
    p = FollowupParams()
    m = draw_motion(np.random.default_rng(seed), (0.0, 0.0, -200.0), p)
    assert m.rotation_deg <= p.rotation_deg + 1e-9
    assert np.linalg.norm(m.translation_xyz_mm) <= p.shift_mm + 1e-9
    assert np.allclose(m.rotation @ m.rotation.T, np.eye(3)) and np.linalg.det(m.rotation) == pytest.approx(1.0)
    assert 0.5 * p.breathing_mm - 1e-9 <= m.breathing_bound_mm <= p.breathing_mm + 1e-9
    assert m.gradient_bound < 0.2
    pts = np.random.default_rng(100 + seed).uniform((-160, -160, -320), (160, 160, -80), (400, 3))
    b = m.breathing(pts)
    assert np.linalg.norm(b, axis=1).max() <= m.breathing_bound_mm + 1e-9
    # the breathing's derivative (finite differences, 1 mm) stays within its bound: smooth, no folding
    h = 1.0
    jac = np.stack([(m.breathing(pts + h * e) - m.breathing(pts - h * e)) / (2 * h) for e in np.eye(3)], axis=2)
    assert np.linalg.norm(jac, ord=2, axis=(1, 2)).max() <= m.gradient_bound + 1e-6
    det = np.linalg.det(np.eye(3) + jac)
    assert det.min() > (1 - m.gradient_bound) ** 3 and det.max() < (1 + m.gradient_bound) ** 3
    # current -> prior -> current: the inverse is exact
    q = m.to_current(pts)
    assert np.abs(m.to_prior(q) - pts).max() < 1e-6
    # and the points moved by the rigid shift plus at most the breathing (rotation about the centre)
    arm = np.linalg.norm(pts - m.center_xyz_mm, axis=1)
    move = np.linalg.norm(q - pts, axis=1)
    turn = 2 * np.sin(np.radians(m.rotation_deg) / 2) * arm
    assert np.all(move <= np.linalg.norm(m.translation_xyz_mm) + turn + m.breathing_bound_mm + 1e-6)


def test_the_current_scan_is_resampled_through_the_declared_map():
    scene = default_scene(5, **GRID)
    g = scene.grid
    m = draw_motion(np.random.default_rng(5), (g.x.mean(), g.y.mean(), g.z.mean()), FollowupParams())
    zz, yy, xx = np.meshgrid(g.z, g.y, g.x, indexing="ij")
    warped = [warp_to_current(a.astype(np.float32), g, m) for a in (xx, yy, zz)]
    k = np.random.default_rng(0).integers((8, 20, 20), (52, 140, 140), (300, 3))
    q = np.stack([g.x[k[:, 2]], g.y[k[:, 1]], g.z[k[:, 0]]], axis=1)
    got = np.stack([w[tuple(k.T)] for w in warped], axis=1)
    assert np.abs(got - m.to_prior(q)).max() < 1e-3


def test_the_resampling_keeps_the_anatomy_sharp():
    """The current scan's chest is as sharp as the prior's: a trilinear resampling would blur the
    vessels (and the detector then sees ground-glass look-alikes in the current scan only)."""
    scene = default_scene(9, **GRID)
    g = scene.grid
    m = draw_motion(np.random.default_rng(9), (g.x.mean(), g.y.mean(), g.z.mean()), FollowupParams())
    lung = scene.lung & (warp_to_current(scene.lung, g, m, order=0) > 0.5)

    def sharpness(a):
        return float(np.abs(laplace(a.astype(np.float32)))[lung].mean())

    ref = sharpness(scene.hu)
    assert sharpness(warp_to_current(scene.hu, g, m)) == pytest.approx(ref, rel=0.05)
    assert sharpness(warp_to_current(scene.hu, g, m, order=1)) < 0.92 * ref


def test_dates_and_saved_series(tmp_path):
    pair = make_pair(4, params=FollowupParams(n_lesions=(1, 1)), shape_zyx=(24, 96, 96), spacing_zyx_mm=(6, 3.5, 3.5))
    assert pair.current_date - pair.prior_date == datetime.timedelta(days=pair.interval_days)
    assert pair.prior.meta["StudyDate"] == pair.prior_date.strftime("%Y%m%d")
    assert study_date(pair.current) == pair.current_date
    prior_dir, current_dir = pair.save(tmp_path / "pair")
    for d, date, vol in ((prior_dir, pair.prior_date, pair.prior), (current_dir, pair.current_date, pair.current)):
        loaded = load_volume(d)
        assert study_date(loaded) == date
        assert np.array_equal(loaded.hu, vol.hu)
    truth = json.loads((tmp_path / "pair" / "truth.json").read_text())
    assert truth["interval_days"] == pair.interval_days and len(truth["lesions"]) == len(pair.lesions)
    assert "not clinical evidence" in truth["note"]


def test_deterministic_by_seed_with_independent_noise():
    a, b = make_pair(6, **GRID), make_pair(6, **GRID)
    assert np.array_equal(a.prior.hu, b.prior.hu) and np.array_equal(a.current.hu, b.current.hu)
    assert a.lesions == b.lesions
    # the two scans' noise is independent: away from the moving anatomy, in the air outside the
    # body but inside the field of view, the difference has sqrt(2) x one scan's spread
    air_a, air_c = a.prior.hu[:, 5:25, 60:100].astype(float), a.current.hu[:, 5:25, 60:100].astype(float)
    inside = (air_a > -1100) & (air_c > -1100) & (air_a < -900) & (air_c < -900)
    sd = np.std(air_a[inside])
    assert np.std((air_a - air_c)[inside]) == pytest.approx(np.sqrt(2) * sd, rel=0.15)


def test_the_scene_hook_is_the_default_generator():
    """generate_phantom = default_scene + findings + scanner_default: without findings the two
    paths give the same scan, bit for bit."""
    params = PhantomParams(n_nodules=0, n_excluded=0)
    ph = generate_phantom(8, params=params, **GRID)
    scene = default_scene(8, params=params, **GRID)
    sigma = float(scene.rng.uniform(15, 40))
    out = scanner_default(scene.hu, scene.lung, scene.grid, sigma, scene.rng)
    assert np.array_equal(out, ph.volume.hu) and np.array_equal(scene.lung, ph.lung_mask)


@pytest.mark.parametrize("bad", [dict(status_p=(1.0, 0.0, 0.0)), dict(diameter_mm=(10.0, 5.0)),
                                 dict(shift_mm=-1.0), dict(grown_volume=(0.5, 2.0))])
def test_params_are_checked(bad):
    with pytest.raises(ConfigError):
        FollowupParams(**bad)
