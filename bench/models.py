"""`noduleflow bench models`: two model packages' whole-scan detection time on the same scans, in
one run, interleaved.

Phantom chest CTs (about 200 x 512 x 512, `bench.common.phantom_series`) are written as DICOM
series and loaded once; each package's detector opens once and detects every scan once to warm up
(numba and the graphs), then the two detect each scan in turn, ``--repeats`` times, alternating
which goes first, so that a busy neighbour slows both alike. Reported: the median whole-scan time
(loading excluded: the volumes are in memory) and each stage's median for both, the ratio
``--model`` / ``--reference``, the candidates each scored, machine and versions. Absolute times on
a shared machine are indicative; the ratio is the result.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from .common import machine, phantom_series, standalone, write_report

HELP = "two model packages' whole-scan time on the same scans, interleaved (ratio)"


def run(model, reference, n_scans: int = 3, repeats: int = 2, backend: str = "auto", seed0: int = 500) -> dict:
    from noduleflow.engine.detector import Detector
    from noduleflow.engine.io import load_volume

    with tempfile.TemporaryDirectory(prefix="noduleflow-bench-models-") as tmp:
        vols = [load_volume(p) for p in phantom_series(Path(tmp), n_scans, seed0)]
    dets = {"model": Detector(model, backend=backend), "reference": Detector(reference, backend=backend)}
    for det in dets.values():   # warm: numba kernels, graphs, first allocations
        for v in vols:
            det.detect(v)
    runs = {k: [] for k in dets}
    for r in range(repeats):
        for i, v in enumerate(vols):
            order = ("model", "reference") if (r + i) % 2 == 0 else ("reference", "model")
            for k in order:
                d = dets[k].detect(v)
                runs[k].append({"scan": i, "timings_s": dict(d.timings_s), "scored": int(d.n_scored)})
    out = {"machine": machine(), "scans": n_scans, "repeats": repeats, "shape_zyx": list(vols[0].shape),
           "backend": dets["model"].backend_name}
    for k, det in dets.items():
        stages = sorted({s for r in runs[k] for s in r["timings_s"]})
        out[k] = {"package": det.package.manifest.model_id, "sha256": det.package_sha256,
                  "total_s": statistics.median(r["timings_s"]["total"] for r in runs[k]),
                  "stages_s": {s: statistics.median(r["timings_s"].get(s, 0.0) for r in runs[k]) for s in stages},
                  "scored_median": statistics.median(r["scored"] for r in runs[k]), "runs": runs[k]}
    out["ratio_total"] = out["model"]["total_s"] / out["reference"]["total_s"]
    return out


def markdown(res: dict) -> str:
    m, r = res["model"], res["reference"]
    lines = [f"# `{m['package']}` against `{r['package']}`: whole-scan time", "",
             f"{res['scans']} phantom scans {tuple(res['shape_zyx'])}, {res['repeats']} interleaved runs each after "
             f"a warm-up, backend {res['backend']}; {res['machine'].get('cpu', '')}. Loading excluded.", "",
             f"**Ratio (model / reference), median whole scan: {res['ratio_total']:.2f}x** "
             f"({m['total_s']:.2f} s / {r['total_s']:.2f} s); stage-1 candidates scored: "
             f"{m['scored_median']:.0f} / {r['scored_median']:.0f}.", "",
             "| stage | model s | reference s |", "|---|---:|---:|"]
    for s in sorted(set(m["stages_s"]) | set(r["stages_s"])):
        lines.append(f"| {s} | {m['stages_s'].get(s, 0.0):.3f} | {r['stages_s'].get(s, 0.0):.3f} |")
    return "\n".join(lines) + "\n"


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--model", required=True, help="the package measured")
    p.add_argument("--reference", required=True, help="the package it is compared with")
    p.add_argument("--scans", type=int, default=3, help="phantom scans (default 3)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs per scan and package (default 2)")
    p.add_argument("--backend", default="auto", help="backend of both detectors (default auto)")
    p.add_argument("--out", default="bench-models", help="output folder (models.json/.md)")
    p.set_defaults(func=command)
    return p


def register(sub) -> None:
    build_parser(sub.add_parser("models", help=HELP, description=__doc__))


def command(args: argparse.Namespace) -> int:
    from noduleflow.engine import ConfigError

    if args.scans < 1 or args.repeats < 1:
        raise ConfigError(f"--scans and --repeats must be >= 1, got {args.scans}, {args.repeats}")
    res = run(args.model, args.reference, args.scans, args.repeats, args.backend)
    write_report(Path(args.out), "models", res, markdown(res))
    return 0


def main(argv=None) -> int:
    return standalone(build_parser, "models", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
