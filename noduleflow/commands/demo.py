"""`noduleflow demo`: a synthetic chest CT as DICOM, detected by the shipped model."""
from __future__ import annotations

import argparse

from .options import add_detector_options, add_model_options, backend_options, detector_config


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="write a synthetic chest CT (DICOM) and detect its nodules with the shipped model",
        description="Writes a synthetic chest-CT phantom as a DICOM series into a temporary folder, "
                    "detects with the shipped default model (trained on phantoms: a demonstration, not "
                    "a clinical tool), prints the candidates beside the true nodules and the stage "
                    "timings, and writes what `detect` writes into OUT: candidates.csv, <seriesuid>.json and "
                    "<seriesuid>.png (the true nodules named in the picture). The top 5 findings are "
                    "characterised (type, size, proposed Lung-RADS category; experimental) unless "
                    "--characterise-top says otherwise.")
    p.add_argument("--out", default="noduleflow-demo", help="output folder (default ./noduleflow-demo)")
    p.add_argument("--seed", type=int, default=3, help="phantom seed (default 3)")
    p.add_argument("--nodules", type=int, default=4, help="nodules in the phantom (default 4)")
    add_model_options(p)
    add_detector_options(p, defaults={"characterise_top": 5})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import tempfile
    import time
    from pathlib import Path

    import numpy as np

    from noduleflow.engine.detector import Detector
    from noduleflow.engine.io.dicom_write import write_dicom_series
    from noduleflow.engine.jitclock import compile_note
    from noduleflow.engine.results import ResultFolder
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    # OUT checked and locked before any work, and written all-or-nothing, as `detect` does
    with ResultFolder(args.out) as results:
        t = time.perf_counter()
        ph = generate_phantom(args.seed, params=PhantomParams(n_nodules=args.nodules))
        with tempfile.TemporaryDirectory(prefix="noduleflow-demo-") as tmp:
            write_dicom_series(ph.volume, Path(tmp) / "series", seed=args.seed, pixel_representation=0,
                               rescale_intercept=-2048.0)
            print(f"phantom seed {args.seed}: {ph.volume.shape} voxels, spacing "
                  f"{tuple(round(s, 3) for s in ph.volume.spacing_zyx_mm)} mm, {len(ph.nodules)} nodules, "
                  f"written as DICOM in {time.perf_counter() - t:.1f} s")
            with Detector(args.model, backend=args.backend, config=detector_config(args),
                          backend_options=backend_options(args)) as det:
                d = det.detect(Path(tmp) / "series", keep_preprocessed=True)
        truth = np.array([[*n.center_xyz_mm, n.diameter_mm] for n in ph.nodules]).reshape(-1, 4)
        if d.meta.get("stages") == 2:
            print(f"\nmodel {d.model_id}, backend {d.backend}; two stages: {d.n_scored} stage-1 candidates "
                  "scored by stage 2")
        else:
            print(f"\nmodel {d.model_id}, backend {d.backend}, mode {d.mode}; {d.n_scored} grid points scored")
        print(f"{'rank':>4} {'x mm':>8} {'y mm':>8} {'z mm':>8} {'prob':>6}  true nodule")
        hit = set()
        for r, c in enumerate(d, 1):
            dist = np.linalg.norm(truth[:, :3] - np.asarray(c.center_xyz_mm), axis=1) if len(truth) else np.array([])
            j = int(dist.argmin()) if dist.size else -1
            tag = ""
            if j >= 0 and dist[j] < truth[j, 3] / 2:
                tag = f"hit: {truth[j, 3]:.1f} mm {ph.nodules[j].kind} ({dist[j]:.1f} mm off)"
                hit.add(j)
            x, y, z = c.center_xyz_mm
            print(f"{r:>4} {x:8.1f} {y:8.1f} {z:8.1f} {c.prob:6.3f}  {tag}")
        print("\ntrue nodules:")
        for j, n in enumerate(ph.nodules):
            x, y, z = n.center_xyz_mm
            print(f"  {'found' if j in hit else 'MISSED':6} ({x:7.1f}, {y:7.1f}, {z:7.1f}) {n.diameter_mm:5.1f} mm "
                  f"{n.kind}, {n.shape}, {n.location}")
        print(f"sensitivity at top-{det.config.top_k}: {len(hit)}/{len(ph.nodules)}")
        if d.characterised:
            print("\ncharacterised findings (type, Lung-RADS mean diameter, proposed category):")
            for line in d.findings_report():
                print(line)
        print("\nstage timings (s): " + "  ".join(f"{k} {v:.2f}" for k, v in d.timings_s.items())
              + f"  (model load {det.cold_start_s:.2f})" + compile_note(d.meta))
        written = results.add(d, truth=truth)  # what `detect` draws, with the true nodules named
        written["csv"] = results.add_csv(d.rows())
        if d.characterised:
            written["findings_csv"] = results.add_findings_csv(d.findings_rows())
    print("wrote " + ", ".join(str(p) for p in written.values()))
    print("Phantom data and a phantom-trained model: a demonstration of the pipeline, not a clinical result.")
    return 0
