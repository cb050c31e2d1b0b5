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
