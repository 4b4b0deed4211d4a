"""The one preprocessing path, shared by detection and training (no train/serve skew).

volume -> lung mask (native resolution) -> crop to the lung box + margin -> resample
HU (trilinear) and mask (nearest) to the target spacing. The margin is half a patch
(20 mm) plus the mask dilation, so every patch centred in the lung sees image data.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .lungmask import LungMaskParams, lung_mask
from .resample import crop, lung_bbox, resample
from .volume import Volume


@dataclass(frozen=True)
class PreprocessSpec:
    target_spacing_zyx_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    lung: LungMaskParams = field(default_factory=lambda: LungMaskParams(dilate_mm=3.0))
    margin_mm: float = 20.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        d = dict(d)
        lung_d = dict(d.pop("lung", {}))
        # a manifest written before the wall-lesion step (no such key) was trained and measured
        # without it: keep its mask as it was
        lung_d.setdefault("wall_lesion_mm", 0.0)
        lung = LungMaskParams(**lung_d)
        return cls(target_spacing_zyx_mm=tuple(d.pop("target_spacing_zyx_mm", (1.0, 1.0, 1.0))), lung=lung, **d)


@dataclass(frozen=True, eq=False)
class Preprocessed:
    volume: Volume            # int16 HU at the target spacing, cropped to the lung box
    mask: np.ndarray          # bool lung mask on the same grid
    bbox_native: tuple        # (z0, z1, y0, y1, x0, x1) of the crop in the original volume
    timings_s: dict
    device_hu: object = None  # the 1 mm volume on the GPU when preprocessed there (`engine.preprocess_cuda`)


def preprocess(volume: Volume, spec: PreprocessSpec = PreprocessSpec()) -> Preprocessed:
    t = {}
    t0 = time.perf_counter()
    mask = lung_mask(volume, spec.lung)
    t["mask"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    bbox = lung_bbox(mask, volume.spacing_zyx_mm, spec.margin_mm + spec.lung.dilate_mm)
    cropped = crop(volume, bbox)
    vol1 = resample(cropped, spec.target_spacing_zyx_mm, order=1)
    mask1 = resample(cropped.with_array(mask[bbox[0]:bbox[1], bbox[2]:bbox[3], bbox[4]:bbox[5]]),
                     spec.target_spacing_zyx_mm, order=0).hu
    t["resample"] = time.perf_counter() - t0
    return Preprocessed(vol1, mask1, bbox, t)
