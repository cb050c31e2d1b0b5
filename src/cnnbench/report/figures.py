"""Figures (matplotlib, PNG) that stay readable at 200 classes.

Each ``plot_*`` function takes plain arrays and returns a ``matplotlib.figure.Figure``;
``save_figure`` writes it atomically. The object API (``Figure`` without pyplot) is used on
purpose: it renders with the Agg canvas, needs no display, and keeps no global figure state
between calls (pyplot would accumulate open figures in a long report run).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cnnbench.files import write_atomic

DPI = 110
NAME_CHARS = 22  # class names are cut to this length on axes (Tiny ImageNet has 40-char names)


def short(name: str, limit: int = NAME_CHARS) -> str:
    """A class name cut to ``limit`` characters with an ellipsis."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def save_figure(fig: Figure, path: Path) -> Path:
    """Write the figure as a PNG file (atomically)."""
    data = figure_png(fig)
    return write_atomic(Path(path), lambda tmp: tmp.write_bytes(data))


def plot_curves(metrics: dict[str, np.ndarray], title: str = "", best_epoch: int | None = None) -> Figure:
    """Train vs val loss, top-1 and top-5 per epoch, one panel each; the best epoch dotted."""
    fig = Figure(figsize=(13, 3.8))
    epochs = metrics["epoch"]
    panels = (("loss", "loss", False), ("top1", "top-1 accuracy", True), ("top5", "top-5 accuracy", True))
    for ax, (key, label, percent) in zip(fig.subplots(1, 3), panels):
        scale = 100.0 if percent else 1.0
        for split, style in (("train", "-"), ("val", "-")):
            values = metrics[f"{split}_{key}"] * scale
            shown = ~np.isnan(values)
            ax.plot(epochs[shown], values[shown], style, marker="o", markersize=3, label=split)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1, label=f"best (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label + (" (%)" if percent else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_val_overlay(curves: list[tuple[str, dict[str, np.ndarray]]]) -> Figure:
    """Val top-1 and val loss per epoch of several runs on shared axes."""
    fig = Figure(figsize=(12, 4))
    ax_top1, ax_loss = fig.subplots(1, 2)
    for name, metrics in curves:
        for ax, key, scale in ((ax_top1, "val_top1", 100.0), (ax_loss, "val_loss", 1.0)):
            values = metrics[key] * scale
            shown = ~np.isnan(values)
            ax.plot(metrics["epoch"][shown], values[shown], marker="o", markersize=3, label=short(name, 30))
    ax_top1.set_ylabel("val top-1 (%)")
    ax_loss.set_ylabel("val loss")
    for ax in (ax_top1, ax_loss):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax_top1.legend(fontsize=7, ncol=1 + len(curves) // 12)
    return fig


def plot_confusion_subset(confusion: np.ndarray, names: list[str], rows: np.ndarray, columns: np.ndarray,
                          title: str) -> Figure:
    """Part of the confusion matrix with class names on both axes, as % of each true class.

    ``rows`` are true classes (e.g. the 20 worst), ``columns`` predicted classes (e.g. those
    their images most often go to); the full (K, K) matrix stays in ``<tag>_confusion.npy``.
    """
    totals = np.maximum(confusion[rows].sum(axis=1, keepdims=True), 1)
    sub = confusion[np.ix_(rows, columns)].astype(np.float64) / totals
    n_rows, n_cols = len(rows), len(columns)
    fig = Figure(figsize=(max(5.0, 0.42 * n_cols + 2.5) + 1.5, max(5.0, 0.42 * n_rows + 2.5)))
    ax = fig.subplots()
    image = ax.imshow(sub, cmap="Blues", vmin=0, vmax=max(float(sub.max()), 1e-9))
    ax.set_xticks(range(n_cols), [short(names[c]) for c in columns], rotation=70, ha="right", fontsize=8)
    ax.set_yticks(range(n_rows), [short(names[c]) for c in rows], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if max(n_rows, n_cols) <= 25:
        for i in range(n_rows):
            for j in range(n_cols):
                if sub[i, j] >= 0.01:
                    ax.text(j, i, f"{sub[i, j] * 100:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if sub[i, j] > 0.5 * sub.max() else "black")
    fig.colorbar(image, ax=ax, fraction=0.04, label="fraction of the true class")
    ax.set_title(title)
    return fig


def plot_per_class(per_class_top1: np.ndarray, names: list[str], k: int = 15) -> Figure:
    """The ``k`` worst and ``k`` best classes by top-1, as horizontal bars."""
    present = np.flatnonzero(~np.isnan(per_class_top1))
    order = present[np.argsort(per_class_top1[present], kind="stable")]
    k = min(k, max(1, len(order) // 2))
    fig = Figure(figsize=(12, 0.3 * k + 1.5))
    for ax, chosen, title in zip(fig.subplots(1, 2), (order[:k], order[::-1][:k]),
                                 (f"worst {k} classes", f"best {k} classes")):
        ax.barh(range(len(chosen)), per_class_top1[chosen] * 100, color="tab:blue")
        ax.set_yticks(range(len(chosen)), [short(names[c]) for c in chosen], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("top-1 (%)")
        ax.set_title(title)
    return fig


def _show_image(ax, image: np.ndarray) -> None:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        ax.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_gallery(images: np.ndarray, true_names: list[str], pred_names: list[str],
                 probabilities: np.ndarray, columns: int = 6) -> Figure:
    """Misclassified images with their true and predicted names and the predicted probability."""
    n = len(images)
    rows = max(1, math.ceil(n / columns))
    fig = Figure(figsize=(2.3 * columns, 2.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes[n:]:
        ax.axis("off")
    for ax, image, true, pred, p in zip(axes, images, true_names, pred_names, probabilities):
        _show_image(ax, image)
        ax.set_title(f"true: {short(true, 18)}\npred: {short(pred, 18)} ({p:.0%})", fontsize=8)
    return fig


def plot_top5(images: np.ndarray, titles: list[str], guesses: list[list[str]], probabilities: np.ndarray,
              true_names: list[str] | None = None) -> Figure:
    """Each image (titled) beside a bar chart of its top-k guesses; the true class, when known, in green."""
    n = len(images)
    columns = 2
    rows = max(1, math.ceil(n / columns))
    fig = Figure(figsize=(12, 2.1 * rows))
    grid = fig.add_gridspec(rows, 2 * columns, width_ratios=[1, 2.2] * columns, wspace=0.15, hspace=0.5)
    for i in range(n):
        r, c = divmod(i, columns)
        ax_image = fig.add_subplot(grid[r, 2 * c])
        _show_image(ax_image, images[i])
        ax_image.set_title(short(titles[i], 26), fontsize=8)
        ax_bars = fig.add_subplot(grid[r, 2 * c + 1])
        colors = ["tab:green" if true_names is not None and g == true_names[i] else "tab:grey" for g in guesses[i]]
        probs = np.asarray(probabilities[i]) * 100
        ax_bars.barh(range(len(guesses[i])), probs, color=colors)
        # Names go beside the bars, not as tick labels, so they never run into the image panel.
        for y, (guess, p) in enumerate(zip(guesses[i], probs)):
            label = f"{short(guess, 28)}  {p:.0f}%"
            if p > 55:  # a long bar: write inside it, so the text stays within the panel
                ax_bars.text(p - 1.5, y, label, va="center", ha="right", fontsize=8, color="white")
            else:
                ax_bars.text(p + 1.5, y, label, va="center", fontsize=8)
        ax_bars.set_yticks([])
        ax_bars.invert_yaxis()
        ax_bars.set_xlim(0, 100)
        ax_bars.tick_params(axis="x", labelsize=7)
    return fig


def plot_bubbles(names: list[str], top1: np.ndarray, params: np.ndarray, mflops: np.ndarray) -> Figure:
    """Val top-1 against parameters and against FLOPs (log axes); bubble area follows the other one.

    Like the reports' Figure 1 (accuracy vs operations, size by parameters). Runs with unknown
    params or FLOPs are left out of the panel that needs them.
    """
    fig = Figure(figsize=(13, 5))
    panels = ((params / 1e6, mflops, "parameters (millions)", "bubble area: MFLOPs"),
              (mflops, params / 1e6, "MFLOPs per image", "bubble area: parameters"))
    for ax, (x, size_by, xlabel, note) in zip(fig.subplots(1, 2), panels):
        shown = np.isfinite(x) & np.isfinite(top1) & (x > 0)
        sizes = np.nan_to_num(size_by[shown], nan=0.0)
        area = 60 + 1400 * (sizes / sizes.max() if len(sizes) and sizes.max() > 0 else sizes)
        ax.scatter(x[shown], top1[shown] * 100, s=area, alpha=0.45, edgecolors="black", linewidths=0.6)
        for xi, yi, name, a in zip(x[shown], top1[shown] * 100, np.asarray(names)[shown], area):
            # scatter's s is the marker area in points^2: put the label just above the bubble's edge.
            ax.annotate(short(str(name), 24), (xi, yi), fontsize=8, ha="center", va="bottom",
                        xytext=(0, np.sqrt(a) / 2 + 2), textcoords="offset points")
        if shown.any():
            ax.set_xscale("log")
            lo, hi = x[shown].min(), x[shown].max()
            ax.set_xlim(lo / 2, hi * 2)
        ax.margins(y=0.15)  # room for the labels above the highest bubble
        ax.set_xlabel(xlabel)
        ax.set_ylabel("val top-1 (%)")
        ax.set_title(note, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    return fig
