"""The Keras VGG-like network is the same network as cnnbench's vgg_like."""

from __future__ import annotations

import numpy as np
import pytest

from cnnbench.bench.keras_vgg import build_keras_vgg_like, import_keras, keras_arrays, measure_keras_fit
from cnnbench.errors import CnnbenchError
from cnnbench.models import create_model
from cnnbench.models.base import count_parameters

try:
    import_keras()  # sets KERAS_BACKEND=torch before the first import (keras' default is TensorFlow)
except CnnbenchError as exc:
    pytest.skip(str(exc), allow_module_level=True)


def test_keras_vgg_like_matches_the_zoo_model():
    keras_model = build_keras_vgg_like(num_classes=200, input_size=64)
    torch_model = create_model("vgg_like", num_classes=200, in_channels=3, input_size=64)
    # convs 896 + 9,248 + 18,496 + 36,928 + 73,856 + 147,584 = 287,008; FC 2,048*1,024 + 1,024 =
    # 2,098,176 (64 -> 62 -> 60 -> 30 -> 28 -> 26 -> 13 -> 11 -> 9 -> 4: 4*4*128 = 2,048 inputs); FC 1,024*200 + 200
    assert keras_model.count_params() == count_parameters(torch_model) == 2_590_184
    assert keras_model.output_shape == (None, 200)


def test_keras_arrays_and_fit_rate():
    class Split:
        images = np.full((6, 64, 64, 3), 255, dtype=np.uint8)
        labels = np.arange(6, dtype=np.int64)

    stats = {"channel_mean": [0.5, 0.5, 0.5], "channel_std": [0.25, 0.25, 0.25]}
    x, y = keras_arrays(Split(), stats, count=4)
    assert x.shape == (4, 64, 64, 3) and x.dtype == np.float32 and np.allclose(x, 2.0)  # (1 - 0.5) / 0.25
    assert y.tolist() == [0, 1, 2, 3]
    rate = measure_keras_fit(build_keras_vgg_like(6, 64), x, y, batch_size=2, epochs=3)
    assert len(rate.runs) == 2 and rate.unit == "images/s" and rate.median > 0  # first epoch not counted


def test_keras_section_feeds_its_model_at_the_input_size(tiny_zip, tmp_path, monkeypatch):
    """--set input_size=48: the Keras model is built for 48 px, so its arrays are resized to 48 px
    (they stayed 64 px and model.fit failed on the shape)."""
    from cnnbench.bench import keras_vgg
    from cnnbench.bench.settings import BenchSettings
    from cnnbench.bench.stats import Stats
    from cnnbench.bench.suite import BenchContext
    from cnnbench.train.config import build_config

    shapes = []

    def fake_fit(model, x, y, batch_size, epochs):
        shapes.append((x.shape, model.input_shape))
        return Stats.of([1.0], "images/s")

    monkeypatch.setattr(keras_vgg, "measure_keras_fit", fake_fit)
    monkeypatch.setattr(keras_vgg, "cnnbench_rates", lambda ctx, setup: {})
    settings = build_config(BenchSettings, {"data": str(tiny_zip), "input_size": 48, "batch_size": 4,
                                            "data_per_class": 4, "keras_images": 8}, "bench")
    keras_vgg.keras_section(BenchContext(settings, log=lambda m: None, work_dir=tmp_path))
    assert shapes == [((8, 48, 48, 3), (None, 48, 48, 3))]
    x, _ = keras_arrays(type("Split", (), {"images": np.full((2, 64, 64, 3), 255, np.uint8), "labels": [0, 1]}),
                        {"channel_mean": [0.5] * 3, "channel_std": [0.25] * 3}, count=2, input_size=32)
    assert x.shape == (2, 32, 32, 3) and np.allclose(x, 2.0, atol=1e-5)  # a flat image stays flat
