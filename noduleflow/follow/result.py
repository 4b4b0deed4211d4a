"""What a follow-up gives: one `FollowFinding` per nodule (matched, new or resolved) and the
`FollowResult` of the scan pair, with its JSON, CSV and terminal forms."""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field

from noduleflow.engine.results import ResultFolder, csv_cell

from .lungrads_followup import DISCLAIMER, SOURCE
from .picture import pair_image

STATUSES = ("matched", "new", "resolved")
CSV_HEADER = (
    "index", "status", "prior_rank", "current_rank", "prior_tracking_uid", "current_tracking_uid",
    "prior_x", "prior_y", "prior_z", "prior_in_current_x", "prior_in_current_y", "prior_in_current_z",
    "current_x", "current_y", "current_z", "match_distance_mm", "prior_type", "current_type",
    "prior_mean_diameter_mm", "current_mean_diameter_mm", "diameter_change_mm", "prior_solid_core_mm",
    "current_solid_core_mm", "prior_volume_mm3", "current_volume_mm3", "volume_change_pct", "vdt_days",
    "interval_days", "growing", "lung_rads", "lung_rads_rule", "note")


@dataclass(frozen=True)
class FollowFinding:
    """One nodule across the two scans. ``status``: "matched" (in both), "new" (current only) or
    "resolved" (prior only). Ranks are the candidates' 1-based ranks in each scan's detections;
    world points x, y, z mm (LPS): ``prior_xyz_mm`` in the prior scan, ``prior_in_current_xyz_mm``
    the same point mapped by the registration, ``current_xyz_mm`` in the current scan (the
    segmentations' centroids). Sizes: Lung-RADS mean diameters (mm), volumes (mm^3).
    ``volume_change_pct``: 100 (V_current - V_prior) / V_prior; ``vdt_days``: the volume-doubling
    time t ln 2 / ln(V_current / V_prior) over the interval t (days), negative for a shrinking
    nodule (its halving time), None when the volumes are equal or the interval is unknown.
    ``growing``: the Lung-RADS v2022 growth criterion (None: not applicable); ``lung_rads``: the
    proposed follow-up category (None for a resolved nodule) and ``lung_rads_rule`` the row
    that gave it."""
    status: str
    prior_rank: int | None = None
    current_rank: int | None = None
    prior_tracking_uid: str | None = None
    current_tracking_uid: str | None = None
    prior_xyz_mm: tuple[float, float, float] | None = None
    prior_in_current_xyz_mm: tuple[float, float, float] | None = None
    current_xyz_mm: tuple[float, float, float] | None = None
    match_distance_mm: float | None = None
    prior_type: str | None = None
    current_type: str | None = None
    prior_mean_diameter_mm: float | None = None
    current_mean_diameter_mm: float | None = None
    diameter_change_mm: float | None = None
    prior_solid_core_mm: float | None = None
    current_solid_core_mm: float | None = None
    prior_volume_mm3: float | None = None
    current_volume_mm3: float | None = None
    volume_change_pct: float | None = None
    vdt_days: float | None = None
    interval_days: float | None = None
    growing: bool | None = None
    lung_rads: str | None = None
    lung_rads_rule: str = ""
    note: str = ""

    def row(self, index: int) -> tuple:
        def xyz(v):
            return (None, None, None) if v is None else tuple(v)

        return (index, self.status, self.prior_rank, self.current_rank, self.prior_tracking_uid,
                self.current_tracking_uid, *xyz(self.prior_xyz_mm), *xyz(self.prior_in_current_xyz_mm),
                *xyz(self.current_xyz_mm), self.match_distance_mm, self.prior_type, self.current_type,
                self.prior_mean_diameter_mm, self.current_mean_diameter_mm, self.diameter_change_mm,
                self.prior_solid_core_mm, self.current_solid_core_mm, self.prior_volume_mm3, self.current_volume_mm3,
                self.volume_change_pct, self.vdt_days, self.interval_days, self.growing, self.lung_rads,
                self.lung_rads_rule, self.note)


def volume_doubling_days(prior_mm3: float, current_mm3: float, interval_days: float | None) -> float | None:
    """t ln 2 / ln(V2 / V1) (days; negative: halving time); None when a volume is not positive,
    the volumes are equal or the interval is unknown."""
    if interval_days is None or not prior_mm3 > 0 or not current_mm3 > 0 or current_mm3 == prior_mm3:
        return None
    return float(interval_days) * math.log(2.0) / math.log(current_mm3 / prior_mm3)


