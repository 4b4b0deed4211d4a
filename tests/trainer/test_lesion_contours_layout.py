"""The pulmonary lesion dataset's layout (trainer.data.lesion_contours) on a fabricated folder:
ct_type/hospital/year/month/day/subject/SE01 (DICOM) + SE01_01_0n/<aid>_<loc>.anno per doctor
+ attributes.csv."""
import json
from pathlib import Path

import numpy as np
import pytest

from noduleflow.engine import ConfigError
from noduleflow.engine.io import load_volume
from noduleflow.engine.io.dicom_write import write_dicom_series
from noduleflow.engine.volume import Volume
from noduleflow.trainer.data.lesion_contours import (
    Calcification,
    LesionType,
    Lobe,
    Spiculation,
    lesion_findings,
    lesion_sources,
    parse_attribute,
    read_lesion_dataset,
    read_lesions,
    series_geometry,
)
from noduleflow.trainer.evaluate.sources import read_source

NZ, NY, NX = 16, 32, 32
UID = "1.2.826.0.1.3680043.9.7777.1"
R_PX = 6.0  # the circle's radius, pixels
CENTRE_RC = (14.0, 16.0)  # its centre (row, column), pixels
ATTR_HEADER = ("subject_id,aid,doctor,type,lobe,margin,calcification,lobulation,spiculation,cavity,"
               "vessel_convergence,pleural_indentation\n")


def _circle(n=48):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r, c = CENTRE_RC[0] + R_PX * np.sin(t), CENTRE_RC[1] + R_PX * np.cos(t)
    return np.stack([(c + 0.5) / NX, (r + 0.5) / NY], 1)  # pixel centres -> fractions of the slice


def _anno(folder: Path, aid: int, loc: int, xy: np.ndarray, python_literal=False, **override):
    d = {"SeriesID": UID, "NoduleSerialNumber": aid, "InstanceNumber": loc, "Origin": [-12.0, -11.2, -50.0],
         "Dimension": [NX, NY, NZ], "Spacing": [0.8, 0.7, 1.25], "Coords": np.round(xy, 6).tolist(),
         "XMin": float(xy[:, 0].min()), "XMax": float(xy[:, 0].max()), "YMin": float(xy[:, 1].min()),
         "YMax": float(xy[:, 1].max()), **override}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{aid}_{loc}.anno").write_text(repr(d) if python_literal else json.dumps(d))


@pytest.fixture
def lesions(tmp_path):
    """One subject: doctor 1 contours lesion 1 (a circle) on slices z=6 and z=9 and lesion 2 on
    z=12; doctor 2 contours lesion 1 (a square) on z=7. InstanceNumbers run backwards (z = 16 - n),
    so a reader that takes loc for a slice index puts every contour on the wrong slice."""
    root = tmp_path / "lesions"
    subject = root / "chest" / "hospital_a" / "2019" / "03" / "07" / "S0001"
    vol = Volume(np.full((NZ, NY, NX), -1000, np.int16), (1.25, 0.7, 0.8), (-12.0, -11.2, -50.0), series_uid=UID)
    write_dicom_series(vol, subject / "SE01", reverse_instance_numbers=True, seed=3)
    d1, d2 = subject / "SE01_01_01", subject / "SE01_01_02"
    _anno(d1, 1, NZ - 6, _circle())
    _anno(d1, 1, NZ - 9, _circle(), python_literal=True)
    square = np.array([[13, 11], [21, 11], [21, 19], [13, 19]]) / [NX, NY]  # pixel edges: 8 x 8 centres
    _anno(d2, 1, NZ - 7, square)
    _anno(d1, 2, NZ - 12, np.array([[4.5, 4.5], [10.5, 4.5], [7.5, 10.5]]) / [NX, NY])
    (root / "attributes.csv").write_text(ATTR_HEADER + "S0001,1,1,2,1,1,0,1,2,0,1,0\n"
                                         "S0001,2,1,pleural effusion,0,clear,none,0,none,without,0,0\n")
    return root


