"""The temporal lung nodule dataset's layout (trainer.data.temporal) on fabricated folders:
thickness folders, <patient>_<YYYYMMDD>.mhd scans, lung_mask/, annotations.csv in world mm."""
import datetime
import shutil
from pathlib import Path

import numpy as np
import pytest

from noduleflow.engine import ConfigError, VolumeError
from noduleflow.engine.io import load_volume
from noduleflow.trainer.data.temporal import (
    detection_items,
    follow_up_pairs,
    load_lung_mask,
    read_temporal,
    temporal_sources,
)
from noduleflow.trainer.evaluate.sources import read_source

SHAPE = (16, 32, 32)
# (thickness, name, nodule voxel (z, y, x), x axis flipped): patient 100 has three dates, the
# middle one only at 1.25 mm and the last only at 5 mm; patient 7 has one
SCANS = [("1.25mm", "100_20210301", (8, 12, 20), False), ("1.25mm", "100_20200115", (5, 20, 9), True),
         ("1.25mm", "7_20190902", (10, 16, 16), False), ("5mm", "100_20200115", (3, 14, 11), False),
         ("5mm", "100_20220510", (4, 18, 22), True)]


def _write(path: Path, arr: np.ndarray, spacing_xyz, flip_x: bool):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing_xyz)
    img.SetOrigin((40.0 if flip_x else -40.0, -60.0, -300.0))
    img.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1) if flip_x else (1, 0, 0, 0, 1, 0, 0, 0, 1))
    sitk.WriteImage(img, str(path))
    return img


def _dataset(root: Path) -> Path:
    """Fabricate both thickness folders; each scan has one bright 3x3x3 nodule whose world centre
    SimpleITK computes (not the code under test) for annotations.csv."""
    rows = {"1.25mm": [], "5mm": []}
    for k, (thick, name, zyx, flip) in enumerate(SCANS):
        folder = root / thick
        (folder / "lung_mask").mkdir(parents=True, exist_ok=True)
        arr = np.full(SHAPE, -800, np.int16)
        z, y, x = zyx
        arr[z - 1:z + 2, y - 1:y + 2, x - 1:x + 2] = 60
        spacing = (0.7, 0.75, 1.25 if thick == "1.25mm" else 5.0)
        img = _write(folder / f"{name}.mhd", arr, spacing, flip)
        world = img.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))
        rows[thick].append(f"{name},{world[0]:.4f},{world[1]:.4f},{world[2]:.4f},{3.0 + k}")
        if name != "7_20190902":  # one scan without a lung mask
            mask = np.zeros(SHAPE, np.int16)
            mask[2:14, 4:28, 2:15], mask[2:14, 4:28, 17:30] = 3, 4
            _write(folder / "lung_mask" / f"{name}.mhd", mask, spacing, flip)
    for thick, lines in rows.items():
        (root / thick / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n"
                                                      + "\n".join(lines) + "\n")
    return root


@pytest.fixture
def temporal(tmp_path):
    return _dataset(tmp_path / "temporal")


def test_patients_time_points_and_world_coordinates(temporal):
    ds = read_temporal(temporal)
    assert [p.patient_id for p in ds.patients] == ["100", "7"] and ds.thicknesses == ("1.25mm", "5mm")
    tps = ds.patients[0].time_points
    assert [t.date for t in tps] == [datetime.date(2020, 1, 15), datetime.date(2021, 3, 1), datetime.date(2022, 5, 10)]
    assert [t.index for t in tps] == [1, 2, 3]
    assert [[s.thickness for s in t.series] for t in tps] == [["1.25mm", "5mm"], ["1.25mm"], ["5mm"]]
    assert tps[1].get("5mm") is None and tps[0].get("1.25mm").seriesuid == "100_20200115"
    for thick, name, zyx, _ in SCANS:  # each annotation lands on its painted nodule
        s = next(s for s in ds.series(thick) if s.seriesuid == name)
        vol = load_volume(s.scan)
        (nod,) = s.nodules
        idx = vol.world_to_voxel(np.array(nod.center_xyz_mm))
        np.testing.assert_allclose(idx, zyx, atol=1e-3)
        assert vol.hu[tuple(np.rint(idx).astype(int))] == 60
    with pytest.raises(ConfigError, match="'2mm'"):
        ds.series("2mm")