@dataclass(frozen=True, eq=False)
class FollowResult:
    """The follow-up of one scan pair. ``findings``: matched first (by current rank), then new,
    then resolved; ``lung_rads``: the scan's proposed follow-up category (the highest of the
    current findings') with ``driver`` its index in ``findings`` (None: no finding, category "1");
    ``registration``: `Registration.to_dict`; ``prior`` / ``current``: `TimePoint.summary`.
    ``prior_tp`` / ``current_tp`` (the time points, with their volumes) and ``transform`` are kept
    for the pictures, not saved."""
    prior: dict
    current: dict
    interval_days: float | None
    interval_source: str
    registration: dict
    findings: tuple[FollowFinding, ...]
    lung_rads: dict
    settings: dict
    timings_s: dict
    warnings: tuple[str, ...] = ()
    prior_tp: object = field(default=None, repr=False)
    current_tp: object = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.findings)

    def __iter__(self):
        return iter(self.findings)

    def __getitem__(self, i) -> FollowFinding:
        return self.findings[i]

    def of_status(self, status: str) -> list[FollowFinding]:
        return [f for f in self.findings if f.status == status]

    def to_dict(self) -> dict:
        return {"prior": self.prior, "current": self.current, "interval_days": self.interval_days,
                "interval_source": self.interval_source, "registration": self.registration,
                "findings": [_rounded(asdict(f)) for f in self.findings], "lung_rads": self.lung_rads,
                "settings": self.settings, "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
                "warnings": list(self.warnings)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_csv(self) -> str:
        """``follow.csv``: `CSV_HEADER`, one row per finding (floats to 0.01, booleans 1/0)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_HEADER)
        for i, f in enumerate(self.findings, 1):
            w.writerow([csv_cell(v) for v in f.row(i)])
        return buf.getvalue()

    def save(self, folder, png: bool = True, detections: bool = True, sr: bytes | None = None) -> dict:
        """Write ``follow.json``, ``follow.csv``, one ``pair_<n>.png`` per matched nodule (``png``;
        n: its index in ``findings``, 1-based) and, with ``detections``, each time point's
        detections as ``prior_detections.json`` / ``current_detections.json`` (a later follow-up
        can take the current one as its prior) and, given ``sr`` (the encoded follow-up SR,
        `noduleflow.follow.sr`), ``follow_sr.dcm`` into ``folder``: all or nothing, files 0600
        (`engine.results.ResultFolder`). -> {name: path}."""
        out = {}
        with ResultFolder(folder) as rf:
            out["json"] = rf.write("follow.json", self.to_json())
            out["csv"] = rf.write("follow.csv", self.to_csv())
            if png and self.prior_tp is not None and self.current_tp is not None:
                for n, ff in enumerate(self.findings, 1):
                    if ff.status == "matched":
                        out[f"pair_{n}"] = rf.write(f"pair_{n}.png", _png(pair_image(ff, self.prior_tp,
                                                                                     self.current_tp)))
            if sr is not None:
                out["sr"] = rf.write("follow_sr.dcm", sr)
            if detections:
                for role, tp in (("prior", self.prior_tp), ("current", self.current_tp)):
                    if tp is not None:
                        out[f"{role}_detections"] = rf.write(f"{role}_detections.json", tp.detections.to_json())
        return out

    def table(self) -> list[str]:
        """Lines for a terminal: one per finding, then the scan's proposal and what it is."""
        out = [f"{'#':>2} {'status':<8} {'prior':>5} {'now':>4} {'type':<12} {'d0 mm':>6} {'d1 mm':>6} "
               f"{'dd mm':>6} {'dV %':>7} {'VDT d':>7} {'growth':<6} LR"]

        def num(v, fmt):
            return "-" if v is None else format(v, fmt)

        for i, f in enumerate(self.findings, 1):
            kind = f.current_type or f.prior_type or "-"
            grow = "-" if f.growing is None else "yes" if f.growing else "no"
            out.append(f"{i:>2} {f.status:<8} {num(f.prior_rank, 'd'):>5} {num(f.current_rank, 'd'):>4} "
                       f"{kind:<12} {num(f.prior_mean_diameter_mm, '.1f'):>6} "
                       f"{num(f.current_mean_diameter_mm, '.1f'):>6} {num(f.diameter_change_mm, '+.1f'):>6} "
                       f"{num(f.volume_change_pct, '+.0f'):>7} {num(f.vdt_days, '.0f'):>7} {grow:<6} "
                       f"{f.lung_rads or '-'}")
        lr = self.lung_rads
        drv = "" if lr.get("driver_index") is None else f", driven by #{lr['driver_index'] + 1}"
        interval = "unknown" if self.interval_days is None else f"{self.interval_days:.0f} days"
        out.append(f"interval {interval} ({self.interval_source}); registration {self.registration['kind']}, "
                   f"lung Dice {self.registration['lung_dice']:.3f}")
        out.append(f"scan: Lung-RADS {lr['category']}{drv}. {lr['note']}.")
        return out


def scan_followup_category(findings) -> dict:
    """The highest follow-up category among ``findings`` (resolved ones have none), with the index
    of the first finding that has it; "1" without any. JSON-ready, with the source and the note."""
    order = ("1", "2", "3", "4A", "4B")
    best, driver = "1", None
    for i, f in enumerate(findings):
        if f.lung_rads is None:
            continue
        if driver is None or order.index(f.lung_rads) > order.index(best):
            best, driver = f.lung_rads, i
    return {"category": best, "driver_index": driver, "version": "v2022", "source": SOURCE, "note": DISCLAIMER}


def _rounded(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, float):
            v = round(v, 3)
        elif isinstance(v, tuple):
            v = [round(x, 3) if isinstance(x, float) else x for x in v]
        out[k] = v
    return out


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
