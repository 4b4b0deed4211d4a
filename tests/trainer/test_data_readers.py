"""LUNA16 folder reader (folds), LUNA16 CSV readers and the LIDC XML parser (hand-written fixture)."""
from pathlib import Path

import numpy as np
import pytest

from noduleflow.engine import ConfigError
from noduleflow.engine.volume import Volume
from noduleflow.trainer.data.annotations import read_annotations, read_candidates, read_findings
from noduleflow.trainer.data.lidc import LidcRules, discover_lidc, lidc_findings, parse_read_message
from noduleflow.trainer.data.luna16 import read_luna16
from noduleflow.trainer.data.sources import sources_from_records

FIXTURE = Path(__file__).parent / "fixtures" / "lidc_read_message.xml"


def _write_mhd(path: Path, seed: int):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.random.default_rng(seed).integers(-1000, 400, (10, 16, 16)).astype(np.int16))
    img.SetSpacing((0.7, 0.7, 2.5))
    img.SetOrigin((-100.0, -120.0, -300.0))
    sitk.WriteImage(img, str(path))


@pytest.fixture
def luna(tmp_path):
    for k, uids in ((0, ["1.2.3.1", "1.2.3.2"]), (1, ["1.2.3.3"])):
        (tmp_path / f"subset{k}").mkdir()
        for i, uid in enumerate(uids):
            _write_mhd(tmp_path / f"subset{k}" / f"{uid}.mhd", k * 10 + i)
    (tmp_path / "annotations.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
        "1.2.3.1,-98.5,-117.25,-295.0,6.5\n1.2.3.1,-97.0,-116.0,-293.0,4.0\n1.2.3.3,-99.0,-119.0,-290.0,12.0\n")
    (tmp_path / "annotations_excluded.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3.2,-98.0,-118.0,-296.0,-1\n")
    (tmp_path / "candidates_V2.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,class\n1.2.3.1,-98.5,-117.25,-295.0,1\n1.2.3.1,-96.0,-115.0,-292.0,0\n"
        "1.2.3.2,-97.0,-116.0,-294.0,0\n")
    return tmp_path


def test_luna16_reader_and_folds(luna):
    ds = read_luna16(luna)
    assert [s.series_uid for s in ds.scans] == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    assert ds.folds == (0, 1)
    s1 = ds.scans[0]
    assert s1.fold == 0 and s1.path.name == "1.2.3.1.mhd"
    assert [n.diameter_mm for n in s1.nodules] == [6.5, 4.0]
    assert s1.nodules[0].center_xyz_mm == (-98.5, -117.25, -295.0)
    assert [c.label for c in s1.candidates] == [1, 0]
    assert ds.scans[1].excluded[0].diameter_mm == 0.0  # LUNA16's -1 = no size
    train, val, test = ds.split(val_folds=[1])
    assert {s.series_uid for s in val} == {"1.2.3.3"} and not test
    assert {s.series_uid for s in train} == {"1.2.3.1", "1.2.3.2"}
    assert [s.series_uid for s in read_luna16(luna, subsets=[1]).scans] == ["1.2.3.3"]
    with pytest.raises(ConfigError, match="subsets \\[4\\]"):
        read_luna16(luna, subsets=[4])
    with pytest.raises(ConfigError, match="folds \\[7\\]"):
        ds.split(val_folds=[7])


def test_luna16_world_coordinates_match_loader(luna):
    from noduleflow.engine.io import load_volume

    s1 = read_luna16(luna).scans[0]
    vol = load_volume(s1.path)
    zyx = vol.world_to_voxel(np.array(s1.nodules[0].center_xyz_mm))
    np.testing.assert_allclose(zyx, [(-295.0 + 300) / 2.5, (-117.25 + 120) / 0.7, (-98.5 + 100) / 0.7])