def test_follow_up_pairs_detection_items_and_masks(temporal):
    ds = read_temporal(temporal)
    (pair,) = follow_up_pairs(ds, "1.25mm")
    assert (pair.prior.seriesuid, pair.current.seriesuid) == ("100_20200115", "100_20210301")
    assert pair.interval_days == (datetime.date(2021, 3, 1) - datetime.date(2020, 1, 15)).days
    assert pair.prior.nodules[0].center_xyz_mm != pair.current.nodules[0].center_xyz_mm
    (pair5,) = follow_up_pairs(ds, "5mm")  # T_1 with T_3: T_2 has no 5 mm series
    assert (pair5.prior.date.year, pair5.current.date.year) == (2020, 2022)
    items = list(detection_items(ds, "1.25mm"))
    assert [p.name for p, _ in items] == ["100_20200115.mhd", "100_20210301.mhd", "7_20190902.mhd"]
    assert all(len(n) == 1 for _, n in items)
    s = ds.series("1.25mm")[0]
    mask = load_lung_mask(s)
    assert mask.dtype == bool and mask.shape == SHAPE and mask.sum() == 12 * 24 * (13 + 13)
    with pytest.raises(VolumeError, match="no lung mask"):
        load_lung_mask(ds.series("1.25mm")[2])
    src = temporal_sources(temporal, "5mm")
    assert [x.scan_id for x in src] == ["100_20200115", "100_20220510"]
    assert src[1].load().shape == SHAPE and len(src[1].nodules) == 1


def test_bench_source_reads_one_thickness(temporal):
    with pytest.raises(ConfigError, match="1.25mm and 5mm .* give one: t="):
        read_source("t", temporal)
    src = read_source("t", temporal / "1.25mm")
    assert [s.uid for s in src.scans] == ["100_20200115", "100_20210301", "7_20190902"]  # no lung masks
    assert src.n_nodules == 3 and src.info["layout"] == "temporal"
    assert load_volume(src.scans[0].path).series_uid == src.scans[0].uid  # what detect_source checks
    shutil.rmtree(temporal / "5mm")
    assert [s.uid for s in read_source("t", temporal).scans] == [s.uid for s in src.scans]


def _expect(root, message, error=ConfigError):
    with pytest.raises(error, match=message):
        read_temporal(root)


def test_malformed_layouts_are_refused(temporal):
    t = temporal / "1.25mm"
    (t / "7_20191345.mhd").write_text("")  # not a date
    _expect(temporal, "'20191345' is not a date")
    (t / "7_20191345.mhd").unlink()
    (temporal / "2.5mm").mkdir()
    _expect(temporal, "not '2.5mm'")
    (temporal / "2.5mm").rmdir()
    ann = (t / "annotations.csv").read_text()
    (t / "annotations.csv").write_text(ann.replace("diameter_mm", "diameter"))
    _expect(temporal, "header must be the columns")
    lines = ann.splitlines()
    name, *_ = lines[1].split(",")
    (t / "annotations.csv").write_text("\n".join(lines + [f"{name},8,12,20,4"]))  # voxel indices, not world mm
    _expect(temporal, r"\(8.0, 12.0, 20.0\) mm lies outside")
    (t / "annotations.csv").write_text("\n".join(lines + ["999_20200101,1,2,3,4"]))
    _expect(temporal, "no scan .*999_20200101")
    (t / "annotations.csv").write_text(ann)
    shutil.copy(t / "lung_mask" / "100_20200115.mhd", t / "lung_mask" / "5_20200101.mhd")
    _expect(temporal, "lung mask without its scan")
    (t / "lung_mask" / "5_20200101.mhd").unlink()
    import SimpleITK as sitk

    s = read_temporal(temporal).series("1.25mm")[0]
    img = sitk.ReadImage(str(s.lung_mask))
    sitk.WriteImage(sitk.Cast(img, sitk.sitkInt16) - 1000, str(s.lung_mask))  # a masked CT, not labels
    with pytest.raises(VolumeError, match="minimum -1000 < 0"):
        load_lung_mask(s)
