"""Section ``keras``: the tool the reports used (Keras ``model.fit`` on numpy arrays) vs cnnbench.

Report 002 built its VGG-like network in Keras; here the same layer table is built in Keras 3
on its PyTorch backend (so both sides run the same oneDNN kernels through the same torch
build and the comparison measures the framework around them), trained with ``model.fit`` on
in-memory numpy arrays — no JPEG decoding and no augmentation, which favours Keras — against
cnnbench's plain-fp32 and fast variants of ``vgg_like`` at the same batch size.
"""

from __future__ import annotations

import os
import time

from cnnbench.bench.results import SectionResult
from cnnbench.bench.stats import Stats, ratio
from cnnbench.bench.suite import BenchContext, register_section
from cnnbench.errors import CnnbenchError

MODEL = "vgg_like"
# Report 002, Figure 4, as cnnbench.models.baselines.vgg_like builds it: three blocks of two 3x3
# convolutions (32, 64, 128 filters, Keras' default 'valid' padding) each followed by a 2x2
# max-pool, then Flatten, FC-1024, dropout 0.2 (Sec. 2.3) and the softmax output; ReLU
# throughout. tests/bench checks that both builds have the same parameter count.
VGG_LIKE_TABLE = (
    ("conv", 32), ("conv", 32), ("pool", 2),
    ("conv", 64), ("conv", 64), ("pool", 2),
    ("conv", 128), ("conv", 128), ("pool", 2),
    ("flatten", None), ("dense", 1024), ("dropout", 0.2),
)
COMPARED_VARIANTS = ("fp32", "bf16_cl")


def import_keras():
    """Keras 3 on its PyTorch backend (the backend is fixed at first import, hence the check)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError:
        raise CnnbenchError("the keras section needs Keras 3: pip install 'cnnbench[bench]' (or pip install keras)") from None
    if keras.backend.backend() != "torch":
        raise CnnbenchError(f"Keras runs on its {keras.backend.backend()!r} backend; set KERAS_BACKEND=torch "
                            "before anything imports keras")
    return keras


def build_keras_vgg_like(num_classes: int, input_size: int, padding: str = "valid"):
    """The VGG-like table as a Keras ``Sequential`` model (channels-last input, Glorot init)."""
    keras = import_keras()
    layers = [keras.Input((input_size, input_size, 3))]
    for kind, value in VGG_LIKE_TABLE:
        layers.append({
            "conv": lambda v: keras.layers.Conv2D(v, 3, padding=padding, activation="relu"),
            "pool": lambda v: keras.layers.MaxPooling2D(v),
            "flatten": lambda v: keras.layers.Flatten(),
            "dense": lambda v: keras.layers.Dense(v, activation="relu"),
            "dropout": lambda v: keras.layers.Dropout(v),
        }[kind](value))
    layers.append(keras.layers.Dense(num_classes, activation="softmax"))
    return keras.Sequential(layers)


def measure_keras_fit(model, x, y, batch_size: int, epochs: int) -> Stats:
    """Images/s of ``model.fit`` per epoch, the first epoch (graph tracing, warm-up) excluded."""
    keras = import_keras()

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    seconds: list[float] = []
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0, callbacks=[EpochTimer()])
    return Stats.of([len(x) / s for s in seconds[1:]], "images/s")


def keras_arrays(split, stats: dict, count: int, input_size: int | None = None):
    """The first ``count`` training images as standardised float32 NHWC arrays, and labels;
    resized (bilinear, antialiased, as ``BatchPipeline`` does) when ``input_size`` differs."""
    import numpy as np

    images = np.asarray(split.images[:count], dtype=np.float32) / 255.0
    if input_size is not None and images.shape[1:3] != (input_size, input_size):
        import torch
        import torch.nn.functional as F

        nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
        images = F.interpolate(nchw, size=(input_size, input_size), mode="bilinear", align_corners=False,
                               antialias=input_size < max(images.shape[1:3])).permute(0, 2, 3, 1).numpy()
    mean = np.asarray(stats["channel_mean"], dtype=np.float32)
    std = np.asarray(stats["channel_std"], dtype=np.float32)
    return (images - mean) / std, np.asarray(split.labels[:count])


def cnnbench_rates(ctx: BenchContext, setup) -> dict[str, Stats]:
    """cnnbench's vgg_like rates: reused from the ``train`` section when it ran with this model."""
    from cnnbench.bench.throughput import BASELINE_LABEL, VARIANTS, measure_paths

    earlier = ctx.results.get("train")
    rows = [r for r in earlier.rows if r["model"] == MODEL] if earlier else []
    wanted = {BASELINE_LABEL} | {VARIANTS[v].label for v in COMPARED_VARIANTS}
    if rows:
        return {row["path"]: row["images_per_s"] for row in rows if row["path"] in wanted}
    s = ctx.settings
    return measure_paths(ctx, setup, MODEL, list(COMPARED_VARIANTS), s.steps, s.repeats)[0]


@register_section("keras")
def keras_section(ctx: BenchContext) -> SectionResult:
    """Keras 3 (PyTorch backend) model.fit vs the plain loop and cnnbench on the VGG-like net."""
    from cnnbench.bench.throughput import prepare_setup

    s = ctx.settings
    setup = prepare_setup(ctx)
    x, y = keras_arrays(setup.ds.split("train"), setup.ds.stats, s.keras_images, s.input_size)
    ctx.log(f"keras: model.fit on {len(x)} images x {s.keras_epochs} epochs")
    keras_rate = measure_keras_fit(build_keras_vgg_like(setup.ds.num_classes, s.input_size), x, y,
                                   s.batch_size, s.keras_epochs)
    rows = [{"path": "Keras 3 (torch backend) model.fit, numpy arrays, fp32", "images_per_s": keras_rate,
             "vs_keras": ratio(keras_rate, keras_rate)}]
    for label, rate in cnnbench_rates(ctx, setup).items():
        rows.append({"path": label, "images_per_s": rate, "vs_keras": ratio(rate, keras_rate)})
    return SectionResult(
        title=f"VGG-like (report 002) at {s.input_size} px, batch {s.batch_size}: Keras vs PyTorch vs cnnbench",
        rows=rows,
        columns=[("path", "path"), ("images_per_s", "images/s"), ("vs_keras", "x Keras")],
        notes=[f"Keras: {len(x)} in-memory images per epoch, {s.keras_epochs - 1} timed epochs after one warm-up "
               "epoch, no augmentation and no data loading (favours Keras); the others load and augment "
               "every batch inside the timed window."],
    )
