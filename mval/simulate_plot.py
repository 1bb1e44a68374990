"""RMSE against budget for every design, each with the paired bootstrap interval of its RMSE ratio to
MVAL drawn around it (MVAL's RMSE times the ratio's bounds): a PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

from mval.simulate import DESIGNS, DesignSummary  # noqa: E402


def plot_rmse(summaries: list[DesignSummary], path: str | Path) -> Path:
    """One panel per estimator; x = budget n1 (log scale), y = RMSE, error bars from the ratio interval."""
    frame = pl.DataFrame([s.to_dict() for s in summaries])
    estimators = frame["estimator"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(1, len(estimators), figsize=(5 * len(estimators), 4), squeeze=False)
    for ax, estimator in zip(axes[0], estimators):
        for design in DESIGNS:
            rows = frame.filter((pl.col("estimator") == estimator) & (pl.col("design") == design)).sort("budget")
            mval = frame.filter((pl.col("estimator") == estimator) & (pl.col("design") == "mval")).sort("budget")
            # the interval of RMSE(design) / RMSE(mval), scaled back to RMSE units
            low = rows["rmse"] - rows["ratio_ci_low"] * mval["rmse"]
            high = rows["ratio_ci_high"] * mval["rmse"] - rows["rmse"]
            err = None if design == "mval" else [low.clip(lower_bound=0).to_list(), high.clip(lower_bound=0).to_list()]
            ax.errorbar(rows["budget"], rows["rmse"], yerr=err, marker="o", capsize=3, label=design)
        ax.set(xscale="log", yscale="log", xlabel="new rounds n1", ylabel="RMSE", title=f"{frame['env'][0]}: {estimator}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
