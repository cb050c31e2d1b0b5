"""Typed recipes: one dataclass per section, a docstring on every field, validation on build.

A recipe YAML file is data: ``load_recipe(path, overrides)`` reads it, applies ``--set
key=value`` overrides (dotted keys, YAML-typed values), and builds a ``Recipe``. Unknown keys
are rejected with the list of valid ones, bad values with what was expected. ``Recipe.to_dict``
gives the resolved recipe that is written into every run folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnbench.errors import CnnbenchError
from cnnbench.files import load_yaml


def _choice(section: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise CnnbenchError(f"{section}.{name}: expected one of {', '.join(map(str, allowed))}, got {value!r}")


def _positive(section: str, name: str, value: float | int | None, allow_zero: bool = False, note: str = "") -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise CnnbenchError(f"{section}.{name}: expected a {'non-negative' if allow_zero else 'positive'} number"
                            f"{f' ({note})' if note else ''}, got {value!r}")


def _within(section: str, name: str, value: float | None, what: str, low: int, high: int,
            low_open: bool = False, high_open: bool = True) -> None:
    """``value`` (None passes) in the interval from ``low`` to ``high``, each end open or closed."""
    if value is None:
        return
    above = low < value if low_open else low <= value
    below = value < high if high_open else value <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise CnnbenchError(f"{section}.{name}: expected {what} in {interval}, got {value!r}")


def _range(section: str, name: str, pair: tuple[float, float] | None, what: str, high: float | None = None) -> None:
    """A [low, high] pair (None passes) with 0 < low <= high, and high <= ``high`` when given."""
    if pair is None:
        return
    low_end, high_end = pair
    if not (0 < low_end <= high_end and (high is None or high_end <= high)):
        bound = f" <= {high}" if high is not None else ""
        raise CnnbenchError(f"{section}.{name}: expected {what} with 0 < low <= high{bound}, got {list(pair)}")


# RandAugment's magnitude bins (cnnbench.data.augment.MAGNITUDE_BINS; written out here so loading
# a recipe does not import torch, and a test keeps the two equal).
RANDAUGMENT_BINS = 31


@dataclass
class DataConfig:
    """Which dataset, and how it is decoded, split and normalised."""

    name: str = "tiny-imagenet"
    """Dataset: tiny-imagenet, cifar10 or mnist."""
    path: str | None = None
    """Archive, extracted folder, or folder holding the archives; default $CNNBENCH_DATA."""
    grayscale: str = "replicate"
    """replicate grayscale images to 3 channels, drop them, or convert everything to gray (1 channel)."""
    train_per_class: int | None = None
    """Keep only the first N training images of each class (quick runs); None keeps all."""
    val_split: str = "official"
    """official: evaluate on the dataset's own val split; half: split labelled val into val and test halves (25 + 25 per class for Tiny ImageNet), seeded and stratified."""
    holdout: float = 0.0
    """Fraction of the training set held out as validation (datasets without a val split, e.g. MNIST/CIFAR-10 train); 0 uses the test split as val."""
    normalize: str = "standardize"
    """none ([0,1]), channel_mean (subtract per-channel mean), pixel_mean (subtract per-pixel mean), standardize (per-channel mean/std), imagenet (ImageNet mean/std, for pretrained models)."""
    input_size: int | None = None
    """Resize batches to this square size (e.g. 28, 224, 299); None uses the model's native input size for this dataset."""
    skip_bad: bool = False
    """Skip and count undecodable images instead of failing."""

    def __post_init__(self) -> None:
        _choice("data", "name", self.name, ("tiny-imagenet", "cifar10", "mnist"))
        _choice("data", "grayscale", self.grayscale, ("replicate", "drop", "gray"))
        _choice("data", "val_split", self.val_split, ("official", "half"))
        _choice("data", "normalize", self.normalize, ("none", "channel_mean", "pixel_mean", "standardize", "imagenet"))
        _positive("data", "train_per_class", self.train_per_class)
        _positive("data", "input_size", self.input_size)
        _within("data", "holdout", self.holdout, "a fraction", 0, 1)


