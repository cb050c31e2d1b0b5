"""Whole runs on the tiny Tiny-ImageNet fixture through the real load_dataset / create_model:
the run folder's contents, resume equality, signals, NaN, refusal to overwrite, load_run."""

from __future__ import annotations

import csv
import json
import os
import platform
import signal
from types import SimpleNamespace

import pytest
import torch
import yaml

from cnnbench.cli import main
from cnnbench.commands.train import describe_best
from cnnbench.train import run as run_module
from cnnbench.errors import CnnbenchError
from cnnbench.train.checkpoint import load_checkpoint, load_run
from cnnbench.train.config import load_recipe
from cnnbench.train.loop import Progress, classification_loss
from cnnbench.train.rundir import METRICS_COLUMNS, SUMMARY_COLUMNS
from cnnbench.train.run import build_summary, train_run

from train_fixtures import NAMES, TRAIN_PER_CLASS, WNIDS, tiny_recipe, write_tiny_imagenet

BATCHES_PER_EPOCH = 4 * TRAIN_PER_CLASS // 16  # 6


def read_metrics(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_cli_writes_the_run_folder(tiny_data, tmp_path, capsys, monkeypatch):
    # train.deterministic (the fixture's) also fixes cuBLAS's workspace, which CUDA needs for it
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # records the original, restored after the test
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_data)))
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run), "--quiet", "--set", "train.epochs=2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "epoch 2/2 train_loss" in out and f"finished: {run}" in out
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"

    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "classes.json", "env.json", "metrics.csv",
                                                     "recipe.yaml", "summary.json", "tb"]
    rows = read_metrics(run)
    assert list(rows[0]) == list(METRICS_COLUMNS) and [r["epoch"] for r in rows] == ["1", "2"]
    for row in rows:
        assert all(0.0 <= float(row[k]) <= 1.0 for k in ("train_top1", "train_top5", "val_top1", "val_top5"))
        assert float(row["train_top5"]) == 1.0  # 4 classes: the true one is always in the top 5
        assert float(row["lr"]) == 0.05 and float(row["epoch_seconds"]) > 0
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary) == list(SUMMARY_COLUMNS)
    assert summary["status"] == "finished" and summary["epochs"] == 2 and summary["model"] == "simple_cnn"
    assert summary["val_top1"] == pytest.approx(float(rows[-1]["val_top1"]), abs=1e-6)
    assert summary["params"] == 539_556  # simple_cnn at 12 px, 4 classes
    assert summary["best_val_top1"] == max(float(r["val_top1"]) for r in rows)  # monitor val_top1
    best_row = rows[summary["best_epoch"] - 1]
    assert summary["monitor"] == "val_top1" and summary["best_val_loss"] == pytest.approx(float(best_row["val_loss"]), rel=1e-5)
    assert f"best.pt: epoch {summary['best_epoch']} by val_top1 (val_top1 " in out
    assert json.loads((run / "classes.json").read_text()) == [{"id": w, "name": n} for w, n in zip(WNIDS, NAMES)]
    assert load_recipe(run / "recipe.yaml").train.epochs == 2
    env = json.loads((run / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["precision"] == "fp32"
    assert len(env["dataset_manifest_hash"]) == 16
    # fp32 simple_cnn at 12 px: no map small enough for a matmul conv, no fused BN, its one max pool in C++,
    # and plain momentum SGD on the CPU, where torch's fused kernel is slower than its default path;
    # subnormal floats flushed to zero on the recipe's one thread
    # and glibc's malloc keeping freed memory (native.keep_freed_memory); the batches cropped, flipped and
    # normalised in one C++ pass (nhwc_ops.cpp's move_normalize)
    malloc = "on" if platform.libc_ver()[0] == "glibc" else env["fast_paths"].get("malloc_keep_freed")
    assert env["fast_paths"] == {"gemm_convs": 0, "nhwc_max_pools": 1, "fused_batch_pipeline": True,
                                 "fused_optimizer": False, "flush_denormal": "1 thread", "malloc_keep_freed": malloc}

    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")  # weights_only=True inside
    for key in ("model", "optimizer", "scheduler", "scaler", "ema", "rng", "epoch", "loader", "recipe", "classes",
                "model_name", "num_classes", "best"):
        assert key in ckpt
    assert ckpt["epoch"] == 2 and ckpt["classes"] == WNIDS and ckpt["num_classes"] == 4
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor) and isinstance(ckpt["rng"]["augment"], torch.Tensor)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    top1 = [e.value for e in events.Scalars("val/top1")]
    assert top1 == pytest.approx([float(r["val_top1"]) for r in rows], abs=1e-6)


def test_existing_run_folder_is_never_overwritten_silently(tiny_data, tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_data, train={"epochs": 1})))
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run), "--quiet"]) == 0
    before = (run / "summary.json").read_text()
    assert main(["train", str(recipe), "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"cnnbench: error: {run}: folder exists and is not empty; use --resume {run}" in err
    assert (run / "summary.json").read_text() == before
    assert main(["train", str(recipe), "--out", str(run), "--quiet", "--overwrite"]) == 0
    # a new recipe that fails to build (here: an L2 layer the model lacks) leaves the old run whole
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["train", str(recipe), "--out", str(run), "--quiet", "--overwrite",
                 "--set", "optim.l2=0.0001", "--set", "optim.l2_layers=[nosuchlayer]"]) == 2
    assert "optim.l2_layers: nosuchlayer are not layers" in capsys.readouterr().err
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    assert main(["train", str(recipe), "--out", str(tmp_path / "other"), "--overwrite", "--quiet"]) == 2
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("augment, key", [({"crop_padding": 64}, "augment.crop_padding"),
                                          ({"sets": [{"hflip": 1.0}, {"crop_padding": 70}]}, "augment.sets[1].crop_padding")])
def test_crop_padding_as_large_as_the_images_is_refused_before_the_run_is_written(tiny_data, tmp_path, capsys,
                                                                                  augment, key):
    # Only the dataset knows the image side (64 here; the recipe resizes to 12 after augmenting):
    # reflect padding that large was a ValueError traceback at the first batch.
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_data, augment=augment)))
    run = tmp_path / "runs" / "run"
    assert main(["train", str(recipe), "--out", str(run), "--quiet"]) == 2
    padding = augment.get("crop_padding") or augment["sets"][1]["crop_padding"]
    err = capsys.readouterr().err
    assert err == f"cnnbench: error: {key}: expected fewer pixels than the image side (64 x 64 images), got {padding}\n"
    assert not run.parent.exists()  # the folders this command created went with the refusal (they were empty)
    run_module.check_views_fit([{"crop_padding": 63}, {"hflip": 0.5}], (64, 64))  # one pixel less is fine


