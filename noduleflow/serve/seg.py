"""Characterised findings' masks as a DICOM Segmentation (SEG), built with highdicom.

One binary segment per segmented finding (`noduleflow.engine.characterise.Finding.mask`),
labelled "finding N" (N: its rank) with the same tracking identifier and UID as its TID 1500 group
in the SR (`noduleflow.serve.sr`) and its ``tracking_uid`` in the result JSON, so a viewer or a
follow-up can link the outline to the measurements. Segmented property: "Nodule" (SCT 27925004)
in the category "Morphologically abnormal structure" (SCT 49755003); algorithm type AUTOMATIC,
the model as the algorithm.

The frames are those of the source CT instances that the findings span (a SEG may reference a
subset of its series; empty frames are omitted), each taken from the instance whose
ImagePositionPatient lies on that slice of the detection's volume: the SEG then lies on the
source series' own grid, in its frame of reference.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from noduleflow.engine.errors import ConfigError
from noduleflow.engine.results import tracking_uid

log = logging.getLogger("noduleflow.serve")

SERIES_NUMBER = 9902   # the SEG's own derived series (the SR is 9901)
SLICE_TOLERANCE = 0.05   # an instance lies on a slice when its position is within this fraction of a voxel


def _slice_of(volume, ds) -> int:
    """The slice index (z) of ``volume`` that the CT instance ``ds`` is; ConfigError when none."""
    zyx = volume.world_to_voxel(np.asarray([float(v) for v in ds.ImagePositionPatient]))
    k = int(round(float(zyx[0])))
    if np.max(np.abs(zyx - np.array([k, 0.0, 0.0]))) > SLICE_TOLERANCE or not 0 <= k < volume.shape[0]:
        raise ConfigError(f"instance {ds.get('SOPInstanceUID', '?')} at {list(ds.ImagePositionPatient)} is not a "
                          f"slice of the detected volume (voxel {np.round(zyx, 3).tolist()})")
    return k


def build_seg(detections, evidence, *, model_id: str, engine_version: str, device_serial: str = "0",
              series_uid: str | None = None):
    """The SEG of ``detections``' segmented findings -> highdicom ``Segmentation``, or None when
    there is none. ``detections``: characterised, holding their volume (the grid the masks are
    on); ``evidence``: the source series' CT instances (pydicom Datasets; pixel data not needed),
    all of them or at least those the findings span. ConfigError when the instances are not the
    volume's slices (another series, another in-plane size)."""
    import highdicom as hd  # the serve extra: imported only when a SEG is built

    vol = detections.volume
    if vol is None:
        raise ConfigError("a SEG needs the detections' volume (the grid of the findings' masks)")
    if not evidence:
        raise ConfigError("a SEG needs the source instances")
    found = [(i, c.finding) for i, c in enumerate(detections.candidates)
             if c.finding is not None and c.finding.segmented and c.finding.mask.any()]
    if not found:
        return None
    rows, cols = int(evidence[0].Rows), int(evidence[0].Columns)
    if (rows, cols) != vol.shape[1:]:
        raise ConfigError(f"source instances are {rows} x {cols}, the detected volume's slices {vol.shape[1:]}")
    z0 = min(f.offset_zyx[0] for _, f in found)
    z1 = max(f.offset_zyx[0] + f.mask.shape[0] for _, f in found)
    by_slice = {}
    for ds in evidence:
        k = _slice_of(vol, ds)
        if z0 <= k < z1:
            by_slice[k] = ds
    missing = sorted(set(range(z0, z1)) - set(by_slice))
    if missing:
        raise ConfigError(f"no source instance for slice(s) {missing[:5]} of the findings' masks")
    ks = sorted(by_slice)
    pixels = np.zeros((len(ks), rows, cols, len(found)), dtype=bool)
    for s, (_, f) in enumerate(found):
        full_z = slice(f.offset_zyx[0] - z0, f.offset_zyx[0] - z0 + f.mask.shape[0])
        y, x = f.offset_zyx[1], f.offset_zyx[2]
        pixels[full_z, y:y + f.mask.shape[1], x:x + f.mask.shape[2], s] = f.mask
    algorithm = hd.AlgorithmIdentificationSequence(name=model_id, version=engine_version,
                                                   family=codes.cid7162.ArtificialIntelligence)
    segments = [hd.seg.SegmentDescription(
        segment_number=s + 1, segment_label=f"finding {i + 1}",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=tracking_uid(detections.series_uid, i, detections.candidates[i].center_xyz_mm),
        tracking_id=f"finding {i + 1}") for s, (i, _) in enumerate(found)]
    return hd.seg.Segmentation(
        source_images=[by_slice[k] for k in ks], pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
        series_instance_uid=series_uid or generate_uid(), series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="noduleflow",
        manufacturer_model_name=model_id, software_versions=engine_version, device_serial_number=device_serial,
        content_description="noduleflow findings, automatic: for a reader to confirm",
        content_label="FINDINGS")


def write_seg(detections, evidence, path, **kw) -> Path | None:
    """`build_seg` written to ``path`` (DICOM file) -> the path, or None when there is no
    segmented finding (nothing written)."""
    seg = build_seg(detections, evidence, **kw)
    if seg is None:
        log.info("series %s: no segmented finding, no SEG", detections.series_uid)
        return None
    path = Path(path)
    seg.save_as(path, enforce_file_format=True)
    return path