@dataclass
class ModelConfig:
    """Which architecture, its initialisation and pretrained weights."""

    name: str = "resnet18"
    """A registered model name (see `cnnbench models list`)."""
    init: str = "default"
    """Weight initialisation: default (the framework's), normal (the reports' random unit init), he, glorot."""
    pretrained: bool = False
    """Start from ImageNet-1k weights (torchvision's weights API or `weights`)."""
    weights: str | None = None
    """A local state-dict file to load instead of torchvision's cache."""
    finetune: str = "all"
    """With pretrained weights: fine-tune all layers, or only the head (frozen backbone, BN in eval mode)."""
    dropout: float | None = None
    """Dropout rate for models that take one; None keeps the architecture's default."""
    options: dict[str, Any] = field(default_factory=dict)
    """Extra builder options (e.g. {stem: small}, {block: preact}); see the model's docstring."""

    def __post_init__(self) -> None:
        _choice("model", "init", self.init, ("default", "normal", "he", "glorot"))
        _choice("model", "finetune", self.finetune, ("all", "head"))
        _within("model", "dropout", self.dropout, "a rate", 0, 1)


@dataclass
class OptimConfig:
    """The optimiser (torch.optim) and the two kinds of weight penalty."""

    name: str = "sgd"
    """sgd, adam, adamw or radam."""
    lr: float = 0.1
    """Peak learning rate."""
    momentum: float = 0.9
    """SGD momentum, in [0, 1)."""
    nesterov: bool = False
    """SGD with Nesterov momentum."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam-family betas, each in [0, 1)."""
    eps: float = 1e-8
    """Adam-family epsilon."""
    weight_decay: float = 0.0
    """torch.optim weight_decay: coupled L2 in SGD/Adam/RAdam, decoupled in AdamW."""
    l2: float = 0.0
    """Keras-style L2 penalty added to the loss: l2 * sum(w**2) over the chosen layers' weights."""
    l2_layers: list[str] | None = None
    """Module names that carry the L2 penalty; None uses the model's own list (its `l2_layers`) or every conv/linear weight."""
    no_decay_bn_bias: bool = True
    """Exclude BN parameters and biases from weight_decay (the modern default)."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this value."""
    fused: bool | None = None
    """torch.optim's fused kernel (one pass over each parameter instead of one per term): null uses it where it measured faster (adam and adamw, and sgd on the cpu with nesterov or weight_decay) and for sgd on cuda (torch ranks fused first there), true requires it (sgd, adam or adamw on cpu or cuda), false keeps torch's default."""

    def __post_init__(self) -> None:
        _choice("optim", "name", self.name, ("sgd", "adam", "adamw", "radam"))
        _positive("optim", "lr", self.lr)
        _positive("optim", "weight_decay", self.weight_decay, allow_zero=True)
        _positive("optim", "l2", self.l2, allow_zero=True)
        _positive("optim", "eps", self.eps, allow_zero=True)
        _positive("optim", "grad_clip", self.grad_clip, note="or null for no clipping")
        _within("optim", "momentum", self.momentum, "a value", 0, 1)
        self.betas = tuple(self.betas)
        for i, beta in enumerate(self.betas):
            _within("optim", f"betas[{i}]", beta, "a value", 0, 1)


@dataclass
class ScheduleConfig:
    """How the learning rate moves over training (stepped per iteration unless stated)."""

    name: str = "constant"
    """constant; inverse_time (Keras decay: lr / (1 + decay * step)); step (multiply by gamma every step_epochs); cosine (with warm-up); onecycle; plateau (reduce on val-loss plateau); cyclic_cosine (snapshot ensembles: restart every epochs/cycles, save a snapshot per cycle)."""
    decay: float = 0.0
    """inverse_time: the Keras `decay` argument (one report used 1e-6)."""
    step_epochs: int = 7
    """step: epochs between decays (one report divided by 10 every 7 epochs)."""
    gamma: float = 0.1
    """step/plateau: multiplicative factor (> 0)."""
    warmup_epochs: float = 0.0
    """cosine/cyclic_cosine: linear warm-up from 0 over this many epochs."""
    min_lr: float = 0.0
    """cosine/plateau: the floor, at most optim.lr."""
    patience: int = 3
    """plateau: epochs without improvement before reducing."""
    cycles: int = 1
    """cyclic_cosine: number of cycles (= snapshots)."""
    pct_start: float = 0.25
    """onecycle: fraction of steps spent increasing, in (0, 1)."""

    def __post_init__(self) -> None:
        _choice("schedule", "name", self.name,
                ("constant", "inverse_time", "step", "cosine", "onecycle", "plateau", "cyclic_cosine"))
        _positive("schedule", "step_epochs", self.step_epochs)
        _positive("schedule", "cycles", self.cycles)
        _positive("schedule", "decay", self.decay, allow_zero=True)
        _positive("schedule", "gamma", self.gamma)
        _positive("schedule", "warmup_epochs", self.warmup_epochs, allow_zero=True)
        _positive("schedule", "min_lr", self.min_lr, allow_zero=True)
        _positive("schedule", "patience", self.patience, allow_zero=True)
        _within("schedule", "pct_start", self.pct_start, "a fraction", 0, 1, low_open=True)
        if self.name == "plateau":  # ReduceLROnPlateau only reduces (it raises for a factor >= 1)
            _within("schedule", "gamma", self.gamma, "a factor (plateau reduces the rate)", 0, 1, low_open=True)


