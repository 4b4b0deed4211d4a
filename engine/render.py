"""Pictures of candidates (Pillow): an overview of the lungs with every candidate, and
axial / coronal / sagittal crops through each one.

Views follow the radiological convention whatever the scan's direction cosines: the
patient's right on the viewer's left, anterior at the top of axial views, superior at the
top of coronal and sagittal views. Every crop is labelled with its plane, orientation
letters on its edges and a 10 mm scale bar; the circle has the lesion's estimated diameter
when the detector estimated one (else a dashed 10 mm ring marks the point).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .volume import Volume

LUNG_WINDOW = (-1350.0, 150.0)  # (low, high) HU: the usual lung window (W 1500, L -600)
PROJECTION_WINDOW = (-950.0, -550.0)  # for the mean HU through the lungs (aerated lung is about -850)
LETTERS = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "S", (2, -1): "I"}  # LPS
# plane -> (array axis of the rows, of the columns, LPS letter wanted at +row, at +column)
PLANES = {"axial": (1, 2, "P", "L"), "coronal": (0, 2, "I", "L"), "sagittal": (0, 1, "I", "P")}
_AXIS = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}


def window_u8(hu: np.ndarray, window=LUNG_WINDOW) -> np.ndarray:
    lo, hi = window
    return (np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _letter(vec) -> str:
    """LPS letter of a world direction (its dominant component)."""
    k = int(np.argmax(np.abs(vec)))
    return LETTERS[(k, 1 if vec[k] > 0 else -1)]


def _opposite(letter: str) -> str:
    return {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}[letter]


def plane_axes(volume: Volume, plane: str):
    """(row axis, column axis, row sign, column sign) in array (z, y, x) terms, chosen so the
    view is radiological, and the letters at the (top, bottom, left, right) edges."""
    ra, ca, want_r, want_c = PLANES[plane]
    d = volume.direction_matrix  # column c: world direction of index axis c (x, y, z)
    vec = {0: d[:, 2], 1: d[:, 1], 2: d[:, 0]}  # array axis -> world direction

    def sign(axis, want):
        v = vec[axis][_AXIS[want]]
        return 1 if v == 0 or (v > 0) == (want in "LPS") else -1

    sr, sc = sign(ra, want_r), sign(ca, want_c)
    down, right = _letter(sr * vec[ra]), _letter(sc * vec[ca])
    return ra, ca, sr, sc, (_opposite(down), down, _opposite(right), right)


def slice_image(volume: Volume, axis: int, index: int) -> tuple[np.ndarray, float]:
    """A whole slice resampled to square pixels (nearest) so coronal/sagittal views are not
    squashed, superior at the top. Returns (uint8 image, mm per output pixel)."""
    hu = np.take(volume.hu, index, axis=axis)
    spacing = [s for a, s in enumerate(volume.spacing_zyx_mm) if a != axis]
    px = min(spacing)
    rows = np.clip((np.arange(int(hu.shape[0] * spacing[0] / px)) * px / spacing[0]).astype(int), 0, hu.shape[0] - 1)
    cols = np.clip((np.arange(int(hu.shape[1] * spacing[1] / px)) * px / spacing[1]).astype(int), 0, hu.shape[1] - 1)
    img = window_u8(hu[np.ix_(rows, cols)])
    if axis != 0:
        img = img[::-1]
    return img, px


def crop(volume: Volume, center_zyx, plane: str, half_mm: float = 25.0, size_px: int = 128) -> np.ndarray:
    """A ``2 half_mm`` square crop (float32 HU, size_px^2, nearest) of ``plane`` through the
    continuous voxel ``center_zyx``, oriented radiologically; air outside the scan."""
    ra, ca, sr, sc, _ = plane_axes(volume, plane)
    c = np.asarray(center_zyx, dtype=float)
    other = ({0, 1, 2} - {ra, ca}).pop()
    idx = int(np.clip(round(c[other]), 0, volume.shape[other] - 1))
    t = np.linspace(-half_mm, half_mm, size_px)
    r = np.round(c[ra] + sr * t / volume.spacing_zyx_mm[ra]).astype(int)
    q = np.round(c[ca] + sc * t / volume.spacing_zyx_mm[ca]).astype(int)
    ok = (r[:, None] >= 0) & (r[:, None] < volume.shape[ra]) & (q[None] >= 0) & (q[None] < volume.shape[ca])
    sl = np.take(volume.hu, idx, axis=other)  # 2-D, axes in increasing array order (ra < ca)
    out = np.full((size_px, size_px), -1000.0, dtype=np.float32)
    out[ok] = sl[np.clip(r, 0, volume.shape[ra] - 1)[:, None], np.clip(q, 0, volume.shape[ca] - 1)[None]][ok]
    return out


def finding_crop(volume: Volume, finding, center_zyx, plane: str, half_mm: float = 25.0,
                 size_px: int = 128) -> np.ndarray:
    """The characterised ``finding``'s mask (bool, size_px^2) on the same samples as `crop`."""
    ra, ca, sr, sc, _ = plane_axes(volume, plane)
    c = np.asarray(center_zyx, dtype=float)
    other = ({0, 1, 2} - {ra, ca}).pop()
    idx = int(np.clip(round(c[other]), 0, volume.shape[other] - 1)) - finding.offset_zyx[other]
    t = np.linspace(-half_mm, half_mm, size_px)
    r = np.round(c[ra] + sr * t / volume.spacing_zyx_mm[ra]).astype(int) - finding.offset_zyx[ra]
    q = np.round(c[ca] + sc * t / volume.spacing_zyx_mm[ca]).astype(int) - finding.offset_zyx[ca]
    m = finding.mask
    out = np.zeros((size_px, size_px), dtype=bool)
    if not 0 <= idx < m.shape[other]:
        return out
    ok = (r[:, None] >= 0) & (r[:, None] < m.shape[ra]) & (q[None] >= 0) & (q[None] < m.shape[ca])
    sl = np.take(m, idx, axis=other)
    out[ok] = sl[np.clip(r, 0, m.shape[ra] - 1)[:, None], np.clip(q, 0, m.shape[ca] - 1)[None]][ok]
    return out


