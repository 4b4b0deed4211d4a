"""Series detected on a Ray cluster: one actor per model replica, a bounded number of series in flight.

Why Ray core actors and not Ray Data ``map_batches`` with an actor pool:

- the unit of work is one series, a path in and a few small files out, and its size varies by
  tens of times. Ray Data's blocks, Arrow rows and its streaming executor add a tabular layer (and
  pyarrow/pandas) that buys nothing here: no column needs batching, the detector already batches
  its patches;
- exactly once needs the driver to see each series' outcome, to write its files and its
  manifest line before counting it done, and to retry it when its worker died. With actors the
  driver holds one future per series and decides; Ray Data retries a failed block on its own
  and reports a failure by stopping the whole dataset, whereas a failed series must be recorded
  and the run go on;
- backpressure is explicit: at most ``inflight_per_worker`` series per actor are submitted
  (`RayPool.run`), so the driver, the object store and every worker hold a handful of results
  whatever the size of the archive; an actor runs one series at a time (``max_concurrency`` 1),
  so it holds one volume.

Where the work runs: the actor loads its series itself, from the path (a shared filesystem or
storage mounted on every node, as archives are), preprocesses, detects and renders the picture;
only the small result (the JSON text, the PNG bytes, the candidate rows) travels back through
the object store to the driver, which alone writes OUT. Volumes never cross the network.

The model package travels once: by default its files are put in the object store (a few MB), and
each actor writes them to a per-package folder on its node (``$TMPDIR/noduleflow-batch-<sha>``),
reusing one already there; ``ship="path"`` opens the package at its path instead (shared
storage). Either way the package's hashes are verified on arrival (`ModelPackage.load`) and the
sha256 of its manifest must equal the driver's: an actor that would run another model refuses to
start.

Failures: a series that cannot be read or detected comes back as ``status: failed`` with the
one-line reason (the actor lives on). A worker process that dies (killed, out of memory, a lost
node) fails its futures with `ray.exceptions.RayActorError`; Ray restarts the actor
(``max_restarts=-1``, on another node if its own is gone) and the driver resubmits each of its
series, up to ``retries`` more times, then records it as failed ("worker died N times"): a series
that kills every worker it meets cannot loop for ever. Ray's own task retry is off
(``max_task_retries=0``) so that every attempt is counted by the driver.
"""
from __future__ import annotations

import io
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numba

from noduleflow.engine.backends import cpu_backend_names
from noduleflow.engine.config import DetectorConfig
from noduleflow.engine.detector import Detector
from noduleflow.engine.errors import ConfigError, NoduleflowError, PackageError
from noduleflow.engine.fileio import atomic_dir
from noduleflow.engine.package import ModelPackage, printable, sha256_file

from .sources import Job

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install \"noduleflow[batch]\""
SHIP_MODES = ("object-store", "path")


def require_ray():
    """The ``ray`` module, or ConfigError (one line) saying what to install."""
    try:
        import ray  # optional heavy package: imported only when a batch runs
    except ImportError:
        raise ConfigError(f"noduleflow batch needs the 'batch' extra (ray is not installed): {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class ClusterSettings:
    """Where and how wide a batch runs.

    address: None starts a local Ray instance on this machine; "auto" or "HOST:PORT" connects to
        a running cluster. workers: actors, each one model replica. cpus_per_worker: CPUs each
        actor reserves, and the threads its detector uses (numba and the CPU backends).
        gpus_per_worker: GPUs each actor reserves (fractions share one GPU). inflight_per_worker:
        series submitted to one actor ahead of its results (backpressure). retries: resubmissions
        of a series whose worker died. ship: "object-store" or "path" (see the module docstring).
        start_timeout_s: how long the actors may take to start (a cluster without the resources
        asked for never starts them).
    """
    address: str | None = None
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    inflight_per_worker: int = 2
    retries: int = 2
    ship: str = "object-store"
    start_timeout_s: float = 600.0
    object_store_mb: int = 256   # a local instance's object store: results only, never volumes

    def __post_init__(self):
        checks = [("workers", self.workers, 1), ("cpus_per_worker", self.cpus_per_worker, 0),
                  ("gpus_per_worker", self.gpus_per_worker, 0), ("inflight_per_worker", self.inflight_per_worker, 1),
                  ("retries", self.retries, 0)]
        for name, value, lo in checks:
            if value < lo:
                raise ConfigError(f"{name} must be >= {lo}, got {value}")
        if self.cpus_per_worker == 0 and self.gpus_per_worker == 0:
            raise ConfigError("cpus_per_worker and gpus_per_worker are both 0: a worker needs one of them")
        if self.ship not in SHIP_MODES:
            raise ConfigError(f"ship must be one of {SHIP_MODES}, got {self.ship!r}")

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus_per_worker))


