"""The lung mask on the one real scan at hand (LIDC-IDRI-0314 in ../shared/realct): anatomy only.

The scan is a fixture for what the mask does on real anatomy (a real trachea and main
bronchi, table, noise); no threshold is tuned on it and no accuracy figure comes from it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from noduleflow.engine.io import load_volume
from noduleflow.engine.lungmask import dice, lung_mask
from noduleflow.engine.preprocess import PreprocessSpec

REALCT = Path(__file__).resolve().parents[2].parent / "shared" / "realct"
needs_realct = pytest.mark.skipif(not REALCT.is_dir(), reason="../shared/realct (LIDC-IDRI-0314) is not present")


def central_airway(hu: np.ndarray, spacing_zyx_mm, superior_last: bool = True):
    """The trachea and main bronchi's lumens, found independently of the engine (scipy only).

    In the largest air component (HU < -900, 6-connected, not touching the in-plane border)
    that reaches the 10 most superior slices -- the airway tree -- trace 2-D lumens of at
    least 40 mm^2 slice by slice from the top, each overlapping the previous slice's traced
    lumen: the trachea, then below the carina the two main bronchi down to where they
    narrow into lobar bronchi. Returns (traced bool (z, y, x), index of the carina's slice:
    the first with two traced lumens).
    """
    from scipy import ndimage

    px_mm2 = spacing_zyx_mm[1] * spacing_zyx_mm[2]
    lab3, _ = ndimage.label(hu < -900)
    vol3 = np.bincount(lab3.ravel())
    vol3[np.unique(np.concatenate([lab3[:, 0].ravel(), lab3[:, -1].ravel(),
                                   lab3[:, :, 0].ravel(), lab3[:, :, -1].ravel()]))] = 0
    top_ids = np.unique(lab3[-10:] if superior_last else lab3[:10])
    top_ids = top_ids[top_ids > 0]
    tree = lab3 == top_ids[np.argmax(vol3[top_ids])]
    del lab3
    traced = np.zeros(hu.shape, bool)
    prev, carina = None, None
    for z in (range(hu.shape[0] - 1, -1, -1) if superior_last else range(hu.shape[0])):
        lab, _ = ndimage.label(tree[z])
        big = np.flatnonzero(np.bincount(lab.ravel()) * px_mm2 >= 40.0)
        keep = [i for i in big[big > 0] if prev is None or (prev & (lab == i)).any()]
        if not keep:
            if prev is not None:
                break
            continue
        if carina is None and prev is not None and len(keep) >= 2:
            carina = z
        traced[z] = prev = np.isin(lab, keep)
    return traced, carina


@pytest.fixture(scope="module")
def realct():
    return load_volume(REALCT)


@needs_realct
def test_trachea_and_main_bronchi_are_out_of_the_mask(realct):
    """The detection pipeline's mask (3 mm dilation) holds neither the trachea nor the main bronchi.

    The mask before this fix held none of the trachea above the carina either, but its closing,
    hole filling and dilation put 12 % of the main bronchi's lumen below the carina back in
    (over ~40 slices, at the hilum); what remains now (~3 %) is where the lung encloses the
    bronchus in its slice.
    """
    vol = realct
    assert vol.direction_matrix[2, 2] > 0  # slices run foot to head: the top is the last slice
    airway, carina = central_airway(vol.hu, vol.spacing_zyx_mm)
    assert carina is not None
    zs = np.flatnonzero(airway.any(axis=(1, 2)))
    # anatomy sanity: a trachea of >= 6 cm above the carina, main bronchi traced for >= 2 cm below it
    assert (zs[-1] - carina) * vol.spacing_zyx_mm[0] >= 60 and (carina - zs[0]) * vol.spacing_zyx_mm[0] >= 20
    mask = lung_mask(vol, PreprocessSpec().lung)
    trachea, bronchi = airway.copy(), airway.copy()
    trachea[: carina + 1] = False
    bronchi[carina + 1:] = False
    assert np.count_nonzero(mask & trachea) == 0
    assert np.count_nonzero(mask & bronchi) <= 0.05 * np.count_nonzero(bronchi)
    # and the lungs are there: two large components, each several litres' worth of voxels
    voxel_ml = float(np.prod(vol.spacing_zyx_mm)) / 1000.0
    assert 3000 < mask.sum() * voxel_ml < 9000


@needs_realct
@pytest.mark.slow
@pytest.mark.parametrize("dilate_mm", [0.0, 3.0])
def test_real_scan_mask_matches_full_resolution_reference(realct, dilate_mm):
    """The coarse-grid mask against the same algorithm run on every voxel with scipy/skimage."""
    from noduleflow.bench import reference

    spec = PreprocessSpec().lung
    params = type(spec)(**{**spec.__dict__, "dilate_mm": dilate_mm})
    ours = lung_mask(realct, params)
    assert dice(ours, reference.lung_mask(realct, params)) >= 0.99
