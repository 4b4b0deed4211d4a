"""The compile clock: numba's compile time inside a block, nested compilations counted once."""
from __future__ import annotations

import numpy as np
from numba import njit

from noduleflow.engine.jitclock import compile_clock, compile_note


def test_counts_a_compilation_once_and_a_compiled_call_not_at_all():
    @njit
    def inner(a):
        return a.sum() * 2.0

    @njit
    def outer(a):
        return inner(a) + 1.0

    x = np.arange(5.0)
    with compile_clock() as c:
        assert outer(x) == 21.0       # compiles outer, and inner inside it
    assert c.kernels == 1 and c.seconds > 0
    with compile_clock() as again:
        outer(x)
    assert again.kernels == 0 and again.seconds == 0.0
    with compile_clock() as other:
        inner(np.arange(3, dtype=np.int64))   # a new signature of inner: compiled on its own
    assert other.kernels == 1


def test_compile_note_only_when_it_matters():
    assert compile_note({"numba_compile_s": 0.1, "numba_kernels_compiled": 1}) == ""
    assert compile_note({}) == ""
    note = compile_note({"numba_compile_s": 12.34, "numba_kernels_compiled": 7})
    assert "12.3 s" in note and "7 kernel" in note


def test_detections_record_the_compile_time(tiny_package):
    from noduleflow.engine.detector import Detector
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    vol = generate_phantom(2, params=PhantomParams(n_nodules=1), shape_zyx=(40, 96, 96),
                           spacing_zyx_mm=(3.0, 2.4, 2.4)).volume
    with Detector(tiny_package) as det:
        d = det.detect(vol)
        again = det.detect(vol)
    assert d.meta["numba_compile_s"] >= 0 and isinstance(d.meta["numba_kernels_compiled"], int)
    assert again.meta["numba_kernels_compiled"] == 0    # everything this scan needs is compiled by now
