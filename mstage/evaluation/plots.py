"""PNG plots of `evaluate` and `bench` results, drawn with matplotlib's Agg canvas.

Figures are built with `matplotlib.figure.Figure` directly (no pyplot), so plotting never
touches a GUI backend or global state and works on headless machines and in threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mstage.errors import UsageError

QUALITY_METRICS = (("recall", "recall@k"), ("ndcg", "NDCG@k"))
DPI = 100


def _figure(width: float, height: float, columns: int):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return figure, figure.subplots(1, columns)


def check_png_path(path: Path) -> Path:
    """Fail before a long run rather than after it when the plot cannot be written as PNG."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UsageError(f"expected a .png file for the plot, found {path.name!r}; "
                         "pass e.g. --plot results.png")
    if path.is_dir():
        raise UsageError(f"expected a file path for the plot, found the directory {path}")
    return path


def _save(figure, path: Path) -> Path:
    path = check_png_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def plot_quality(rows: Mapping[str, Mapping[str, float]], ks: Sequence[int], path: Path,
                 title: str = "") -> Path:
    """recall@k and NDCG@k against k, one line per model (rows[model]["recall@10"]...)."""
    figure, axes = _figure(10, 4, len(QUALITY_METRICS))
    for ax, (metric, label) in zip(axes, QUALITY_METRICS, strict=True):
        for model, metrics in rows.items():
            values = [metrics.get(f"{metric}@{k}", np.nan) for k in ks]
            ax.plot(ks, values, marker="o", label=model)
        ax.set_xscale("log")
        ax.set_xticks(list(ks), [str(k) for k in ks])
        ax.set_xlabel("k (recommended items)")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_bench(levels: Sequence[Any], path: Path, title: str = "") -> Path:
    """Left: latency histogram per concurrency level (ms, log bins). Right: throughput and
    p50/p99 latency against concurrency. `levels` are bench.LevelResult objects."""
    figure, (hist, curve) = _figure(11, 4, 2)
    all_ms = np.concatenate([lv.latencies_s * 1000 for lv in levels if lv.requests] or [[1.0]])
    low, high = max(all_ms.min(), 1e-3), max(all_ms.max(), 1e-3) * 1.01
    bins = np.geomspace(low, max(high, low * 1.1), 40)
    for lv in levels:
        if lv.requests:
            hist.hist(lv.latencies_s * 1000, bins=bins, histtype="step", linewidth=1.5,
                      label=f"concurrency {lv.concurrency}")
    hist.set_xscale("log")
    hist.set_xlabel("latency (ms)")
    hist.set_ylabel("requests")
    hist.legend()
    hist.grid(True, alpha=0.3)

    concurrency = [lv.concurrency for lv in levels]
    curve.plot(concurrency, [lv.throughput for lv in levels], marker="o", color="tab:blue",
               label="throughput")
    curve.set_xscale("log", base=2)
    curve.set_xticks(concurrency, [str(c) for c in concurrency])
    curve.set_xlabel("concurrent clients")
    curve.set_ylabel("throughput (requests/s)", color="tab:blue")
    curve.set_ylim(bottom=0)
    curve.grid(True, alpha=0.3)
    latency = curve.twinx()
    for q, style in ((50, "--"), (99, ":")):
        latency.plot(concurrency, [lv.percentile_ms(q) for lv in levels], style, marker="s",
                     color="tab:red", label=f"p{q} latency")
    latency.set_ylabel("latency (ms)", color="tab:red")
    latency.set_ylim(bottom=0)
    handles = curve.get_legend_handles_labels()[0] + latency.get_legend_handles_labels()[0]
    latency.legend(handles=handles, loc="best")
    if title:
        figure.suptitle(title)
    return _save(figure, path)
