"""`bench characterise`'s truth (each lesion's own drawn shape), its replay of the renderer, the
second noise realisation and the repeatability coefficients."""
from __future__ import annotations

import json

import numpy as np
import pytest

from noduleflow.bench.characterise import RC_FACTOR, _source_cases, block, repeatability
from noduleflow.bench.characterise_truth import lesion_truth
from noduleflow.engine.errors import ConfigError
from noduleflow.engine.io import save_volume
from noduleflow.engine.volume import Volume
from noduleflow.synthetic.phantom import HELDOUT, WIDE, generate_phantom
from noduleflow.synthetic.phantom_base import Grid
from noduleflow.synthetic.phantom_lesions import LesionShape, render_lesion


def _sphere(r, **kw):
    # a wide "round" lesion draws nothing: any stream state replays it
    state = np.random.default_rng(0).bit_generator.state
    return LesionShape((0.0, 0.0, 0.0), r, "round", 1.6 * r + 2.0, rng_state=state, **kw)


def test_sphere_volume_and_mean_diameter_on_the_scans_slices():
    r = 4.0
    t = lesion_truth(_sphere(r), "solid", np.arange(-20.0, 20.0, 0.5))   # a slice through the centre
    assert t.volume_mm3 == pytest.approx(4 / 3 * np.pi * r ** 3, rel=0.02)
    assert t.mean_diameter_mm == pytest.approx(2 * r, abs=0.2) and t.lung_rads == "4A"
    # 2.5 mm slices, the nearest 1.25 mm from the centre: the largest section is smaller
    t = lesion_truth(_sphere(r), "solid", np.arange(-18.75, 20.0, 2.5))
    assert t.mean_diameter_mm == pytest.approx(2 * np.sqrt(r * r - 1.25 ** 2), abs=0.2) and t.lung_rads == "3"


def test_the_part_in_the_walls_place_is_not_counted():
    r, wall = 5.0, 2.0
    t = lesion_truth(_sphere(r, lung_sdf=lambda x, y, z: x - wall), "solid", np.arange(-20.0, 20.0, 0.5))
    h = r - wall
    assert t.volume_mm3 == pytest.approx(4 / 3 * np.pi * r ** 3 - np.pi * h * h * (3 * r - h) / 3, rel=0.03)
    assert t.long_axis_mm == pytest.approx(2 * r, abs=0.3) and r + wall - 0.3 <= t.short_axis_mm < 2 * r - 0.5


def test_part_solid_core():
    r = 6.0
    t = lesion_truth(_sphere(r, core_share=0.5, core_offset_mm=np.zeros(3)), "part_solid", np.arange(-20.0, 20.0, 1.0))
    assert t.core_mean_diameter_mm == pytest.approx(r, abs=0.3)
    assert t.core_volume_mm3 == pytest.approx(4 / 3 * np.pi * (r / 2) ** 3, rel=0.05)
    assert t.lung_rads == "4A"   # 12 mm, core 6 mm
    with pytest.raises(ConfigError, match="not drawn"):
        lesion_truth(None, "solid", [0.0])


@pytest.mark.parametrize("cfg, shape, kind", [(WIDE, "lobulated", "part_solid"), (WIDE, "spiculated", "solid"),
                                               (WIDE, "irregular", "ground_glass"), (HELDOUT, "spiculated", "solid"),
                                               (HELDOUT, "cavitary", "part_solid")])
def test_the_shape_replays_what_was_drawn(cfg, shape, kind):
    grid = Grid((40, 48, 48), (0.8, 0.6, 0.6), (-14.1, -14.1, -15.6))
    hu = np.full(grid.shape, -850.0, np.float32)
    shapes = []
    values = (30.0, 300.0 if kind == "part_solid" else None, 0.5)
    box, f = render_lesion(hu, grid, (0.0, 0.0, 0.0), 9.0, kind, shape, np.random.default_rng(4), 0.5, cfg, values,
                           shapes=shapes)
    (lesion,) = shapes
    z, y, x = grid.coords(box)
    sd, core, _ = lesion.signed_distances(x - 0.0, y - 0.0, z - 0.0)
    drawn = f >= 0.5
    assert drawn.sum() > 100
    assert np.mean((sd < 0) != drawn) < 0.002          # the same surface (ties at the edge aside)
    assert (core is not None) == (kind == "part_solid")


