"""LUNA16-layout annotation files -> per-series arrays (world mm)."""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from engine import ConfigError


def read_annotations(path) -> dict[str, np.ndarray]:
    """seriesuid,coordX,coordY,coordZ,diameter_mm -> {uid: (n, 4) [x, y, z, d]}. Missing file: {}."""
    path = Path(path)
    if not path.exists():
        return {}
    out = defaultdict(list)
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or row[0].strip().lower() == "seriesuid":
                continue
            try:
                out[row[0].strip()].append([float(v) for v in row[1:5]])
            except (ValueError, IndexError) as exc:
                raise ConfigError(f"{path.name} line {i + 1}: bad row {row}") from exc
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