def test_contours_become_masks_on_the_right_slices(lesions):
    ds = read_lesion_dataset(lesions)
    (scan,) = ds.scans
    assert scan.subject_id == "S0001" and scan.date.isoformat() == "2019-03-07" and scan.ct_type == "chest"
    assert [d for d, _ in scan.contour_dirs] == [1, 2]
    geo = series_geometry(scan.series_dir)
    vol = load_volume(scan.series_dir)  # the header-only geometry is the loader's
    assert geo.volume.shape == vol.shape and geo.volume.series_uid == vol.series_uid == UID
    np.testing.assert_allclose(geo.volume.origin_xyz_mm, vol.origin_xyz_mm, atol=1e-6)
    np.testing.assert_allclose(geo.volume.spacing_zyx_mm, vol.spacing_zyx_mm, atol=1e-6)
    np.testing.assert_allclose(geo.volume.direction, vol.direction, atol=1e-6)
    one, two = read_lesions(ds, scan, geo)
    m1, m2 = one.mask(1).full(), one.mask(2).full()
    assert sorted(set(np.nonzero(m1)[0])) == [6, 9] and sorted(set(np.nonzero(m2)[0])) == [7]
    assert (one.mask().full() == (m1 | m2)).all()  # the consensus is the union
    # filled area vs the polygon's (shoelace) area, and the square exactly 8 x 8 pixel centres
    xy = (_circle() * [NX, NY]) - 0.5
    shoelace = 0.5 * abs(np.dot(xy[:, 0], np.roll(xy[:, 1], -1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], -1)))
    assert abs(m1[6].sum() - shoelace) <= 0.06 * shoelace and m1[6].sum() == m1[9].sum()
    assert m2[7].sum() == 64 and m2[7, 11:19, 13:21].all()
    # gravity centre maps back into the circle's centre; z between the contoured slices
    idx = vol.world_to_voxel(np.array(one.center_xyz_mm))
    np.testing.assert_allclose(idx[1:], CENTRE_RC, atol=0.35)
    np.testing.assert_allclose(idx[0], np.nonzero(one.mask().full())[0].mean(), atol=1e-6)
    # equivalent diameter: the circle's area in mm^2 (anisotropic pixels); major axis along x
    np.testing.assert_allclose(one.equivalent_diameter_mm, 2 * R_PX * np.sqrt(0.7 * 0.8), rtol=0.05)
    np.testing.assert_allclose(one.major_axis_mm, 2 * R_PX * 0.8, rtol=0.08)
    assert two.mask(1).full()[12].sum() > 0 and not two.mask(1).full()[:12].any()
    with pytest.raises(ConfigError, match="no contour of doctor 2"):
        two.mask(2)


def test_attributes_rows_and_bench_source(lesions):
    ds = read_lesion_dataset(lesions)
    one, two = read_lesions(ds, ds.scans[0])
    a = one.attributes
    assert (a.type, a.lobe, a.margin.name, a.calcification, a.spiculation) == (
        LesionType.NODULE, Lobe.RIGHT_UPPER, "UNCLEAR", Calcification.NONE, Spiculation.LONG)
    assert (a.lobulation, a.cavity, a.vessel_convergence, a.pleural_indentation, a.doctor) == (True, False, True,
                                                                                              False, 1)
    assert two.attributes.type is LesionType.PLEURAL_EFFUSION and two.attributes.lobe is Lobe.SEVERAL
    ann, exc = lesion_findings([one, two])
    assert [f.series_uid for f in ann] == [UID] and ann[0].center_xyz_mm == one.center_xyz_mm
    assert ann[0].diameter_mm == one.equivalent_diameter_mm and len(exc) == 1
    assert lesion_findings([one], diameter="major_axis")[0][0].diameter_mm == one.major_axis_mm
    src = read_source("lesions", lesions)
    (scan,) = src.scans
    assert scan.uid == UID and scan.path.name == "SE01" and src.info["layout"] == "lesion"
    np.testing.assert_allclose(scan.nodules[0, :3], one.center_xyz_mm)
    np.testing.assert_allclose(scan.excluded[:, :3], [two.center_xyz_mm])
    (train,) = lesion_sources(lesions)
    assert train.scan_id == UID and len(train.nodules) == 1 and len(train.excluded) == 1
    assert train.load().shape == (NZ, NY, NX)