def test_a_second_noise_realisation_keeps_the_scan():
    kw = dict(generator="wide", shape_zyx=(48, 112, 112))
    a, b = generate_phantom(5, **kw), generate_phantom(5, noise_seed=1, **kw)
    assert a.nodules == b.nodules and a.volume.spacing_zyx_mm == b.volume.spacing_zyx_mm
    assert np.array_equal(a.lung_mask, b.lung_mask)
    diff = a.volume.hu.astype(float) - b.volume.hu.astype(float)
    sigma = a.meta["noise_hu"]
    assert diff[a.lung_mask].std() == pytest.approx(np.sqrt(2) * sigma, rel=0.25)   # noise only
    assert abs(diff[a.lung_mask].mean()) < 0.1 * sigma
    assert len(a.lesion_shapes) == len(a.nodules)
    with pytest.raises(ConfigError, match="noise_seed"):
        generate_phantom(5, shape_zyx=(16, 32, 32), noise_seed=1)


def _rec(v, v2, kind="solid", typ="solid", typ2="solid"):
    return {"kind": kind, "type": typ, "rep_type": typ2, "volume_mm3": v, "rep_volume_mm3": v2,
            "mean_diameter_mm": 6.0, "rep_mean_diameter_mm": 6.0, "true_mean_diameter_mm": 6.5,
            "true_volume_mm3": 100.0, "lung_rads": "3", "rep_lung_rads": "3", "true_lung_rads": "3"}


def test_repeatability_coefficient_and_accuracy_block():
    rs = [_rec(100.0, 110.0), _rec(200.0, 180.0), _rec(50.0, 50.0, typ2="part_solid"), _rec(10.0, 0.0, typ2="none")]
    rep = repeatability(rs)
    assert rep["n_pairs"] == 3 and rep["n_segmented_once"] == 1
    wsd = np.sqrt(np.mean(np.array([10.0, 20.0, 0.0]) ** 2 / 2))
    assert rep["volume_mm3"]["rc"] == pytest.approx(RC_FACTOR * wsd, abs=1e-3)
    rel = np.array([10 / 105, 20 / 190, 0.0])
    assert rep["volume_mm3"]["rc_percent"] == pytest.approx(100 * RC_FACTOR * np.sqrt(np.mean(rel ** 2 / 2)), abs=0.1)
    assert rep["mean_diameter_mm"]["rc"] == 0 and rep["type_agreement"] == pytest.approx(2 / 3, abs=1e-3)
    b = block(rs)
    assert b["n"] == 4 and b["mean_diameter_within_1_5mm"] == 1.0 and b["lung_rads_agreement"] == 1.0
    assert b["volume_abs_rel_err_median"] == pytest.approx(np.median([0.0, 1.0, 0.5, 0.9]), abs=1e-3)


def test_a_hybrid_folder_is_measured_against_its_drawn_truth(tmp_path):

    uid = "1.2.3.4"
    save_volume(Volume(np.full((12, 16, 16), -850, np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), series_uid=uid),
                tmp_path / f"{uid}.mhd")
    les = {"seriesuid": uid, "kind": "part_solid", "shape": "round", "location": "isolated", "diameter_mm": 9.0,
           "center_xyz_mm": [8.0, 8.0, 4.0],
           "truth": {"volume_mm3": 400.0, "long_axis_mm": 9.6, "short_axis_mm": 9.0, "mean_diameter_mm": 9.3,
                     "core_volume_mm3": 30.0, "core_mean_diameter_mm": 4.0}}
    (tmp_path / "lesions.json").write_text(json.dumps([les]))
    (tmp_path / "findings.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm,kind,shape,location\n"
                                           f"{uid},8,8,4,9.0,part_solid,round,isolated\n"
                                           f"{uid},2,2,2,15.5,solid,irregular,isolated\n")   # a real one: no truth
    (name, vol, truth), = list(_source_cases(tmp_path, None))
    assert len(truth) == 1 and vol.shape == (12, 16, 16)
    t = truth[0]
    assert (t["true_volume_mm3"], t["true_mean_diameter_mm"], t["true_solid_core_mm"]) == (400.0, 9.3, 4.0)
    assert t["true_lung_rads"] == "3"           # part-solid >= 6 mm with a solid core of 4 mm (< 6 mm)
    assert list(_source_cases(tmp_path, (20.0, 30.0))) == []
    (tmp_path / "lesions.json").unlink()        # without drawn truth: the drawn diameters, both rows
    (name, vol, truth), = list(_source_cases(tmp_path, None))
    assert [t["true_mean_diameter_mm"] for t in truth] == [9.0, 15.5]
