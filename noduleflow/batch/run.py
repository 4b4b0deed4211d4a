"""`batch(sources, out)`: every series of an archive detected on Ray, resumable, each written once.

OUT holds what ``noduleflow detect`` writes, for every series (``<name>.json``, ``<name>.png``)
and for the run (``candidates.csv``, LUNA16 submission layout, every done series), plus
``summary.csv`` (one row per series: status, attempts, seconds, scans/s, stage times, reason),
``batch-manifest.json`` and ``batch-series.jsonl`` (`manifest`), and with annotations
``froc.json`` (FROC/CPM of the run, `noduleflow.trainer.evaluate.froc`).

Only the driver writes OUT, and it holds OUT's lock (`FolderLock`) for the run. Each series'
files are written together (`Transaction`: temporaries, then renames) before its manifest line is
appended; a crash between the two re-runs that series into the same names, so no series has two
results, and a rerun skips what is done and retries what failed.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from noduleflow.engine import __version__
from noduleflow.engine.config import DetectorConfig
from noduleflow.engine.errors import ConfigError
from noduleflow.engine.fileio import FolderLock, FolderLockedError, Transaction, remove_stale_temporaries
from noduleflow.engine.package import ModelPackage, default_package_path, printable, sha256_file
from noduleflow.engine.results import FILE_MODE, atomic_write, csv_text, make_private_folder, safe_name
from noduleflow.trainer.evaluate.froc import evaluate, format_table, read_candidates, read_findings

from .manifest import RunManifest
from .ray_runner import ClusterSettings, RayPool
from .sources import Job, find_jobs

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary.csv"
FROC_NAME = "froc.json"


@dataclass(frozen=True)
class BatchReport:
    """What a batch run did. Counts are of this run's jobs; ``wall_s`` from the first series
    submitted to the last written (Ray's start excluded: ``startup_s``); ``workers``: what each
    actor said when it started (host, pid, backend, start seconds, resident MB)."""
    out: Path
    n_jobs: int
    n_skipped: int
    n_done: int
    n_failed: int
    wall_s: float
    startup_s: float
    workers: tuple
    failed: tuple          # (job label, reason) of this run's failures
    froc: object = None    # FrocResult with annotations

    @property
    def scans_per_s(self) -> float:
        return self.n_done / self.wall_s if self.wall_s > 0 else 0.0


def batch(sources, out, *, model=None, backend: str = "auto", config: DetectorConfig | None = None,
          backend_options: dict | None = None, cluster: ClusterSettings | None = None, png: bool = True,
          annotations=None, excluded=None, force_mix: bool = False, progress: bool = True) -> BatchReport:
    """Detect every series of ``sources`` (`sources.find_jobs`) into ``out`` on Ray.

    ``model``, ``backend``, ``config``, ``backend_options``: as for `Detector`. ``cluster``: where
    and how wide (`ClusterSettings`; default one worker on a local Ray). ``png``: the pictures.
    ``annotations`` (``excluded``): LUNA16 CSVs, to score the run (FROC/CPM into ``froc.json``).
    ``force_mix``: add to an OUT written with another package or other settings. Series already
    done in ``out`` are skipped; failed ones are tried again.
    """
    cluster = cluster or ClusterSettings()
    config = config or DetectorConfig()
    backend_options = dict(backend_options or {})
    out = Path(out)
    folder = Path(model) if model is not None else default_package_path()
    pkg = ModelPackage.load(folder)            # the driver verifies the package before any worker starts
    sha = sha256_file(pkg.path / "manifest.json")
    identity = {"package_id": pkg.manifest.model_id, "package_sha256": sha, "settings": asdict(config),
                "backend": backend, "precision": backend_options.get("precision"), "engine_version": __version__}
    make_private_folder(out)
    lock = FolderLock(out)
    try:
        lock.acquire()
    except FolderLockedError as exc:
        raise ConfigError(f"output folder {printable(out)} is in use by another noduleflow process "
                          f"({printable(exc.holder)})") from None
    try:
        remove_stale_temporaries(out)
        manifest = RunManifest(out, identity, force_mix=force_mix)
        jobs = find_jobs(sources)
        if not jobs:
            raise ConfigError(f"no series found in {printable(' '.join(map(str, sources)))}")
        todo = [j for j in jobs if not manifest.is_done(j.key)]
        manifest.start_run({"sources": [str(s) for s in sources], "jobs": len(jobs), "to_do": len(todo),
                            "cluster": asdict(cluster), "argv": sys.argv})
        report = _detect(manifest, jobs, todo, pkg.path, sha, backend, config, backend_options, cluster, png,
                         progress)
        write_outputs(manifest)
        froc = score(manifest, annotations, excluded) if annotations else None
        manifest.end_run({"done": report["done"], "failed": len(report["failed"]), "wall_s": report["wall_s"]})
    finally:
        lock.release()
    return BatchReport(out=out, n_jobs=len(jobs), n_skipped=len(jobs) - len(todo), n_done=report["done"],
                       n_failed=len(report["failed"]), wall_s=report["wall_s"], startup_s=report["startup_s"],
                       workers=tuple(report["workers"]), failed=tuple(report["failed"]), froc=froc)


def _detect(manifest: RunManifest, jobs, todo, package_folder, sha, backend, config, backend_options, cluster, png,
            progress) -> dict:
    report = {"done": 0, "failed": [], "wall_s": 0.0, "startup_s": 0.0, "workers": []}
    if not todo:
        return report
    pool = RayPool(cluster, package_folder, sha, backend, config, backend_options, png)
    with pool:
        report["startup_s"], report["workers"] = pool.startup_s, pool.workers
        t0 = time.perf_counter()
        bar = tqdm(total=len(todo), desc="batch", unit="scan", disable=not progress, dynamic_ncols=True)
        with bar:
            for job, result, attempts in pool.run(todo):
                rec = record(manifest, job, result, attempts)
                if rec["status"] == "done":
                    report["done"] += 1
                else:
                    report["failed"].append((job.label, rec["reason"]))
                    bar.write(f"FAILED {job.label}: {rec['reason']}", file=sys.stderr)
                for w in result.get("warnings", []):
                    bar.write(f"warning: {job.label}: {printable(w)}", file=sys.stderr)
                bar.update(1)
        report["wall_s"] = time.perf_counter() - t0
    return report


def record(manifest: RunManifest, job: Job, result: dict, attempts: int) -> dict:
    """Write one finished series: its files (all together), then its manifest line. -> the line."""
    base = {"key": job.key, "path": job.path, "series_uid": job.series_uid, "attempts": attempts,
            "worker": result.get("worker"), "wall_s": result.get("wall_s")}
    if result["status"] != "done":
        return manifest.append({**base, "status": "failed", "reason": result.get("reason", "unknown")})
    name = manifest.name_for(job.key, safe_name(result["name"]))
    with Transaction(mode=FILE_MODE) as tx:
        tx.write(manifest.out / f"{name}.json", result["json"])
        if result.get("png") is not None:
            tx.write(manifest.out / f"{name}.png", result["png"])
    return manifest.append({**base, "status": "done", "name": name, "series_uid": result["series_uid"],
                            "n_candidates": result["n_candidates"], "timings_s": result["timings_s"]})


def merged_rows(manifest: RunManifest) -> list[tuple]:
    """The candidate rows of every done series, read back from their JSON files, in key order: the
    series id is the output name where two inputs shared one id (as ``detect`` writes it)."""
    rows = []
    for rec in manifest.done():
        d = json.loads((manifest.out / f"{rec['name']}.json").read_text(encoding="utf-8"))
        uid = d["series_uid"] if safe_name(d["series_uid"]) == rec["name"] else rec["name"]
        rows += [(uid, *c["center_xyz_mm"], c["prob"], c.get("diameter_mm")) for c in d["candidates"]]
    return rows


def write_outputs(manifest: RunManifest) -> None:
    """``candidates.csv`` (every done series) and ``summary.csv`` (every series' last outcome)."""
    atomic_write(manifest.out / "candidates.csv", csv_text(merged_rows(manifest)))
    atomic_write(manifest.out / SUMMARY_NAME, summary_csv(manifest.records.values()))


def summary_csv(records) -> str:
    """One row per series: name, seriesuid, path, status, attempts, host, seconds, scans/s,
    candidates, each stage's seconds, reason."""
    records = sorted(records, key=lambda r: r["key"])
    stages = list(dict.fromkeys(k for r in records for k in (r.get("timings_s") or {})))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["series", "seriesuid", "path", "status", "attempts", "host", "seconds", "scans_per_s", "candidates",
                *(f"{s}_s" for s in stages), "reason"])
    for r in records:
        t = r.get("timings_s") or {}
        wall = r.get("wall_s")
        worker = r.get("worker") or {}
        w.writerow([printable(r.get("name") or ""), printable(r.get("series_uid") or ""), printable(r["path"]),
                    r["status"], r.get("attempts", ""), printable(worker.get("host", "")),
                    f"{wall:.3f}" if wall else "", f"{1 / wall:.3f}" if wall else "", r.get("n_candidates", ""),
                    *(f"{t[s]:.3f}" if s in t else "" for s in stages), printable(r.get("reason", ""))])
    return buf.getvalue()


def score(manifest: RunManifest, annotations, excluded=None):
    """FROC/CPM of every done series against ``annotations`` -> `FrocResult`, written to ``froc.json``.
    Every done series counts in the FPs-per-scan denominator, with or without candidates."""
    uids = [r["series_uid"] for r in manifest.done()]
    result = evaluate(read_findings(annotations), read_candidates(manifest.out / "candidates.csv"),
                      excluded=read_findings(excluded) if excluded else None, seriesuids=uids)
    atomic_write(manifest.out / FROC_NAME, json.dumps(result.to_json(), indent=2) + "\n")
    log.info("FROC of %d scans:\n%s", len(uids), format_table(result))
    return result
