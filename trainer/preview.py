"""PNG montages of a phantom: full slices and three-plane crops through each nodule (Pillow)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine import Volume

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


def phantom_montage(phantom, out_path, max_nodules: int = 8) -> Path:
    """Full axial/coronal views plus three-plane crops through each nodule, as one PNG."""
    from PIL import Image, ImageDraw

    vol = phantom.volume
    tiles = []
    nz = vol.shape[0]
    for frac in (0.35, 0.6, 0.8):
        img, _ = _plane(vol, 0, int(frac * (nz - 1)))
        tiles.append(Image.fromarray(img).convert("RGB").resize((256, 256)))
    cor, _ = _plane(vol, 1, int(vol.world_to_voxel(
        [0, float(np.mean([n.center_xyz_mm[1] for n in phantom.nodules])) if phantom.nodules else 0, 0])[1]
        if phantom.nodules else vol.shape[1] // 2))
    tiles.append(Image.fromarray(cor).convert("RGB").resize((256, 256)))
    rows = [tiles]
    half = 25.0
    for n in phantom.nodules[:max_nodules]:
        crops = [c.convert("RGB").resize((128, 128)) for c in three_plane_crops(vol, n.center_xyz_mm, half)]
        label = f"{n.diameter_mm:.1f}mm {n.kind} {n.shape} {n.location}"
        for k, c in enumerate(crops):
            draw_marker(c, n.diameter_mm / 2 / (2 * half) * 128 + 2, label if k == 0 else None)
        rows.append(crops)
    width = 4 * 256
    height = 256 + 128 * ((len(rows) - 1 + 1) // 2)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    for i, t in enumerate(rows[0]):
        canvas.paste(t, (256 * i, 0))
    for j, crops in enumerate(rows[1:]):
        x0 = (j % 2) * 512
        y0 = 256 + 128 * (j // 2)
        for i, c in enumerate(crops[:3]):
            canvas.paste(c, (x0 + 128 * i, y0))
    ImageDraw.Draw(canvas).text((4, 4), f"phantom {vol.series_uid[-12:]} {vol.shape} "
                                         f"{tuple(round(s, 2) for s in vol.spacing_zyx_mm)} mm", fill=(0, 255, 0))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_path)
    return out_path
