"""`noduleflow batch`: archive-scale detection on a Ray cluster, resumable, each series written once.

    from noduleflow.batch import batch, ClusterSettings
    report = batch(["archive/"], "results/", cluster=ClusterSettings(workers=2))

Ray is the optional extra ``noduleflow[batch]``: importing this package does not import it; a
run without it raises ConfigError saying what to install. See `ray_runner` for the design (Ray
core actors), `manifest` for resuming, `sources` for what a SOURCE may be.
"""
from __future__ import annotations

from .manifest import RunManifest
from .ray_runner import ClusterSettings, require_ray
from .run import BatchReport, batch
from .sources import Job, find_jobs

__all__ = ["BatchReport", "ClusterSettings", "Job", "RunManifest", "batch", "find_jobs", "require_ray"]
