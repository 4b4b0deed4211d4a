"""`noduleflow bench memory`: peak memory of a whole detection, each in a fresh process.

    noduleflow bench memory [--shape 600 512 512] [--spacing 0.5 0.7 0.7] [--backend auto ...] [--out DIR]
    python -m noduleflow.bench.memory ...   (the same options)

A phantom of the given shape is written as a DICOM series by ``noduleflow synth`` in its own
process, so that synthesis does not count; then ``noduleflow detect`` runs on it once per stages
setting (the package's default, and ``--stages 1``) and per ``--backend``, each in a fresh process.
Reported: the child's peak resident set size from the operating system (``os.wait4``: everything,
imports, runtime sessions and the picture included), the engine's own high-water mark after each
step (``meta.peak_rss_mb_after`` in the JSON it writes) and the stage timings. Writes memory.json
and memory.md. Phantom data; absolute times on a shared machine are indicative.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import machine, standalone, write_report

HELP = "peak RSS of one detection (synth + detect, fresh process per stages setting and backend)"
DESCRIPTION = ("Write a phantom DICOM series of --shape/--spacing (`noduleflow synth`, own process), then run "
               "`noduleflow detect` on it in a fresh process per stages setting (auto, 1) and per --backend; "
               "report each process's peak RSS (os.wait4), the engine's high-water mark by step and the stage "
               "timings. Writes memory.json/.md.")
STAGES = ("auto", "1")


def _run(cmd: list[str]) -> float:
    """Run ``cmd``; the child's peak RSS in MB (its resource usage from ``os.wait4``)."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # read stderr before waiting: a child that fills the pipe would otherwise never exit
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {err[-2000:]}")
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return usage.ru_maxrss / scale


def measure(shape_zyx, spacing_zyx_mm, model: str | None = None, seed: int = 77, backends=("auto",),
            command: str = "noduleflow bench memory") -> dict:
    """One row per backend and stages setting ("auto", "1"), each a fresh ``noduleflow detect``
    process on one phantom series of ``shape_zyx`` voxels at ``spacing_zyx_mm`` (mm). Each row:
    ``process_peak_rss_mb`` (the OS's figure), ``engine_peak_rss_mb_after`` (step -> MB, the
    engine's own) and ``timings_s`` (step -> s) from the result JSON."""
    exe = [sys.executable, "-m", "noduleflow"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        data = Path(tmp) / "data"
        _run(exe + ["synth", str(data), "--shape", *map(str, shape_zyx), "--spacing", *map(str, spacing_zyx_mm),
                    "--seed", str(seed)])
        series = next(p for p in sorted(data.iterdir()) if p.is_dir() and p.name.startswith("scan_"))
        for backend in backends:
            for stages in STAGES:
                o = Path(tmp) / f"out_{backend}_{stages}"
                cmd = exe + ["detect", str(series), "--out", str(o), "--stages", stages, "--backend", backend]
                if model:
                    cmd += ["--model", model]
                peak = _run(cmd)
                res = json.loads(next(o.glob("*.json")).read_text())
                meta = res["meta"]
                rows.append({"stages": stages, "backend": res.get("backend"), "stages_run": meta.get("stages", 1),
                             "model_id": res["model_id"], "shape_zyx": meta["shape_zyx"],
                             "lung_box_1mm_zyx": meta["lung_box_1mm_zyx"], "process_peak_rss_mb": peak,
                             "engine_peak_rss_mb_after": meta["peak_rss_mb_after"], "timings_s": res["timings_s"]})
    return {"machine": machine(), "command": command, "shape_zyx": list(shape_zyx),
            "spacing_zyx_mm": list(spacing_zyx_mm), "seed": seed, "rows": rows}


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = ["# Peak memory of one detection, fresh process per run", "",
             f"`{res['command']}`; {m['cpu']}, {m['cores']} cores, Python {m['python']}.", "",
             "| stages | backend | model | scan voxels (z, y, x) | lung box 1 mm | process peak RSS MB "
             "| engine high-water MB by step | total s |",
             "|---|---|---|---|---|---:|---|---:|"]
    for x in res["rows"]:
        steps = ", ".join(f"{k} {v:.0f}" for k, v in x["engine_peak_rss_mb_after"].items())
        lines.append(f"| {x['stages']} ({x['stages_run']}) | {x['backend']} | {x['model_id']} | {x['shape_zyx']} | "
                     f"{x['lung_box_1mm_zyx']} | {x['process_peak_rss_mb']:.0f} | {steps} | "
                     f"{x['timings_s']['total']:.1f} |")
    lines += ["", "Process peak: the operating system's maximum resident set size of the `noduleflow detect` "
              "process (imports, sessions, the picture included). Phantom data."]
    return "\n".join(lines) + "\n"


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `noduleflow bench memory` (and of ``python -m noduleflow.bench.memory``)."""
    from noduleflow.engine.backends import backend_names

    p.add_argument("--shape", type=int, nargs=3, default=(600, 512, 512), metavar=("Z", "Y", "X"),
                   help="phantom voxel grid (default 600 512 512)")
    p.add_argument("--spacing", type=float, nargs=3, default=(0.5, 0.7, 0.7), metavar=("DZ", "DY", "DX"),
                   help="phantom voxel size in mm (default 0.5 0.7 0.7)")
    p.add_argument("--seed", type=int, default=77, help="phantom seed (default 77)")
    p.add_argument("--model", help="model package (default: the shipped one)")
    p.add_argument("--backend", nargs="+", default=["auto"], choices=backend_names(), metavar="NAME",
                   help=f"backend(s) to run, each in its own processes: {', '.join(backend_names())} (default auto)")
    p.add_argument("--out", default="bench-memory", help="output folder (default ./bench-memory)")
    p.set_defaults(func=command)
    return p


def register(sub) -> None:
    build_parser(sub.add_parser("memory", help=HELP, description=DESCRIPTION))


def command_line(args: argparse.Namespace) -> str:
    """The full command that reproduces this run (every option spelt out)."""
    cmd = ["noduleflow bench memory", "--shape", *map(str, args.shape), "--spacing", *map(str, args.spacing),
           "--seed", str(args.seed), "--backend", *args.backend]
    if args.model:
        cmd += ["--model", args.model]
    return " ".join(cmd + ["--out", args.out])


def command(args: argparse.Namespace) -> int:
    res = measure(tuple(args.shape), tuple(args.spacing), args.model, args.seed, tuple(args.backend),
                  command=command_line(args))
    write_report(Path(args.out), "memory", res, markdown(res))
    return 0


def main(argv=None) -> int:
    return standalone(build_parser, "memory", DESCRIPTION, argv)


if __name__ == "__main__":
    raise SystemExit(main())