def interrupt_at(step: int, sig: int):
    """An after_step hook that sends ``sig`` to this process after optimiser step ``step``."""
    def hook(engine, progress):
        if progress.step == step:
            os.kill(os.getpid(), sig)
    return hook


def test_resume_after_sigint_equals_an_uninterrupted_run(tiny_data, tmp_path, capsys):
    # Every source of randomness on: augmentation, mixup, dropout; plus EMA and a per-step schedule.
    values = tiny_recipe(tiny_data, augment={"hflip": 0.5, "crop_padding": 2, "mixup": 0.2},
                         model={"name": "simple_cnn", "dropout": 0.3}, schedule={"name": "cosine", "warmup_epochs": 1},
                         train={"epochs": 2, "ema": 0.9})
    recipe = load_recipe(values=values)
    whole = train_run(recipe, tmp_path / "whole", quiet=True)
    assert whole.status == "finished"

    cut = train_run(recipe, tmp_path / "cut", quiet=True, after_step=interrupt_at(BATCHES_PER_EPOCH + 2, signal.SIGINT))
    assert cut.status == "stopped"
    assert f"Resume with: cnnbench train --resume {tmp_path / 'cut'}" in capsys.readouterr().err
    partial = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert partial["complete"] is False and partial["epoch"] == 1 and partial["loader"]["position"] == 2
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["status"] == "stopped"

    resumed = train_run(None, tmp_path / "cut", resume=True, quiet=True)
    assert resumed.status == "finished"
    timing = ("epoch_seconds", "images_per_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "cut")) == strip(read_metrics(tmp_path / "whole"))
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    assert a["step"] == b["step"] == 2 * BATCHES_PER_EPOCH


def test_sigterm_finishes_the_step_and_writes_a_checkpoint(tiny_data, tmp_path):
    recipe = load_recipe(values=tiny_recipe(tiny_data, train={"epochs": 3}))
    result = train_run(recipe, tmp_path / "run", quiet=True, after_step=interrupt_at(2, signal.SIGTERM))
    assert result.status == "stopped"
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["step"] == 2 and ckpt["loader"] == {"epoch": 0, "position": 2}
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert main(["train", "--resume", str(tmp_path / "run"), "--set", "train.epochs=4"]) == 2  # resume takes no --set
    env = (tmp_path / "run" / "env.json").read_text()
    assert main(["train", "--resume", str(tmp_path / "run"), "--quiet"]) == 0
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == ["1", "2", "3"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "finished"
    # The first process's provenance is kept; the resumed one's lies beside it.
    assert (tmp_path / "run" / "env.json").read_text() == env
    resumed = json.loads((tmp_path / "run" / "env-resume-0.json").read_text())
    assert resumed["resumed_at_epoch"] == 0 and resumed["dataset_manifest_hash"] == json.loads(env)["dataset_manifest_hash"]


def test_resume_refuses_rng_states_of_another_device_and_other_data(tmp_path, capsys):
    data = write_tiny_imagenet(tmp_path / "data" / "tiny-imagenet-200.zip")
    run = tmp_path / "run"
    train_run(load_recipe(values=tiny_recipe(data)), run, quiet=True, after_step=interrupt_at(2, signal.SIGTERM))
    last = run / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    assert ckpt["dataset_manifest_hash"] == json.loads((run / "env.json").read_text())["dataset_manifest_hash"]
    assert (ckpt["device"], ckpt["precision"]) == ("cpu", "fp32")

    # As if trained on a GPU: a CUDA generator's state is 16 bytes, a CPU one's 5056.
    cuda_rng = dict(ckpt["rng"], augment=torch.zeros(16, dtype=torch.uint8),
                    ranks=dict(ckpt["rng"]["ranks"], augment=torch.zeros(1, 16, dtype=torch.uint8)))
    cuda_like = dict(ckpt, device="cuda:0", rng=cuda_rng)
    torch.save(cuda_like, last)
    with pytest.raises(CnnbenchError, match=r"^resume: .* from a run on cuda:0 and do not fit cpu .*; resume with --device cuda$"):
        train_run(None, run, resume=True, quiet=True)

    # A change of precision (train.precision auto on another machine) is allowed, but said.
    torch.save(dict(ckpt, precision="bf16"), last)
    assert train_run(None, run, resume=True, quiet=True).status == "finished"
    assert f"{run}: warning: resuming in fp32 on cpu; the run so far trained in bf16 on cpu" in capsys.readouterr().err

    torch.save(ckpt, last)
    write_tiny_imagenet(data, seed=1)  # the data re-extracted differently: another manifest
    with pytest.raises(CnnbenchError, match=r"^\S+: the dataset differs from the one this run was trained on \(manifest hash"):
        train_run(None, run, resume=True, quiet=True)
    assert [p.name for p in run.glob("env-resume-*.json")] == ["env-resume-0.json"]  # the refused resume wrote nothing


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path):
    recipe = load_recipe(values=tiny_recipe(tiny_data, train={"epochs": 3}))

    def poison(engine, progress):  # after the first step of epoch 2, make the next forward produce NaN
        if progress.step == BATCHES_PER_EPOCH + 1:
            next(iter(engine.model.parameters())).data.fill_(float("nan"))

    with pytest.raises(CnnbenchError, match=r"loss became nan at epoch 2, step 2 of 6 .*end of epoch 1"):
        train_run(recipe, tmp_path / "run", quiet=True, after_step=poison)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize("step, sig", [(2 * BATCHES_PER_EPOCH, None), (BATCHES_PER_EPOCH + 2, signal.SIGINT)],
                         ids=["last-step-of-epoch", "stop-request"])
def test_nan_weights_from_the_step_before_a_checkpoint_never_reach_it(tiny_data, tmp_path, step, sig):
    # A step with a finite loss but overflowing gradients leaves NaN weights; the next loss check
    # comes only after the end-of-epoch (or stop) checkpoint, which must not keep them as good.
    recipe = load_recipe(values=tiny_recipe(tiny_data, train={"epochs": 3}))

    def poison(engine, progress):
        if progress.step == step:
            next(iter(engine.model.parameters())).data.fill_(float("nan"))
            if sig is not None:
                os.kill(os.getpid(), sig)

    with pytest.raises(CnnbenchError, match=r"weights became non-finite in epoch 2 .*last.pt \(end of epoch 1\)"):
        train_run(recipe, tmp_path / "run", quiet=True, after_step=poison)
    for which in ("last", "best"):
        ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / f"{which}.pt")
        assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values()), which
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == ["1"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"


def test_nan_in_epoch_1_says_no_checkpoint_exists_and_how_to_start_again(tiny_data, tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_data, train={"epochs": 2})))
    run = tmp_path / "run"

    def poison(engine, progress):  # NaN weights after the first step: no checkpoint has been written
        if progress.step == 1:
            next(iter(engine.model.parameters())).data.fill_(float("nan"))

    with pytest.raises(CnnbenchError) as raised:
        train_run(load_recipe(recipe), run, quiet=True, after_step=poison)
    message = str(raised.value)
    assert "loss became nan at epoch 1, step 2 of 6" in message and "last.pt" not in message
    assert "No checkpoint exists yet" in message and f"cnnbench train {run / 'recipe.yaml'} --out {run} --overwrite" in message
    assert not (run / "checkpoints").exists()
    # --resume cannot continue it, and says how to start again instead of "checkpoint not found"
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{run}: no checkpoint to resume from" in err and f"--out {run} --overwrite" in err and len(err.splitlines()) == 1
    # and the command both messages give does start it again
    assert main(["train", str(run / "recipe.yaml"), "--out", str(run), "--overwrite", "--quiet"]) == 0
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_bf16_channels_last_sets_and_early_stopping(tiny_data, tmp_path):
    # The fixture's classes are easy: val top-1 reaches 1.0 within an epoch or two and can then
    # only fail to improve, so patience 1 stops the run one epoch after its best.
    values = tiny_recipe(tiny_data, train={"epochs": 6, "precision": "bf16", "early_stopping": 1, "monitor": "val_top1",
                                           "deterministic": False},
                         augment={"hflip": 0.5, "sets": [{"center_crop": 0.75}, {"vflip": 0.5, "blur": 0.5}]})
    formats = []
    result = train_run(load_recipe(values=values), tmp_path / "run", quiet=True, after_step=lambda engine, progress:
                       formats.append(engine.model.features.conv1.weight.is_contiguous(memory_format=torch.channels_last)))
    assert formats and all(formats)
    rows = read_metrics(tmp_path / "run")
    assert len(rows) < 6 and result.summary["best_epoch"] == len(rows) - 1  # stopped 1 epoch after the best
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["precision"] == "bf16"
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["step"] == len(rows) * 3 * BATCHES_PER_EPOCH  # two sets: every epoch sees the data three times
    model, recipe, classes = load_run(tmp_path / "run", "best")
    assert classes == WNIDS and recipe.augment.sets[0] == {"center_crop": 0.75} and not model.training
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert best["epoch"] == result.summary["best_epoch"]
    assert all(torch.equal(v, best["model"][k]) for k, v in model.state_dict().items())


