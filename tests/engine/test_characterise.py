"""Per-finding characterisation: segmentation volume, the wall and vessel cuts, typing, Lung-RADS
rules, and the JSON / CSV forms. Synthetic scenes with analytic partial volume and noise."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from noduleflow.engine.characterise import CharacteriseParams, Finding, characterise, lung_mask_on, scan_category
from noduleflow.engine.characterise.lungrads import category
from noduleflow.engine.errors import ConfigError
from noduleflow.engine.results import CSV_HEADER, FINDINGS_HEADER, Candidate, Detections, findings_csv_text
from noduleflow.engine.volume import Volume

SPACING = (1.25, 0.7, 0.7)
SHAPE = (48, 80, 80)
CENTRE = np.array([24.0, 40.0, 40.0])   # voxel (z, y, x)


def _coords():
    g = np.indices(SHAPE).astype(np.float64)
    return [(g[i] - CENTRE[i]) * SPACING[i] for i in range(3)]   # mm offsets from the centre


def _paint(hu, sd_mm, value):
    """Blend ``value`` in where the signed distance ``sd_mm`` (negative inside) says, 0.7 mm edge."""
    f = np.clip(0.5 - sd_mm / 0.7, 0.0, 1.0)
    np.maximum(hu, hu + f * (value - hu), out=hu)


def _scene(seed=0, noise=15.0):
    hu = np.full(SHAPE, -850.0)
    return hu, np.random.default_rng(seed), noise


def _finish(hu, rng, noise):
    return (hu + rng.normal(0, noise, SHAPE)).astype(np.float32)


def _sphere_sd(r, dz=0.0, dy=0.0, dx=0.0):
    z, y, x = _coords()
    return np.sqrt((z - dz) ** 2 + (y - dy) ** 2 + (x - dx) ** 2) - r


LUNG = np.ones(SHAPE, bool)


@pytest.mark.parametrize("r", [3.0, 6.0])
def test_sphere_volume_and_diameter(r):
    hu, rng, noise = _scene()
    _paint(hu, _sphere_sd(r), 30.0)
    f = characterise(_finish(hu, rng, noise), SPACING, LUNG, CENTRE)
    true_v = 4 / 3 * np.pi * r ** 3
    assert f.segmented and f.type == "solid"
    assert abs(f.volume_mm3 - true_v) / true_v < 0.10, (f.volume_mm3, true_v)
    assert abs(f.mean_diameter_mm - 2 * r) <= 1.0
    assert f.mean_diameter_mm == round((f.long_axis_mm + f.short_axis_mm) / 2, 1)
    assert f.lung_rads == category("solid", f.mean_diameter_mm)
    assert not f.juxta_pleural and not f.cavity and f.calcification == "none"


def test_a_large_lesion_without_a_size_hint():
    # wider than the default crop's wall closing: its own extent sizes the crop and the wall surface
    r = 12.0
    hu, rng, noise = _scene(7)
    _paint(hu, _sphere_sd(r), 30.0)
    f = characterise(_finish(hu, rng, noise), SPACING, LUNG, CENTRE)
    true_v = 4 / 3 * np.pi * r ** 3
    assert f.segmented and f.type == "solid"
    assert abs(f.volume_mm3 - true_v) / true_v < 0.05, (f.volume_mm3, true_v)
    assert f.mean_diameter_mm == pytest.approx(2 * r, abs=1.0) and f.lung_rads == "4B"


def test_juxta_pleural_sphere_keeps_its_volume_and_loses_the_wall():
    r = 5.0
    z, y, x = _coords()
    hu, rng, noise = _scene(1)
    wall_x = 0.8 * r                         # the chest wall: x beyond this plane, muscle
    _paint(hu, wall_x - x, 40.0)
    _paint(hu, _sphere_sd(r), 30.0)
    lung = x < wall_x + 3.0                  # the lung mask, dilated 3 mm into the wall as the engine's is
    f = characterise(_finish(hu, rng, noise), SPACING, lung, CENTRE)
    # the true lung-side volume: the sphere less the cap beyond the wall
    h = r - wall_x
    true_v = 4 / 3 * np.pi * r ** 3 - np.pi * h * h * (3 * r - h) / 3
    assert f.segmented and f.juxta_pleural
    assert abs(f.volume_mm3 - true_v) / true_v < 0.15, (f.volume_mm3, true_v)


def test_sphere_touching_a_vessel_is_cut_from_it():
    r, rv = 5.0, 1.2
    z, y, x = _coords()
    hu, rng, noise = _scene(2)
    # a vessel along z, tangent to the sphere (its axis r + 0.3 rv from the centre)
    _paint(hu, np.sqrt(y ** 2 + (x - (r + 0.3 * rv)) ** 2) - rv, 40.0)
    _paint(hu, _sphere_sd(r), 30.0)
    f = characterise(_finish(hu, rng, noise), SPACING, LUNG, CENTRE)
    true_v = 4 / 3 * np.pi * r ** 3
    assert f.segmented and f.type == "solid"
    assert abs(f.volume_mm3 - true_v) / true_v < 0.15, (f.volume_mm3, true_v)
    assert f.mask.shape[0] * SPACING[0] < 2 * r + 4   # it did not follow the vessel along z


@pytest.mark.parametrize("axes, long_short", [((3.0, 4.0, 6.0), (12.0, 8.0)), ((5.0, 3.0, 4.0), (8.0, 6.0))])
def test_ellipsoid_volume_and_axial_axes(axes, long_short):
    z, y, x = _coords()
    hu, rng, noise = _scene(6)
    k = np.sqrt((z / axes[0]) ** 2 + (y / axes[1]) ** 2 + (x / axes[2]) ** 2)
    _paint(hu, (k - 1.0) * min(axes), 30.0)
    f = characterise(_finish(hu, rng, noise), SPACING, LUNG, CENTRE)
    true_v = 4 / 3 * np.pi * np.prod(axes)
    assert f.segmented and f.type == "solid"
    assert abs(f.volume_mm3 - true_v) / true_v < 0.10, (f.volume_mm3, true_v)
    # the axial section through the centre is the largest: its axes are the in-plane ellipse's
    assert f.long_axis_mm == pytest.approx(long_short[0], abs=1.0)
    assert f.short_axis_mm == pytest.approx(long_short[1], abs=1.0)


@pytest.mark.xfail(strict=True, reason="issue 37: a small lesion beside a vessel of similar width leaks into it")
@pytest.mark.parametrize("r, rv", [(2.0, 1.6), (3.0, 2.5)])
def test_small_lesion_beside_a_vessel_of_similar_width(r, rv):
    z, y, x = _coords()
    hu, rng, noise = _scene(2)
    # the wide phantoms' juxta-vascular lesion: the vessel's axis r + 0.3 rv from the centre
    _paint(hu, np.sqrt(y ** 2 + (x - (r + 0.3 * rv)) ** 2) - rv, 40.0)
    _paint(hu, _sphere_sd(r), 30.0)
    f = characterise(_finish(hu, rng, noise), SPACING, LUNG, CENTRE)
    true_v = 4 / 3 * np.pi * r ** 3   # the sphere, the vessel's part inside it included
    assert f.segmented and abs(f.volume_mm3 - true_v) / true_v < 0.3, (f.volume_mm3, true_v)


@pytest.mark.parametrize("kind", ["solid", "ground_glass", "part_solid", "calcified"])
def test_types(kind):
    r = 6.0
    hu, rng, noise = _scene(3)
    main = {"solid": 30.0, "ground_glass": -600.0, "part_solid": -600.0, "calcified": 600.0}[kind]
    _paint(hu, _sphere_sd(r), main)
    if kind == "part_solid":
        _paint(hu, _sphere_sd(0.4 * r), 30.0)   # a 4.8 mm solid core
    f = characterise(_finish(hu, rng, noise), SPACING, LUNG, CENTRE)
    assert f.type == kind
    true_v = 4 / 3 * np.pi * r ** 3
    assert abs(f.volume_mm3 - true_v) / true_v < 0.2, (f.volume_mm3, true_v)
    if kind == "part_solid":
        assert f.solid_core_mean_diameter_mm == pytest.approx(0.8 * r, abs=1.5)
        assert f.lung_rads == "3"     # >= 6 mm total, solid core < 6 mm
    if kind == "calcified":
        assert f.calcification == "total" and f.lung_rads == "1"
    if kind == "ground_glass":
        assert f.lung_rads == "2" and f.mean_hu < -300


def test_nothing_at_the_point():
    hu, rng, noise = _scene(4)
    f = characterise(_finish(hu, rng, noise), SPACING, LUNG, CENTRE)
    assert not f.segmented and f.type == "none" and f.lung_rads is None and f.volume_mm3 == 0


@pytest.mark.parametrize("kind, d, core, cat", [
    ("solid", 5.9, None, "2"), ("solid", 6.0, None, "3"), ("solid", 7.96, None, "4A"), ("solid", 14.9, None, "4A"),
    ("solid", 15.0, None, "4B"), ("part_solid", 5.9, 4.0, "2"), ("part_solid", 6.0, 5.9, "3"),
    ("part_solid", 12.0, 6.0, "4A"), ("part_solid", 12.0, 8.0, "4B"), ("ground_glass", 29.9, None, "2"),
    ("ground_glass", 30.0, None, "3"), ("calcified", 20.0, None, "1")])
def test_lung_rads_table(kind, d, core, cat):
    assert category(kind, d, core) == cat


def test_lung_rads_scan_category_and_errors():
    s = scan_category(["2", None, "4A", "3", "4A"])
    assert s.category == "4A" and s.driver == 2 and s.n_findings == 4 and "not a diagnosis" in s.note
    assert scan_category([]).category == "1" and scan_category([None]).driver is None
    with pytest.raises(ConfigError, match="'mixed'"):
        category("mixed", 5.0)
    with pytest.raises(ConfigError, match="-1"):
        category("solid", -1.0)
    with pytest.raises(ConfigError):
        CharacteriseParams(calcified_fraction=0.9, total_calcified_fraction=0.5)


def _characterised_detections():
    hu, rng, noise = _scene(5)
    _paint(hu, _sphere_sd(5.0), 30.0)
    f = characterise(_finish(hu, rng, noise), SPACING, LUNG, CENTRE)
    cands = (Candidate((1.0, 2.0, 3.0), 0.9, 3, 9.0, finding=f), Candidate((4.0, 5.0, 6.0), 0.2))
    return Detections(series_uid="1.2.3", candidates=cands, timings_s={}, backend="b", mode="dense",
                      model_id="m", engine_version="0", meta={"characterise_top": 1}), f


def test_json_and_csv_round_trip(tmp_path):
    d, f = _characterised_detections()
    doc = json.loads(d.to_json())
    entry = doc["candidates"][0]
    back = Finding.from_dict(entry["finding"])
    assert np.array_equal(back.mask, f.mask) and back.offset_zyx == f.offset_zyx
    assert back.volume_mm3 == pytest.approx(f.volume_mm3) and back.type == f.type
    assert entry["tracking_uid"].startswith("2.25.") and len(entry["tracking_uid"]) <= 64
    assert "finding" not in doc["candidates"][1]
    assert doc["lung_rads"]["category"] == f.lung_rads and doc["lung_rads"]["driver_rank"] == 1
    assert "not a diagnosis" in doc["lung_rads"]["note"]
    out = d.save(tmp_path, png=False)
    cand_rows = list(csv.reader(io.StringIO(out["csv"].read_text())))
    assert tuple(cand_rows[0]) in (CSV_HEADER, CSV_HEADER + ("diameter_mm",))   # LUNA16 layout untouched
    rows = list(csv.DictReader(io.StringIO(out["findings_csv"].read_text())))
    assert tuple(rows[0].keys()) == FINDINGS_HEADER and FINDINGS_HEADER[:5] == CSV_HEADER
    assert len(rows) == 1 and rows[0]["type"] == f.type and float(rows[0]["mean_diameter_mm"]) == f.mean_diameter_mm
    assert rows[0]["tracking_uid"] == entry["tracking_uid"]
    assert findings_csv_text([]).strip() == ",".join(FINDINGS_HEADER)


def test_plain_detections_keep_their_json():
    d = Detections(series_uid="s", candidates=(Candidate((1.0, 2.0, 3.0), 0.5),), timings_s={}, backend="b",
                   mode="dense", model_id="m", engine_version="0")
    doc = d.to_dict()
    assert "lung_rads" not in doc and set(doc["candidates"][0]) == {"center_xyz_mm", "prob", "n_points",
                                                                     "diameter_mm"}


def test_lung_mask_on_matches_the_world_round_trip():
    rng = np.random.default_rng(0)
    vol = Volume(np.zeros((30, 40, 40), np.int16), (1.2345, 0.7123, 0.7123), (-30.0137, -20.0771, -100.0313))
    mvol = Volume(np.zeros((50, 40, 40), np.int16), (1.0, 1.0, 1.0), (-31.3, -19.6, -101.2))
    mask = rng.uniform(size=mvol.shape) > 0.5
    box = (slice(3, 28), slice(5, 40), slice(0, 40))
    zz, yy, xx = np.meshgrid(*[np.arange(b.start, b.stop, dtype=float) for b in box], indexing="ij")
    src = np.rint(mvol.world_to_voxel(vol.voxel_to_world(np.stack([zz, yy, xx], -1)))).astype(int)
    ok = np.all((src >= 0) & (src < np.asarray(mask.shape)), axis=-1)
    want = np.zeros(zz.shape, bool)
    want[ok] = mask[src[ok][:, 0], src[ok][:, 1], src[ok][:, 2]]
    got = lung_mask_on(vol, box, mvol, mask)
    assert got.shape == want.shape and np.array_equal(got, want) and 0 < got.mean() < ok.mean()


def _texture(rng, sigma_mm=1.5, amp=60.0):
    from noduleflow.engine.characterise.distance import gaussian_smooth
    t = gaussian_smooth(rng.normal(0, 1, SHAPE).astype(np.float32), sigma_mm, SPACING)
    return amp * t / t.std()


def test_a_large_textured_ground_glass_lesion_with_a_vessel_through_it():
    # glass 130 HU above the lung, its texture +-40 HU, a vessel along z through it: a threshold at
    # half way to its peak (on the texture) would keep a fragment of it
    r = 10.0
    z, y, x = _coords()
    hu, rng, noise = _scene(8)
    inside = np.clip(0.5 - _sphere_sd(r) / 2.0, 0.0, 1.0)
    hu += inside * (130.0 + _texture(rng, amp=40.0))
    _paint(hu, np.sqrt(y ** 2 + (x - 5.0) ** 2) - 1.2, 40.0)
    f = characterise(_finish(hu, rng, noise), SPACING, LUNG, CENTRE)
    true_v = 4 / 3 * np.pi * r ** 3
    assert f.segmented and f.type == "ground_glass"
    assert abs(f.volume_mm3 - true_v) / true_v < 0.25, (f.volume_mm3, true_v)
    assert f.mean_diameter_mm == pytest.approx(2 * r, abs=2.0)


def test_a_faint_glass_halo_is_part_solid_and_a_blurred_solid_edge_is_not():
    r = 7.0
    hu, rng, noise = _scene(9)
    _paint(hu, _sphere_sd(r), -760.0)                 # glass 90 HU above the lung
    _paint(hu, _sphere_sd(3.0), 30.0)
    f = characterise(_finish(hu, rng, noise), SPACING, LUNG, CENTRE)
    assert f.type == "part_solid", f.note
    assert f.mean_diameter_mm == pytest.approx(2 * r, abs=1.5)
    from noduleflow.engine.characterise.distance import gaussian_smooth
    hu, rng, noise = _scene(10)
    _paint(hu, _sphere_sd(5.0), 30.0)
    hu = gaussian_smooth(hu.astype(np.float32), 1.2, SPACING)   # a soft reconstruction: a long edge
    f = characterise(_finish(hu, rng, noise), SPACING, LUNG, CENTRE)
    assert f.type == "solid", f.note


@pytest.mark.parametrize("r", [3.0, 6.5])
def test_ground_glass_on_thick_slices(r):
    # 2 mm slices, 1.25 mm pixels: the level's innermost shells hold few voxels
    sp, shape = (2.0, 1.25, 1.25), (24, 48, 48)
    g = np.indices(shape).astype(np.float64)
    c = (np.asarray(shape) - 1) / 2
    sd = np.sqrt(sum(((g[i] - c[i]) * sp[i]) ** 2 for i in range(3))) - r
    rng = np.random.default_rng(11)
    hu = -850.0 + np.clip(0.5 - sd / 0.7, 0.0, 1.0) * 250.0 + rng.normal(0, 15.0, shape)
    f = characterise(hu.astype(np.float32), sp, np.ones(shape, bool), c)
    true_v = 4 / 3 * np.pi * r ** 3
    assert f.segmented and f.type == "ground_glass", f.note
    assert abs(f.volume_mm3 - true_v) / true_v < 0.3, (f.volume_mm3, true_v)
