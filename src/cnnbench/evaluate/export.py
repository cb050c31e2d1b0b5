"""``cnnbench export RUN --onnx FILE``: ONNX export checked against PyTorch with onnxruntime.

The graph takes normalised float32 images (B, C, S, S) with a dynamic batch axis and returns
logits (B, K). What a caller needs to prepare inputs is stored in the model's metadata
(``cnnbench.*`` keys): ``input_size`` S, ``classes`` (ids in output order), ``normalize`` and
its statistics. With ``x01`` the image resized to S x S (bilinear) and divided by 255, the input is

- ``none``: ``x01``
- ``channel_mean``: ``x01 - channel_mean[c]``
- ``standardize`` and ``imagenet``: ``(x01 - channel_mean[c]) / channel_std[c]``
- ``pixel_mean``: ``x01 - pixel_mean[c, y, x]``, the training set's per-pixel mean already
  resized to S x S, stored as base64 of little-endian float32 with its shape in
  ``pixel_mean_shape`` ((C, S, S); ``np.frombuffer(base64.b64decode(v), "<f4").reshape(shape)``)

``channel_mean``/``channel_std`` are JSON lists. ``tta`` is the run's ``train.tta``: with ``flip``
the run's val numbers average the softmax of the image and of its horizontal mirror (two calls
of the graph). The file appears only after onnxruntime's outputs matched PyTorch's on two
batches of different sizes.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnbench.errors import CnnbenchError
from cnnbench.data.pipeline import IMAGENET_MEAN, IMAGENET_STD
from cnnbench.evaluate.inference import DatasetViews, eval_pipeline, load_scorer
from cnnbench.files import check_writable, write_atomic

# fp32 CPU kernels of PyTorch and onnxruntime sum in different orders; differences of ~1e-5 on
# logits of magnitude ~10 are rounding, 1e-3 would be a wrong graph.
TOLERANCE = 1e-4


@dataclass
class ExportCheck:
    """What the export verified."""

    file: Path
    input_shape: tuple[int, int, int]
    batches: tuple[int, ...]
    max_abs_diff: float


def _require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise CnnbenchError("export needs onnx and onnxruntime: pip install 'cnnbench[export]'") from None
    return onnx, onnxruntime


def export_onnx(run_dir: Path, out_file: Path, checkpoint: str = "best", batches: tuple[int, ...] = (4, 3),
                tolerance: float = TOLERANCE) -> ExportCheck:
    """Export a run's model to ONNX, check it with onnxruntime, then write it to ``out_file``."""
    onnx, onnxruntime = _require_onnx()
    check_writable("--onnx", out_file)  # now, not when the checked file is renamed onto it
    scorer = load_scorer(run_dir, checkpoint, device=torch.device("cpu"))
    model = scorer.model.float().eval()
    channels = int(scorer.model.cnnbench_cfg["in_channels"])
    size = scorer.input_size
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(b, channels, size, size, generator=generator) for b in batches]
    out_file = Path(out_file)

    def export_and_check(tmp: Path) -> None:
        # Exported in memory and saved once: weights stay inside the one file (no external .data file).
        program = torch.onnx.export(model, (inputs[0],), input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), dynamo=True,
                                    verbose=False)
        graph = program.model_proto
        for key, value in _metadata(scorer).items():
            graph.metadata_props.add(key=key, value=value)
        onnx.save(graph, str(tmp))
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        worst = 0.0
        for x in inputs:
            with torch.inference_mode():
                expected = model(x).numpy()
            got = session.run(["logits"], {"images": x.numpy()})[0]
            if got.shape != expected.shape:
                raise CnnbenchError(f"{out_file}: ONNX output shape {got.shape} differs from PyTorch's {expected.shape}")
            worst = max(worst, float(np.abs(got - expected).max()))
        if worst > tolerance:
            raise CnnbenchError(f"{out_file}: ONNX logits differ from PyTorch's by {worst:.2e} (> {tolerance:g}); "
                                "not written")
        checks.append(worst)

    checks: list[float] = []
    write_atomic(out_file, export_and_check)
    return ExportCheck(out_file, (channels, size, size), tuple(batches), checks[0])


def _metadata(scorer) -> dict[str, str]:
    """Preprocessing facts a caller needs (the graph starts after normalisation; see the module docstring)."""
    recipe = scorer.recipe
    normalize = recipe.data.normalize
    meta = {"cnnbench.model": recipe.model.name, "cnnbench.input_size": str(scorer.input_size),
            "cnnbench.normalize": normalize, "cnnbench.classes": json.dumps([c.id for c in scorer.classes]),
            "cnnbench.tta": recipe.train.tta}
    if normalize == "none":
        return meta
    if normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        stats = DatasetViews().load(recipe).stats
        mean, std = stats["channel_mean"], stats["channel_std"]
    if normalize == "pixel_mean":
        # What the pipeline subtracts at the model's input size: it maps a black image to -mean.
        height, width, channels = stats["pixel_mean"].shape
        black = torch.zeros(1, channels, height, width, dtype=torch.uint8)
        pixel_mean = -eval_pipeline(scorer, stats)(black)[0].contiguous().numpy().astype("<f4")
        meta["cnnbench.pixel_mean"] = base64.b64encode(pixel_mean.tobytes()).decode("ascii")
        meta["cnnbench.pixel_mean_shape"] = json.dumps(list(pixel_mean.shape))
        return meta
    meta["cnnbench.channel_mean"] = json.dumps([float(v) for v in mean])
    meta["cnnbench.channel_std"] = json.dumps([float(v) for v in std])  # unused by channel_mean, kept for reference
    return meta