@dataclass
class AugmentConfig:
    """Augmentation applied to whole batches on the device (probabilities and ranges)."""

    hflip: float = 0.0
    """Probability of a horizontal flip."""
    vflip: float = 0.0
    """Probability of a vertical flip."""
    rotate: float = 0.0
    """Maximum rotation in degrees (uniform in [-rotate, rotate])."""
    translate: float = 0.0
    """Maximum translation as a fraction of the image side, in [0, 1] (as torchvision's RandomAffine)."""
    brightness: float = 0.0
    """Brightness factor drawn uniformly from [max(0, 1 - b), 1 + b] (as torchvision's ColorJitter)."""
    crop_padding: int = 0
    """Random crop after reflect-padding by this many pixels (CIFAR-style); fewer than the dataset's image side (checked when the run builds)."""
    random_resized_crop: tuple[float, float] | None = None
    """Scale range (fractions of the image area, 0 < low <= high <= 1) of a random resized crop back to the input size, e.g. [0.35, 1.0]."""
    center_crop: float | None = None
    """Crop the central fraction of the side, in (0, 1], and resize back (one report's 'central crop + resize')."""
    blur: float = 0.0
    """Probability of a Gaussian blur with kernel 5 and sigma uniform in blur_sigma."""
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    """Sigma range for the Gaussian blur, 0 < low <= high."""
    color_jitter: float = 0.0
    """Strength s of brightness/contrast/saturation jitter: factors in [max(0, 1 - s), 1 + s] (0 turns it off)."""
    randaugment: tuple[int, int] | None = None
    """RandAugment (num_ops, magnitude), e.g. [2, 9]: num_ops >= 1, magnitude a bin in [0, 30] (torchvision's 31 bins)."""
    trivialaugment: bool = False
    """TrivialAugmentWide."""
    random_erasing: float = 0.0
    """Probability of random erasing."""
    mixup: float = 0.0
    """Mixup alpha (0 turns it off)."""
    cutmix: float = 0.0
    """CutMix alpha (0 turns it off); with both set, one of the two is chosen per batch."""
    mix_prob: float = 1.0
    """Probability that a batch is mixed at all when mixup or cutmix is on (timm's mixup_prob); the others train on clean images."""
    sets: list[dict[str, Any]] = field(default_factory=list)
    """Fixed augmentation 'sets' that enlarge the training set (one report doubled it): each entry is an augmentation dict like this section, applied once per epoch to a copy of the data; the original data is always included."""

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip", "blur", "random_erasing", "mix_prob"):
            _within("augment", name, getattr(self, name), "a probability", 0, 1, high_open=False)
        for name in ("rotate", "brightness", "color_jitter", "mixup", "cutmix", "crop_padding"):
            _positive("augment", name, getattr(self, name), allow_zero=True)
        # beyond 1 the shift can move the whole image out of the frame: a black training image
        _within("augment", "translate", self.translate, "a fraction of the side", 0, 1, high_open=False)
        # above 1 the crop is larger than the image and torchvision pads it with black
        _within("augment", "center_crop", self.center_crop, "a fraction of the side", 0, 1, low_open=True,
                high_open=False)
        # torchvision's RandomResizedCrop scale: a zero-area box, or one larger than the image, is no crop
        _range("augment", "random_resized_crop", self.random_resized_crop, "a scale range", high=1)
        _range("augment", "blur_sigma", self.blur_sigma, "a sigma range")  # sigma 0 blurs to NaN
        if self.randaugment is not None:
            _positive("augment", "randaugment[0]", self.randaugment[0], note="number of ops")
            _within("augment", "randaugment[1]", self.randaugment[1], "a magnitude bin", 0, RANDAUGMENT_BINS - 1,
                    high_open=False)
        for i, entry in enumerate(self.sets):
            if not isinstance(entry, dict):
                raise CnnbenchError(f"augment.sets[{i}]: expected a mapping of augmentation settings, got {entry!r}")
            try:
                build_config(AugmentConfig, {k: v for k, v in entry.items()}, f"augment.sets[{i}]")
            except CnnbenchError as exc:  # the checks above name augment.KEY: say which set holds it
                message = str(exc)
                if not message.startswith("augment.sets["):
                    message = message.replace("augment.", f"augment.sets[{i}].", 1)
                raise CnnbenchError(message) from None
            if "sets" in entry:
                raise CnnbenchError(f"augment.sets[{i}]: a set cannot hold sets of its own")