def draw_contour(img, mask2d: np.ndarray, color=(60, 255, 120)) -> None:
    """Paint the outline of a bool mask (the image's size) onto an RGB PIL image, in place."""
    inner = mask2d.copy()
    inner[1:-1, 1:-1] = mask2d[1:-1, 1:-1] & mask2d[:-2, 1:-1] & mask2d[2:, 1:-1] & mask2d[1:-1, :-2] & \
        mask2d[1:-1, 2:]
    edge = mask2d & ~inner
    for y, x in np.argwhere(edge):
        img.putpixel((int(x), int(y)), color)


def _finding_label(f) -> str:
    """Type, Lung-RADS mean diameter and the proposed category of a characterised finding."""
    kind = {"part_solid": "part-solid", "ground_glass": "ground glass"}.get(f.type, f.type)
    return f"{kind} {f.mean_diameter_mm:.1f}mm LR {f.lung_rads}"


def three_plane_crops(volume: Volume, center_xyz_mm, half_mm: float = 25.0, size_px: int = 128):
    """Axial, coronal, sagittal crops (PIL 'L' images, size_px^2) centred on a world point."""
    from PIL import Image

    c = volume.world_to_voxel(center_xyz_mm)
    return [Image.fromarray(window_u8(crop(volume, c, p, half_mm, size_px))) for p in PLANES]


def draw_marker(img, radius_px: float, label: str | None = None, color=(255, 60, 60), dashed: bool = False):
    """Draw a circle at the image centre and an optional label (in place on an RGB image)."""
    from PIL import ImageDraw

    d = ImageDraw.Draw(img)
    cx, cy = img.width / 2, img.height / 2
    r = max(radius_px, 3)
    if dashed:
        for a in range(0, 360, 30):
            d.arc([cx - r, cy - r, cx + r, cy + r], a, a + 15, fill=color, width=1)
    else:
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=color, width=1)
    if label:
        d.text((3, 2), label, fill=(255, 255, 0))
    return img


