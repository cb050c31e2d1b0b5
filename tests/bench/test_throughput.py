"""Section ``train``: '% best bf16 peak' divides every model by one peak, the best read in the whole run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cnnbench.bench import throughput
from cnnbench.bench.peaks import MatmulPeak
from cnnbench.bench.settings import BenchSettings
from cnnbench.bench.stats import Stats
from cnnbench.bench.suite import BenchContext
from cnnbench.train.config import build_config

GFLOP = {"resnet18": 0.87, "vgg_like": 0.59}
RATES = {"resnet18": [300.0, 340.0, 320.0], "vgg_like": [500.0, 560.0, 540.0]}
ROUND_BF16 = {"resnet18": [600.0, 700.0, 650.0], "vgg_like": [900.0, 1900.0, 800.0]}  # a later, faster minute


def fake_measure_paths(ctx, setup, model_name, variants, steps, repeats, probe=None):
    rates = {label: Stats.of(RATES[model_name], "images/s")
             for label in [throughput.BASELINE_LABEL] + [throughput.VARIANTS[v].label for v in variants]}
    return rates, [{"fp32": 200.0, "bf16": bf16} for bf16 in ROUND_BF16[model_name]]


def test_every_model_divides_by_the_best_peak_of_the_whole_run(tmp_path, monkeypatch):
    monkeypatch.setattr(throughput, "prepare_setup", lambda ctx: throughput.ThroughputSetup(SimpleNamespace(num_classes=4), None))
    monkeypatch.setattr(throughput, "create_seeded_model", lambda name, *args: name)
    monkeypatch.setattr(throughput, "training_flops_per_image", lambda name, size: GFLOP[name] * 1e9)
    monkeypatch.setattr(throughput, "matmul_probe", lambda peaks: None)
    monkeypatch.setattr(throughput, "measure_paths", fake_measure_paths)
    settings = build_config(BenchSettings, {"models": ["resnet18", "vgg_like"], "variants": ["bf16_cl"]}, "bench")
    ctx = BenchContext(settings, log=lambda m: None, work_dir=tmp_path)
    ctx.peaks = {dtype: MatmulPeak(dtype, "cpu", 64, Stats.of([rate], "GFLOP/s")) for dtype, rate in (("fp32", 190.0), ("bf16", 566.0))}
    section = throughput.throughput_section(ctx)
    assert {r["model"] for r in section.rows} == {"resnet18", "vgg_like"}
    for row in section.rows:  # ResNet-18 ran first, but is divided by vgg_like's 1,900 too
        assert row["best_bf16_peak_gflops"] == 1900.0
        assert row["mfu_bf16_best_peak_pct"] == pytest.approx(100 * row["images_per_s"].median * GFLOP[row["model"]] / 1900.0)
    target = next(t for t in section.targets if "utilisation" in t.name)
    assert target.measured == pytest.approx(100 * 320.0 * 0.87 / 1900.0)


def test_a_peak_read_only_in_this_run_makes_the_verdict_provisional(tmp_path, monkeypatch):
    """A first run on a machine divides by its own best peak: the section says so; once an earlier
    run here read more, the note is gone (peaks.json supplies the larger denominator)."""
    monkeypatch.setattr(throughput, "prepare_setup", lambda ctx: throughput.ThroughputSetup(SimpleNamespace(num_classes=4), None))
    monkeypatch.setattr(throughput, "create_seeded_model", lambda name, *args: name)
    monkeypatch.setattr(throughput, "training_flops_per_image", lambda name, size: GFLOP[name] * 1e9)
    monkeypatch.setattr(throughput, "matmul_probe", lambda peaks: None)
    monkeypatch.setattr(throughput, "measure_paths", fake_measure_paths)
    settings = build_config(BenchSettings, {"models": ["resnet18"], "variants": ["bf16_cl"]}, "bench")

    def section():
        ctx = BenchContext(settings, log=lambda m: None, work_dir=tmp_path)
        ctx.peaks = {dtype: MatmulPeak(dtype, "cpu", 64, Stats.of([rate], "GFLOP/s")) for dtype, rate in (("fp32", 190.0), ("bf16", 566.0))}
        return throughput.throughput_section(ctx), ctx

    first, ctx = section()
    assert any("divides by 700 GFLOP/s, the best read in this run" in n and "provisional" in n for n in first.notes)
    ctx.best_known_peak("bf16", 1900.0)  # a later run here read a faster minute
    second, _ = section()
    assert not any("provisional" in n for n in second.notes)
    assert all(r["best_bf16_peak_gflops"] == 1900.0 for r in second.rows)


def test_a_models_entry_may_carry_builder_options():
    from cnnbench.bench.settings import model_spec

    assert model_spec("resnet18") == ("resnet18", {})
    assert model_spec("resnet18:stem=small,dropout=0.2") == ("resnet18", {"stem": "small", "dropout": 0.2})
    small = throughput.create_seeded_model("resnet18:stem=small", 200, 64, 0)
    plain = throughput.create_seeded_model("resnet18", 200, 64, 0)
    assert small.conv1.stride == (1, 1) and plain.conv1.stride == (2, 2)
    from cnnbench.bench.engine_runs import throughput_recipe  # the engine paths' recipe

    name, options = model_spec("resnet18:stem=small")
    assert throughput_recipe(name, 8, 64, "bf16", True, False, None, None, model_options=options).model.options == {"stem": "small"}


@pytest.mark.parametrize("spec", ["resnet18:stem", ":stem=small", "resnet18:=small"])
def test_a_malformed_models_entry_is_a_one_line_error(spec):
    from cnnbench.errors import CnnbenchError

    with pytest.raises(CnnbenchError, match="bench.models"):
        build_config(BenchSettings, {"models": [spec]})


def test_the_plain_baseline_trains_at_the_input_size_of_the_cnnbench_paths(tiny_zip, tmp_path):
    """--set input_size=32: the plain loop's batches are 32 px like the engine's, not the files' 64 px
    (it compared 64 px steps with 32 px ones, a ~4x difference in work, and ran FLOPs counted at 32)."""
    settings = build_config(BenchSettings, {"data": str(tiny_zip), "input_size": 32, "batch_size": 4, "data_per_class": 4,
                                            "models": ["logreg"], "data_workers": 0}, "bench")
    ctx = BenchContext(settings, log=lambda m: None, work_dir=tmp_path)
    stepper = throughput.baseline_stepper(ctx, throughput.prepare_setup(ctx), "logreg")
    images, _ = next(stepper.batches)
    assert tuple(images.shape) == (4, 3, 32, 32)
    assert stepper.seconds(1) > 0  # logreg sized for 32 px takes them


def test_each_ablation_changes_only_its_own_recipe_key(monkeypatch):
    """bench.variants accepts every variant the section knows, and each ablation's engine is built
    from the bf16_cl recipe with only its override changed (its label names what it swaps out)."""
    from cnnbench.bench import engine_runs, settings as bench_settings

    assert set(bench_settings.VARIANTS) == set(throughput.VARIANTS)
    monkeypatch.setattr(engine_runs, "build_recipe_engine", lambda recipe, ds: recipe)  # the stepper below returns it
    monkeypatch.setattr(engine_runs, "EngineStepper", lambda engine: engine)
    ctx = SimpleNamespace(settings=build_config(BenchSettings, {}, "bench"), dataset=lambda per_class: None)
    base = throughput.variant_stepper(ctx, "resnet18", throughput.VARIANTS["bf16_cl"]).to_dict()
    for name, key, value in [("bf16_cl_torch_bn", ("train", "bn_impl"), "torch"),
                             ("bf16_cl_torch_pool", ("train", "pool_impl"), "torch"),
                             ("bf16_cl_torch_optim", ("train", "optim_impl"), "torch"),
                             ("bf16_cl_torch_conv_grad", ("train", "conv_grad_impl"), "torch")]:
        recipe = throughput.variant_stepper(ctx, "resnet18", throughput.VARIANTS[name]).to_dict()
        assert base[key[0]][key[1]] != value and recipe[key[0]][key[1]] == value
        recipe[key[0]][key[1]] = base[key[0]][key[1]]
        assert recipe == base
