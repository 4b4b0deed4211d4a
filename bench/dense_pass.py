"""The dense pass of two model packages on the same scans: ``python -m noduleflow.bench.dense_pass --before PKG``.

The dense pass is stage 1's CNN run fully convolutionally over the lung's grid points
(`Detector._score_dense`: ``--stages 1``, hard-negative mining, the union generator). This
compares two packages' dense graphs (e.g. 3D-1 and 3D-E, whose contracts are the same: the same
preprocessing, grid points and tiles) on the same phantom chest CTs (bench speed's: 300 mm at
1.5 x 0.7 x 0.7 mm, written as DICOM and read back), through the engine's own backend:

- per package and ``--tiles`` size: the seconds of the dense pass over each scan's grid points,
  the two packages alternating, median of ``--repeats``; their ratio;
- the FLOPs each runs (`bench.flops.work_done`: the engine's tiles, halos and boxes included) and
  needs (`bench.flops.needed_work`: each layer's positions that the grid points need, once), and
  the achieved rate on both against the machine's float32 peak (`bench.flops.peak`: a 4096^2
  matmul, a 64 -> 64 3^3 convolution and each graph's heaviest), measured in the same run at the
  start and at the end, the higher of each kept (`bench.flops.merge_peaks`).

``--after`` defaults to the shipped package. Writes dense_pass.json and .md to ``--out``.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _graph(pkg):
    from noduleflow.bench import flops as fl

    return fl.layers_from_onnx(pkg.file("dense.onnx"), pkg.contract)


def scans_and_grids(folders, det) -> list[dict]:
    """Each series loaded and preprocessed with ``det``'s spec -> {name, pre, centres, lung box}."""
    from noduleflow.engine.io import load_volume
    from noduleflow.engine.preprocess import preprocess

    out = []
    for f in folders:
        pre = preprocess(load_volume(f), det.spec)
        out.append({"name": Path(f).name, "pre": pre, "centres": det.grid_centres(pre),
                    "box": list(pre.volume.shape)})
    return out


def time_passes(dets: dict, tiles, scans: list[dict], repeats: int) -> dict:
    """{(label, tile): [median seconds per scan]}: each detector's dense pass at each tile size on each
    scan's grid points, the detectors and tiles alternating within each repeat (one warm-up pass each
    first). A detector's backend serves all its tile sizes (its config's ``tile_out`` set per pass)."""
    runs = [(k, t) for k in dets for t in tiles]

    def run(k, t, scan):
        det = dets[k]
        det.config = det.config.replace(tile_out=t)
        det.score(scan["pre"], scan["centres"])

    for k, t in runs:
        run(k, t, scans[0])
    times = {r: [[] for _ in scans] for r in runs}
    for _ in range(repeats):
        for i, s in enumerate(scans):
            for r in runs:
                t0 = time.perf_counter()
                run(*r, s)
                times[r][i].append(time.perf_counter() - t0)
    return {r: [statistics.median(x) for x in v] for r, v in times.items()}


def measure(before, after, n_scans: int = 3, tiles=(32,), repeats: int = 3, backend: str = "auto",
            peak_budget_s: float = 8.0, series=()) -> dict:
    """The report (`main`'s): ``n_scans`` phantom series written for the run, and any ``series``
    (DICOM folders or image files) besides."""
    from noduleflow.bench import flops as fl
    from noduleflow.bench.speed import machine, phantom_series
    from noduleflow.engine.detector import Detector
    from noduleflow.engine.errors import ConfigError
    from noduleflow.engine.package import ModelPackage, default_package_path

    pkgs = {"before": ModelPackage.load(before), "after": ModelPackage.load(after or default_package_path())}
    ca, cb = pkgs["before"].contract, pkgs["after"].contract
    if (ca.patch_size, ca.dense_stride, ca.dense_offset, ca.preprocess, ca.candidate_rules) != \
            (cb.patch_size, cb.dense_stride, cb.dense_offset, cb.preprocess, cb.candidate_rules):
        raise ConfigError("the two packages' dense contracts differ (patch, stride, offset, preprocessing or "
                          "grid points): their dense passes would not score the same points")
    for k, p in pkgs.items():
        if p.file("dense.onnx") is None:
            raise ConfigError(f"package {p.manifest.model_id} ({k}) has no dense graph")
    graphs = {k: _graph(p) for k, p in pkgs.items()}
    peaks = [fl.peak(peak_budget_s, graph=graphs["after"])]
    with tempfile.TemporaryDirectory() as tmp:
        folders = (phantom_series(Path(tmp), n_scans) if n_scans else []) + [Path(x) for x in series]
        if not folders:
            raise ConfigError("no scans: give --scans N or --series")
        dets = {k: Detector(p, backend=backend, stages="1", mode="dense") for k, p in pkgs.items()}
        scans = scans_and_grids(folders, dets["after"])
        secs = time_passes(dets, tiles, scans, repeats)
    peaks.append(fl.peak(peak_budget_s, graph=graphs["after"]))
    pk = fl.merge_peaks(peaks)
    rows = []
    for k, det in dets.items():
        g = graphs[k]
        need = sum(fl.needed_work(g, det.contract, s["centres"], s["box"]) for s in scans)  # whatever the tile
        for t in tiles:
            done = sum(fl.work_done(g, det.contract, s["centres"], s["box"], t) for s in scans)
            rows.append({"package": k, "model_id": pkgs[k].manifest.model_id,
                         "architecture": pkgs[k].manifest.architecture, "tile_out": t, "backend": det.backend_name,
                         "seconds_per_scan": secs[k, t], **fl.accounting(done, need, sum(secs[k, t]), pk)})
    best = {k: min((r for r in rows if r["package"] == k), key=lambda r: r["seconds"]) for k in pkgs}
    return {"machine": machine(), "scans": [{"name": s["name"], "box": s["box"], "grid_points": int(len(s["centres"]))}
                                            for s in scans], "phantom_scans": n_scans,
            "repeats": repeats, "tiles": list(tiles), "peak": pk, "rows": rows,
            "fastest_tile": {k: r["tile_out"] for k, r in best.items()},
            "speedup_after_over_before": best["before"]["seconds"] / best["after"]["seconds"]}


