"""Building blocks for corrupted inputs: a tiny phantom series, header edits, outcomes.

Every case ends in `outcome()`: the loader must return a `Volume` (warnings recorded in
``meta["warnings"]``) or raise `VolumeError`; any other exception propagates and fails
the test that called it. Outcomes are tallied for the summary the conftest prints.
"""
from __future__ import annotations

import functools
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement

from noduleflow.engine import Volume, VolumeError
from noduleflow.engine.io import load_volume
from noduleflow.engine.io.checks import MIN_SLICES, SPACING_RANGE_MM

SHAPE = (20, 64, 64)
SPACING = (2.5, 2.0, 2.0)
TALLY: Counter = Counter()  # "volume", "volume+warning", "error" -> count


@functools.lru_cache(maxsize=1)
def phantom() -> Volume:
    """A 20 x 64 x 64 synthetic chest (2.5 x 2 x 2 mm), made once per session."""
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    return generate_phantom(5, shape_zyx=SHAPE, spacing_zyx_mm=SPACING,
                            params=PhantomParams(n_nodules=1)).volume


@functools.lru_cache(maxsize=1)
def _master(root: str) -> Path:
    from noduleflow.engine.io.dicom_write import write_dicom_series

    out = Path(root) / "master"
    write_dicom_series(phantom(), out, shuffle_names=False, seed=5)
    return out


def series(tmp_path: Path, master_root: Path) -> list[Path]:
    """A fresh copy of the phantom's 20-slice series in ``tmp_path/s``, in slice order."""
    dst = tmp_path / "s"
    shutil.copytree(_master(str(master_root)), dst)
    return sorted(dst.iterdir())


def edit(paths, fn) -> None:
    """Load each file, ``fn(ds)``, save it back without pydicom's value validation."""
    with pydicom.config.disable_value_validation():
        for p in paths:
            ds = pydicom.dcmread(p)
            fn(ds)
            ds.save_as(p)


def raw(ds, keyword: str, value: bytes, vr: str | None = None) -> None:
    """Put raw bytes into an element (non-numeric text, impossible lengths, odd VRs)."""
    tag = pydicom.tag.Tag(tag_for_keyword(keyword))
    ds[tag] = RawDataElement(tag, vr or dictionary_VR(tag), len(value), value, 0, False, True)


def setter(**values):
    def fn(ds):
        for k, v in values.items():
            setattr(ds, k, v)
    return fn


def outcome(path, **kw) -> Volume | VolumeError:
    """Load; a Volume or the VolumeError. Any other exception escapes (a test failure)."""
    try:
        vol = load_volume(path, **kw)
    except VolumeError as exc:
        TALLY["error"] += 1
        assert "\n" not in str(exc), f"error message is not one line: {exc!r}"
        return exc
    TALLY["volume+warning" if vol.meta.get("warnings") else "volume"] += 1
    check_volume(vol)
    return vol


def check_volume(vol: Volume) -> None:
    """What every loaded volume must satisfy, whatever the input was."""
    assert vol.hu.dtype == np.int16 and vol.hu.ndim == 3
    assert vol.shape[0] >= MIN_SLICES
    lo, hi = SPACING_RANGE_MM
    assert all(lo <= s <= hi for s in vol.spacing_zyx_mm), vol.spacing_zyx_mm
    d = vol.direction_matrix
    np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-3)
    assert all(isinstance(w, str) and w for w in vol.meta.get("warnings", []))
