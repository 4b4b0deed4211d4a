"""What a detection returns (`Detections`, a sequence of `Candidate`) and how it is written.

`Detections.save(folder)` writes exactly what ``noduleflow detect`` writes for one series:
``candidates.csv`` (LUNA16 submission layout), ``<id>.json`` (candidates, stage timings,
backend, model, engine version, warnings) and ``<id>.png`` (the candidates picture). Every file
is written to a temporary name and renamed, so a reader never sees half a file, and every file
name derived from the data passes through `safe_name`.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

CSV_HEADER = ("seriesuid", "coordX", "coordY", "coordZ", "probability")


@dataclass(frozen=True)
class Candidate:
    """One nodule candidate: LPS world centre (mm), calibrated probability, optional diameter."""
    center_xyz_mm: tuple[float, float, float]
    prob: float
    n_points: int = 1                  # scored grid points merged into this candidate
    diameter_mm: float | None = None   # estimated lesion diameter, when the detector estimates one

    @property
    def x(self) -> float:
        return self.center_xyz_mm[0]

    @property
    def y(self) -> float:
        return self.center_xyz_mm[1]

    @property
    def z(self) -> float:
        return self.center_xyz_mm[2]

    @property
    def probability(self) -> float:
        return self.prob


@dataclass(frozen=True)
class Detections(Sequence):
    """The candidates of one series, best first, with how they were obtained.

    A sequence: ``len(d)``, ``d[0]``, ``for c in d``. ``volume`` is the loaded scan (for
    `plot`); ``preprocessed`` (lung mask and the 1 mm lung box) is kept when
    ``Detector.detect(..., keep_preprocessed=True)`` asked for it.
    """
    series_uid: str
    candidates: tuple[Candidate, ...]
    timings_s: dict
    backend: str
    mode: str
    model_id: str
    engine_version: str
    n_scored: int = 0
    meta: dict = field(default_factory=dict)
    volume: object = field(default=None, repr=False, compare=False)
    preprocessed: object = field(default=None, repr=False, compare=False)

    # -- sequence -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.candidates)

    def __getitem__(self, i):
        return self.candidates[i]

    def __iter__(self):
        return iter(self.candidates)

    @property
    def name(self) -> str:
        """File-name-safe id of the series (see `safe_name`)."""
        return safe_name(self.series_uid, fallback_seed=str(self.meta.get("source", "")))

    @property
    def lung_mask(self):
        """bool (z, y, x) lung mask on the 1 mm lung box, or None unless kept."""
        return None if self.preprocessed is None else self.preprocessed.mask

    # -- serialisation --------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("volume", "preprocessed")}
        d["candidates"] = [asdict(c) for c in self.candidates]
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def rows(self) -> list[tuple]:
        """(seriesuid, x, y, z, probability, diameter mm or None) per candidate: the LUNA16
        submission rows, with the estimated diameter as an extra column."""
        return [(self.series_uid, *c.center_xyz_mm, c.prob, c.diameter_mm) for c in self.candidates]

    def to_csv(self) -> str:
        """The LUNA16 submission CSV of this series (header + one row per candidate)."""
        return csv_text(self.rows())

    def plot(self, path=None, truth=None, max_candidates: int | None = None):
        """The candidates picture (PIL image); written as PNG to ``path`` when given.
        ``truth``: optional (n, 4) [x, y, z, diameter mm] true nodules, named where hit."""
        from .render import candidates_image

        if self.volume is None:
            raise ValueError("these Detections hold no volume to draw")
        img = candidates_image(self.volume, self, truth=truth, max_candidates=max_candidates)
        if path is not None:
            atomic_write(path, _png_bytes(img))
        return img

    def save(self, folder, png: bool = True, csv_file: bool = True, name: str | None = None) -> dict:
        """Write ``candidates.csv``, ``<name>.json`` and ``<name>.png`` into ``folder``
        (exactly what ``noduleflow detect`` writes for one series) -> {kind: path}.
        ``name`` (default `name`, the sanitised series id) is passed through `safe_name`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        name = self.name if name is None else safe_name(name)
        out = {"json": atomic_write(folder / f"{name}.json", self.to_json())}
        if csv_file:
            out["csv"] = atomic_write(folder / "candidates.csv", self.to_csv())
        if png and self.volume is not None:
            out["png"] = Path(folder / f"{name}.png")
            self.plot(out["png"])
        return out


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(uid: str, fallback_seed: str = "") -> str:
    """A file name for a series id: characters outside [A-Za-z0-9._-] become '_', no leading
    dot, at most 128 characters; an empty id becomes ``series-<hash of fallback_seed>`` so that
    the same input always gets the same name."""
    name = _UNSAFE.sub("_", str(uid)).lstrip(".")[:128]
    if not name.strip("_"):
        name = "series-" + hashlib.sha256(fallback_seed.encode()).hexdigest()[:12]
    return name


def csv_text(rows) -> str:
    """rows: iterable of (seriesuid, x, y, z, prob[, diameter mm or None]) -> LUNA16 submission
    CSV text; a ``diameter_mm`` column after the five LUNA16 ones when any row has a diameter
    (LUNA16 readers take the first five columns)."""
    rows = [tuple(r) for r in rows]
    with_d = any(len(r) > 5 and r[5] is not None for r in rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER + (("diameter_mm",) if with_d else ()))
    for r in rows:
        uid, x, y, z, p = r[:5]
        cells = [uid, f"{x:.4f}", f"{y:.4f}", f"{z:.4f}", f"{p:.6f}"]
        if with_d:
            cells.append(f"{r[5]:.1f}" if len(r) > 5 and r[5] is not None else "")
        w.writerow(cells)
    return buf.getvalue()


def write_candidates_csv(path, rows) -> Path:
    """rows: iterable of (seriesuid, x, y, z, prob[, diameter]) -> LUNA16 submission CSV (atomic)."""
    return atomic_write(path, csv_text(rows))


def atomic_write(path, data: str | bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk and rename it over
    ``path``: a concurrent reader sees the old file or the new one, never a cut-off one. The file
    is readable by its owner only (0600, from `tempfile.mkstemp`): results describe a patient."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
