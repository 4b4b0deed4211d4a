"""Hybrid scans: synthetic lesions inserted into one lung of a real CT (a small phantom stands in
for the real scan in the fast tests; the real LIDC-IDRI-0314 in ../shared/realct in the slow one)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from noduleflow.cli import main as cli
from noduleflow.engine import ConfigError, VolumeError
from noduleflow.engine.io import load_volume
from noduleflow.synthetic.hybrid import (
    DECKS,
    SIZE_BINS_MM,
    StrataDeck,
    insert_lesions,
    load_substrate,
    write_hybrids,
)
from noduleflow.synthetic.hybrid_lesions import LesionSpec, fine_truth
from noduleflow.synthetic.phantom import PhantomParams
from noduleflow.synthetic.synth import write_cohort
from noduleflow.trainer.evaluate.sources import read_source

REALCT = Path(__file__).resolve().parents[2].parent / "shared" / "realct"
NOISE_HU = 25.0   # the phantom's noise knob: its noise std is 0.61 x this (`phantom.generate_phantom`)


@pytest.fixture(scope="module")
def phantom_path(tmp_path_factory) -> Path:
    """A small phantom written as .mhd with its annotations: the stand-in for a real scan."""
    folder = tmp_path_factory.mktemp("substrate")
    params = PhantomParams(n_nodules=1, n_excluded=1, noise_hu=NOISE_HU)
    return write_cohort(folder, 1, 5, fmt="mhd", shape_zyx=(72, 176, 176), spacing_zyx_mm=(2.0, 1.6, 1.6),
                        params=params, progress=False)[0]


@pytest.fixture(scope="module")
def substrate(phantom_path):
    return load_substrate(phantom_path)


def _ball_mean(hu, center_zyx, radius_mm, spacing):
    g = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(hu.shape, center_zyx, spacing)], indexing="ij")
    return float(hu[(g[0] ** 2 + g[1] ** 2 + g[2] ** 2) <= radius_mm ** 2].mean())


def test_measures_the_scans_noise_and_blur(substrate):
    std = np.median(substrate.noise.std_hu_z)
    assert 0.8 * 0.61 * NOISE_HU <= std <= 1.2 * 0.61 * NOISE_HU
    # the phantom blurs with [1,2,1]/4 in plane (sigma 0.71 px = 1.13 mm) and has soft edges itself
    assert 0.9 <= substrate.optics.inplane_sigma_mm <= 2.0
    noise = substrate.noise.sample(np.random.default_rng(0), (16, 48, 48))
    assert 0.9 <= noise.std() <= 1.1


def test_lesions_land_in_the_chosen_lung_and_nothing_else_changes(substrate):
    specs = [LesionSpec(k, s, loc, d, i) for i, (k, s, loc, d) in enumerate([
        ("solid", "spiculated", "isolated", 8.0), ("calcified", "round", "juxta_vascular", 5.0),
        ("part_solid", "lobulated", "juxta_pleural", 14.0), ("ground_glass", "ellipsoid", "isolated", 9.0)])]
    orig = substrate.volume.hu
    for lung in ("left", "right"):
        hu, placed, foot = insert_lesions(substrate, lung, specs, np.random.default_rng(1))
        assert len(placed) >= 3
        side, other = substrate.sides.side(lung), substrate.sides.side("right" if lung == "left" else "left")
        for p in placed:
            assert side[tuple(np.round(p.center_zyx).astype(int))]
            assert (p.center_xyz_mm[0] > substrate.sides.split_x_mm) == (lung == "left")   # left is +x (LPS)
        assert not (foot & other).any()
        assert np.array_equal(hu[~foot], orig[~foot])
        assert (hu[foot] != orig[foot]).mean() > 0.5
    again, placed_again, _ = insert_lesions(substrate, "right", specs, np.random.default_rng(1))
    assert np.array_equal(again, hu) and placed_again == placed      # one seed, one scan


def test_ground_glass_rises_over_the_parenchyma(substrate):
    spec = LesionSpec("ground_glass", "round", "isolated", 12.0, 7)
    hu, (p,), _ = insert_lesions(substrate, "left", [spec], np.random.default_rng(2))
    sp = substrate.volume.spacing_zyx_mm
    before = _ball_mean(substrate.volume.hu, p.center_zyx, 2.5, sp)
    after = _ball_mean(hu, p.center_zyx, 2.5, sp)
    assert before < -700                                   # placed on aerated lung
    assert 100 <= after - before <= 450
    assert -800 <= after <= -450
    assert 100 <= p.design["rise_hu"] <= 450


def test_juxta_pleural_lesions_touch_the_lung_boundary(substrate):
    specs = [LesionSpec("solid", "round", "juxta_pleural", d, i) for i, d in enumerate((12.0, 20.0, 6.0))]
    hu, placed, foot = insert_lesions(substrate, "right", specs, np.random.default_rng(3))
    assert len(placed) == 3
    side = substrate.sides.right
    sp = np.asarray(substrate.volume.spacing_zyx_mm)
    for p in placed:
        c = np.asarray(p.center_zyx)
        r = p.spec.diameter_mm / 2
        lo, hi = np.floor(c - r / sp).astype(int), np.ceil(c + r / sp).astype(int) + 1
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        g = np.meshgrid(*[(np.arange(a, b) - c[i]) * sp[i] for i, (a, b) in enumerate(zip(lo, hi))], indexing="ij")
        ball = g[0] ** 2 + g[1] ** 2 + g[2] ** 2 <= r * r
        outside = 1 - side[box][ball].mean()
        assert 0.05 <= outside <= 0.5, outside       # part of it sits where the wall was
        assert (foot[box] & ~side[box]).any()


def test_strata_deck_covers_every_stratum_in_a_few_scans():
    deck = StrataDeck(np.random.default_rng(0))
    specs = [deck.draw() for _ in range(48)]
    for key in ("kind", "shape", "location"):
        assert {getattr(s, key) for s in specs} == set(DECKS[key])
    bins = {next(i for i, (lo, hi) in enumerate(SIZE_BINS_MM) if s.diameter_mm <= hi) for s in specs}
    assert bins == {0, 1, 2, 3}
    assert sum(s.kind == "ground_glass" for s in specs) >= 12
    assert sum(s.location == "juxta_pleural" and 10 <= s.diameter_mm <= 30 for s in specs) >= 6
    assert all(3 <= s.diameter_mm <= 30 for s in specs)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_write_hybrids_layout_and_roles(phantom_path, tmp_path):
    real = _rows(phantom_path.parent / "annotations.csv")
    assert len(real) == 1
    right = tmp_path / "right"
    paths = write_hybrids(right, 2, 0, lung="right", substrate=phantom_path, lesions_per_scan=3, progress=False,
                          preview=True)
    ann, fnd = _rows(right / "annotations.csv"), _rows(right / "findings.csv")
    assert list(ann[0]) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    assert list(fnd[0]) == list(ann[0]) + ["kind", "shape", "location"]
    assert [[r[k] for k in ann[0]] for r in fnd] == [list(r.values()) for r in ann]
    uids = {p.name[:-4] for p in paths}
    assert len(uids) == 2 and phantom_path.name[:-4] not in uids
    assert {r["seriesuid"] for r in ann} == uids
    # the real nodule stays a positive of every variant, as a solid irregular finding
    for uid in uids:
        kept = [r for r in fnd if r["seriesuid"] == uid and r["shape"] == "irregular"]
        assert len(kept) == 1 and kept[0]["kind"] == "solid"
        assert abs(float(kept[0]["coordX"]) - float(real[0]["coordX"])) < 1e-3
    assert len(_rows(right / "annotations_excluded.csv")) == 2          # the phantom's excluded finding, per variant
    info = json.loads((right / "source.json").read_text())
    assert info["role"] == "evaluation" and info["seeds"] == [0] and "--lung right" in info["command"]
    assert info["generator"]["lesions"] >= 5
    assert len(list((right / "preview").glob("*.png"))) == 2
    src = read_source("hybrid", right)                                    # the evaluation-source reader accepts it
    assert sum(len(s.nodules) for s in src.scans) == len(ann)
    vol = load_volume(paths[0])
    assert vol.shape == load_volume(phantom_path).shape

    left = tmp_path / "left"
    write_hybrids(left, 1, 0, lung="left", substrate=phantom_path, lesions_per_scan=2, progress=False)
    info = json.loads((left / "source.json").read_text())
    assert info["role"] == "training"
    assert all(r["shape"] != "irregular" for r in _rows(left / "findings.csv"))
    assert len(_rows(left / "annotations_excluded.csv")) == 2            # real nodule + excluded: neither +/-


def test_bad_input_is_one_clear_error(phantom_path, tmp_path, capsys):
    with pytest.raises(ConfigError, match="'up'"):
        write_hybrids(tmp_path / "o", 1, 0, lung="up", substrate=phantom_path)
    (tmp_path / "notes").mkdir()
    not_ct = tmp_path / "notes" / "notes.txt"
    not_ct.write_text("not a scan")
    with pytest.raises(VolumeError):
        write_hybrids(tmp_path / "o", 1, 0, substrate=not_ct)
    with pytest.raises(ConfigError, match="inside the substrate"):
        write_hybrids(phantom_path.parent / "out", 1, 0, substrate=phantom_path)
    assert cli(["synth", str(tmp_path / "o"), "--hybrid", str(phantom_path), "--lung", "middle"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'middle'" in err[0]
    assert cli(["synth", str(tmp_path / "o"), "--hybrid", str(phantom_path), "--shape", "9", "9", "9"]) == 2
    assert "--shape" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not REALCT.is_dir(), reason="../shared/realct (LIDC-IDRI-0314) is not present")
def test_real_scan_right_lung_keeps_its_nodule(tmp_path):
    out = tmp_path / "eval"
    assert cli(["synth", str(out), "--hybrid", "--lung", "right", "--scans", "1", "--seed", "3"]) == 0
    ann, fnd = _rows(out / "annotations.csv"), _rows(out / "findings.csv")
    real = _rows(REALCT / "annotations.csv")[0]
    kept = [r for r in fnd if abs(float(r["coordX"]) - float(real["coordX"])) < 1e-3]
    assert len(kept) == 1 and kept[0]["kind"] == "solid" and kept[0]["shape"] == "irregular"
    assert len(ann) >= 4                                  # the real nodule and the inserted lesions
    assert len(_rows(out / "annotations_excluded.csv")) == len(_rows(REALCT / "annotations_excluded.csv"))
    info = json.loads((out / "source.json").read_text())
    split = info["generator"]["region"]["split_x_mm"]
    assert all(float(r["coordX"]) < split for r in ann)    # right lung: patient right is -x
    assert info["generator"]["optics"]["slice_thickness_mm"] == pytest.approx(1.0)


def test_fine_truth_of_a_ball_a_half_ball_and_a_core():
    h, f, sp = 0.2, (5, 4, 4), (1.0, 0.8, 0.8)
    ax = [((np.arange(n * k) + 0.5) / k - n / 2) * s for n, k, s in zip((24, 30, 30), f, sp)]
    dz, dy, dx = np.meshgrid(*ax, indexing="ij", sparse=True)
    dist = np.sqrt(dz ** 2 + dy ** 2 + dx ** 2)
    body = np.clip(0.5 - (dist - 8.0) / h, 0, 1)            # a ball of 16 mm
    core = np.clip(0.5 - (dist - 3.0) / h, 0, 1)            # ... with a 6 mm core
    t = fine_truth(body, core, f, sp)
    assert t["volume_mm3"] == pytest.approx(4 / 3 * np.pi * 8.0 ** 3, rel=0.02)
    assert t["mean_diameter_mm"] == pytest.approx(16.0, abs=0.5)
    assert t["core_volume_mm3"] == pytest.approx(4 / 3 * np.pi * 3.0 ** 3, rel=0.05)
    assert t["core_mean_diameter_mm"] == pytest.approx(6.0, abs=0.5)
    lung = np.ones((24, 30, 30), bool)
    lung[:, :, 15:] = False                                  # the wall's place: half the ball
    half = fine_truth(body, None, f, sp, lung)
    assert half["volume_mm3"] == pytest.approx(t["volume_mm3"] / 2, rel=0.03)
    assert "core_volume_mm3" not in half


def test_inserted_lesions_carry_their_drawn_truth(substrate):
    specs = [LesionSpec("solid", "round", "isolated", 10.0, 0), LesionSpec("part_solid", "round", "isolated", 14.0, 1),
             LesionSpec("solid", "round", "juxta_pleural", 12.0, 2)]
    _, placed, _ = insert_lesions(substrate, "left", specs, np.random.default_rng(4))
    assert len(placed) == 3
    by_kind = {(p.spec.kind, p.spec.location): p for p in placed}
    iso = by_kind[("solid", "isolated")].design["truth"]
    assert iso["volume_mm3"] == pytest.approx(np.pi * 10.0 ** 3 / 6, rel=0.05)
    assert iso["mean_diameter_mm"] == pytest.approx(10.0, abs=1.0)
    ps = by_kind[("part_solid", "isolated")]
    assert 0 < ps.design["truth"]["core_volume_mm3"] < ps.design["truth"]["volume_mm3"]
    jp = by_kind[("solid", "juxta_pleural")]
    d = jp.spec.diameter_mm
    assert jp.design["truth"]["volume_mm3"] < 0.97 * np.pi * d ** 3 / 6     # less the part in the wall's place
