"""PNG montages of a phantom: full slices and three-plane crops through each nodule (Pillow)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from noduleflow.engine.render import draw_marker, slice_image, three_plane_crops


def phantom_montage(phantom, out_path, max_nodules: int = 8) -> Path:
    """Full axial/coronal views plus three-plane crops through each nodule, as one PNG."""
    vol = phantom.volume
    tiles = []
    nz = vol.shape[0]
    for frac in (0.35, 0.6, 0.8):
        img, _ = slice_image(vol, 0, int(frac * (nz - 1)))
        tiles.append(Image.fromarray(img).convert("RGB").resize((256, 256)))
    cor, _ = slice_image(vol, 1, int(vol.world_to_voxel(
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


def confounder_montage(phantom, out_path, per_kind: int = 2, half_mm: float = 25.0) -> Path:
    """Three-plane crops around the phantom's nodule look-alikes (``meta["confounders"]``), up to
    ``per_kind`` of each kind, one row each, labelled, as one PNG."""
    vol = phantom.volume
    rows, seen = [], {}
    for kind, centre, size in phantom.meta.get("confounders", []):
        if seen.get(kind, 0) >= per_kind:
            continue
        seen[kind] = seen.get(kind, 0) + 1
        crops = [c.convert("RGB").resize((160, 160)) for c in three_plane_crops(vol, centre, half_mm)]
        ImageDraw.Draw(crops[0]).text((3, 3), f"{kind} {size:.0f}mm", fill=(255, 255, 0))
        rows.append(crops)
    return _save_grid(rows, 3, 160, out_path)


def _save_grid(rows, columns: int, tile: int, out_path) -> Path:
    """Rows of ``tile`` x ``tile`` PIL images pasted on one black canvas, saved as a PNG."""
    canvas = Image.new("RGB", (columns * tile, max(1, len(rows)) * tile), (0, 0, 0))
    for j, row in enumerate(rows):
        for i, c in enumerate(row):
            canvas.paste(c, (tile * i, tile * j))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_path)
    return out_path


def kernel_montage(phantoms: dict, out_path, max_nodules: int = 4, half_mm: float = 25.0) -> Path:
    """The same seed under each reconstruction kernel (``{kernel: Phantom}``): an axial crop
    around each of its first ``max_nodules`` nodules, one row per nodule, one column per kernel."""
    kernels = list(phantoms)
    first = phantoms[kernels[0]]
    rows = []
    for n in first.nodules[:max_nodules]:
        row = []
        for k in kernels:
            crop = three_plane_crops(phantoms[k].volume, n.center_xyz_mm, half_mm)[0].convert("RGB").resize((192, 192))
            ImageDraw.Draw(crop).text((3, 3), f"{k}: {n.diameter_mm:.1f}mm {n.kind} {n.location}", fill=(255, 255, 0))
            row.append(crop)
        rows.append(row)
    return _save_grid(rows, len(kernels), 192, out_path)
