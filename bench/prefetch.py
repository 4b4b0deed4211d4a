"""Scans per second with and without loading the next scan meanwhile:
``python -m noduleflow.bench.prefetch [--scans 4] [--repeats 3]``.

Writes ``--scans`` phantom chest CTs as DICOM series (bench speed's: about 200 x 512 x 512), opens
one detector (the shipped package, ``--backend auto``), detects the first scan once (one-off costs),
then detects the whole list ``--repeats`` times each way, alternating: one scan after the other
(``Detector.detect(paths, prefetch=False)``: load, detect, load, ...) and with the next scan loaded by
a background thread while the current one is detected (``prefetch=True``; `Detector.detect` on a
list and ``noduleflow detect`` do this by default when the scoring runs on a GPU). Checks that both
give the same candidates.
Writes prefetch.json and .md to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def run(out_dir: Path, n_scans: int = 4, repeats: int = 3, seed0: int = 700, backend: str = "auto",
        shape_zyx=None, spacing_zyx_mm=(1.5, 0.7, 0.7)) -> dict:
    from noduleflow.bench.speed import machine, phantom_series
    from noduleflow.engine.detector import Detector
    from noduleflow.engine.errors import ConfigError

    if n_scans < 2 or repeats < 1:
        raise ConfigError(f"need --scans >= 2 and --repeats >= 1, got {n_scans} and {repeats}")
    r = {"machine": machine(), "n_scans": n_scans, "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="nf-prefetch-") as tmp:
        scans = phantom_series(Path(tmp), n_scans, seed0, spacing_zyx_mm=spacing_zyx_mm, shape_zyx=shape_zyx)
        with Detector(backend=backend) as det:
            r["backend"] = det.backend_name
            det.detect(scans[0])
            times = {"one_after_another": [], "prefetch": []}
            results = {}
            for _ in range(repeats):
                for how, ahead in (("one_after_another", False), ("prefetch", True)):
                    t = time.perf_counter()
                    results[how] = det.detect(scans, prefetch=ahead)
                    times[how].append(time.perf_counter() - t)
    a, b = results["one_after_another"], results["prefetch"]
    r["same_candidates"] = all(
        len(x) == len(y) and np.allclose([c.center_xyz_mm for c in x], [c.center_xyz_mm for c in y])
        and np.allclose([c.prob for c in x], [c.prob for c in y], atol=1e-6) for x, y in zip(a, b))
    r["load_s_median"] = statistics.median(d.timings_s["load"] for d in a)
    for how, ts in times.items():
        r[how] = {"seconds": ts, "scans_per_s_median": n_scans / statistics.median(ts)}
    r["speedup_median"] = statistics.median(times["one_after_another"]) / statistics.median(times["prefetch"])
    r["speedups"] = [x / y for x, y in zip(times["one_after_another"], times["prefetch"])]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "prefetch.json").write_text(json.dumps(r, indent=1))
    (out_dir / "prefetch.md").write_text(markdown(r))
    return r


def markdown(r: dict) -> str:
    m = r["machine"]
    return "\n".join([
        "# Loading the next scan while the current one is detected", "",
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores; backend {r['backend']}. Command: `python -m "
        f"noduleflow.bench.prefetch --scans {r['n_scans']} --repeats {r['repeats']}`. {r['n_scans']} phantom DICOM "
        "series (~200 x 512 x 512), one warm detector, the list detected each way in turn.", "",
        "| | scans/s (median) | seconds per run |", "|---|---:|---|",
        f"| one after another | {r['one_after_another']['scans_per_s_median']:.3f} | "
        + ", ".join(f"{t:.2f}" for t in r["one_after_another"]["seconds"]) + " |",
        f"| next scan loaded meanwhile | {r['prefetch']['scans_per_s_median']:.3f} | "
        + ", ".join(f"{t:.2f}" for t in r["prefetch"]["seconds"]) + " |", "",
        f"Prefetch over one after another: {r['speedup_median']:.2f}x (median; per repeat "
        + ", ".join(f"{s:.2f}x" for s in r["speedups"]) + f"). Loading a series took {r['load_s_median']:.2f} s "
        f"(median). Same candidates both ways: {'yes' if r['same_candidates'] else 'NO'}.", ""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m noduleflow.bench.prefetch", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scans", type=int, default=4, help="phantom series (default 4)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of the list each way (default 3)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", default="bench/results/prefetch", help="output folder")
    a = ap.parse_args(argv)
    r = run(Path(a.out), a.scans, a.repeats, backend=a.backend)
    print(markdown(r))
    return 0 if r["same_candidates"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
