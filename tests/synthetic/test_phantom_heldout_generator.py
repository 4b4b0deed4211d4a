"""The held-out phantom generator configuration (issue 35, item 4): its own noise texture, lesion shape
model and anatomy, every stratum, and the evaluation-source folder `noduleflow synth` writes for it."""
from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest

from noduleflow.cli import main as cli
from noduleflow.synthetic.phantom import HELDOUT, PhantomParams, generate_phantom
from noduleflow.synthetic.phantom_base import KINDS, LOCATIONS, PAD_VALUES_HU, SHAPES
from noduleflow.synthetic.phantom_lesions import HeldoutShape

SMALL = dict(shape_zyx=(48, 128, 128), spacing_zyx_mm=(3.3, 2.75, 2.75))


@pytest.fixture(scope="module")
def heldout():
    # seeds that between them hold every stratum and every padding value
    return [generate_phantom(s, params=PhantomParams(n_nodules=6), generator="heldout", **SMALL) for s in (2, 3, 8)]


def test_heldout_draws_every_stratum_and_padding(heldout):
    seen = {x for ph in heldout for n in ph.nodules for x in (n.kind, n.shape, n.location)}
    assert seen == set(KINDS) | set(SHAPES) | set(LOCATIONS)
    assert {ph.meta["pad_hu"] for ph in heldout} == set(PAD_VALUES_HU)
    for ph in heldout:
        assert ph.meta["generator"] == "heldout" and len(ph.nodules) == 6
        assert (ph.volume.hu[:, 0, 0] == ph.meta["pad_hu"]).all()
        assert all(3.0 <= n.diameter_mm <= 30.0 for n in ph.nodules)


def test_heldout_models_differ_from_the_training_family(heldout):
    wide = generate_phantom(2, params=PhantomParams(n_nodules=0), generator="wide", **SMALL)
    assert wide.meta["anatomy"]["superellipse"] == 2.0 and wide.meta["anatomy"]["airways"] == "paired"
    assert wide.meta["slice_profile"] == "box" and wide.meta["kernel"] in ("smooth", "standard", "sharp")
    for ph in heldout:
        anatomy = ph.meta["anatomy"]
        assert 2.4 <= anatomy["superellipse"] <= 3.2 and anatomy["airways"] == "tree"
        assert anatomy["trifurcation_p"] > 0 and anatomy["tortuosity"] > 0 and anatomy["texture_mm"] <= 4.0
        assert ph.meta["slice_profile"] == "gaussian" and ph.meta["kernel"] == "heldout"
    # the same seed is another scan under another generator (its own series UID)
    assert wide.volume.series_uid != heldout[0].volume.series_uid
    assert generate_phantom(2, **SMALL).volume.series_uid not in (wide.volume.series_uid, heldout[0].volume.series_uid)


def _noise_anisotropy(generator, seed):
    """Eigenvalue ratio of the noise power spectrum's second-moment matrix (1: isotropic), with the noise
    std, on a 0.7 mm grid: the same seed with and without noise differs by the noise (and streaks) only."""
    kw = dict(shape_zyx=(8, 128, 128), spacing_zyx_mm=(3.0, 0.7, 0.7))
    noisy = generate_phantom(seed, params=PhantomParams(n_nodules=0, noise_hu=30.0), generator=generator, **kw)
    clean = generate_phantom(seed, params=PhantomParams(n_nodules=0, noise_hu=0.0), generator=generator, **kw)
    n = (noisy.volume.hu.astype(float) - clean.volume.hu)[:, 32:96, 32:96]
    p = (np.abs(np.fft.fft2(n - n.mean(axis=(1, 2), keepdims=True))) ** 2).mean(0)
    fy, fx = np.meshgrid(np.fft.fftfreq(64), np.fft.fftfreq(64), indexing="ij")
    m = np.array([[(p * fx * fx).sum(), (p * fx * fy).sum()], [(p * fx * fy).sum(), (p * fy * fy).sum()]])
    ev = np.linalg.eigvalsh(m)
    return ev[1] / ev[0], n.std()


