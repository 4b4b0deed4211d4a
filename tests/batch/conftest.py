"""Fixtures for the batch tests: a small cohort of phantom series (MetaImage and DICOM) written once."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from noduleflow.synthetic.phantom import PhantomParams
from noduleflow.synthetic.synth import write_cohort

# tiny scans: 16 slices of 6 mm, 80 x 80 pixels of 4 mm (about a second each with stage 1 alone)
TINY = dict(params=PhantomParams(n_nodules=2), shape_zyx=(16, 80, 80), spacing_zyx_mm=(6.0, 4.0, 4.0),
            progress=False)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    """ROOT with ROOT/mhd (4 .mhd scans, annotations.csv) and ROOT/dicom (2 DICOM series, in their
    own folders): 6 series."""
    root = tmp_path_factory.mktemp("batch_cohort")
    write_cohort(root / "mhd", 4, 100, fmt="mhd", **TINY)
    write_cohort(root / "dicom", 2, 200, fmt="dicom", **TINY)
    for name in ("findings.csv", "source.json"):
        (root / "mhd" / name).unlink()
    return root


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