def markdown(r: dict, command: str) -> str:
    m, pk = r["machine"], r["peak"]
    ids = {x["package"]: f"{x['model_id']} ({x['architecture']})" for x in r["rows"]}
    lines = [f"# The dense pass: {ids['before']} -> {ids['after']}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores; onnxruntime {m.get('onnxruntime')}, openvino {m.get('openvino')}, "
             f"numba {m['numba']}. Command: `{command}`.",
             "",
             f"{len(r['scans'])} series (lung boxes "
             + ", ".join("x".join(map(str, s["box"])) for s in r["scans"]) + ", "
             + ", ".join(str(s["grid_points"]) for s in r["scans"]) + " grid points); "
             f"median of {r['repeats']} per scan, the packages alternating. The float32 peak measured in this run "
             f"(the higher of {len(pk.get('measurements', [1]))} measurements): matmul {pk['matmul_gflops']:.0f} GFLOP/s, "
             f"conv3d {pk['conv3d_gflops']:.0f} GFLOP/s ({pk['conv3d_runtime']}, {pk['conv3d']}).", "",
             "| package | tile | s (all scans) | GFLOP done | GFLOP needed | needed/done | done: % of matmul, conv3d | "
             "needed: % of matmul, conv3d |", "|---|---:|---:|---:|---:|---:|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['package']}: {ids[x['package']]} | {x['tile_out']} | {x['seconds']:.2f} | {x['gflop_done']:.1f} | "
                     f"{x['gflop_needed']:.1f} | {x['needed_over_done']:.2f} | "
                     f"{100 * x['done_over_matmul_peak']:.0f} %, {100 * x['done_over_conv3d_peak']:.0f} % | "
                     f"**{100 * x['needed_over_matmul_peak']:.0f} %, {100 * x['needed_over_conv3d_peak']:.0f} %** |")
    ft = r["fastest_tile"]
    lines += ["", f"At each package's fastest tile (before {ft['before']}, after {ft['after']}), the dense pass of "
              f"`after` is **{r['speedup_after_over_before']:.2f}x** `before`'s (same scans, same run).", "",
              "Absolute times on a shared 2-core machine are indicative only; the ratios are the result."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import sys

    from noduleflow.bench.int8 import write_report

    ap = argparse.ArgumentParser(prog="python -m noduleflow.bench.dense_pass", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="the reference package")
    ap.add_argument("--after", help="the package compared (default: the shipped one)")
    ap.add_argument("--scans", type=int, default=3, help="phantom chest CTs written for the run")
    ap.add_argument("--series", nargs="*", default=[], help="more scans (DICOM folders or image files)")
    ap.add_argument("--tiles", type=int, nargs="+", default=[32], help="dense tile sizes (output points per axis)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", default="bench-dense-pass")
    a = ap.parse_args(argv)
    r = measure(a.before, a.after, a.scans, tuple(a.tiles), a.repeats, a.backend, series=a.series)
    command = "python -m noduleflow.bench.dense_pass " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(Path(a.out), "dense_pass", r, markdown(r, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
