"""The report of `noduleflow bench speed`: the markdown of a `speed.run` result and its stage figure."""
from __future__ import annotations

import statistics
from pathlib import Path

from noduleflow.trainer.evaluate.plots import save_figure


def markdown(r: dict) -> str:
    """The report of a `speed.run` result: stage times, the two-stage run, the CPU backends, the
    FLOP accounting, the mask and resampling against their references and the baseline."""
    m = r["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, GPU {m.get('gpu')}; onnxruntime {m['onnxruntime']}, "
             f"openvino {m.get('openvino')}, numba {m['numba']}, torch {m.get('torch')}. Model {r['model_id']}. "
             f"{r['n_scans']} phantom scans. Backend: {r.get('backend', 'onnxruntime-cpu')}"
             + (f" (stage 2: {r['stage2_backend']})" if r.get("stage2_backend") else "") + ".",
             "", "| stage | median s |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in r["stage_s_median"].items()]
    t = r.get("two_stage")
    if t:
        st1 = t.get("stage1") or t["stage2"]  # runs before manifest format 3 kept stage 1 in stage 2's block
        lines += ["", f"Default detection, stage 1 ({st1['generator']}, at most "
                  f"{st1['max_candidates']} candidates"
                  + (f" + {st1['subsolid_candidates']} subsolid" if st1.get('subsolid_candidates') else "")
                  + (f" + {st1['wall_candidates']} pleural" if st1.get('wall_candidates') else "")
                  + f") + stage 2 ({t['stage2']['tta_flips']} flip view(s)"
                  + (f" for the best {t['stage2']['tta_top']}" if t['stage2'].get('tta_top') else "") + "), "
                  f"median {t['stage1_candidates_median']:.0f} candidates scored:", "", "| stage | median s |",
                  "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in t["stage_s_median"].items()]
        lines += ["", f"- whole scan, two stages (warm): median {t['scan_s_median']:.1f} s, "
                  f"{t['over_stage1_only_median']:.2f}x the stage-1-only scan below (same scans, same run)"]
        f2 = t.get("stage2_flops")
        if f2:
            lines.append(f"- stage 2: {f2['network_runs']} network runs of {f2['per_patch_gflop']:.3f} GFLOP in "
                         f"{f2['seconds']:.2f} s (all scans, context patches included; {f2.get('streams', 1)} "
                         f"batch(es) at once) = {f2['gflops']:.1f} GFLOP/s"
                         + (f", {100 * f2['over_matmul_peak']:.0f} % of the matmul peak, "
                            f"{100 * f2['over_conv3d_peak']:.0f} % of the conv3d peak (all of it needed work)"
                            if "over_matmul_peak" in f2 else ""))
        sm = t.get("stage2_streams")
        if sm:
            lines.append(f"- ONNX Runtime's stage 2 of the last scan's {sm['candidates']} candidates: "
                         f"{sm['streams']} batches at once, "
                         f"one thread each, {sm['seconds_default']:.2f} s; one batch at a time over every core "
                         f"{sm['seconds_one_stream']:.2f} s: {sm['one_stream_over_default']:.2f}x "
                         f"(median of {len(sm['runs_s']['default'])}, alternating)")
    lines += backend_lines(r)
    lines += ["", f"- whole scan (dense, stage 1 only, warm): median {r['scan_s_median']:.1f} s, "
              f"p95 {r['scan_s_p95']:.1f} s, {r['scans_per_s']:.3f} scans/s",
              f"- cold start: model load {r['cold_start']['model_load_s']:.2f} s, first scan "
              f"{r['cold_start']['first_scan_s']:.1f} s",
              f"- dense vs patch (streaming), same grid points: {r['dense_over_patch_stream']:.1f}x points/s",
              f"- patch streaming vs serial gather: {r['stream_over_serial']:.2f}x"]
    if r.get("patch_backend_batch_sweep"):
        lines.append("- patch scoring, points/s by backend and batch: " + "; ".join(
            f"{x['backend']} b{x['batch']}: {x['points_per_s']:.0f}" for x in r["patch_backend_batch_sweep"]))
    if "peak_rss_mb" in r:
        lines.append(f"- peak host RSS of the benchmark process: {r['peak_rss_mb']:.0f} MB")
        if r["per_scan"] and "peak_rss_mb_after" in r["per_scan"][0]:
            lines.append("- peak RSS (high-water mark) after each stage of the first scan, MB: " + ", ".join(
                f"{k} {v:.0f}" for k, v in r["per_scan"][0]["peak_rss_mb_after"].items()))
    if r.get("dense_tile_sweep"):
        best = min(r["dense_tile_sweep"], key=lambda x: x["seconds"])
        lines.append("- dense tile size (output points per axis -> seconds for the last scan's grid): " +
                     ", ".join(f"{x['tile_out']}: {x['seconds']:.2f}" for x in r["dense_tile_sweep"]) +
                     f" (fastest {best['tile_out']})")
    lines += flops_lines(r) + mask_and_rss_lines(r)
    if "mask_speedup_vs_reference" in r:
        rs = r["resample_vs_simpleitk"]
        lines += [f"- lung mask (the first scan's mask stage) vs the scipy/skimage reference with the same "
                  f"parameters (`bench.reference.lung_mask`, full resolution): {r['mask_speedup_vs_reference']:.1f}x "
                  f"(goal 20x)",
                  f"- resampling the whole first scan ({' x '.join(map(str, rs['in_shape_zyx']))}) to 1 mm vs "
                  f"SimpleITK linear on the same grid: {rs['speedup_vs_simpleitk']:.1f}x (goal 3x; best of 3 "
                  f"against best of 3; max |HU difference| inside {rs['max_abs_diff_hu_vs_simpleitk_interior']:.1f})"]
    if "baseline" in r:
        lines += [f"- mask + resampling vs seed-style (scipy zoom cubic, scipy/skimage mask): "
                  f"{r['resample_and_mask_speedup_vs_baseline']:.1f}x",
                  f"- dense scoring vs one patch at a time in PyTorch eager: "
                  f"{r['dense_over_baseline_points_per_s']:.0f}x points/s",
                  f"- whole scan vs seed-style pipeline (extrapolated from the measured per-point rate): "
                  f"{r['scan_speedup_vs_baseline']:.0f}x"]
    lines.append("\nAbsolute times on a shared 2-core machine are indicative only; the ratios are the result.")
    return "\n".join(lines) + "\n"


def backend_lines(r: dict) -> list[str]:
    """The CPU backends side by side (`speed.cpu_backends`): times and ratios per job."""
    b = r.get("cpu_backends")
    if not b or len(b["backends"]) < 2:
        return []
    what = {"scan": "whole scan (load to candidates)",
            "stage2": f"stage 2 ({b['stage2_candidates']} candidates)",
            "dense_pass": f"dense pass ({b['grid_points']} grid points)"}
    repeats = len(next(iter(b["runs_s"].values()))["scan"])
    lines = [f"- CPU backends on the last scan (median of {repeats}, alternating):"]
    for job, label in what.items():
        if job not in b["median_s"][b["backends"][0]]:
            continue
        times = ", ".join(f"{n} {b['median_s'][n][job]:.2f} s" for n in b["backends"] if job in b["median_s"][n])
        ups = "; ".join(f"{n} {v[job]:.2f}x" for n, v in b["speedup_over_onnxruntime"].items()
                        if n != "onnxruntime-cpu" and job in v)
        lines.append(f"  - {label}: {times}; over onnxruntime-cpu: {ups}")
    for prec, label in (("int8", "stage 2's INT8 graph, `--precision int8`"),
                        ("bf16", "the same graphs in bfloat16, `--precision bf16`")):
        q = b.get(f"{prec}_over_fp32_openvino")
        if q:
            lines.append(f"  - openvino-cpu-{prec} ({label}) over openvino-cpu: "
                         + "; ".join(f"{what[j].split(' (')[0]} {v:.2f}x" for j, v in q.items()))
    return lines


def peak_measurements(pk: dict) -> str:
    """", the highest of N measurements (...)" for a merged peak (`flops.merge_peaks`), else ""."""
    ms = pk.get("measurements") or []
    if len(ms) < 2:
        return ""
    return (f"; the highest of {len(ms)} measurements, at the start and the end of the run: matmul "
            + "/".join(f"{m['matmul_gflops']:.0f}" for m in ms) + ", conv3d "
            + "/".join(f"{max(m['conv3d_gflops_by_runtime'].values()):.0f}" for m in ms)
            + ("" if not ms[0].get("conv3d_bf16_gflops") else ", bf16 conv3d "
               + "/".join(f"{m['conv3d_bf16_gflops']:.0f}" if m.get("conv3d_bf16_gflops") else "-" for m in ms)))


def flops_lines(r: dict) -> list[str]:
    """The dense pass's FLOPs done and needed, the peaks measured, achieved/peak (`speed.flop_accounting`)."""
    f = r.get("flops")
    if not f:
        return []
    a, pk = f["all_scans"], f["peak"]

    def pct(v):
        return f"{100 * v:.0f} %"

    lines = [
        f"- dense pass FLOPs (convolutions, 2 per multiply-add; all scans, tile {f['tile_out']}): work done "
        f"{a['gflop_done']:.1f} GFLOP, needed {a['gflop_needed']:.1f} GFLOP, needed/done {a['needed_over_done']:.2f} "
        f"(receptive fields alone {a['gflop_needed_receptive']:.1f} GFLOP; per patch {f['per_patch_gflop']:.3f}, "
        f"{f['per_patch_receptive_gflop']:.3f} by receptive field)",
        f"- float32 peak measured in this run: matmul {pk['matmul_gflops']:.0f} GFLOP/s (numpy {pk['matmul_n']}^2), "
        f"conv3d {pk['conv3d_gflops']:.0f} GFLOP/s ({pk.get('conv3d_runtime', 'onnxruntime')}, {pk['conv3d']}, "
        f"{pk['threads']} threads"
        + "".join(f"; {k} {v:.0f}" for k, v in pk.get("conv3d_gflops_by_runtime", {}).items())
        + ")" + peak_measurements(pk),
        f"- achieved/peak on work done ({r.get('backend', 'onnxruntime-cpu')}): {a['gflops_done']:.1f} GFLOP/s in "
        f"{a['seconds']:.2f} s of inference = "
        f"{pct(a['done_over_matmul_peak'])} of matmul, {pct(a['done_over_conv3d_peak'])} of conv3d",
        f"- achieved/peak on needed work: {a['gflops_needed']:.1f} GFLOP/s = {pct(a['needed_over_matmul_peak'])} of "
        f"matmul, {pct(a['needed_over_conv3d_peak'])} of conv3d"]
    if pk.get("conv3d_bf16_gflops"):
        lines.append("- bfloat16 conv3d peak measured in this run (OpenVINO, same Conv): "
                     f"{pk['conv3d_bf16_gflops']:.0f} GFLOP/s")
    for name, v in (f.get("last_scan_by_variant") or {}).items():
        bf = name.endswith("-bf16")
        lines.append(f"- last scan's dense pass, {name} (median of the CPU-backend comparison, {v['seconds']:.2f} s): "
                     f"on work done {pct(v['done_over_conv3d_peak'])}, on needed work "
                     f"{pct(v['needed_over_conv3d_peak'])} of the {'bf16' if bf else 'float32'} conv3d peak"
                     + ("" if bf else f" ({pct(v['needed_over_matmul_peak'])} of matmul)"))
    return lines


def mask_and_rss_lines(r: dict) -> list[str]:
    """The lung mask's share of the scan and the peak RSS after each scan's detection."""
    lines = []
    runs = [("one stage", r.get("stage_s_median") or {})]
    if r.get("two_stage"):
        runs.append(("two stages", r["two_stage"].get("stage_s_median") or {}))
    share = [f"{name} {100 * s['mask'] / s['total']:.0f} % ({s['mask']:.2f} of {s['total']:.2f} s)"
             for name, s in runs if "mask" in s and s.get("total")]
    if share:
        lines.append("- lung mask share of the whole scan (median mask s / median total s): " + "; ".join(share))
    rss = []
    for name, key in (("one stage", "peak_rss_mb_after"), ("two stages", "two_stage_peak_rss_mb_after")):
        v = [max(x[key].values()) for x in r.get("per_scan") or [] if x.get(key)]
        if v:
            rss.append(f"{name} median {statistics.median(v):.0f}, max {max(v):.0f}")
    if rss:
        lines.append("- peak RSS at the end of each scan's detection, MB (the process's high-water mark: it never "
                     "falls from scan to scan, and each scan's two-stage run follows its one-stage run): " +
                     "; ".join(rss))
    return lines



def plot_stages(speed: dict, out_path) -> Path:
    """Median seconds per pipeline stage (bench.speed result), engine dense mode beside the
    seed-style baseline's preprocessing and scoring when it was measured."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    stages = [k for k in speed["stage_s_median"] if k != "total"]
    bars = {"noduleflow\n(dense, ORT CPU)": [speed["stage_s_median"][k] for k in stages]}
    b = speed.get("baseline")
    if b:
        grid = speed["per_scan"][0]["grid_points"]
        base = {"mask": b["mask_s"], "resample": b["resample_s"], "inference": grid / b["points_per_s"]}
        bars["seed-style\n(zoom, scipy mask,\neager per patch)"] = [base.get(k, 0.0) for k in stages]
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.9 * len(bars)))
    names = list(bars)
    left = [0.0] * len(names)
    for i, k in enumerate(stages):
        vals = [bars[n][i] for n in names]
        ax.barh(names, vals, left=left, label=k)
        left = [a + v for a, v in zip(left, vals)]
    ax.set_xlabel("seconds per scan (median)")
    for name, total in zip(names, left):
        ax.annotate(f"{total:.1f} s", (total, name), xytext=(4, 0), textcoords="offset points", va="center",
                    fontsize=8)
    ax.legend(ncol=3, fontsize=7, loc="lower right")
    m = speed["machine"]
    ax.set_title(f"{m['cpu']}, {m['cores']} cores, model {speed['model_id']}", fontsize=8)
    return save_figure(fig, out_path)