def files_of(run_dir) -> dict:
    return {p.relative_to(run_dir): (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}


def test_resuming_a_finished_run_trains_nothing_and_rewrites_nothing(tiny_data, tmp_path, capsys):
    # The fixture reaches val top-1 1.0 at once, so patience 1 stops it long before epoch 8.
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_data, train={"epochs": 8, "early_stopping": 1})))
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run), "--quiet"]) == 0
    epochs = len(read_metrics(run))
    assert epochs < 8
    before = files_of(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert f"{run}: the run already finished (stopped early after epoch {epochs}: val_top1 had not improved" in err
    assert "nothing was changed" in err and f"finished: {run}  epochs {epochs} " in out
    assert files_of(run) == before
    # Finished, but the process died before summary.json: the resume trains nothing and writes it.
    (run / "summary.json").unlink()
    assert train_run(None, run, resume=True, quiet=True).summary["epochs"] == epochs
    assert len(read_metrics(run)) == epochs and json.loads((run / "summary.json").read_text())["status"] == "finished"

    # A run that went through all its epochs, resumed from Python: the same, with its summary.
    whole = train_run(load_recipe(values=tiny_recipe(tiny_data, train={"epochs": 1})), tmp_path / "whole", quiet=True)
    before = files_of(tmp_path / "whole")
    again = train_run(None, tmp_path / "whole", resume=True, quiet=True)
    assert (again.status, again.summary) == ("finished", whole.summary)
    assert "(epoch 1 of 1 done)" in capsys.readouterr().err
    assert files_of(tmp_path / "whole") == before


def test_cyclic_cosine_saves_a_snapshot_per_cycle_and_last_pt_after_them(tiny_data, tmp_path, monkeypatch):
    saved, save = [], run_module.save_checkpoint
    monkeypatch.setattr(run_module, "save_checkpoint",
                        lambda state, path: (saved.append((state["epoch"], path.name)), save(state, path))[1])
    values = tiny_recipe(tiny_data, schedule={"name": "cyclic_cosine", "cycles": 2}, train={"epochs": 2})
    train_run(load_recipe(values=values), tmp_path / "run", quiet=True)
    # last.pt records the epoch as done and as best: it must never be ahead of best.pt or a snapshot.
    for epoch in (1, 2):
        names = [name for e, name in saved if e == epoch]
        assert names[-1] == "last.pt" and f"snapshot-{epoch}.pt" in names, saved
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["best.pt", "last.pt", "snapshot-1.pt", "snapshot-2.pt"]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "snapshot-1.pt")["epoch"] == 1