@pytest.mark.parametrize("column,value,message", [
    ("type", "7", "type must be one of 1 placeholder.*got '7'"),
    ("lobe", "right_top", "lobe must be one of 0 several.*got 'right_top'"),
    ("calcification", "some", "calcification must be one of 0 none, 1 partial, 2 total, got 'some'"),
    ("cavity", "2", "cavity must be 0 \\(without\\) or 1 \\(with\\), got '2'"),
])
def test_malformed_attribute_values(column, value, message):
    with pytest.raises(ConfigError, match=message):
        parse_attribute(column, value, "attributes.csv line 2: ")
    assert parse_attribute("type", "Ground glass opacity") is LesionType.GROUND_GLASS_OPACITY


def _refused(root, message):
    with pytest.raises(ConfigError, match=message):
        ds = read_lesion_dataset(root)
        for scan in ds.scans:
            read_lesions(ds, scan)


def _edit(path: Path, **changes):
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def test_malformed_layouts_are_refused(lesions):
    subject = lesions / "chest" / "hospital_a" / "2019" / "03" / "07" / "S0001"
    attrs = (lesions / "attributes.csv").read_text()
    (lesions / "attributes.csv").write_text(attrs.replace("S0001,1,1,2,1,1", "S0001,1,1,9,1,1"))
    _refused(lesions, "line 2: type must be one of .*got '9'")
    (lesions / "attributes.csv").write_text(attrs.replace("S0001,2,1,pleural", "S0001,2,2,pleural"))
    _refused(lesions, "lesion 2 labelled by doctor 2, contoured by \\[1\\]")
    (lesions / "attributes.csv").write_text(attrs.splitlines()[0] + "\n" + attrs.splitlines()[1] + "\n")
    _refused(lesions, "no row for subject S0001 lesion 2")
    (lesions / "attributes.csv").write_text(attrs)
    anno = subject / "SE01_01_02" / "1_9.anno"
    good = anno.read_text()
    _edit(anno, Coords=[[400.0, 300.0], [420.0, 300.0], [410.0, 320.0]])  # pixels, not fractions
    _refused(lesions, "fractions of the slice size in \\[0, 1\\], got values in \\[300, 420\\]")
    anno.write_text(good)
    _edit(anno, InstanceNumber=8)
    _refused(lesions, "InstanceNumber 8 differs from the file name's 9")
    anno.write_text(good)
    _edit(anno, SeriesID="1.2.3")
    _refused(lesions, "SeriesID 1.2.3 is not the series")
    anno.write_text(good)
    _edit(anno, Spacing=[0.7, 0.8])  # (y, x) instead of ITK's (x, y)
    _refused(lesions, "Spacing \\[0.7, 0.8\\] differs")
    anno.write_text(good)
    (subject / "SE01_01_02" / "1_99.anno").write_text(good.replace('"InstanceNumber": 9', '"InstanceNumber": 99'))
    _refused(lesions, "no single slice .* has InstanceNumber 99")
    (subject / "SE01_01_02" / "1_99.anno").unlink()
    (subject / "SE01_01_02" / "notes.txt").write_text("x")
    _refused(lesions, "named <aid>_<loc>.anno, got 'notes.txt'")
    (subject / "SE01_01_02" / "notes.txt").unlink()
    (subject / "SE02").mkdir()
    _refused(lesions, "got 'SE02'")
    (subject / "SE02").rmdir()
    year = subject.parents[2]
    (year / "13").mkdir()
    _refused(lesions, "must form a date, got 2019/13$")
    (year / "13").rmdir()
    (year / "03").rename(year / "02")  # 2019-02-07 is a date, 2019-02-30 is not
    (year / "02" / "30").mkdir()
    _refused(lesions, "must form a date, got 2019/02/30")