@dataclass
class TrainConfig:
    """The loop: length, batch, precision, device, stopping, averaging."""

    epochs: int = 10
    """Number of passes over the training set."""
    batch_size: int = 128
    """Images per optimiser step (global, across all ranks)."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing."""
    precision: str = "auto"
    """fp32, bf16 (autocast, CPU or GPU), fp16 (autocast + grad scaler, GPU only), or auto (bf16 where the hardware runs it fast, else fp32)."""
    channels_last: bool = True
    """Use the channels_last memory format for conv nets."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    conv_impl: str = "auto"
    """torch (always torch's convolution) or auto: on the CPU, convolutions whose output map has at most 16 pixels (bf16) or 4 (fp32) run as im2col + one matmul, 2-5x faster there than oneDNN's kernels (cnnbench.train.gemm_conv)."""
    conv_grad_impl: str = "auto"
    """torch (oneDNN's weight gradients) or auto: on Linux CPUs with AMX-BF16, under bf16 autocast with channels_last and without torch.compile, convolutions with an odd square kernel, padding k // 2, output channels in multiples of 32 and input channels in multiples of 32 from 64 up (or an RGB 7x7 stem) take their weight gradient from cnnbench's AMX kernel, up to 2.6x faster than oneDNN's there (cnnbench.train.amx_conv; compiled on first use, oneDNN's where it cannot be built); the matmul convolutions (conv_impl) with channels in multiples of 32 run entirely on the same kernel's tiles (forward, input and weight gradient), multiplying only the pixel pairs inside the map (cnnbench.train.gemm_conv.PixelPairConv)."""
    bn_impl: str = "auto"
    """torch (torch's batch norm) or auto: on the CPU with bf16 autocast and channels_last, batch norms run as one fused pass each way, with the ReLU and residual add after them in ResNets (cnnbench.train.fused_bn, compiled on first use; torch's where it cannot be built)."""
    pool_impl: str = "auto"
    """torch (torch's max pooling) or auto: on the CPU, max pooling of channels_last float32/bf16 activations runs one C++ pass each way (cnnbench.train.max_pool: 3.6 ms against torch's 8.2 for ResNet-18's stem at 64 px; compiled on first use, torch's where it cannot be built)."""
    optim_impl: str = "auto"
    """torch (torch.optim's step) or auto: on the CPU under bf16 autocast, SGD, Adam and AdamW (with optim.fused left null) run one C++ pass per tensor, torch's unfused arithmetic (SGD bit for bit), that also writes each conv/linear weight's bf16 copy, which the next forward pass uses instead of autocast's cast (cnnbench.train.weight_copies; compiled on first use, torch's where it cannot be built)."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps."""
    early_stopping: int | None = None
    """Stop after this many evaluations (epochs, with eval_every 1) without improvement of the monitored metric; at least 1, or None to never stop early."""
    monitor: str = "val_top1"
    """Metric that picks the best checkpoint and drives early stopping (val_top1, val_top5 or val_loss)."""
    ema: float | None = None
    """Exponential moving average decay of the weights (e.g. 0.999); evaluation uses the average."""
    eval_every: int = 1
    """Evaluate on the val split every N epochs (N >= 1; always on the last)."""
    tta: str = "none"
    """Test-time augmentation at evaluation: none or flip."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms, for bit-exact reruns."""
    workers: int = 0
    """Intra-op threads: 0 keeps torch's default."""

    def __post_init__(self) -> None:
        _positive("train", "epochs", self.epochs)
        _positive("train", "batch_size", self.batch_size)
        _choice("train", "precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _choice("train", "monitor", self.monitor, ("val_top1", "val_top5", "val_loss"))
        _choice("train", "tta", self.tta, ("none", "flip"))
        _choice("train", "conv_impl", self.conv_impl, ("auto", "torch"))
        _choice("train", "conv_grad_impl", self.conv_grad_impl, ("auto", "torch"))
        _choice("train", "bn_impl", self.bn_impl, ("auto", "torch"))
        _choice("train", "pool_impl", self.pool_impl, ("auto", "torch"))
        _choice("train", "optim_impl", self.optim_impl, ("auto", "torch"))
        _positive("train", "eval_every", self.eval_every)
        _positive("train", "early_stopping", self.early_stopping, note="or null to never stop early")
        _positive("train", "workers", self.workers, allow_zero=True)
        _within("train", "label_smoothing", self.label_smoothing, "a value", 0, 1)
        _within("train", "ema", self.ema, "a decay", 0, 1, low_open=True)


@dataclass
class Recipe:
    """One training run: everything needed to reproduce it."""

    name: str = "run"
    """A short name for the run (used for the run folder and in reports)."""
    seed: int = 0
    """Seeds model init, data order and augmentation (a non-negative integer)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The dataset section."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model section."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """The optimiser section."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """The learning-rate schedule section."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """The augmentation section."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The loop section."""
    notes: str = ""
    """Free text: where the settings come from, choices made where the source was silent."""

    def __post_init__(self) -> None:
        if self.seed < 0:  # numpy seeds the data order and refuses it, at the first epoch
            raise CnnbenchError(f"seed: expected a non-negative integer, got {self.seed!r}")
        # Checks across sections. A floor above the peak makes cosine rise from lr to min_lr and
        # plateau raise the rate to it on its first reduction.
        if self.schedule.min_lr > self.optim.lr:
            raise CnnbenchError(f"schedule.min_lr: expected at most optim.lr ({self.optim.lr}), got {self.schedule.min_lr!r}")

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain YAML-able data (tuples become lists)."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check_type(where: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field annotation; returns it (ints are accepted for floats)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _check_type(where, value, option)
            except CnnbenchError as exc:
                errors.append(str(exc))
        expected = " or ".join("null" if a is type(None) else getattr(a, "__name__", str(a)) for a in args)
        raise CnnbenchError(f"{where}: expected {expected}, got {value!r}")
    if annotation is type(None):
        if value is not None:
            raise CnnbenchError(f"{where}: expected null, got {value!r}")
        return None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise CnnbenchError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise CnnbenchError(f"{where}: expected a list of {len(args)} values, got {value!r}")
            return tuple(_check_type(f"{where}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        return type(value)(_check_type(f"{where}[{i}]", v, inner) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise CnnbenchError(f"{where}: expected a mapping, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CnnbenchError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CnnbenchError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise CnnbenchError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise CnnbenchError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def build_config(cls: type, values: dict[str, Any] | None, where: str = "recipe") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and ill-typed values."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise CnnbenchError(f"{where}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CnnbenchError(f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(names)}")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = build_config(annotation, value, f"{where}.{key}" if where != "recipe" else key)
        else:
            kwargs[key] = _check_type(f"{where}.{key}" if where != "recipe" else key, value, annotation)
    return cls(**kwargs)


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a nested mapping, in place."""
    for item in overrides:
        if "=" not in item:
            raise CnnbenchError(f"--set {item!r}: expected key=value, e.g. optim.lr=0.01")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise CnnbenchError(f"--set {item!r}: value is not valid YAML ({exc.__class__.__name__})") from None
        node = values
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise CnnbenchError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return values


def load_recipe_dict(path: str | Path) -> dict[str, Any]:
    """Read a recipe file as a mapping (no validation)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CnnbenchError(f"{path}: recipe file not found") from None
    except OSError as exc:
        raise CnnbenchError(f"{path}: cannot read recipe ({exc.strerror})") from None
    try:
        values = load_yaml(text)
    except yaml.YAMLError as exc:
        raise CnnbenchError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise CnnbenchError(f"{path}: expected a mapping of recipe sections at the top level")
    return values


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None,
                values: dict[str, Any] | None = None) -> Recipe:
    """Load and validate a recipe from a file (or a mapping), with ``--set`` overrides applied."""
    data = load_recipe_dict(path) if path is not None else dict(values or {})
    apply_overrides(data, overrides or [])
    try:
        return build_config(Recipe, data)
    except CnnbenchError as exc:
        if path is not None:
            raise CnnbenchError(f"{path}: {exc}") from None
        raise
