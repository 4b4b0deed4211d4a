"""A synthetic follow-up pair: a phantom (the prior) and the same chest moved by a known rigid
transform (the current), with lesions painted in: one stable, one growing, one only in the prior
(resolved) and one only in the current (new). Synthetic phantoms are a regression signal, not
clinical evidence."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import SimpleITK as sitk

from noduleflow.engine.characterise import characterise_scan
from noduleflow.engine.results import Candidate, Detections
from noduleflow.engine.volume import Volume
from noduleflow.follow.register import to_sitk
from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

SHAPE = (64, 128, 128)
SPACING = (2.5, 2.0, 2.0)
ROTATION_DEG = 4.0                  # about the z axis (patient rolls a little)
SHIFT_MM = (6.0, -4.0, 5.0)          # x, y, z
INTERVAL_DAYS = 90.0
# name -> (prior radius, current radius) mm; 0: absent
LESIONS = {"stable": (4.0, 4.0), "growing": (3.5, 5.0), "resolved": (4.0, 0.0), "new": (0.0, 4.0)}
LESION_HU = 40.0


@dataclass(frozen=True, eq=False)
class Pair:
    prior: Volume
    current: Volume
    prior_lungs: np.ndarray                 # bool, the phantom's true lungs (prior grid)
    truth: sitk.Transform                   # current world -> prior world (the resampling's map)
    sites_prior_xyz: dict                   # lesion name -> its centre in the prior (world mm)
    sites_current_xyz: dict                 # lesion name -> its centre in the current (world mm)

    def prior_to_current(self, xyz) -> np.ndarray:
        inv = self.truth.GetInverse()
        return np.array([inv.TransformPoint(tuple(float(v) for v in p)) for p in np.reshape(xyz, (-1, 3))])


def _sites(vol: Volume, lungs: np.ndarray, n: int, min_depth_mm=14.0, min_sep_mm=35.0) -> list[np.ndarray]:
    """``n`` world points deep in the lungs, far apart, in aerated lung (not on a vessel)."""
    img = sitk.GetImageFromArray(lungs.astype(np.uint8))
    img.SetSpacing(vol.spacing_xyz_mm)
    depth = -sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, useImageSpacing=True))
    depth[:6] = depth[-6:] = 0   # away from the scan's ends (the shift moves them)
    hu = vol.hu.astype(np.float32)
    # aerated: the 3x3x3 mean well below vessel values
    local = sum(np.roll(hu, (a, b, c), axis=(0, 1, 2)) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1))
    ok = (depth >= min_depth_mm) & (local / 27.0 < -780)
    cand = np.argwhere(ok)
    order = np.argsort(-depth[ok])
    picked = []
    for idx in cand[order]:
        w = vol.voxel_to_world(idx.astype(float))
        if all(np.linalg.norm(w - p) >= min_sep_mm for p in picked):
            picked.append(w)
        if len(picked) == n:
            return picked
    raise RuntimeError(f"only {len(picked)} lesion sites found")


def paint_ball(hu: np.ndarray, vol: Volume, center_xyz, radius_mm: float, value: float = LESION_HU) -> None:
    """A ball of ``value`` HU (0.7 mm soft edge, partial volume) at a world point, in place (max)."""
    c = vol.world_to_voxel(np.asarray(center_xyz, dtype=float))
    reach = np.ceil((radius_mm + 2) / np.asarray(vol.spacing_zyx_mm)).astype(int)
    lo = np.maximum(np.floor(c).astype(int) - reach, 0)
    hi = np.minimum(np.ceil(c).astype(int) + reach + 1, hu.shape)
    g = np.indices(hi - lo).reshape(3, -1).T + lo
    d = np.linalg.norm(vol.voxel_to_world(g.astype(float)) - np.asarray(center_xyz), axis=1)
    f = np.clip(0.5 - (d - radius_mm) / 0.7, 0.0, 1.0).reshape(tuple(hi - lo))
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    h = hu[box]
    np.maximum(h, h + f * (value - h), out=h)


def make_pair(seed: int = 3) -> Pair:
    ph = generate_phantom(seed, params=PhantomParams(n_nodules=0, noise_hu=20), shape_zyx=SHAPE,
                          spacing_zyx_mm=SPACING)
    vol = ph.volume
    sites = dict(zip(LESIONS, _sites(vol, ph.lung_mask, len(LESIONS))))
    k = sitk.Euler3DTransform()
    k.SetCenter(tuple(float(v) for v in vol.voxel_to_world((np.asarray(vol.shape) - 1) / 2.0)))
    k.SetRotation(0.0, 0.0, float(np.deg2rad(ROTATION_DEG)))
    k.SetTranslation(SHIFT_MM)
    prior = vol.hu.astype(np.float32)
    f = sitk.ResampleImageFilter()
    f.SetReferenceImage(to_sitk(vol))
    f.SetTransform(k)
    f.SetInterpolator(sitk.sitkLinear)
    f.SetUseNearestNeighborExtrapolator(True)   # the scan's ends repeat: no air slab at the border
    current = sitk.GetArrayFromImage(f.Execute(to_sitk(vol, prior)))
    current += np.random.default_rng(seed + 100).normal(0, 8, current.shape).astype(np.float32)
    inv = k.GetInverse()
    cur_sites = {n: np.array(inv.TransformPoint(tuple(float(v) for v in p))) for n, p in sites.items()}
    # the lesions are painted after the move, each scan with its own partial volume (a lesion moved
    # with the anatomy would be blurred by the resampling and look larger than its twin)
    for name, (r_prior, r_current) in LESIONS.items():
        if r_prior:
            paint_ball(prior, vol, sites[name], r_prior)
        if r_current:
            paint_ball(current, vol, cur_sites[name], r_current)
    prior_vol = vol.with_array(np.rint(prior).astype(np.int16), series_uid=f"{vol.series_uid}.1",
                               meta={**vol.meta, "StudyDate": "20240105"})
    cur_vol = vol.with_array(np.clip(np.rint(current), -3024, 3071).astype(np.int16), series_uid=f"{vol.series_uid}.2",
                             meta={**vol.meta, "StudyDate": "20240404"})
    return Pair(prior_vol, cur_vol, ph.lung_mask, k, sites, cur_sites)


def characterised(vol: Volume, lungs: np.ndarray, centres_xyz) -> Detections:
    """`Detections` of ``vol`` whose candidates are the given centres, characterised (as the
    detector would with ``characterise_top``), without running a model."""
    fs = characterise_scan(vol, vol, lungs, centres_xyz)
    cands = tuple(Candidate(tuple(float(v) for v in c), 0.9 - 0.01 * i, 1, None, finding=f)
                  for i, (c, f) in enumerate(zip(centres_xyz, fs)))
    return Detections(series_uid=vol.series_uid, candidates=cands, timings_s={}, backend="none", mode="given",
                      model_id="truth", engine_version="0", meta={"characterise_top": len(cands), "source": ""},
                      volume=vol)


@pytest.fixture(scope="session")
def pair() -> Pair:
    return make_pair()


@pytest.fixture(scope="session")
def pair_detections(pair):
    """Characterised findings at the true lesion sites of both scans (current lungs: the prior's
    true lungs moved, i.e. resampled through the known transform)."""
    prior_sites = [pair.sites_prior_xyz[n] for n in ("stable", "growing", "resolved")]
    cur_sites = [pair.sites_current_xyz[n] for n in ("new", "growing", "stable")]   # another order on purpose
    f = sitk.ResampleImageFilter()
    f.SetReferenceImage(to_sitk(pair.current))
    f.SetTransform(pair.truth)
    f.SetInterpolator(sitk.sitkNearestNeighbor)
    cur_lungs = sitk.GetArrayFromImage(f.Execute(to_sitk(pair.prior, pair.prior_lungs.astype(np.float32)))) > 0.5
    return characterised(pair.prior, pair.prior_lungs, prior_sites), characterised(pair.current, cur_lungs, cur_sites)
