"""Fixtures for the service tests: small phantom DICOM series, the shipped model loaded once,
a running in-process service on a free loopback port, and a bounded wait."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

SMALL = dict(shape_zyx=(60, 112, 112), spacing_zyx_mm=(2.5, 2.0, 2.0))
SCU_AE = "NFTEST"


def wait_for(predicate, timeout: float = 120.0, every: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = predicate()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def write_series(folder: Path, seed: int, n_nodules: int = 2) -> list[Path]:
    """A small phantom chest CT as a DICOM series; returns the files in slice order."""
    from noduleflow.engine.io.dicom_write import write_dicom_series
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    ph = generate_phantom(seed, params=PhantomParams(n_nodules=n_nodules), **SMALL)
    return write_dicom_series(ph.volume, folder, seed=seed)


def dcmtk(tool: str) -> str | None:
    from noduleflow.bench.serve_load import find_dcmtk

    return find_dcmtk(tool)


def send(port: int, files, ae_title: str = SCU_AE, contexts=None):
    """Send files with pynetdicom as SCU; returns the statuses (int per file)."""
    from noduleflow.bench.serve_load import send_pynetdicom

    return send_pynetdicom(port, ae_title, files, contexts)


@pytest.fixture(scope="session")
def detector():
    from noduleflow.engine.detector import Detector

    return Detector(None)   # the shipped default model, as `serve` uses it


@pytest.fixture(scope="session")
def series_pool(tmp_path_factory):
    """Three distinct phantom series, written once."""
    root = tmp_path_factory.mktemp("series")
    return [write_series(root / f"s{seed}", seed) for seed in (31, 32, 33)]


@pytest.fixture
def make_service(tmp_path, detector):
    from noduleflow.serve.service import ServeConfig, Service

    started = []

    def make(**kw):
        cfg = ServeConfig(**{"spool": tmp_path / "spool", "port": 0, "quiet_s": 1.0, "poll_s": 0.1,
                             "allow_ae": (SCU_AE, "STORESCU", "ECHOSCU"), "png": False, **kw})
        svc = Service(cfg, detector=detector).start()
        started.append(svc)
        return svc

    yield make
    for s in started:
        if s._scp is not None or s._threads:
            s.stop()
