"""Figures of the evaluation reports (matplotlib, imported when a figure is drawn: the `bench` extra)."""
from __future__ import annotations

from pathlib import Path

from .froc import FP_POINTS

# the strata drawn beside "all" in a cohort's FROC figure: the ones a change usually moves
COHORT_CURVES = ("all", "diameter 3-6 mm", "kind ground_glass", "location juxta_vascular")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_path) -> Path:
    """Write ``fig`` as a PNG (the folder made) and close it."""
    plt = _pyplot()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_froc(results: dict, out_path, title: str = "FROC") -> Path:
    """FROC curves (log2 FP axis, 1/8..8 FPs per scan) of one or more `froc.FrocResult` by name,
    with their bootstrap intervals at the seven FP rates."""
    plt = _pyplot()
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
    return save_figure(fig, out_path)


def plot_strata_froc(res: dict, out_path, title: str, names=COHORT_CURVES) -> Path:
    """FROC curves of some strata of a `strata.score_cohort` result (``names`` with nodules)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name in names:
        e = res.get(name)
        if e and e["nodules"]:
            ax.plot(e["froc"]["fps"], e["froc"]["sensitivity"], lw=1.6,
                    label=f"{name} ({e['nodules']}; CPM {e['cpm']:.3f})")
    ax.set_xscale("log", base=2)
    ax.set_xlim(0.125, 8)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    return save_figure(fig, out_path)


def plot_reliability(cal: dict, out_path, title: str) -> Path:
    """The reliability diagram of `cohort.calibration`'s top-100 table: hit rate against mean
    probability per bin, each point labelled with its number of candidates."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    rows = [b for b in cal["reliability_top100"] if b["n"]]
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    ax.plot([b["mean_prob"] for b in rows], [b["hit_rate"] for b in rows], "o-", lw=1.6,
            label=f"top 100/scan (ECE {cal['ece_top100']:.3f})")
    for b in rows:
        ax.annotate(str(b["n"]), (b["mean_prob"], b["hit_rate"]), fontsize=6, xytext=(3, -8),
                    textcoords="offset points")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability (bin mean)")
    ax.set_ylabel("share that are nodules")
    ax.set_title(f"{title}: reliability", fontsize=8)
    ax.legend(loc="upper left", fontsize=7)
    return save_figure(fig, out_path)