def test_heldout_noise_texture_is_anisotropic_where_the_training_noise_is_not():
    for seed in (0, 1):
        ratio, std = _noise_anisotropy("heldout", seed)
        assert ratio > 2.0 and 28 < std < 40, (ratio, std)   # noise std 30 HU plus streaks
        ratio, std = _noise_anisotropy("wide", seed)
        assert ratio < 1.2 and 28 < std < 32, (ratio, std)


@pytest.mark.parametrize("shape", SHAPES)
def test_heldout_shape_model_keeps_the_drawn_size(shape):
    """Whatever the blobs and margins, the lesion holds the volume of the sphere of its diameter, and its
    centre is inside it (cavities aside)."""
    r, step = 5.0, 0.5
    t = np.arange(-2.4 * r, 2.4 * r + 1e-9, step)
    offsets = np.stack(np.meshgrid(t, t, t, indexing="ij"))
    for seed in range(3):
        model = HeldoutShape(np.random.default_rng(seed), shape)
        sd, depth, cavity = model.evaluate(offsets, r)
        volume = (sd < 0).sum() * step ** 3
        assert abs(volume / (4 / 3 * np.pi * r ** 3) - 1) < 0.2, (shape, seed, volume)
        centre = tuple(len(t) // 2 for _ in range(3))
        assert sd[centre] < 0 and depth[centre] > 0.5
        assert (cavity is not None) == (shape == "cavitary")
        if cavity is not None:  # air inside a wall
            assert 0.02 < ((cavity < 0) & (sd < 0)).sum() / (sd < 0).sum() < 0.3


def test_heldout_ground_glass_centres_within_range():
    """Noise-free, >= 8 mm, away from vessels (juxta-vascular ones engulf theirs): the image at the
    centre shows the drawn ground-glass value."""
    cfg = replace(HELDOUT, kind_p=(0.0, 0.0, 1.0, 0.0), location_p=(0.6, 0.4, 0.0))
    hu = []
    for seed in (5, 6):
        ph = generate_phantom(seed, params=PhantomParams(n_nodules=5, min_nodule_mm=8.0, noise_hu=0.0),
                              generator=cfg, shape_zyx=(64, 160, 160), spacing_zyx_mm=(2.5, 2.2, 2.2))
        for n, rec in zip(ph.nodules, ph.meta["lesions"]):
            z, y, x = np.round(ph.volume.world_to_voxel(n.center_xyz_mm)).astype(int)
            hu.append((float(np.median(ph.volume.hu[z, y - 1:y + 2, x - 1:x + 2])), rec["hu"]))
    hu = np.array(hu)
    assert len(hu) >= 6
    assert np.all((hu[:, 1] >= -800) & (hu[:, 1] <= -450))
    assert np.all((hu[:, 0] >= -830) & (hu[:, 0] <= -420)), hu
    assert np.median(np.abs(hu[:, 0] - hu[:, 1])) < 30, hu


def test_synth_heldout_source(tmp_path):
    out = tmp_path / "heldout_generator"
    assert cli(["synth", str(out), "--generator", "heldout", "--format", "mhd", "--scans", "2", "--seed", "7000",
                "--shape", "32", "96", "96", "--spacing", "4", "3.5", "3.5", "--nodules", "3", "--preview"]) == 0
    ann = list(csv.reader(open(out / "annotations.csv")))
    found = list(csv.reader(open(out / "findings.csv")))
    assert len(ann) > 2 and [r[:5] for r in found] == ann
    assert (out / "annotations_excluded.csv").exists()
    source = json.loads((out / "source.json").read_text())
    assert source["role"] == "evaluation" and "never trained" in source["description"]
    assert source["generator"]["config"]["family"] == "heldout" and source["seeds"] == [7000, 7001]
    assert "--generator heldout" in source["command"] and "--preview" in source["command"]
    assert source["counts"]["nodules"] == len(ann) - 1
    assert len(list((out / "preview").glob("*.png"))) == 2
