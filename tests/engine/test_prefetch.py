"""engine.io.prefetch: the next scan loaded while the current one is detected."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from noduleflow.engine.io.prefetch import prefetched


def _recording_loader(n):
    started = [threading.Event() for _ in range(n)]
    finished = [threading.Event() for _ in range(n)]

    def load(job):
        started[job].set()
        if job == 2:
            raise ValueError("bad series 2")
        finished[job].set()
        return job * 10

    return load, started, finished


def test_in_order_with_errors_handed_over_and_one_load_ahead():
    load, started, finished = _recording_loader(4)
    gen = prefetched(range(4), load)
    first = next(gen)
    assert (first.job, first.value, first.error) == (0, 0, None) and first.seconds >= 0
    # while the caller holds scan 0, scan 1 loads in the background ...
    assert finished[1].wait(10)
    time.sleep(0.2)
    # ... and nothing beyond it: at most one loaded scan waits beside the one in use
    assert not started[2].is_set()
    rest = list(gen)
    assert [(r.job, r.value) for r in rest] == [(1, 10), (2, None), (3, 30)]
    assert isinstance(rest[1].error, ValueError) and "bad series 2" in str(rest[1].error)
    assert not any(t.name == "noduleflow-prefetch" for t in threading.enumerate())


def test_without_ahead_each_loads_when_asked_for():
    load, started, _ = _recording_loader(4)
    gen = prefetched(range(4), load, ahead=False)
    assert next(gen).value == 0
    time.sleep(0.2)
    assert not started[1].is_set()
    assert [r.value for r in gen] == [10, None, 30]


def test_stopping_early_stops_the_thread():
    load, started, _ = _recording_loader(4)
    for item in prefetched(range(4), load):
        if item.job == 0:
            break
    assert not any(t.name == "noduleflow-prefetch" for t in threading.enumerate())
    assert not started[2].is_set()  # the thread stopped after the load in progress (scan 1)


def test_an_exception_in_the_caller_stops_the_thread_too():
    load, started, _ = _recording_loader(4)
    with pytest.raises(RuntimeError, match="caller"):
        for _ in prefetched(range(4), load):
            raise RuntimeError("caller")
    assert not any(t.name == "noduleflow-prefetch" for t in threading.enumerate())
    assert not started[3].is_set()


def test_detect_several_with_and_without_prefetch_agree(tiny_package, tmp_path):
    from noduleflow.engine.detector import Detector
    from noduleflow.engine.io.dicom_write import write_dicom_series
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    paths = []
    for seed in (4, 5, 6):
        ph = generate_phantom(seed, params=PhantomParams(n_nodules=2), shape_zyx=(60, 128, 128),
                              spacing_zyx_mm=(4.0, 2.4, 2.4))
        write_dicom_series(ph.volume, tmp_path / str(seed), seed=seed)
        paths.append(tmp_path / str(seed))
    with Detector(tiny_package, top_k=5) as det:
        assert det.scores_on_gpu is False  # on the CPU a list is loaded one scan at a time by default
        ahead = det.detect(paths, prefetch=True)
        serial = det.detect(paths)
        with pytest.raises(Exception, match="missing"):
            det.detect([paths[0], tmp_path / "missing"], prefetch=True)
    for a, b in zip(ahead, serial):
        assert a.series_uid == b.series_uid
        assert np.allclose([c.center_xyz_mm for c in a], [c.center_xyz_mm for c in b])
        assert [c.prob for c in a] == pytest.approx([c.prob for c in b], abs=1e-6)
        # the background load is timed and reported as the load stage
        assert a.timings_s["load"] > 0.0 and b.timings_s["load"] > 0.0


def test_scores_on_gpu_follows_the_scoring_backend(tiny_package):
    from types import SimpleNamespace

    from noduleflow.engine.detector import Detector

    with Detector(tiny_package) as det:
        assert det.scores_on_gpu is False
        real = det.backend
        det.backend = SimpleNamespace(device="cuda", name="stand-in")  # only its device is read
        try:
            assert det.scores_on_gpu is True
        finally:
            det.backend = real
