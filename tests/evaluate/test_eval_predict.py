"""predict (image files, submission), export (ONNX) and the refused inputs."""

import base64
import json
import re
import shutil

import numpy as np
import pytest
import torch
from torchvision.io import encode_png

from cnnbench.cli import main
from cnnbench.errors import CnnbenchError
from cnnbench.evaluate.evaluation import evaluate_run
from cnnbench.evaluate.predict import predict_images, write_submission
from cnnbench.train.checkpoint import load_checkpoint, save_checkpoint
from cnnbench.train.native import CPU_FLAGS

from eval_fixtures import NAMES, WNIDS, reference_log_probs, write_checkpointed_run


def test_predict_resizes_any_image_and_matches_the_val_prediction(run, tiny_data, tmp_path):
    val0 = tiny_data / "val" / "images" / "val_0.JPEG"
    # The same picture at 128x96 as PNG: decoded, resized to the dataset's 64x64, then the run's pipeline.
    big = torch.nn.functional.interpolate(torch.rand(1, 3, 96, 128), size=(96, 128))[0]
    png = tmp_path / "big.png"
    png.write_bytes(encode_png((big * 255).to(torch.uint8)).numpy().tobytes())
    results = predict_images(run, [val0, png], top=3)
    assert [r["file"] for r in results] == [str(val0), str(png)]
    assert all(len(r["top"]) == 3 for r in results)
    reference, _ = reference_log_probs(run, tiny_data)
    expected = np.argsort(-reference[0])[:3]
    assert [g.id for g in results[0]["top"]] == [WNIDS[i] for i in expected]
    assert results[0]["top"][0].name == NAMES[expected[0]]
    assert [g.probability for g in results[0]["top"]] == pytest.approx(np.exp(reference[0][expected]), abs=2e-3)
    assert all(a.probability >= b.probability for r in results for a, b in zip(r["top"], r["top"][1:]))


