"""Cold start, measured: ``python -m noduleflow.bench.cold_start [--out DIR]``.

Three fresh processes detect on the same small phantom, each four times:
1. with an empty numba cache (the first detection after an install: every kernel compiles),
2. with the cache that process 1 filled (a new process after `noduleflow warmup`),
3. the same again (repeatability).
In each, the best of the three later detections is the warm reference of that process, so
every figure is a ratio measured in one process against itself. Writes cold_start.json/.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def warm_twice(model=None, shape_zyx=(80, 192, 192), spacing_zyx_mm=(3.0, 1.8, 1.8),
               warm_repeats: int = 1, stages: str = "auto", backend: str = "auto",
               precision: str = "fp32") -> tuple[float, float]:
    """Seconds of a first detection and of the best of ``warm_repeats`` later ones (import and
    model load excluded) on a small phantom with two nodules; ``precision``: the scoring network's
    (``detect --precision``)."""
    from noduleflow import Detector
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    vol = generate_phantom(1, params=PhantomParams(n_nodules=2), shape_zyx=shape_zyx,
                           spacing_zyx_mm=spacing_zyx_mm).volume
    with Detector(model, backend=backend, stages=stages, backend_options={"precision": precision}) as det:
        times = []
        for _ in range(1 + warm_repeats):
            t = time.perf_counter()
            det.detect(vol)
            times.append(time.perf_counter() - t)
    return times[0], min(times[1:])


def _child(cache: Path | None, backend: str = "auto", precision: str = "fp32") -> dict:
    code = ("import json, time; t0 = time.perf_counter(); import noduleflow; "
            "from noduleflow.bench.cold_start import warm_twice; t1 = time.perf_counter(); "
            f"a, b = warm_twice(warm_repeats=3, backend={backend!r}, precision={precision!r}); "
            "print(json.dumps({'import_s': t1 - t0, 'first_s': a, 'warm_s': b}))")
    env = dict(os.environ)
    if cache is not None:
        env["NUMBA_CACHE_DIR"] = str(cache)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["process_s"] = time.perf_counter() - t
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m noduleflow.bench.cold_start", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench-cold-start", help="output folder (default ./bench-cold-start)")
    ap.add_argument("--backend", nargs="+", default=["auto"],
                    help="backend(s) the detections run on; the warm-cache processes are repeated for each")
    ap.add_argument("--warm-only", action="store_true",
                    help="no empty-cache process: the warm-cache ones use numba's own cache (as filled by "
                         "`noduleflow warmup`) instead of a new temporary one")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "int8"),
                    help="the scoring network's precision in every process (detect --precision; default fp32)")
    a = ap.parse_args(argv)
    from noduleflow.bench.speed import machine

    runs = {}
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as tmp:
        cache = None if a.warm_only else Path(tmp)
        if not a.warm_only:
            runs["empty_cache"] = dict(_child(cache, a.backend[0], a.precision), backend=a.backend[0])
        for b in a.backend:
            suffix = "" if len(a.backend) == 1 else f" [{b}]"
            runs["warm_cache" + suffix] = dict(_child(cache, b, a.precision), backend=b)
            runs["warm_cache_again" + suffix] = dict(_child(cache, b, a.precision), backend=b)
    for r in runs.values():
        r["first_over_warm"] = r["first_s"] / r["warm_s"]
    res = {"machine": machine(), "load_average": os.getloadavg(), "precision": a.precision, "runs": runs,
           "command": "python -m noduleflow.bench.cold_start " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cold_start.json").write_text(json.dumps(res, indent=2))
    lines = ["# Cold start", "", f"Machine: {res['machine']}; load average at the end "
             f"{', '.join(f'{x:.1f}' for x in res['load_average'])}. Command: `{res['command']}`.", "",
             "| process | import s | first detection s | warm detection s (best of 3) | first / warm |", "|---|---:|---:|---:|---:|"]
    for k, r in runs.items():
        lines.append(f"| {k} | {r['import_s']:.2f} | {r['first_s']:.2f} | {r['warm_s']:.2f} | "
                     f"{r['first_over_warm']:.2f} |")
    lines += ["", "empty_cache: a fresh process on an empty numba cache (an install without `noduleflow warmup`: "
              "every kernel compiles inside the first detection); warm_cache and warm_cache_again: fresh processes "
              "on the cache it filled (an install that ran `noduleflow warmup`, as the README's install line does). "
              "Each ratio is a process's first detection over its own best later one."]
    (out / "cold_start.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
