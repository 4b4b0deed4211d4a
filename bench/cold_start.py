"""`noduleflow bench cold-start`: the first detection of a fresh process, against a warm one.

    noduleflow bench cold-start [--warm-only] [--backend auto ...] [--precision fp32|int8] [--out DIR]
    python -m noduleflow.bench.cold_start ...   (the same options)

Fresh processes detect on the same small phantom, each 1 + --repeats (3) times (`noduleflow
warmup`'s `warm_twice`, imported by the child from `noduleflow.commands.warmup`):

1. with an empty numba cache (the first detection after an install: every kernel compiles);
2. with the cache that process 1 filled (a new process after `noduleflow warmup`), per --backend;
3. the same again (repeatability).

``--warm-only`` skips process 1: processes 2 and 3 then use numba's own cache, as `noduleflow
warmup` filled it. In each process the best of the later detections is the warm reference,
so every figure is a ratio measured in one process against itself. Writes cold_start.json/.md.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from noduleflow.commands.warmup import warm_twice
from noduleflow.engine.errors import ConfigError

from .common import machine, standalone, write_report

HELP = "first detection of a fresh process vs a warm one, with and without numba's cache"
DESCRIPTION = ("Time a first and the best of --repeats warm detections of a small phantom in fresh processes: one "
               "on an empty numba cache (unless --warm-only), then two on the filled cache per --backend. "
               "Writes cold_start.json/.md.")
# the phantom `noduleflow warmup` detects on, unless --shape/--spacing say otherwise (read from
# warm_twice's signature: its defaults are declared once, there)
_WARMUP = inspect.signature(warm_twice).parameters
DEFAULT_SHAPE = tuple(_WARMUP["shape_zyx"].default)
DEFAULT_SPACING = tuple(_WARMUP["spacing_zyx_mm"].default)


def child(cache: Path | None, backend: str = "auto", precision: str = "fp32", shape_zyx=DEFAULT_SHAPE,
          spacing_zyx_mm=DEFAULT_SPACING, model: str | None = None, warm_repeats: int = 3) -> dict:
    """One fresh Python process: seconds of its imports (``import_s``), of its first detection
    (``first_s``), of the best of ``warm_repeats`` later ones (``warm_s``) and of the whole process
    (``process_s``). ``cache``: its NUMBA_CACHE_DIR (None: numba's own)."""
    kwargs = {"model": model, "warm_repeats": warm_repeats, "backend": backend, "precision": precision,
              "shape_zyx": tuple(shape_zyx), "spacing_zyx_mm": tuple(spacing_zyx_mm)}
    code = ("import json, time; t0 = time.perf_counter(); import noduleflow; "
            "from noduleflow.commands.warmup import warm_twice; t1 = time.perf_counter(); "
            f"a, b = warm_twice(**{kwargs!r}); "
            "print(json.dumps({'import_s': t1 - t0, 'first_s': a, 'warm_s': b}))")
    env = dict(os.environ)
    if cache is not None:
        env["NUMBA_CACHE_DIR"] = str(cache)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"cold-start child ({backend}, {precision}) exited {out.returncode}: {out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["process_s"] = time.perf_counter() - t
    return r


def measure(backends=("auto",), precision: str = "fp32", warm_only: bool = False, shape_zyx=DEFAULT_SHAPE,
            spacing_zyx_mm=DEFAULT_SPACING, model: str | None = None, warm_repeats: int = 3,
            command: str = "noduleflow bench cold-start") -> dict:
    """The runs by process name ("empty_cache", "warm_cache", "warm_cache_again"; with several
    backends the warm ones suffixed " [backend]"), each `child`'s figures plus its ``backend`` and
    ``first_over_warm``; the machine and the load average at the end."""
    if warm_repeats < 1:
        raise ConfigError(f"warm repeats must be >= 1, got {warm_repeats}")
    opts = {"precision": precision, "shape_zyx": shape_zyx, "spacing_zyx_mm": spacing_zyx_mm, "model": model,
            "warm_repeats": warm_repeats}
    runs = {}
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as tmp:
        cache = None if warm_only else Path(tmp)
        if not warm_only:
            runs["empty_cache"] = dict(child(cache, backends[0], **opts), backend=backends[0])
        for b in backends:
            suffix = "" if len(backends) == 1 else f" [{b}]"
            runs["warm_cache" + suffix] = dict(child(cache, b, **opts), backend=b)
            runs["warm_cache_again" + suffix] = dict(child(cache, b, **opts), backend=b)
    for r in runs.values():
        r["first_over_warm"] = r["first_s"] / r["warm_s"]
    return {"machine": machine(), "load_average": os.getloadavg(), "precision": precision,
            "shape_zyx": list(shape_zyx), "spacing_zyx_mm": list(spacing_zyx_mm), "warm_repeats": warm_repeats,
            "runs": runs, "command": command}


def markdown(res: dict) -> str:
    load = ", ".join(f"{x:.1f}" for x in res["load_average"])
    lines = ["# Cold start", "", f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores; load average "
             f"at the end {load}. Phantom {res['shape_zyx']} voxels at {res['spacing_zyx_mm']} mm, "
             f"precision {res['precision']}. Command: `{res['command']}`.", "",
             f"| process | backend | import s | first detection s | warm detection s (best of {res['warm_repeats']}) "
             "| first / warm |", "|---|---|---:|---:|---:|---:|"]
    for k, r in res["runs"].items():
        lines.append(f"| {k} | {r['backend']} | {r['import_s']:.2f} | {r['first_s']:.2f} | {r['warm_s']:.2f} | "
                     f"{r['first_over_warm']:.2f} |")
    lines += ["", "empty_cache: a fresh process on an empty numba cache (an install without `noduleflow warmup`: "
              "every kernel compiles inside the first detection); warm_cache and warm_cache_again: fresh processes "
              "on the cache it filled, or with --warm-only on numba's own (an install that ran `noduleflow warmup`, "
              "as the README's install line does). Each ratio is a process's first detection over its own best "
              "later one."]
    return "\n".join(lines) + "\n"


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `noduleflow bench cold-start` (and of ``python -m noduleflow.bench.cold_start``)."""
    from noduleflow.engine.backends import backend_names

    p.add_argument("--backend", nargs="+", default=["auto"], choices=backend_names(), metavar="NAME",
                   help="backend(s) the detections run on; the warm-cache processes are repeated for each "
                        f"({', '.join(backend_names())}; default auto)")
    p.add_argument("--warm-only", action="store_true",
                   help="no empty-cache process: the warm-cache ones use numba's own cache (as filled by "
                        "`noduleflow warmup`) instead of a new temporary one")
    p.add_argument("--precision", default="fp32", choices=("fp32", "int8"),
                   help="the scoring network's precision in every process (detect --precision; default fp32)")
    p.add_argument("--shape", type=int, nargs=3, default=DEFAULT_SHAPE, metavar=("Z", "Y", "X"),
                   help=f"phantom voxel grid (default {' '.join(map(str, DEFAULT_SHAPE))}, `noduleflow warmup`'s)")
    p.add_argument("--spacing", type=float, nargs=3, default=DEFAULT_SPACING, metavar=("DZ", "DY", "DX"),
                   help=f"phantom voxel size in mm (default {' '.join(map(str, DEFAULT_SPACING))})")
    p.add_argument("--repeats", type=int, default=3, help="warm detections per process after the first; the "
                   "best of them is that process's warm reference (default 3)")
    p.add_argument("--model", help="model package (default: the shipped one)")
    p.add_argument("--out", default="bench-cold-start", help="output folder (default ./bench-cold-start)")
    p.set_defaults(func=command)
    return p


def register(sub) -> None:
    build_parser(sub.add_parser("cold-start", help=HELP, description=DESCRIPTION))


def command_line(args: argparse.Namespace) -> str:
    """The full command that reproduces this run (every option spelt out)."""
    cmd = ["noduleflow bench cold-start", *(["--warm-only"] if args.warm_only else []), "--backend", *args.backend,
           "--precision", args.precision, "--shape", *map(str, args.shape), "--spacing", *map(str, args.spacing),
           "--repeats", str(args.repeats)]
    if args.model:
        cmd += ["--model", args.model]
    return " ".join(cmd + ["--out", args.out])


def command(args: argparse.Namespace) -> int:
    res = measure(tuple(args.backend), args.precision, args.warm_only, tuple(args.shape), tuple(args.spacing),
                  args.model, args.repeats, command=command_line(args))
    write_report(Path(args.out), "cold_start", res, markdown(res))
    return 0


def main(argv=None) -> int:
    return standalone(build_parser, "cold_start", DESCRIPTION, argv)


if __name__ == "__main__":
    raise SystemExit(main())