def package_files(folder: Path) -> dict[str, bytes]:
    """The files of a verified package folder (manifest.json and every file it lists) -> {name: bytes}."""
    pkg = ModelPackage.load(folder)
    names = ["manifest.json", *pkg.manifest.files]
    return {n: (pkg.path / n).read_bytes() for n in dict.fromkeys(names)}


def unpack_package(files: dict[str, bytes], sha256: str) -> Path:
    """Write a shipped package's files into ``$TMPDIR/noduleflow-batch-<sha256[:16]>`` on this node, or
    reuse the folder another actor wrote there if it verifies (`ModelPackage.load`; one that does not,
    e.g. damaged on disk, is written anew) -> the folder. The caller verifies it again."""
    folder = Path(tempfile.gettempdir()) / f"noduleflow-batch-{sha256[:16]}"
    if folder.is_dir():
        try:
            ModelPackage.load(folder)
            return folder
        except PackageError as exc:
            log.warning("rewriting the damaged package copy %s: %s", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
    try:
        with atomic_dir(folder, mode=0o700) as tmp:
            for name, data in files.items():
                (tmp / name).write_bytes(data)
    except FileExistsError:   # another actor on this node wrote it meanwhile: verified by the caller
        pass
    return folder


class SeriesWorker:
    """A model replica (made a Ray actor by `RayPool`): loads the package once, then detects series.

    ``package``: the package's files ({name: bytes}, from the object store) or its folder (str);
    ``sha256``: the sha256 of the driver's manifest.json, checked against what arrived."""

    def __init__(self, package, sha256: str, backend: str, config: dict, backend_options: dict, threads: int,
                 png: bool):
        t0 = time.perf_counter()
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        folder = Path(package) if isinstance(package, str) else unpack_package(package, sha256)
        pkg = ModelPackage.load(folder)   # every file against the manifest's hashes
        arrived = sha256_file(pkg.path / "manifest.json")
        if arrived != sha256:
            raise PackageError(f"the model package that reached {socket.gethostname()} ({printable(folder)}) is not "
                               f"the driver's: manifest sha256 {arrived[:12]}..., expected {sha256[:12]}...")
        self.det = Detector(pkg, backend=backend, config=DetectorConfig(**config), backend_options=backend_options)
        self.png = png
        self.start_s = time.perf_counter() - t0

    def ready(self) -> dict:
        """Who this worker is: host, Ray node id, pid, backend, start-up seconds, resident memory (MB)."""
        import ray  # optional package, present in every Ray worker process

        return {"host": socket.gethostname(), "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "backend": self.det.backend_name, "start_s": self.start_s, "rss_mb": _rss_mb()}

    def detect(self, path: str, series_uid: str | None) -> dict:
        """Detect one series -> {"status": "done", "json", "png" (bytes or None), "rows", "series_uid",
        "name", "timings_s", "wall_s", "warnings", "worker"} or {"status": "failed", "reason", ...}.
        Never raises for a bad series: the reason is the result."""
        t0 = time.perf_counter()
        worker = {"host": socket.gethostname(), "pid": os.getpid()}
        where = printable(f"{path}{' ' + series_uid if series_uid else ''}")
        try:
            d = self.det.detect(path, series_uid=series_uid, keep_preprocessed=self.png)
            png = _png_bytes(d.plot()) if self.png else None
        except NoduleflowError as exc:
            return {"status": "failed", "reason": printable(exc), "worker": worker,
                    "wall_s": time.perf_counter() - t0}
        except Exception as exc:  # a bug must not cost the other series their results
            log.debug("traceback of %s", where, exc_info=True)
            return {"status": "failed", "reason": f"internal error {type(exc).__name__}: {printable(exc)}",
                    "worker": worker, "wall_s": time.perf_counter() - t0}
        return {"status": "done", "json": d.to_json(), "png": png, "rows": d.rows(), "series_uid": d.series_uid,
                "name": d.name, "timings_s": dict(d.timings_s), "n_candidates": len(d),
                "warnings": list(d.meta.get("warnings", [])), "worker": {**worker, "rss_mb": _rss_mb()},
                "wall_s": time.perf_counter() - t0}


def _png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _rss_mb() -> float:
    """This process's resident memory now, MB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


class RayPool:
    """Ray (local or a cluster) with ``settings.workers`` `SeriesWorker` actors.

        with RayPool(settings, package_folder, sha256, backend, config, backend_options, png) as pool:
            for job, result, attempts in pool.run(jobs): ...

    Entering connects to (or starts) Ray and starts the actors, waiting until each is ready
    (ConfigError/PackageError, one line, when one cannot start); leaving stops them, and the Ray
    instance when this pool started it. A Ray already initialised in this process is used as it is.
    """

    def __init__(self, settings: ClusterSettings, package_folder: Path, sha256: str, backend: str,
                 config: DetectorConfig, backend_options: dict, png: bool):
        self.settings = settings
        self.package_folder = Path(package_folder)
        self.sha256 = sha256
        self.backend = backend
        self.config = config
        self.backend_options = dict(backend_options)
        self.png = png
        self.ray = require_ray()
        self.actors: list = []
        self._package = None
        self.workers: list[dict] = []
        self.started_ray = False
        self.startup_s = 0.0

    def __enter__(self) -> RayPool:
        t0 = time.perf_counter()
        self._init_ray()
        try:
            self._start_actors()
        except BaseException:
            self.close()
            raise
        self.startup_s = time.perf_counter() - t0
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _init_ray(self) -> None:
        ray, s = self.ray, self.settings
        if ray.is_initialized():
            return
        kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                      configure_logging=False)
        if s.address is None:
            need = s.workers * s.cpus_per_worker
            have = os.cpu_count() or 1
            if need > have:
                raise ConfigError(f"{s.workers} workers x {s.cpus_per_worker:g} CPUs need {need:g} CPUs, this "
                                  f"machine has {have}: fewer --workers or --cpus-per-worker, or --address a cluster")
            kwargs.update(num_cpus=have, object_store_memory=s.object_store_mb * 2**20)
        else:
            kwargs["address"] = s.address
        try:
            ray.init(**kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"cannot start or reach Ray ({'local' if s.address is None else s.address}): "
                              f"{printable(exc)}") from None
        self.started_ray = True

    def _start_actors(self) -> None:
        ray, s = self.ray, self.settings
        total = ray.cluster_resources()
        for res, per in (("CPU", s.cpus_per_worker), ("GPU", s.gpus_per_worker)):
            if per and total.get(res, 0) < per:
                raise ConfigError(f"each worker asks for {per:g} {res}, the Ray cluster has {total.get(res, 0):g}")
        opts = dict(self.backend_options)
        if s.gpus_per_worker == 0 and (self.backend == "auto" or self.backend in cpu_backend_names()):
            opts.setdefault("threads", s.threads)
        # once: every actor reads the same object. Held by the pool while it lives: a restarted actor
        # is given its constructor's arguments again
        self._package = package = str(self.package_folder) if s.ship == "path" else \
            ray.put(package_files(self.package_folder))
        actor_cls = ray.remote(SeriesWorker).options(
            num_cpus=s.cpus_per_worker, num_gpus=s.gpus_per_worker, max_restarts=-1, max_task_retries=0,
            max_concurrency=1)
        cfg = {f: getattr(self.config, f) for f in self.config.__dataclass_fields__}
        self.actors = [actor_cls.remote(package, self.sha256, self.backend, cfg, opts, s.threads, self.png)
                       for _ in range(s.workers)]
        try:
            self.workers = ray.get([a.ready.remote() for a in self.actors], timeout=s.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise ConfigError(f"the {s.workers} batch workers did not start within {s.start_timeout_s:g} s: the "
                              f"cluster may lack {s.cpus_per_worker:g} CPU / {s.gpus_per_worker:g} GPU per worker "
                              f"({total})") from None
        except ray.exceptions.RayActorError as exc:
            raise ConfigError(f"a batch worker could not start: {_cause(exc)}") from None

    def run(self, jobs: list[Job]) -> Iterator[tuple[Job, dict, int]]:
        """Detect ``jobs`` on the actors -> (job, result of `SeriesWorker.detect`, attempts) as each
        finishes, in completion order. At most ``inflight_per_worker`` series per live actor are in
        flight. A series whose worker died is resubmitted, up to ``retries`` times, to the actors
        that are alive; the dead one gets work again once Ray has restarted it (a `ready` probe that
        waits for the restart: submitting to a restarting actor fails at once). NoduleflowError when
        no worker is left."""
        ray, s = self.ray, self.settings
        n = len(self.actors)
        pending = deque((job, 1) for job in jobs)
        inflight: dict = {}   # future -> (job, actor index, attempt)
        probes: dict = {}     # future of a restarted actor's `ready` -> actor index
        load, alive = [0] * n, [True] * n
        while pending or inflight:
            while pending and len(inflight) < s.inflight_per_worker * sum(alive):
                job, attempt = pending.popleft()
                i = min((k for k in range(n) if alive[k]), key=load.__getitem__)
                inflight[self.actors[i].detect.remote(job.path, job.series_uid)] = (job, i, attempt)
                load[i] += 1
            if not inflight and not probes:
                raise NoduleflowError(f"every batch worker is gone; {len(pending)} series not detected (run the "
                                      "same command again to go on)")
            ready, _ = ray.wait([*inflight, *probes], num_returns=1)
            for ref in ready:
                if ref in probes:
                    i = probes.pop(ref)
                    try:
                        self.workers[i] = ray.get(ref)
                        alive[i] = True
                        log.info("worker %d is back (pid %s)", i, self.workers[i].get("pid"))
                    except ray.exceptions.RayError as exc:
                        log.warning("worker %d cannot be restarted: %s", i, _cause(exc))
                    continue
                job, i, attempt = inflight.pop(ref)
                load[i] -= 1
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    if alive[i]:   # wait for Ray to restart it before giving it work again
                        alive[i] = False
                        probes[self.actors[i].ready.options(max_task_retries=-1).remote()] = i
                    if attempt <= s.retries:
                        log.warning("worker %d died while detecting %s (attempt %d): detecting it again", i,
                                    job.label, attempt)
                        pending.appendleft((job, attempt + 1))
                        continue
                    result = {"status": "failed", "reason": f"its worker died {attempt} times while detecting it "
                                                            f"(last: {_cause(exc)})", "worker": None}
                except ray.exceptions.RayError as exc:
                    result = {"status": "failed", "reason": f"Ray error {type(exc).__name__}: {_cause(exc)}",
                              "worker": None}
                yield job, result, attempt

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a, no_restart=True)
        self.actors = []
        if self.started_ray:
            self.ray.shutdown()
            self.started_ray = False


def _cause(exc: BaseException) -> str:
    """One line of a Ray error's message: the innermost "SomeError: why" line of the remote traceback
    when there is one (an actor's failed constructor), else the first line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    raised = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", ln)]
    text = raised[-1] if raised else (lines[0] if lines else type(exc).__name__)
    return printable(text)[:300]
