"""Is a received series whole? Checked on the headers before a series may count as complete,
and on the lung mask after detection before its result may be marked COMPLETE.

The engine's loader refuses a series with missing slices when it is processed; the service
must instead *wait* for them: a sender that paused, or was cut off and will resend, has not
finished. So a quiet series is only queued when its slices, ordered along the slice normal
(as the loader orders them, with the engine's header reader and gap tolerance), are evenly
spaced with no gap, and its InstanceNumbers, where every slice has one, run without a hole.

A gap in the positions means slices are certainly missing: such a series is never processed
(`Completeness.gap`). A hole in the InstanceNumbers while the positions are even may be a quirk
of the scanner's numbering: the series waits like a gapped one, but is processed in the end,
reported as not complete.

Slices missing at either end leave the positions of those present evenly spaced, so the gap
check cannot see them. What the data says is used instead, in three steps, each of which can
only take COMPLETE away (never grant it):

1. the count the instances announce: ImagesInAcquisition (0020,1002), per AcquisitionNumber,
   above the number of instances of that acquisition received (a missing head or tail);
2. InstanceNumbers that start above 1 (a missing head: the instances numbered below are absent);
3. after detection, the lung mask reaching the first or last slice of the volume
   (`lung_coverage`): the scan stops inside the chest, so nodules beyond it cannot have been
   looked for. This is the only check that sees a missing tail in a series that carries no
   count (most de-identified data: LIDC-IDRI has none).

Steps 1 and 2 are treated like a numbering hole (the series waits ``--incomplete-wait`` for the
rest, then is processed, marked not complete). Step 3 marks the result PARTIAL, not
"COMPLETE with a warning", and the reason is recorded (``coverage`` in the spool record, in
``--status`` and in the results' version.json). Why PARTIAL: the SR's CompletionFlag speaks for
the content of the report, and a report on a scan that stops inside the lungs does not cover the
patient's lungs, whatever the sender meant to send; a scan cropped that tightly on purpose is
rare, and then a PARTIAL report is still a true statement, whereas a COMPLETE one on a missing
tail is the wrong answer the flag exists to prevent. The heuristic is weak at the apices: a scan
that starts a few millimetres into the apex has almost no lung in its first slice and passes
(the threshold `LUNG_END_FRACTION` is there so that the trachea or a dilated mask edge in an end
slice of a whole scan does not count).

The service also covers missing ends by how the transfer ended (an association that was
aborted or cut off marks its series interrupted, see `Service`), never by timing.
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
#: The lungs reach an end of the scan when the lung mask's area in the volume's end slice is at
#: least this fraction of its largest slice's area. In a whole chest CT the end slices hold no
#: lung; the trachea alone, or the edge of the dilated mask, stays well below it (a 60-slice
#: phantom: 3.7 %; the phantom with its last third cut off: 95 %; LIDC-IDRI-0314: 0 % at both ends).
LUNG_END_FRACTION = 0.10


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
        return _numbering(headers, n, tuple(float(h.position[2]) for h in located), readable)
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
    return _numbering(headers, n, tuple(float(d) for d in dist), readable)


def _numbering(headers, n: int, positions: tuple[float, ...], readable=()) -> Completeness:
    """InstanceNumbers, where every slice has one, must run without a hole and start at 1 (0 is
    accepted); then the counts the instances announce (`_announced`) must all be present."""
    numbers = [h.ds.get("InstanceNumber") for h in headers]
    if all(v not in (None, "") for v in numbers) and headers:
        try:
            nums = sorted(int(v) for v in numbers)
        except (TypeError, ValueError):
            nums = []
        holes = [a for a, b in zip(nums, nums[1:]) if b - a > 1]
        if holes:
            a = holes[0]
            return Completeness(False, f"InstanceNumber {a + 1} missing (between {a} and "
                                       f"{nums[nums.index(a) + 1]}; {len(holes)} hole(s))", n, positions)
        # the localizers count here: a series whose instance 1 is its scout has its head
        first = min([nums[0]] + [v for v in _numbers(readable) if v is not None]) if nums else 1
        if first > 1:
            return Completeness(False, f"InstanceNumbers start at {first}: instance(s) 1 to {first - 1} missing "
                                       f"(the head of the series was not received)", n, positions)
    short = _announced(readable or headers)
    if short:
        return Completeness(False, short, n, positions)
    return Completeness(True, "", n, positions)


def _numbers(headers) -> list[int | None]:
    out = []
    for h in headers:
        try:
            out.append(int(h.ds.get("InstanceNumber")))
        except (TypeError, ValueError):
            out.append(None)
    return out


def _announced(headers) -> str:
    """"" unless an acquisition's ImagesInAcquisition (0020,1002) is above the number of its
    instances received (grouped by AcquisitionNumber; the largest value announced counts)."""
    groups: dict[str, list] = {}
    for h in headers:
        groups.setdefault(str(h.ds.get("AcquisitionNumber", "") or ""), []).append(h)
    for acq, group in sorted(groups.items()):
        announced = []
        for h in group:
            try:
                announced.append(int(h.ds.get("ImagesInAcquisition")))
            except (TypeError, ValueError):
                continue
        if announced and max(announced) > len(group):
            return (f"ImagesInAcquisition is {max(announced)} but {len(group)} instance(s) of acquisition "
                    f"{acq or '(unnumbered)'} were received ({max(announced) - len(group)} missing)")
    return ""


def lung_coverage(det) -> str:
    """"" when the lungs lie inside the scan along its slices, else one line saying which end of
    the volume they reach and how much lung is there (see the module docstring: the result is then
    reported PARTIAL). ``det``: `Detections` from ``detect(..., keep_preprocessed=True)``, whose
    ``lung_mask`` (bool, z y x, on the 1 mm lung box) and ``preprocessed.bbox_native`` (the box's
    (z0, z1, y0, y1, x0, x1) in the loaded volume's voxels) are read; "" when they are absent."""
    mask, vol = det.lung_mask, det.volume
    box = getattr(det.preprocessed, "bbox_native", None)
    if mask is None or vol is None or box is None or mask.ndim != 3 or not mask.shape[0]:
        return ""
    area = np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1)
    peak = int(area.max())
    if not peak:
        return ""
    # +z in LPS is superior: with the slice axis along +z the last slice is the head end
    head_last = bool(np.asarray(vol.direction_matrix)[2, 2] >= 0)
    ends = []
    for at_end, index, name in ((int(box[0]) <= 0, 0, "first"), (int(box[1]) >= vol.shape[0], -1, "last")):
        if at_end and area[index] >= LUNG_END_FRACTION * peak:
            side = "head" if (index == -1) == head_last else "feet"
            ends.append(f"the {name} slice ({side} end: lung area {100 * area[index] / peak:.0f} % of the largest "
                        f"slice's)")
    if not ends:
        return ""
    return (f"the lungs reach {' and '.join(ends)}: the scan stops inside the chest (slices missing at that end, "
            f"or a scan that does not cover the lungs); reported PARTIAL")


__all__ = ["Completeness", "LUNG_END_FRACTION", "check_identity", "check_series", "lung_coverage"]
