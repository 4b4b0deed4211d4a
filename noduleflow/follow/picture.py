"""The follow-up picture of one matched nodule: prior and current axial crops side by side, each
with its segmentation's contour (`noduleflow.engine.render`'s crops and contours, radiological
orientation), and a caption with the change."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from noduleflow.engine.render import crop, draw_contour, finding_crop, window_u8

CAPTION_PX = 30


def _panel(volume, finding, center_xyz_mm, title: str, half_mm: float, size_px: int) -> Image.Image:
    c = volume.world_to_voxel(np.asarray(center_xyz_mm, dtype=np.float64))
    im = Image.fromarray(window_u8(crop(volume, c, "axial", half_mm, size_px))).convert("RGB")
    if finding is not None and finding.segmented:
        draw_contour(im, finding_crop(volume, finding, c, "axial", half_mm, size_px))
    d = ImageDraw.Draw(im)
    d.text((3, 2), title, fill=(255, 255, 0))
    # 10 mm scale bar, bottom right; "R" on the viewer's left (radiological)
    bar = 10.0 * size_px / (2 * half_mm)
    d.line([size_px - 6 - bar, size_px - 5, size_px - 6, size_px - 5], fill=(255, 255, 255), width=2)
    d.text((size_px - 6 - bar, size_px - 17), "10mm", fill=(255, 255, 255))
    d.text((2, size_px // 2 - 6), "R", fill=(120, 220, 255))
    return im


def _describe(kind, d_mm, core_mm, v_mm3) -> str:
    core = f" core {core_mm:.1f}" if core_mm else ""
    return f"{kind} {d_mm:.1f}mm{core} {v_mm3:.0f}mm3"


def pair_image(ff, prior_tp, current_tp, half_mm: float = 25.0, size_px: int = 224) -> Image.Image:
    """The side-by-side picture of a matched `result.FollowFinding` (RGB PIL image): the prior scan's
    axial crop through its segmentation's centroid, the current scan's through its own, each
    ``2 half_mm`` wide, and a caption (diameter and volume change, VDT, growth, category)."""
    if ff.status != "matched":
        raise ValueError(f"a side-by-side picture needs a matched finding, got {ff.status!r}")
    fp = prior_tp.detections[ff.prior_rank - 1].finding
    fc = current_tp.detections[ff.current_rank - 1].finding
    pdate = prior_tp.study_date.isoformat() if prior_tp.study_date else "prior"
    cdate = current_tp.study_date.isoformat() if current_tp.study_date else "current"
    left = _panel(prior_tp.volume, fp, ff.prior_xyz_mm,
                  f"{pdate} #{ff.prior_rank}: " + _describe(ff.prior_type, ff.prior_mean_diameter_mm,
                                                            ff.prior_solid_core_mm, ff.prior_volume_mm3),
                  half_mm, size_px)
    right = _panel(current_tp.volume, fc, ff.current_xyz_mm,
                   f"{cdate} #{ff.current_rank}: " + _describe(ff.current_type, ff.current_mean_diameter_mm,
                                                               ff.current_solid_core_mm, ff.current_volume_mm3),
                   half_mm, size_px)
    canvas = Image.new("RGB", (2 * size_px + 4, size_px + CAPTION_PX), (0, 0, 0))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (size_px + 4, 0))
    d = ImageDraw.Draw(canvas)
    vdt = "-" if ff.vdt_days is None else f"{ff.vdt_days:.0f} d"
    dv = "-" if ff.volume_change_pct is None else f"{ff.volume_change_pct:+.0f}%"
    grow = "growing" if ff.growing else "not growing" if ff.growing is not None else ""
    d.text((4, size_px + 3), f"diameter {ff.diameter_change_mm:+.1f} mm, volume {dv}, VDT {vdt}, {grow}",
           fill=(120, 255, 160))
    d.text((4, size_px + 16), f"Lung-RADS v2022 {ff.lung_rads} proposed ({ff.lung_rads_rule}): reader to confirm",
           fill=(200, 200, 200))
    return canvas
