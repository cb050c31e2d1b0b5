"""A grid of sample images with their class names (``cnnbench data show``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cnnbench.data.dataset import Dataset
from cnnbench.files import write_bytes


def save_sample_grid(ds: Dataset, split: str, n: int, out: Path, seed: int = 0, columns: int | None = None) -> list[int]:
    """Draw ``n`` random images of ``split`` (seeded) with their class names into a PNG; returns the rows shown."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = ds.split(split)
    n = min(n, len(s))
    rows = np.sort(np.random.default_rng(seed).choice(len(s), size=n, replace=False)) if n else np.zeros(0, int)
    columns = columns or min(n, 6) or 1
    lines = math.ceil(n / columns) or 1
    fig, axes = plt.subplots(lines, columns, figsize=(1.9 * columns, 2.2 * lines + 0.4), squeeze=False,
                             layout="constrained")  # keeps each title clear of the row above
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        image = s.images[row]
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None,
                  vmin=0, vmax=255, interpolation="nearest")
        label = int(s.labels[row])
        title = ds.classes[label].name if label >= 0 else "(unlabelled)"
        ax.set_title(title if len(title) <= 18 else title[:17] + "…", fontsize=8)
    fig.suptitle(f"{ds.name} · {split} · {n} of {len(s)} images", fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes(Path(out), buffer.getvalue())
    return rows.tolist()
