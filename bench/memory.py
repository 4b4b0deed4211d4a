"""Peak memory of a whole detection, each in a fresh process:

    python -m noduleflow.bench.memory [--shape 600 512 512] [--spacing 0.5 0.7 0.7] [--out bench/results]

A phantom of the given shape is written as a DICOM series (by ``noduleflow synth`` in its own
process, so that synthesis does not count), then ``noduleflow detect`` runs on it once per stages
setting (the package's default, and ``--stages 1``), each in a fresh process. Reported: the child's
peak resident set size from the operating system (``os.wait4``: everything, including imports,
ONNX Runtime sessions and the picture), the engine's own high-water mark after each step
(``meta.peak_rss_mb_after`` in the JSON it writes) and the stage timings. Writes memory.json and
memory.md. Phantoms; absolute times on a shared machine are indicative.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path


def _run(cmd: list[str]) -> tuple[int, float]:
    """Exit status and peak RSS (MB) of a child process."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {err[-2000:]}")
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return p.returncode, ru.ru_maxrss / scale


def run(shape, spacing, out: Path, model: str | None = None, seed: int = 77, backends=("auto",)) -> dict:
    """``backends``: each run once per stages setting (``detect --backend``)."""
    exe = [sys.executable, "-m", "noduleflow"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        _run(exe + ["synth", str(data), "--shape", *map(str, shape), "--spacing", *map(str, spacing),
                    "--seed", str(seed)])
        series = next(p for p in sorted(data.iterdir()) if p.is_dir() and p.name.startswith("scan_"))
        for backend, stages in ((b, s) for b in backends for s in ("auto", "1")):
            o = Path(tmp) / f"out_{backend}_{stages}"
            cmd = exe + ["detect", str(series), "--out", str(o), "--stages", stages, "--backend", backend]
            if model:
                cmd += ["--model", model]
            _, peak = _run(cmd)
            res = json.loads(next(o.glob("*.json")).read_text())
            rows.append({"stages": stages, "backend": res.get("backend"), "stages_run": res["meta"].get("stages", 1), "model_id": res["model_id"],
                         "shape_zyx": res["meta"]["shape_zyx"], "lung_box_1mm_zyx": res["meta"]["lung_box_1mm_zyx"],
                         "process_peak_rss_mb": peak, "engine_peak_rss_mb_after": res["meta"]["peak_rss_mb_after"],
                         "timings_s": res["timings_s"]})
    r = {"machine": {"python": platform.python_version(), "platform": platform.platform(), "cores": os.cpu_count()},
         "command": "python -m noduleflow.bench.memory " + " ".join(sys.argv[1:]), "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(r, indent=1))
    lines = ["# Peak memory of one detection, fresh process per run", "", f"`{r['command']}`; "
             f"{r['machine']['cores']} cores, Python {r['machine']['python']}.", "",
             "| stages | backend | model | scan voxels (z, y, x) | lung box 1 mm | process peak RSS MB | engine high-water MB by step | total s |",
             "|---|---|---|---|---|---:|---|---:|"]
    for x in rows:
        steps = ", ".join(f"{k} {v:.0f}" for k, v in x["engine_peak_rss_mb_after"].items())
        lines.append(f"| {x['stages']} ({x['stages_run']}) | {x.get('backend')} | {x['model_id']} | {x['shape_zyx']} | {x['lung_box_1mm_zyx']} | "
                     f"{x['process_peak_rss_mb']:.0f} | {steps} | {x['timings_s']['total']:.1f} |")
    lines += ["", "Process peak: the operating system's maximum resident set size of the `noduleflow detect` "
              "process (imports, sessions, the picture included). Phantom data."]
    (out / "memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m noduleflow.bench.memory", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=(600, 512, 512), metavar=("Z", "Y", "X"))
    ap.add_argument("--spacing", type=float, nargs=3, default=(0.5, 0.7, 0.7), metavar=("DZ", "DY", "DX"))
    ap.add_argument("--model", help="model package (default: the shipped one)")
    ap.add_argument("--backend", nargs="+", default=["auto"], help="backend(s) to run, each in its own processes "
                    "(default auto)")
    ap.add_argument("--out", default="bench-memory")
    a = ap.parse_args(argv)
    run(a.shape, a.spacing, Path(a.out), a.model, backends=tuple(a.backend))
    return 0


if __name__ == "__main__":
    sys.exit(main())