def test_summary_and_cli_describe_best_pt_by_the_monitored_metric(tmp_path):
    # val_loss is lowest at epoch 2 but top-1 is highest at epoch 3: best.pt holds epoch 2, and
    # every best_* value must be epoch 2's, not the maximum top-1 of another epoch.
    rows = [{"epoch": 1, "val_loss": 1.0, "val_top1": 0.5, "val_top5": 0.9},
            {"epoch": 2, "val_loss": 0.8, "val_top1": 0.4, "val_top5": 0.95},
            {"epoch": 3, "val_loss": 0.9, "val_top1": 0.6, "val_top5": 1.0}]
    progress = Progress(epoch=3, best=0.8, best_epoch=2, history=rows, seconds=3.0)
    recipe = load_recipe(values={"train": {"monitor": "val_loss"}})
    summary = build_summary(tmp_path, recipe, SimpleNamespace(name="tiny-imagenet"), torch.nn.Linear(2, 2), progress,
                            "finished", 1.0)
    assert summary["monitor"] == "val_loss" and summary["best_epoch"] == 2
    assert (summary["best_val_top1"], summary["best_val_top5"], summary["best_val_loss"]) == (0.4, 0.95, 0.8)
    assert summary["val_top1"] == 0.6  # the last evaluation
    assert describe_best(summary) == "best.pt: epoch 2 by val_loss (val_loss 0.8000, val_top1 40.00%)"
    assert describe_best(dict(summary, best_epoch=None)) == "best.pt -"


def test_aux_heads_add_their_weighted_loss():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    aux = torch.tensor([[0.0, 3.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1])
    ce = torch.nn.functional.cross_entropy
    loss, main = classification_loss((logits, aux), labels, None, 1.0, 0.0, [])
    torch.testing.assert_close(loss, ce(logits, labels) + 0.4 * ce(aux, labels))
    assert main is logits
    loss, _ = classification_loss((logits, aux, None), labels, labels.flip(0), 0.7, 0.1, [0.3])
    expected = (0.7 * ce(logits, labels, label_smoothing=0.1) + 0.3 * ce(logits, labels.flip(0), label_smoothing=0.1)
                + 0.3 * (0.7 * ce(aux, labels, label_smoothing=0.1) + 0.3 * ce(aux, labels.flip(0), label_smoothing=0.1)))
    torch.testing.assert_close(loss, expected)


def test_resume_refuses_a_folder_without_a_run(tmp_path):
    with pytest.raises(CnnbenchError, match="nothing to resume"):
        train_run(None, tmp_path, resume=True)
