"""Pictures of candidates: axial / coronal / sagittal crops with a marker (Pillow)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .volume import Volume

LUNG_WINDOW = (-1350.0, 150.0)  # (low, high) HU: the usual lung window (W 1500, L -600)


def window_u8(hu: np.ndarray, window=LUNG_WINDOW) -> np.ndarray:
    lo, hi = window
    return (np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _plane(volume: Volume, axis: int, index: int) -> tuple[np.ndarray, float]:
    """A slice resampled to square pixels (nearest) so coronal/sagittal views are not squashed.
    Returns (uint8 image, mm per output pixel)."""
    hu = np.take(volume.hu, index, axis=axis)
    spacing = [s for a, s in enumerate(volume.spacing_zyx_mm) if a != axis]
    px = min(spacing)
    rows = np.clip((np.arange(int(hu.shape[0] * spacing[0] / px)) * px / spacing[0]).astype(int), 0, hu.shape[0] - 1)
    cols = np.clip((np.arange(int(hu.shape[1] * spacing[1] / px)) * px / spacing[1]).astype(int), 0, hu.shape[1] - 1)
    img = window_u8(hu[np.ix_(rows, cols)])
    if axis != 0:
        img = img[::-1]  # superior at the top for coronal and sagittal views
    return img, px


def three_plane_crops(volume: Volume, center_xyz_mm, half_mm: float = 25.0, size_px: int = 128):
    """Axial, coronal, sagittal crops (uint8, size_px^2) centred on a world point, square mm."""
    from PIL import Image

    c = np.asarray(volume.world_to_voxel(center_xyz_mm), dtype=float)
    out = []
    for axis in (0, 1, 2):
        idx = int(np.clip(round(c[axis]), 0, volume.shape[axis] - 1))
        hu = np.take(volume.hu, idx, axis=axis)
        sp = [s for a, s in enumerate(volume.spacing_zyx_mm) if a != axis]
        cc = [v for a, v in enumerate(c) if a != axis]
        # sample a half_mm box at size_px^2 (nearest), padding outside the scan with air
        t = np.linspace(-half_mm, half_mm, size_px)
        r = np.round(cc[0] + t / sp[0]).astype(int)
        q = np.round(cc[1] + t / sp[1]).astype(int)
        valid = (r[:, None] >= 0) & (r[:, None] < hu.shape[0]) & (q[None] >= 0) & (q[None] < hu.shape[1])
        crop = np.full((size_px, size_px), -1000.0, dtype=np.float32)
        crop[valid] = hu[np.clip(r, 0, hu.shape[0] - 1)[:, None], np.clip(q, 0, hu.shape[1] - 1)[None]][valid]
        img = window_u8(crop)
        if axis != 0:
            img = img[::-1]
        out.append(Image.fromarray(img))
    return out


def draw_marker(img, radius_px: float, label: str | None = None, color=(255, 60, 60)):
    """Draw a circle at the image centre and an optional label (in place on an RGB image)."""
    from PIL import ImageDraw

    d = ImageDraw.Draw(img)
    cx, cy = img.width / 2, img.height / 2
    r = max(radius_px, 4)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=color, width=1)
    if label:
        d.text((3, 2), label, fill=(255, 255, 0))
    return img




def candidates_png(volume: Volume, det, out_path, max_candidates: int = 8, truth=None) -> Path:
    """One row per top candidate: three planes through it, marked, with its rank and probability.
    ``truth``: optional (n, 4) [x, y, z, diameter] true nodules, listed under each row's label when hit."""
    from PIL import Image, ImageDraw

    rows = list(det.candidates[:max_candidates])
    size, half = 160, 30.0
    canvas = Image.new("RGB", (3 * size, 18 + size * max(len(rows), 1)), (0, 0, 0))
    d = ImageDraw.Draw(canvas)
    d.text((4, 3), f"{det.series_uid[-24:]}  {det.model_id}  {det.mode}/{det.backend}", fill=(0, 255, 0))
    if not rows:
        d.text((4, 40), "no candidates", fill=(255, 255, 255))
    for r, c in enumerate(rows):
        crops = [im.convert("RGB").resize((size, size)) for im in three_plane_crops(volume, c.center_xyz_mm, half)]
        label = f"#{r + 1} p={c.prob:.3f}"
        if truth is not None and len(truth):
            dist = np.linalg.norm(np.asarray(truth)[:, :3] - np.asarray(c.center_xyz_mm), axis=1)
            j = int(dist.argmin())
            if dist[j] < truth[j][3] / 2:
                label += f" nodule {truth[j][3]:.1f}mm"
        for k, im in enumerate(crops):
            draw_marker(im, 6 / (2 * half) * size, label if k == 0 else None)
            canvas.paste(im, (k * size, 18 + r * size))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
