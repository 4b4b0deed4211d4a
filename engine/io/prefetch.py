"""Loading the next scan while the current one is detected.

`prefetched(jobs, load)` yields each job's loaded volume in order while a background thread loads
the next one: reading and decoding a DICOM series (pydicom, numpy) overlaps the detection of the
previous scan, whose numba kernels and inference runtimes release the GIL. At most one volume waits
loaded beside the one in use (the thread starts a load only when the previous one has been taken),
so memory grows by one native scan at most.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Loaded:
    """One job's outcome: ``value`` what ``load(job)`` returned, or ``error`` what it raised;
    ``seconds`` how long it took."""
    job: Any
    value: Any = None
    error: BaseException | None = None
    seconds: float = 0.0


_END = object()


def prefetched(jobs: Iterable, load: Callable[[Any], Any], ahead: bool = True) -> Iterator[Loaded]:
    """`Loaded` for each of ``jobs`` in order. ``ahead``: load the next job in a background thread
    while the caller works on the current one; False: each loaded when asked for (no thread). An
    exception raised by ``load`` is handed over in its `Loaded`, never raised here; a caller that
    stops early (break, an exception, close) stops the thread after the load in progress."""
    def one(job) -> Loaded:
        t = time.perf_counter()
        try:
            return Loaded(job, value=load(job), seconds=time.perf_counter() - t)
        except Exception as exc:  # handed to the caller with its job
            return Loaded(job, error=exc, seconds=time.perf_counter() - t)

    if not ahead:
        for job in jobs:
            yield one(job)
        return
    q: queue.Queue = queue.Queue()
    taken = threading.Semaphore(1)  # a load starts only once the previous result has been taken
    stop = threading.Event()

    def worker():
        try:
            for job in jobs:
                taken.acquire()
                if stop.is_set():
                    return
                q.put(one(job))
        finally:
            q.put(_END)

    th = threading.Thread(target=worker, name="noduleflow-prefetch", daemon=True)
    th.start()
    try:
        while (item := q.get()) is not _END:
            taken.release()  # the next load starts while the caller works on this one
            yield item
    finally:
        stop.set()
        taken.release()  # wake a worker waiting for its turn, so that it sees the stop
        th.join()