def test_predict_cli_json_and_a_file_that_is_not_an_image(run, tiny_data, tmp_path, capsys):
    image = tiny_data / "test" / "images" / "test_1.JPEG"
    figure = tmp_path / "top2.png"
    assert main(["predict", str(run), str(image), "--top", "2", "--json", "--figure", str(figure)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["file"] == str(image) and len(out[0]["top"]) == 2 and set(out[0]["top"][0]) == {"id", "name", "probability"}
    assert figure.read_bytes().startswith(b"\x89PNG")
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is not a JPEG")
    assert main(["predict", str(run), str(fake)]) == 2
    err = capsys.readouterr().err
    assert err == f"cnnbench: error: {fake}: not an image (could not decode it as JPEG, PNG, GIF or WebP)\n"


def test_predict_refuses_an_empty_image_file_in_one_line(run, tmp_path, capsys):
    empty = tmp_path / "interrupted.png"  # e.g. a download that wrote nothing
    empty.write_bytes(b"")
    assert main(["predict", str(run), str(empty)]) == 2
    assert capsys.readouterr().err == f"cnnbench: error: {empty}: empty file, not an image\n"


def test_predict_takes_the_first_frame_of_an_animated_gif(run, tmp_path):
    from PIL import Image

    frames = [Image.new("RGB", (40, 30), colour) for colour in ((200, 40, 40), (40, 40, 200))]
    gif, png = tmp_path / "anim.gif", tmp_path / "first.png"
    frames[0].save(gif, save_all=True, append_images=frames[1:])  # decoded as (frames, C, H, W)
    frames[0].save(png)
    animated, first = predict_images(run, [gif, png], top=4)
    assert animated["image"].shape == (64, 64, 3)
    assert [g.id for g in animated["top"]] == [g.id for g in first["top"]]
    assert [g.probability for g in animated["top"]] == pytest.approx([g.probability for g in first["top"]], abs=1e-6)


def test_predict_reads_a_16_bit_png_as_its_8_bit_picture(run, tmp_path):
    """A 16-bit PNG decodes to uint16 (0..65535): it is scaled to uint8 like any other image,
    not refused with a traceback or fed to the model 257 times too bright."""
    from PIL import Image

    picture = np.random.default_rng(1).integers(0, 256, (40, 50), dtype=np.uint8)
    eight, sixteen = tmp_path / "8bit.png", tmp_path / "16bit.png"
    Image.fromarray(picture).save(eight)
    Image.fromarray(picture.astype(np.uint16) * 257).save(sixteen)  # mode I;16, the same picture
    plain, deep = predict_images(run, [eight, sixteen], top=4)
    assert deep["image"].dtype == np.uint8 and np.array_equal(deep["image"], plain["image"])
    assert [g.id for g in deep["top"]] == [g.id for g in plain["top"]]
    assert [g.probability for g in deep["top"]] == pytest.approx([g.probability for g in plain["top"]], abs=1e-6)


def test_submission_has_one_line_per_test_image_in_challenge_format(run, tiny_data, tmp_path):
    out = tmp_path / "submission.txt"
    assert write_submission(run, out) == 5
    lines = out.read_text().splitlines()
    assert [line.split()[0] for line in lines] == [f"test_{i}.JPEG" for i in range(5)]
    assert all(re.fullmatch(r"test_\d+\.JPEG n\d{8}", line) for line in lines)
    reference, _ = reference_log_probs(run, tiny_data, split="test")
    assert [line.split()[1] for line in lines] == [WNIDS[i] for i in reference.argmax(1)]


def test_predict_and_submission_use_the_runs_own_flip_tta(tiny_data, tmp_path):
    """A train.tta: flip run is scored on the image and its mirror (what its metrics.csv and
    `cnnbench evaluate` report); predict and the submission must score it the same way."""
    flip_run = write_checkpointed_run(tmp_path / "flip-s0", tiny_data, seed=5, tta="flip")
    plain, _ = reference_log_probs(flip_run, tiny_data)
    mirrored, _ = reference_log_probs(flip_run, tiny_data, flip=True)
    expected = np.log((np.exp(plain) + np.exp(mirrored)) / 2)
    assert np.abs(expected - plain).max() > 1e-3  # the mirror changes the scores of this model
    val0 = tiny_data / "val" / "images" / "val_0.JPEG"
    guess = predict_images(flip_run, [val0], top=4)[0]["top"]
    assert {g.id: g.probability for g in guess} == pytest.approx(
        {WNIDS[i]: float(np.exp(expected[0, i])) for i in range(4)}, abs=2e-3)
    out = tmp_path / "submission.txt"
    write_submission(flip_run, out)
    test_plain, _ = reference_log_probs(flip_run, tiny_data, split="test")
    test_mirrored, _ = reference_log_probs(flip_run, tiny_data, split="test", flip=True)
    chosen = (np.exp(test_plain) + np.exp(test_mirrored)).argmax(1)
    assert [line.split()[1] for line in out.read_text().splitlines()] == [WNIDS[i] for i in chosen]


def test_onnx_export_matches_pytorch(tmp_path, tiny_data):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    cnn = write_checkpointed_run(tmp_path / "cnn", tiny_data, model="simple_cnn")
    out = tmp_path / "model.onnx"
    assert main(["export", str(cnn), "--onnx", str(out)]) == 0
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["cnnbench.classes"]) == WNIDS and meta["cnnbench.input_size"] == "64"
    assert meta["cnnbench.tta"] == "none"  # the run's train.tta: how its val numbers were scored
    assert len(json.loads(meta["cnnbench.channel_mean"])) == 3
    from cnnbench.train.checkpoint import load_run
    model, _, _ = load_run(cnn)
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(3))  # a batch size not used in export
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {"images": x.numpy()})[0]
    assert got.shape == (5, 4) and np.abs(got - expected).max() < 1e-4
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_onnx_metadata_is_enough_to_prepare_pixel_mean_inputs(tmp_path, tiny_data):
    """normalize: pixel_mean (recipes/keras-vgg-l2.yaml): a caller rebuilds the input from the metadata alone."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from cnnbench.data import load_dataset
    from cnnbench.evaluate.inference import eval_pipeline, load_scorer

    run = write_checkpointed_run(tmp_path / "pm", tiny_data, model="simple_cnn", normalize="pixel_mean")
    out = tmp_path / "pm.onnx"
    assert main(["export", str(run), "--onnx", str(out)]) == 0
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["cnnbench.normalize"] == "pixel_mean"
    shape = json.loads(meta["cnnbench.pixel_mean_shape"])
    pixel_mean = np.frombuffer(base64.b64decode(meta["cnnbench.pixel_mean"]), "<f4").reshape(shape)
    images = np.array(load_dataset("tiny-imagenet", data=tiny_data).split("val").images[:5])  # uint8 (B, H, W, C)
    x = (images.transpose(0, 3, 1, 2) / 255.0 - pixel_mean).astype(np.float32)  # as the docstring says
    scorer = load_scorer(run)
    ds = load_dataset("tiny-imagenet", data=tiny_data)
    with torch.no_grad():
        expected = eval_pipeline(scorer, ds.stats)(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
        logits = scorer.model(expected).numpy()
    assert shape == [3, 64, 64] and np.abs(x - expected.contiguous().numpy()).max() < 1e-5
    assert np.abs(session.run(None, {"images": x})[0] - logits).max() < 1e-4


def test_run_folder_without_checkpoint_is_refused(run, capsys):
    shutil.rmtree(run / "checkpoints")
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run}/checkpoints/best.pt: no 'best' checkpoint" in err and "holds no checkpoints" in err


def test_checkpoint_of_another_model_is_refused(run, tmp_path, tiny_data):
    other = write_checkpointed_run(tmp_path / "mlp", tiny_data, model="mlp1")
    shutil.copy(other / "checkpoints" / "best.pt", run / "checkpoints" / "best.pt")
    with pytest.raises(CnnbenchError, match="checkpoint of model 'mlp1', but the run folder trained 'logreg'"):
        evaluate_run(run)


def test_checkpoint_with_another_class_count_is_refused(run, tmp_path):
    (run / "classes.json").write_text(json.dumps([{"id": w, "name": w} for w in WNIDS[:3]]))
    with pytest.raises(CnnbenchError, match="the checkpoint has 4 classes, .*classes.json lists 3"):
        evaluate_run(run)


def test_weights_that_do_not_fit_the_model_are_refused(run):
    path = run / "checkpoints" / "best.pt"
    state = load_checkpoint(path)
    state["model"] = {k: v[:2] if v.ndim else v for k, v in state["model"].items()}  # 2 outputs, not 4
    save_checkpoint(state, path)
    with pytest.raises(CnnbenchError, match="weights do not load into the model the checkpoint names"):
        evaluate_run(run)


@pytest.mark.parametrize("option", ["--onnx", "--submission"])
def test_an_output_path_that_is_a_folder_is_refused_before_the_work(run, tmp_path, option, capsys):
    """`export --onnx DIR` and `predict --submission DIR` exported or predicted everything, then
    crashed renaming the finished file onto the folder (IsADirectoryError traceback)."""
    folder = tmp_path / "out"
    folder.mkdir()
    command = ["export", str(run), "--onnx", str(folder)] if option == "--onnx" else \
        ["predict", str(run), "--submission", str(folder)]
    assert main(command) == 2
    assert capsys.readouterr().err == f"cnnbench: error: {option} {folder}: is a folder; expected a file name\n"
    assert list(folder.iterdir()) == [] and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.skipif(CPU_FLAGS.load() is None, reason=f"no C++ toolchain: {CPU_FLAGS.error}")
def test_evaluate_and_predict_flush_subnormals_on_the_cpu_and_put_the_default_back(run, tiny_data, monkeypatch):
    import cnnbench.evaluate.inference as inference
    import cnnbench.evaluate.predict as predict

    subnormal = torch.full((1 << 20,), 1e-40)  # split over the pool's threads by an elementwise op
    seen = []

    def recording(*args, **kwargs):
        seen.append(bool((subnormal * 1.0 == 0).all()))
        return original(*args, **kwargs)

    original = inference.batch_log_probs
    monkeypatch.setattr(inference, "batch_log_probs", recording)
    monkeypatch.setattr(predict, "batch_log_probs", recording)
    evaluate_run(run)
    predict_images(run, [tiny_data / "val" / "images" / "val_0.JPEG"])
    assert len(seen) >= 2 and all(seen)
    assert torch.equal(subnormal * 1.0, subnormal)  # torch's default again for the caller
