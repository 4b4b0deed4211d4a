"""How long numba spent compiling kernels during a piece of work (numba's event API).

The engine's kernels are compiled on first use and cached on disk (``cache=True``); only a
first run after an install (or after numba's cache is cleared) compiles them, and that run's
stage times include the compilation. `compile_clock` measures it so that the timings say so.
Numba raises its "numba:compile" event only when it compiles (a cache hit raises none); nested
compilations (a kernel calling another) are counted once, by the outermost.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

from numba.core import event


class CompileClock(event.Listener):
    """``seconds``: wall time spent compiling (outermost compilations); ``kernels``: how many."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.kernels = 0
        self._depth = 0
        self._t0 = 0.0

    def on_start(self, ev) -> None:
        if self._depth == 0:
            self._t0 = time.perf_counter()
        self._depth += 1

    def on_end(self, ev) -> None:
        self._depth = max(self._depth - 1, 0)
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._t0
            self.kernels += 1


@contextmanager
def compile_clock():
    """``with compile_clock() as c: ...`` -> ``c.seconds``, ``c.kernels`` compiled inside the block."""
    clock = CompileClock()
    with event.install_listener("numba:compile", clock):
        yield clock


def compile_note(meta: dict, min_s: float = 0.5) -> str:
    """A note for printed timings when a detection's meta says numba compiled kernels inside them."""
    s = float(meta.get("numba_compile_s") or 0.0)
    if s < min_s:
        return ""
    return (f"; {s:.1f} s of these times was numba compiling {meta.get('numba_kernels_compiled', 0)} kernel(s), "
            "once after an install (they are cached for later runs; `noduleflow warmup` does it ahead)")
