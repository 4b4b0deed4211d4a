"""The lesion dataset's two annotation files (seeds/004; layout and assumptions:
`trainer.data.lesion_contours`): ``<aid>_<loc>.anno`` contour files -> `AnnoContour`, and
``attributes.csv`` -> `LesionAttributes` with the nine attributes as enums and bools.

Attribute codes (the paper names the categories; only lobe 0, "spans several lobes", is numbered
there): type 1-6 in the paper's order (`LesionType`); lobe 0 several, 1-5 right upper, right
middle, right lower, left upper, left lower (`Lobe`); margin 0 clear, 1 unclear; calcification
0 none, 1 partial, 2 total; spiculation 0 none, 1 short, 2 long; lobulation, cavity, vessel
convergence and pleural indentation 0 without, 1 with. A cell holds the code or the category's
name ("ground glass opacity", "right_upper", "with").
"""
from __future__ import annotations

import ast
import csv
import json
import re
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np

from noduleflow.engine import ConfigError

_ANNO_NAME = re.compile(r"^(\d+)_(\d+)\.anno$")
ANNO_KEYS = ("SeriesID", "NoduleSerialNumber", "InstanceNumber", "Origin", "Dimension", "Spacing", "Coords",
             "XMin", "XMax", "YMin", "YMax")
ATTRIBUTE_COLUMNS = ("subject_id", "aid", "doctor", "type", "lobe", "margin", "calcification", "lobulation",
                     "spiculation", "cavity", "vessel_convergence", "pleural_indentation")


class LesionType(IntEnum):
    PLACEHOLDER = 1  # > 30 mm (a mass); "nodule" below
    NODULE = 2
    GROUND_GLASS_OPACITY = 3
    AIR_CONTAINING_SPACE = 4
    MUTATION = 5
    PLEURAL_EFFUSION = 6


class Lobe(IntEnum):
    SEVERAL = 0  # spans several lobes (the paper marks these 0)
    RIGHT_UPPER = 1
    RIGHT_MIDDLE = 2
    RIGHT_LOWER = 3
    LEFT_UPPER = 4
    LEFT_LOWER = 5


class Margin(IntEnum):
    CLEAR = 0
    UNCLEAR = 1


class Calcification(IntEnum):
    NONE = 0
    PARTIAL = 1
    TOTAL = 2


class Spiculation(IntEnum):
    NONE = 0
    SHORT = 1  # spicules of 5 mm
    LONG = 2  # longer than 5 mm


_ENUMS = {"type": LesionType, "lobe": Lobe, "margin": Margin, "calcification": Calcification,
          "spiculation": Spiculation}
_BOOLS = ("lobulation", "cavity", "vessel_convergence", "pleural_indentation")


@dataclass(frozen=True)
class LesionAttributes:
    """The nine attributes of one lesion and the ``doctor`` who labelled them."""

    type: LesionType
    lobe: Lobe
    margin: Margin
    calcification: Calcification
    lobulation: bool
    spiculation: Spiculation
    cavity: bool
    vessel_convergence: bool
    pleural_indentation: bool
    doctor: int


def parse_attribute(column: str, value: str, where: str = ""):
    """One attribute cell -> its enum member (integer code or name, e.g. "3" or
    "ground_glass_opacity") or, for the four with/without attributes, a bool ("0"/"1",
    "without"/"with"). ConfigError naming the column, the value and the codes allowed."""
    text = str(value).strip()
    key = text.lower().replace(" ", "_").replace("-", "_")
    if column in _BOOLS:
        table = {"0": False, "1": True, "without": False, "with": True}
        if key in table:
            return table[key]
        raise ConfigError(f"{where}{column} must be 0 (without) or 1 (with), got {text!r}")
    enum = _ENUMS.get(column)
    if enum is None:
        raise ConfigError(f"{where}unknown attribute {column!r}; the nine are {list(ATTRIBUTE_COLUMNS[3:])}")
    for member in enum:
        if key in (str(member.value), member.name.lower()):
            return member
    codes = ", ".join(f"{m.value} {m.name.lower()}" for m in enum)
    raise ConfigError(f"{where}{column} must be one of {codes}, got {text!r}")


