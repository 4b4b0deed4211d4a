"""Plots for benchmark reports (matplotlib, imported lazily; the `bench` extra)."""
from __future__ import annotations

from pathlib import Path


def _save(fig, out_path) -> Path:
    import matplotlib.pyplot as plt

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_froc(results: dict, out_path, title: str = "FROC") -> Path:
    """FROC curves (log2 FP axis, 1/8..8 FPs per scan) of one or more FrocResults by name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from noduleflow.bench.froc import FP_POINTS

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, r in results.items():
        ax.plot(r.froc_fps, r.froc_sensitivity, lw=1.8, label=f"{name} (CPM {r.cpm:.3f})")
        lo = [v[0] for v in r.sensitivity_at_fp_ci95.values()]
        hi = [v[1] for v in r.sensitivity_at_fp_ci95.values()]
        ax.fill_between(FP_POINTS, lo, hi, alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xlim(0.125, 8)
    ax.set_xticks(FP_POINTS)
    ax.set_xticklabels(["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, out_path)


def plot_stages(speed: dict, out_path) -> Path:
    """Median seconds per pipeline stage (bench.speed result), engine dense mode beside the
    seed-style baseline's preprocessing and scoring when it was measured."""
    import matplotlib

    matplotlib.use("Agg")
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
    return _save(fig, out_path)
