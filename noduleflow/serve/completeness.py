"""Is a received series whole? Checked on the headers before a series may count as complete.

The engine's loader refuses a series with missing slices when it is processed; the service
must instead *wait* for them: a sender that paused, or was cut off and will resend, has not
finished. So a quiet series is only queued when its slices, ordered along the slice normal
(as the loader orders them, with the engine's header reader and gap tolerance), are evenly
spaced with no gap, and its InstanceNumbers, where every slice has one, run without a hole.

A gap in the positions means slices are certainly missing: such a series is never processed
(`Completeness.gap`). A hole in the InstanceNumbers while the positions are even may be a quirk
of the scanner's numbering: the series waits like a gapped one, but is processed in the end,
reported as not complete.

What this cannot see: slices missing at either end (the positions of the slices present are
still evenly spaced). The service covers that case by how the transfer ended (an association
that was aborted or cut off marks its series interrupted, see `Service`), never by timing.
One patient, one study, one frame of reference: the instances of a series must agree on
PatientID, StudyInstanceUID and FrameOfReferenceUID (`check_identity`); a series that mixes
them is a wrong answer about a person and is never processed (`Completeness.identity`).
(The engine's loader has no such check yet; this one reads the same headers.) A
FrameOfReferenceUID that differs on every instance is let through: it is what a
de-identification that replaces each UID independently leaves (every slice of LIDC-IDRI has
its own), not two frames mixed.

Every other defect (mixed orientations, uneven spacing, a non-CT slice) is left to the loader,
which fails the series with its reason when it is processed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: A gap this many times the median spacing or more is a missing slice, not uneven spacing
#: (uneven spacing is the loader's to refuse, with its own tolerance).
GAP_FACTOR = 1.5


@dataclass(frozen=True)
class Completeness:
    complete: bool
    reason: str                   # why not complete ("" when complete)
    instances: int
    positions_mm: tuple[float, ...] = ()   # slice positions along the normal, sorted
    # True: slices are certainly missing (a gap in the positions): never processed. False with
    # complete False: only the InstanceNumbers have a hole (positions even): it may be a quirk of
    # the numbering, so after the wait the series is processed, reported as not complete.
    gap: bool = False
    # "" when every instance agrees on IDENTITY_KEYS, else what differs (never processed)
    identity: str = ""


#: Attributes every instance of one series must share: one patient, one study, one frame of reference.
IDENTITY_KEYS = ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID")


def check_identity(headers) -> str:
    """"" when the headers (`SliceHeader`s) agree on `IDENTITY_KEYS`, else one line naming the
    first attribute that differs, its values (a few, with how many files and one file each)."""
    for key in IDENTITY_KEYS:
        groups: dict[str, list] = {}
        for h in headers:
            groups.setdefault(str(h.ds.get(key, "") or ""), []).append(h.path)
        if len(groups) > 1 and key == "FrameOfReferenceUID" and len(groups) == len(headers) > 2:
            # one frame of reference per instance is a de-identification artefact (every slice of
            # LIDC-IDRI has its own), not two acquisitions mixed: PatientID and study still agree
            continue
        if len(groups) > 1:
            parts = [f"{v[:64]!r} in {len(p)} file(s) (e.g. {Path(p[0]).name})"
                     for v, p in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:3]]
            return f"{key} differs across the series: {', '.join(parts)}" + \
                (f" and {len(groups) - 3} more value(s)" if len(groups) > 3 else "")
    return ""


def check_series(folder: Path, tolerance_mm: float | None = None) -> Completeness:
    """Check the DICOM files in ``folder`` (one series) for gaps, on their headers only."""
    from ..engine.io.dicom import DEFAULT_TOLERANCE_MM
    from ..engine.io.dicom_header import SliceHeader, read_header

    tol = DEFAULT_TOLERANCE_MM if tolerance_mm is None else float(tolerance_mm)
    files = sorted(p for p in Path(folder).iterdir() if p.is_file()) if Path(folder).is_dir() else []
    readable = [h for h in map(read_header, files) if isinstance(h, SliceHeader)]
    headers = [h for h in readable if not h.is_localizer]
    n = len(files)
    mixed = check_identity(readable)
    if mixed:
        return Completeness(False, mixed, n, gap=True, identity=mixed)
    if not headers:
        return Completeness(False, "no readable CT slice", n, gap=True)
    located = [h for h in headers if h.position is not None and h.orientation is not None]
    if len(located) < 2:
        return _numbering(headers, n, tuple(float(h.position[2]) for h in located))
    o = np.asarray(located[0].orientation, dtype=np.float64)
    normal = np.cross(o[:3], o[3:])
    dist = np.sort(np.asarray([h.position for h in located], dtype=np.float64) @ normal)
    gaps = np.diff(dist)
    gaps = gaps[gaps > 1e-3]      # duplicate positions are the loader's to refuse
    if gaps.size:
        median = float(np.median(gaps))
        big = np.flatnonzero((gaps > GAP_FACTOR * median) & (gaps - median > tol))
        if big.size:
            i = int(big[0])
            return Completeness(False, f"slice(s) missing: gap {gaps[i]:.3f} mm, median spacing {median:.3f} mm "
                                       f"({big.size} gap(s))", n, tuple(float(d) for d in dist), gap=True)
    return _numbering(headers, n, tuple(float(d) for d in dist))


def _numbering(headers, n: int, positions: tuple[float, ...]) -> Completeness:
    """InstanceNumbers, where every slice has one, must run without a hole."""
    numbers = [h.ds.get("InstanceNumber") for h in headers]
    if all(v not in (None, "") for v in numbers) and len(headers) > 1:
        try:
            nums = sorted(int(v) for v in numbers)
        except (TypeError, ValueError):
            nums = []
        holes = [a for a, b in zip(nums, nums[1:]) if b - a > 1]
        if holes:
            a = holes[0]
            return Completeness(False, f"InstanceNumber {a + 1} missing (between {a} and "
                                       f"{nums[nums.index(a) + 1]}; {len(holes)} hole(s))", n, positions)
    return Completeness(True, "", n, positions)


__all__ = ["Completeness", "check_series"]
