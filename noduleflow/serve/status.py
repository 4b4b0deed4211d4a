"""What ``noduleflow serve --status`` reads from a spool (no service needed)."""
from __future__ import annotations

import json

from .instance import STATES


def spool_status(spool) -> dict:
    """A summary of ``spool`` (a `Spool`) for `noduleflow serve --status`: whether a service
    runs on it, its threads' health, counts per state, and one entry per series."""
    series = spool.series()
    info = {}
    p = spool.root / "serve.json"
    if p.exists():
        try:
            info = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            info = {}
    running = spool.service_running()
    late = {d.name: sum(1 for _ in d.iterdir()) for d in (spool.root / "late").iterdir()}
    keys = ("version", "complete", "incomplete", "interrupted", "duplicates", "error", "timings_s", "forwarded",
            "identity", "refused", "coverage")
    return {
        "spool": str(spool.root),
        "running": running,
        "service": info,
        # a dead service's last word on its threads is history, not health
        "health": info.get("health") if running else None,
        "counts": {s.value: sum(1 for x in series if x.state == s) for s in STATES},
        "series": [{"series_uid": x.uid, "state": x.state.value, "instances": x.instances,
                    "idle_s": round(x.age_s, 1), **{k: x.record.get(k) for k in keys}} for x in series],
        "late_instances": late,
        "rejected_files": sum(1 for f in (spool.root / "rejected").iterdir() if not f.name.endswith(".reason.txt")),
    }


__all__ = ["spool_status"]
