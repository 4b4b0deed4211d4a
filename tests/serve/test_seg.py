"""The findings' masks as a DICOM SEG: read back with pydicom and highdicom, one segment per
segmented finding with the SR's tracking UIDs, and every mask voxel on the source series' grid."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest

from noduleflow.engine.characterise import characterise_scan
from noduleflow.engine.errors import ConfigError
from noduleflow.engine.io import load_volume
from noduleflow.engine.io.dicom_write import write_dicom_series
from noduleflow.engine.results import Candidate, Detections, tracking_uid
from noduleflow.engine.volume import Volume

hd = pytest.importorskip("highdicom")

SPACING = (1.5, 0.8, 0.8)
SHAPE = (24, 48, 56)
CENTRES_ZYX = [(8.0, 20.0, 18.0), (15.0, 28.0, 38.0)]
RADII_MM = (4.0, 3.0)


def _series(tmp_path):
    g = np.indices(SHAPE).astype(float)
    hu = np.full(SHAPE, -850.0)
    for c, r in zip(CENTRES_ZYX, RADII_MM):
        d = np.sqrt(sum(((g[i] - c[i]) * SPACING[i]) ** 2 for i in range(3)))
        hu = np.maximum(hu, -850.0 + np.clip(0.5 - (d - r) / 0.7, 0, 1) * 890.0)
    hu += np.random.default_rng(0).normal(0, 10, SHAPE)
    # feet first: the slices' normal points down, so slice order and world z run opposite ways
    vol = Volume(hu.astype(np.int16), SPACING, (-20.0, -30.0, -100.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, -1))
    files = write_dicom_series(vol, tmp_path / "ct", series_uid="1.2.826.0.1.3680043.8.498.4242", seed=3)
    loaded = load_volume(tmp_path / "ct")
    centres = [vol.voxel_to_world(np.asarray(c)) for c in CENTRES_ZYX]
    fs = characterise_scan(loaded, loaded, np.ones(SHAPE, bool), centres)
    cands = tuple(Candidate(tuple(float(v) for v in c), 0.9, 1, None, finding=f) for c, f in zip(centres, fs)) + \
        (Candidate((0.0, 0.0, -110.0), 0.2),)   # a candidate without a finding: no segment
    det = Detections(series_uid=loaded.series_uid, candidates=cands, timings_s={}, backend="b", mode="dense",
                     model_id="m", engine_version="0", meta={"characterise_top": 2}, volume=loaded)
    evidence = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    return det, evidence


def test_seg_reads_back_and_lies_on_the_source_grid(tmp_path):
    from noduleflow.serve.seg import write_seg

    det, evidence = _series(tmp_path)
    assert all(c.finding.segmented for c in det.candidates[:2])
    path = write_seg(det, evidence, tmp_path / "seg.dcm", model_id="m", engine_version="0")
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.FrameOfReferenceUID == evidence[0].FrameOfReferenceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == evidence[0].SeriesInstanceUID
    segs = ds.SegmentSequence
    assert [s.SegmentLabel for s in segs] == ["finding 1", "finding 2"]
    want_uids = [tracking_uid(det.series_uid, i, det[i].center_xyz_mm) for i in range(2)]
    assert [s.TrackingUID for s in segs] == want_uids

    seg = hd.seg.segread(path)
    assert seg.get_segment_numbers() == [1, 2] and seg.get_tracking_ids() is not None
    # every frame: the pixel data placed in the world through the frame's own position and the
    # shared orientation and spacing, independent of the writer's slice mapping
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.array([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    dy, dx = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    pix = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    vol = det.volume
    for s in (1, 2):
        pts = []
        for fr, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
            if int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) != s:
                continue
            ipp = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
            r, c = np.nonzero(pix[fr])
            pts.append(ipp + np.outer(c * dx, iop[:3]) + np.outer(r * dy, iop[3:]))
        pts = np.concatenate(pts)
        full = det[s - 1].finding.full_mask(vol.shape)
        truth = vol.voxel_to_world(np.argwhere(full).astype(float))
        assert len(pts) == len(truth) == int(det[s - 1].finding.mask.sum())
        assert np.allclose(np.sort(pts, axis=0), np.sort(truth, axis=0), atol=1e-3)
    # highdicom's own reader: by source instance, the masks' slices
    by_uid = {str(e.SOPInstanceUID): e for e in evidence}
    uids = [u for _, _, u in seg.get_source_image_uids()]
    arr = seg.get_pixels_by_source_instance(uids, segment_numbers=[1, 2])
    full = [det[i].finding.full_mask(vol.shape) for i in range(2)]
    for u, frame in zip(uids, arr):
        k = int(round(vol.world_to_voxel(np.array([float(v) for v in by_uid[u].ImagePositionPatient]))[0]))
        for s in range(2):
            assert np.array_equal(frame[..., s].astype(bool), full[s][k])


def test_seg_refuses_another_grid_and_skips_no_findings(tmp_path):
    from noduleflow.serve.seg import build_seg

    det, evidence = _series(tmp_path)
    bare = Detections(series_uid=det.series_uid, candidates=(Candidate((0.0, 0.0, -110.0), 0.2),), timings_s={},
                      backend="b", mode="dense", model_id="m", engine_version="0", volume=det.volume)
    assert build_seg(bare, evidence, model_id="m", engine_version="0") is None
    moved = []
    for e in evidence:
        e = e.copy()
        e.ImagePositionPatient = [float(v) + 0.4 for v in e.ImagePositionPatient]
        moved.append(e)
    with pytest.raises(ConfigError, match="not a slice of the detected volume"):
        build_seg(det, moved, model_id="m", engine_version="0")