def read_attributes(path) -> dict[tuple[str, int], LesionAttributes]:
    """attributes.csv -> {(subject id, aid): attributes}; one row per lesion."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} missing: the lesion dataset's attributes (columns {','.join(ATTRIBUTE_COLUMNS)})")
    out: dict[tuple[str, int], LesionAttributes] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in reader.fieldnames or []]
        if sorted(cols) != sorted(ATTRIBUTE_COLUMNS):
            raise ConfigError(f"{path}: header must be the columns {','.join(ATTRIBUTE_COLUMNS)}, got {cols}")
        for i, raw in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            if not any(row.values()):
                continue
            where = f"{path} line {i}: "
            aid, doctor = (_int(row[k], k, where) for k in ("aid", "doctor"))
            key = (row["subject_id"], aid)
            if key in out:
                raise ConfigError(f"{where}subject {key[0]} lesion {aid} has a second row")
            values = {c: parse_attribute(c, row[c], where) for c in ATTRIBUTE_COLUMNS[3:]}
            out[key] = LesionAttributes(**values, doctor=doctor)
    return out


def _int(text, what: str, where: str) -> int:
    try:
        v = int(str(text).strip())
    except ValueError as exc:
        raise ConfigError(f"{where}{what} must be an integer, got {text!r}") from exc
    if v < 0:
        raise ConfigError(f"{where}{what} must be >= 0, got {text!r}")
    return v


@dataclass(frozen=True, eq=False)
class AnnoContour:
    """One .anno file: doctor, lesion ``aid``, slice InstanceNumber ``loc``, the ``SeriesID``
    and the header values, and the contour ``coords`` (n, 2) float64 fractions (x, y)."""

    path: Path
    doctor: int
    aid: int
    loc: int
    series_uid: str
    origin: tuple[float, ...]
    dimension: tuple[int, ...]
    spacing: tuple[float, ...]
    coords: np.ndarray
    bbox: tuple[float, float, float, float]  # XMin, XMax, YMin, YMax


def _numbers(d: dict, key: str, path: Path, kind=float) -> tuple:
    v = d[key]
    ok = isinstance(v, (list, tuple)) and len(v) in (2, 3) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in v)
    if not ok or (kind is int and any(float(x) != int(x) or x <= 0 for x in v)):
        raise ConfigError(f"{path}: {key} must be 2 or 3 {'positive integers' if kind is int else 'numbers'} "
                          f"(x, y[, z]), got {v!r}")
    return tuple(kind(x) for x in v)


def parse_anno(path, doctor: int) -> AnnoContour:
    """Read one ``<aid>_<loc>.anno`` file of doctor ``doctor`` (module docstring)."""
    path = Path(path)
    m = _ANNO_NAME.match(path.name)
    if not m:
        raise ConfigError(f"{path}: a contour file is named <aid>_<loc>.anno, got {path.name!r}")
    aid, loc = int(m[1]), int(m[2])
    text = path.read_text(errors="replace")
    try:
        d = json.loads(text)
    except json.JSONDecodeError:
        try:
            d = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            raise ConfigError(f"{path}: not a dictionary (JSON or Python literal): {text[:60]!r}") from exc
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: must hold a dictionary, got {type(d).__name__}")
    missing, extra = [k for k in ANNO_KEYS if k not in d], [k for k in d if k not in ANNO_KEYS]
    if missing or extra:
        raise ConfigError(f"{path}: keys must be {list(ANNO_KEYS)}; missing {missing}, unknown {extra}")
    for key, want in (("NoduleSerialNumber", aid), ("InstanceNumber", loc)):
        if _int(d[key], key, f"{path}: ") != want:
            raise ConfigError(f"{path}: {key} {d[key]!r} differs from the file name's {want}")
    coords = d["Coords"]
    try:
        pts = np.asarray(coords, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: Coords must be a list of [x, y] pairs, got {str(coords)[:60]}") from exc
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3 or not np.isfinite(pts).all():
        raise ConfigError(f"{path}: Coords must be at least 3 finite [x, y] pairs, got {str(coords)[:60]}")
    if pts.min() < 0 or pts.max() > 1:
        raise ConfigError(f"{path}: Coords must be fractions of the slice size in [0, 1], got values in "
                          f"[{pts.min():g}, {pts.max():g}]")
    try:
        bbox = tuple(float(d[k]) for k in ("XMin", "XMax", "YMin", "YMax"))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: XMin/XMax/YMin/YMax must be numbers, got "
                          f"{[d[k] for k in ('XMin', 'XMax', 'YMin', 'YMax')]}") from exc
    return AnnoContour(path, doctor, aid, loc, str(d["SeriesID"]).strip(), _numbers(d, "Origin", path),
                       _numbers(d, "Dimension", path, int), _numbers(d, "Spacing", path), pts, bbox)