def test_csv_errors(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\nu,1,2,zz,3\n")
    with pytest.raises(ConfigError, match="line 2.*coordZ='zz'"):
        read_findings(p)
    p.write_text("seriesuid,x,y\n")
    with pytest.raises(ConfigError, match="lacks columns"):
        read_findings(p)
    assert read_findings(tmp_path / "missing.csv") == []
    p.write_text("seriesuid,coordX,coordY,coordZ\nu,1,2,3\n")  # a model's false positives, no class
    assert read_candidates(p)[0].label == 0
    p.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\nu,1,2,3,4\nu,5,6,7,8\nv,0,0,0,1\n")
    arr = read_annotations(p)
    assert arr["u"].shape == (2, 4) and arr["v"].tolist() == [[0, 0, 0, 1]]


# -- LIDC -------------------------------------------------------------------------------------
SPACING = (2.5, 0.7, 0.7)
ORIGIN = (-100.0, -100.0, -50.0)


def _volume():
    return Volume(np.zeros((32, 260, 260), np.int16), SPACING, ORIGIN, series_uid="1.2.826.0.1.9999.2")


def test_lidc_parse_marks():
    msg = parse_read_message(FIXTURE)
    assert msg.series_uid == "1.2.826.0.1.9999.2" and msg.n_readers == 4
    kinds = sorted((m.reader, m.kind) for m in msg.marks)
    assert kinds == [(0, "nodule"), (0, "nodule"), (0, "nodule"), (1, "nodule"), (1, "nodule"), (1, "non_nodule"),
                     (2, "nodule"), (2, "nodule"), (3, "nodule"), (3, "small")]
    assert msg.marks[0].rois[0].points_xy[1] == (60.0, 40.0)


def test_lidc_findings_luna16_rule():
    ann, exc = lidc_findings(parse_read_message(FIXTURE), _volume())
    assert len(ann) == 1
    a = ann[0]
    # readers 0, 1: square cols 50..60, reader 2: cols 52..62; rows 40..50; slices z = -25, -22.5
    col = (55 + 55 + 57) / 3
    np.testing.assert_allclose(a.center_xyz_mm, [-100 + 0.7 * col, -100 + 0.7 * 45, -23.75], atol=1e-9)
    np.testing.assert_allclose(a.diameter_mm, 0.7 * 10 * np.sqrt(2))
    assert a.series_uid == "1.2.826.0.1.9999.2"
    exc_xy = sorted((round(f.center_xyz_mm[0], 3), round(f.center_xyz_mm[1], 3), f.diameter_mm) for f in exc)
    # nodule by 2 readers (cols/rows 150..160), 2 mm contoured nodule by 3 readers (250..252),
    # the non-nodule locus (100, 200) and the < 3 mm point (200, 100)
    assert len(exc) == 4
    np.testing.assert_allclose([e[:2] for e in exc_xy],
                               [[-100 + 0.7 * 100, -100 + 0.7 * 200], [-100 + 0.7 * 155, -100 + 0.7 * 155],
                                [-100 + 0.7 * 200, -100 + 0.7 * 100], [-100 + 0.7 * 251, -100 + 0.7 * 251]],
                               atol=1e-3)
    np.testing.assert_allclose([e[2] for e in exc_xy], [0, 7 * np.sqrt(2), 0, 1.4 * np.sqrt(2)], atol=1e-9)
    # with a looser rule the 2-reader nodule becomes an annotation
    ann2, exc2 = lidc_findings(parse_read_message(FIXTURE), _volume(), LidcRules(min_readers=2))
    assert len(ann2) == 2 and len(exc2) == 3


def test_lidc_geometry_mismatch_raises():
    vol = Volume(np.zeros((8, 260, 260), np.int16), SPACING, ORIGIN, series_uid="1.2.826.0.1.9999.2")
    with pytest.raises(ConfigError, match="imageZposition"):
        lidc_findings(parse_read_message(FIXTURE), vol)
    other = Volume(np.zeros((32, 260, 260), np.int16), SPACING, ORIGIN, series_uid="9.9")
    with pytest.raises(ConfigError, match="does not match"):
        lidc_findings(parse_read_message(FIXTURE), other)


def test_lidc_discovery(tmp_path):
    series = tmp_path / "LIDC-IDRI-0001" / "1.2.826.0.1.9999.3" / "1.2.826.0.1.9999.2"
    series.mkdir(parents=True)
    (series / "069.xml").write_text(FIXTURE.read_text())
    (series / "000001.dcm").write_bytes(b"")
    other = tmp_path / "LIDC-IDRI-0002" / "x"
    other.mkdir(parents=True)
    (other / "cxr.xml").write_text('<IdriReadMessage xmlns="http://www.nih.gov"/>')
    cases = discover_lidc(tmp_path)
    assert len(cases) == 1 and cases[0].series_uid == "1.2.826.0.1.9999.2" and cases[0].series_dir == series


def test_lidc_convert_through_dicom(tmp_path):
    from noduleflow.engine.io.dicom_write import write_dicom_series
    from noduleflow.trainer.data.lidc import convert_lidc, lidc_sources

    series = tmp_path / "LIDC-IDRI-0001" / "study" / "series"
    write_dicom_series(_volume(), series, series_uid="1.2.826.0.1.9999.2", study_uid="1.2.826.0.1.9999.3")
    (series / "069.xml").write_text(FIXTURE.read_text())
    ann_path, exc_path = convert_lidc(tmp_path, tmp_path / "converted", progress=False)
    ann, exc = read_findings(ann_path), read_findings(exc_path)
    expect, expect_exc = lidc_findings(parse_read_message(FIXTURE), _volume())
    assert len(ann) == 1 and len(exc) == len(expect_exc) == 4
    np.testing.assert_allclose(ann[0].center_xyz_mm, expect[0].center_xyz_mm, atol=1e-3)
    np.testing.assert_allclose(ann[0].diameter_mm, expect[0].diameter_mm, atol=1e-3)
    src = lidc_sources(tmp_path / "converted")
    assert [s.scan_id for s in src] == ["1.2.826.0.1.9999.2"] and len(src[0].nodules) == 1
    assert src[0].load().shape == (32, 260, 260)


def test_luna16_sources(luna):
    train, val, _ = read_luna16(luna).split(val_folds=[1])
    src = sources_from_records(train)
    assert [s.scan_id for s in src] == ["1.2.3.1", "1.2.3.2"] and len(src[0].nodules) == 2
    assert len(src[1].excluded) == 1 and not {s.scan_id for s in src} & {s.series_uid for s in val}
    v = src[1].load()
    assert v.series_uid == "1.2.3.2" and v.shape == (10, 16, 16)