def _annotate(img, plane: str, letters, mm_per_px: float) -> None:
    """Plane name, orientation letters on the edges and a 10 mm scale bar (in place)."""
    from PIL import ImageDraw

    d = ImageDraw.Draw(img)
    top, bottom, left, right = letters
    w, h = img.size
    cyan = (120, 220, 255)
    d.text((w // 2 - 3, 1), top, fill=cyan)
    d.text((w // 2 - 3, h - 12), bottom, fill=cyan)
    d.text((2, h // 2 - 6), left, fill=cyan)
    d.text((w - 9, h // 2 - 6), right, fill=cyan)
    d.text((2, h - 12), plane, fill=(200, 200, 200))
    bar = 10.0 / mm_per_px
    d.line([w - 6 - bar, h - 5, w - 6, h - 5], fill=(255, 255, 255), width=2)
    d.text((w - 6 - bar, h - 17), "10mm", fill=(255, 255, 255))


def overview(volume: Volume, det, size_px: int = 420, mask=None):
    """A coronal view of the lungs with every candidate numbered by rank: the mean HU along the
    anterior-posterior axis inside the lung mask (an average-intensity projection, windowed
    so that vessel trees and nodules stand out of aerated lung; a maximum projection would
    show the ribs that the dilated mask touches), with the mask's outline, when ``mask``
    (bool, ``volume``'s grid) is given; else the coronal slice through the top candidate.
    -> RGB PIL image, size_px wide."""
    from PIL import Image, ImageDraw

    ra, ca, sr, sc, letters = plane_axes(volume, "coronal")
    if mask is not None and mask.any():
        n = mask.sum(axis=1)
        proj = (np.where(mask, volume.hu, 0).sum(axis=1, dtype=np.float64) / np.maximum(n, 1)).astype(np.float32)
        proj[n == 0] = -1000.0  # (z, x)
        outline = n > 0
        window = PROJECTION_WINDOW
        title = "coronal lung projection"
    else:
        c = volume.world_to_voxel(det.candidates[0].center_xyz_mm) if len(det.candidates) else \
            np.asarray(volume.shape) / 2
        proj = np.take(volume.hu, int(np.clip(round(c[1]), 0, volume.shape[1] - 1)), axis=1).astype(np.float32)
        outline = None
        window = LUNG_WINDOW
        title = "coronal slice through #1"
    sp_r, sp_c = volume.spacing_zyx_mm[ra], volume.spacing_zyx_mm[ca]
    img = window_u8(proj, window)
    edge = None
    if outline is not None:
        inner = outline.copy()
        inner[1:-1, 1:-1] = outline[1:-1, 1:-1] & outline[:-2, 1:-1] & outline[2:, 1:-1] & \
            outline[1:-1, :-2] & outline[1:-1, 2:]
        edge = outline & ~inner
    if sr < 0:
        img, edge = img[::-1], None if edge is None else edge[::-1]
    if sc < 0:
        img, edge = img[:, ::-1], None if edge is None else edge[:, ::-1]
    rgb = np.repeat(img[..., None], 3, axis=2)
    if edge is not None:
        rgb[edge] = (60, 200, 60)
    height_mm, width_mm = img.shape[0] * sp_r, img.shape[1] * sp_c
    scale = size_px / width_mm  # px per mm
    pic = Image.fromarray(rgb).resize((size_px, max(int(round(height_mm * scale)), 1)))
    d = ImageDraw.Draw(pic)
    for rank, cand in reversed(list(enumerate(det.candidates, 1))):
        v = volume.world_to_voxel(cand.center_xyz_mm)
        row = (v[ra] if sr > 0 else img.shape[0] - 1 - v[ra]) * sp_r * scale
        col = (v[ca] if sc > 0 else img.shape[1] - 1 - v[ca]) * sp_c * scale
        r = max((cand.diameter_mm or 8.0) / 2 * scale, 4)
        colour = (255, 60, 60) if rank <= 5 else (255, 170, 40)
        d.ellipse([col - r, row - r, col + r, row + r], outline=colour, width=2 if rank <= 5 else 1)
        d.text((col + r + 1, row - 6), str(rank), fill=colour)
    _annotate(pic, title, letters, 1.0 / scale)
    return pic


def candidates_image(volume: Volume, det, truth=None, max_candidates: int | None = None, per_row: int = 2,
                     size: int = 150, half_mm: float = 30.0):
    """The candidates picture: a header, the overview (`overview`) and, for each of the top
    candidates (all of them by default), axial / coronal / sagittal crops with rank,
    probability and estimated diameter. ``truth``: optional (n, 4) [x, y, z, diameter mm] true
    nodules; a candidate within a nodule's radius is labelled with it. -> RGB PIL image."""
    from PIL import Image, ImageDraw

    cands = list(det.candidates if max_candidates is None else det.candidates[:max_candidates])
    pre = getattr(det, "preprocessed", None)
    ov_vol, ov_mask = (pre.volume, pre.mask) if pre is not None else (volume, None)
    width = 3 * size * per_row
    ov = overview(ov_vol, det, size_px=min(width, 3 * size * 2), mask=ov_mask)
    n_rows = (len(cands) + per_row - 1) // per_row
    header = 18
    canvas = Image.new("RGB", (width, header + ov.height + 4 + size * max(n_rows, 1)), (0, 0, 0))
    d = ImageDraw.Draw(canvas)
    how = "two stages" if det.meta.get("stages") == 2 else det.mode
    d.text((4, 3), f"{str(det.series_uid)[-28:]}  {det.model_id}  {how}/{det.backend}  "
                   f"{len(det.candidates)} candidates", fill=(0, 255, 0))
    canvas.paste(ov, ((width - ov.width) // 2, header))
    y0 = header + ov.height + 4
    if not cands:
        d.text((4, y0 + 20), "no candidates", fill=(255, 255, 255))
    c_vox = [volume.world_to_voxel(c.center_xyz_mm) for c in cands]
    for i, c in enumerate(cands):
        label = f"#{i + 1} p={c.prob:.3f}" + (f" {c.diameter_mm:.0f}mm" if c.diameter_mm else "")
        if truth is not None and len(truth):
            t = np.asarray(truth, dtype=float)
            dist = np.linalg.norm(t[:, :3] - np.asarray(c.center_xyz_mm), axis=1)
            j = int(dist.argmin())
            if dist[j] < t[j, 3] / 2:
                label += f" = nodule {t[j, 3]:.1f}mm"
        for k, plane in enumerate(PLANES):
            im = Image.fromarray(window_u8(crop(volume, c_vox[i], plane, half_mm, size))).convert("RGB")
            px_per_mm = size / (2 * half_mm)
            f = getattr(c, "finding", None)
            if f is not None and f.segmented:   # the segmentation's outline instead of a circle
                draw_contour(im, finding_crop(volume, f, c_vox[i], plane, half_mm, size))
                if k == 0:
                    ImageDraw.Draw(im).text((3, 2), label, fill=(255, 255, 0))
                if k == 1:
                    ImageDraw.Draw(im).text((3, 2), _finding_label(f), fill=(120, 255, 160))
            elif c.diameter_mm:
                draw_marker(im, c.diameter_mm / 2 * px_per_mm + 1, label if k == 0 else None)
            else:
                draw_marker(im, 5.0 * px_per_mm, label if k == 0 else None, dashed=True)
            _annotate(im, plane, plane_axes(volume, plane)[4], 1.0 / px_per_mm)
            canvas.paste(im, ((i % per_row) * 3 * size + k * size, y0 + (i // per_row) * size))
    return canvas


def candidates_png(volume: Volume, det, out_path, max_candidates: int | None = None, truth=None) -> Path:
    """`candidates_image` written as PNG to ``out_path``."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    candidates_image(volume, det, truth=truth, max_candidates=max_candidates).save(out)
    return out
