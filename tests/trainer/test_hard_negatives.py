"""Hard-negative mining: a model's most probable grid points away from every finding."""
from __future__ import annotations

import numpy as np

from noduleflow.engine.preprocess import PreprocessSpec, preprocess
from noduleflow.synthetic.phantom import generate_phantom
from noduleflow.trainer.data.phantoms import phantom_hard_negatives

TINY = dict(shape_zyx=(60, 112, 112), spacing_zyx_mm=(2.5, 2.0, 2.0))


def test_mined_points_are_negative_far_from_findings_and_capped(tiny_package):
    seeds = [4100, 4101]
    hard = phantom_hard_negatives(seeds, tiny_package, per_scan=20, min_prob=0.0, progress=False, **TINY)
    assert hard.patches.shape[1:] == (1, 41, 41, 41) and hard.patches.dtype == np.uint8
    assert (hard.labels == 0).all()
    per_scan = np.bincount(hard.scan - hard.scan.min())
    assert 0 < per_scan.max() <= 20 and len(per_scan) == len(seeds)
    assert ((hard.locations >= 0) & (hard.locations <= 1)).all()
    # every mined patch centre is farther than radius + 3 mm from each nodule: recompute from the
    # patch location (relative position in the 1 mm lung box) on the same phantoms
    for k, seed in enumerate(seeds):
        ph = generate_phantom(seed, **TINY)
        assert len(ph.nodules) > 0  # these seeds hold nodules, so the distance check bites
        pre = preprocess(ph.volume, PreprocessSpec())
        loc = hard.locations[hard.scan == hard.scan.min() + k]
        zyx = loc * (np.asarray(pre.volume.shape) - 1)
        for n in list(ph.nodules) + list(ph.excluded):
            c = pre.volume.world_to_voxel(np.asarray([n.center_xyz_mm]))[0]
            assert (np.linalg.norm(zyx - c, axis=1) > n.diameter_mm / 2 + 3.0 - 1e-3).all()
