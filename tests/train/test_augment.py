"""Batch augmentation: each per-sample op equals torchvision's op applied image by image, draws
its own parameters per image, and replays exactly from the generator state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from cnnbench.data import augment as A
from cnnbench.data.augment import create_augment, create_mix

ALL_OPS = dict(hflip=0.5, vflip=0.5, rotate=10, translate=0.1, brightness=0.2, crop_padding=4,
               random_resized_crop=[0.35, 1.0], center_crop=0.875, blur=0.5, color_jitter=0.4,
               randaugment=[2, 9], random_erasing=0.25)


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def one_by_one(fn, x, values):
    return torch.stack([fn(x[i:i + 1], v)[0] for i, v in enumerate(values)])


def test_affine_matches_torchvision_per_image(batch):
    angles, shifts, shears = [30.0, -45.0, 90.0, 0.0, 12.0, -7.0], [[2, -3], [0, 1], [-4, 0], [1, 1], [0, 0], [3, 2]], \
        [[10.0, 5.0], [0.0, -20.0], [0.0, 0.0], [15.0, 0.0], [-5.0, 5.0], [0.0, 0.0]]
    ours = A.affine(batch, angle=torch.tensor(angles), translate=torch.tensor(shifts, dtype=torch.float32),
                    shear=torch.tensor(shears), mode="nearest")
    # TF.affine takes clockwise angles; TF.rotate (and ours) counter-clockwise.
    theirs = torch.stack([TF.affine(batch[i:i + 1], angle=-angles[i], translate=shifts[i], scale=1.0, shear=shears[i])[0]
                          for i in range(6)])
    mismatch = (ours - theirs).abs().gt(1e-6).float().mean().item()
    assert mismatch < 0.02  # nearest-neighbour ties at a few pixel centres may round differently
    rotated = A.affine(batch, angle=torch.full((6,), 90.0), mode="nearest")
    assert torch.equal(rotated, TF.rotate(batch, 90.0))


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation", "sharpness"])
def test_per_sample_colour_ops_match_torchvision(batch, name):
    factors = torch.tensor([0.5, 1.0, 1.5, 0.1, 1.9, 0.8])
    ours = getattr(A, f"adjust_{name}")(batch, factors)
    theirs = one_by_one(lambda im, f: getattr(TF, f"adjust_{name}")(im, float(f)), batch, factors)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_blur_solarize_posterize_match_torchvision(batch):
    sigmas = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.7])
    torch.testing.assert_close(A.gaussian_blur(batch, sigmas),
                               one_by_one(lambda im, s: TF.gaussian_blur(im, [5, 5], [float(s)] * 2), batch, sigmas),
                               atol=1e-5, rtol=0)
    thresholds = torch.tensor([0.2, 0.4, 0.5, 0.6, 0.8, 1.0])
    torch.testing.assert_close(A.solarize(batch, thresholds),
                               one_by_one(lambda im, t: TF.solarize(im, float(t)), batch, thresholds))
    bits = torch.tensor([1, 2, 4, 5, 7, 8])
    u8 = (batch * 255).round().to(torch.uint8)
    expected = one_by_one(lambda im, b: TF.posterize(im, int(b)), u8, bits).float() / 255
    torch.testing.assert_close(A.posterize(batch, bits), expected)


def test_center_crop_resize_is_torchvision_crop_then_resize(batch):
    out = A.center_crop_resize(batch, 0.75)
    expected = TF.resize(TF.center_crop(batch, [12, 12]), [16, 16], antialias=True).clamp(0, 1)
    assert torch.equal(out, expected)


def test_random_resized_crop_interpolates_without_an_extra_blur(batch):
    # torchvision's RandomResizedCrop (crop, then bilinear resize) returns a whole-image box unchanged;
    # averaging several samples per output pixel blurred every crop, this one included.
    whole = A.random_resized_crop(batch, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(whole, batch, atol=1e-6, rtol=0)


def _moved_one_by_one(x, padding, dy, dx, hflip, vflip):
    """The reference: torch's reflect pad, a slice, then torch's flips, image by image."""
    h, w = x.shape[-2:]
    out = []
    for i in range(x.shape[0]):
        im = x[i:i + 1].float()
        im = torch.nn.functional.pad(im, (padding,) * 4, mode="reflect") if padding else im
        im = im[..., int(dy[i]):int(dy[i]) + h, int(dx[i]):int(dx[i]) + w]
        im = im.flip(-1) if hflip[i] else im
        out.append((im.flip(-2) if vflip[i] else im)[0].to(x.dtype))
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("padding", [0, 1, 4, 6, 9])  # 6, 9: rows reflected past the window (2 * padding >= 12)
def test_pixel_moves_equal_pad_crop_flip_image_by_image(dtype, padding):
    g = torch.Generator().manual_seed(padding)
    x = (torch.rand(40, 3, 12, 10, generator=g) * 255).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last) if dtype == torch.uint8 else x  # both layouts
    dy, dx = (torch.randint(0, 2 * padding + 1, (40,), generator=g) for _ in range(2))
    hflip, vflip = (torch.rand(40, generator=g) < 0.5 for _ in range(2))
    expected = _moved_one_by_one(x, padding, dy, dx, hflip, vflip)
    cpu = A.move_pixels_cpu(x, padding, dy, dx, hflip, vflip)
    assert torch.equal(cpu, expected)
    assert cpu.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(A.move_pixels_gather(x, padding, dy, dx, hflip, vflip), expected)


def test_fused_uint8_moves_equal_the_ops_one_after_another_on_float():
    """crop_padding + hflip + vflip run fused on uint8 in the pipeline; drawn and applied one
    op at a time on the float batch they must give the same pixels and leave the generator in
    the same state."""
    from cnnbench.data import BatchPipeline

    aug = create_augment(dict(crop_padding=3, hflip=0.5, vflip=0.3))
    assert [name for name, _ in aug.ops] == ["crop_padding+hflip+vflip"] and aug.float_ops is None
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    pipe = BatchPipeline(normalize="none", augment=aug)
    fused_g, single_g = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    fused = pipe(images, fused_g)
    x = images.float() / 255
    for op in (A.PixelMoves(padding=3), A.PixelMoves(hflip=0.5), A.PixelMoves(vflip=0.3)):
        x = op(x, single_g)
    torch.testing.assert_close(fused, x, atol=1e-6, rtol=0)
    assert torch.equal(fused_g.get_state(), single_g.get_state())
    with pytest.raises(ValueError, match="crop_padding=16: reflect padding must be smaller than the image"):
        A.PixelMoves(padding=16)(images, fused_g)


def _nhwc_ops():
    from cnnbench.train.native import NHWC_OPS

    if NHWC_OPS.load() is None:
        pytest.skip(f"no C++ toolchain: {NHWC_OPS.error}")
    return NHWC_OPS.module


@pytest.mark.parametrize("augment, channels, normalize", [
    (dict(crop_padding=4, hflip=0.5), 3, "standardize"),    # the bench's and the quick recipe's
    (dict(crop_padding=6, hflip=0.5, vflip=0.5), 3, "pixel_mean"),  # rows reflected past the window (2 * 6 >= 12)
    (dict(hflip=1.0), 1, "channel_mean"),                   # grayscale, every image flipped
    (dict(crop_padding=2, vflip=0.3), 4, "none"),
    (None, 3, "standardize"),                               # no augmentation: the evaluation pipeline
])
def test_the_fused_kernel_pipeline_is_the_step_by_step_one_bit_for_bit(augment, channels, normalize):
    """The engine hands BatchPipeline nhwc_ops.cpp's move_normalize: crop, flips, uint8 -> float and the
    normalisation of a CPU batch in one pass. It must give the step-by-step path's bits (moves on
    uint8, then torch's conversion and addcmul) and leave the generator in the same state."""
    from cnnbench.data import BatchPipeline

    kernels = _nhwc_ops()
    g = torch.Generator().manual_seed(channels)
    images = torch.randint(0, 256, (37, 12, 10, channels), generator=g, dtype=torch.uint8).permute(0, 3, 1, 2)
    stats = {"channel_mean": [0.3, 0.5, 0.4, 0.6][:channels], "channel_std": [0.2, 0.3, 0.25, 0.1][:channels],
             "pixel_mean": torch.rand(12, 10, channels, generator=g).numpy()}
    outs, states = [], []
    for fused in (False, True):
        pipe = BatchPipeline(normalize=normalize, stats=stats, augment=create_augment(augment) if augment else None,
                             move_normalize=kernels.move_normalize if fused else None)
        assert pipe._fuses(images) == fused
        gen = torch.Generator().manual_seed(11)
        outs.append(pipe(images, gen))
        states.append(gen.get_state())
    assert outs[1].dtype == torch.float32 and outs[1].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(outs[0].contiguous().view(torch.int32), outs[1].contiguous().view(torch.int32))
    assert torch.equal(states[0], states[1])


def test_the_fused_kernel_is_left_out_where_it_does_not_do_the_whole_pipeline():
    from cnnbench.data import BatchPipeline

    kernels = _nhwc_ops()
    images = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    fused = dict(normalize="none", move_normalize=kernels.move_normalize)
    assert BatchPipeline(augment=create_augment(dict(crop_padding=2)), **fused)._fuses(images)
    assert not BatchPipeline(augment=create_augment(dict(crop_padding=2, brightness=0.2)), **fused)._fuses(images)
    assert not BatchPipeline(input_size=32, **fused)._fuses(images)  # resized
    assert not BatchPipeline(channels_last=False, **fused)._fuses(images)
    assert not BatchPipeline(**fused)._fuses(images.contiguous())  # an NCHW batch


def test_move_normalize_rejects_what_it_cannot_take():
    kernels = _nhwc_ops()
    x = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    dy, flip, pattern = torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.bool), torch.zeros(8 * 8 * 3)
    cases = [
        ((x.float(), 2, dy, dy, flip, flip, pattern, pattern), r"x: expected a contiguous uint8 \(B, H, W, C\) tensor"),
        ((x, 8, dy, dy, flip, flip, pattern, pattern), r"padding 8: expected 0 <= padding < 8"),
        ((x, 2, dy[:1], dy, flip, flip, pattern, pattern), "dy, dx: expected contiguous int64 tensors of 2 offsets"),
        ((x, 2, dy, dy, flip.long(), flip, pattern, pattern), "hflip, vflip: expected contiguous bool tensors of 2 flags"),
        ((x, 2, dy, dy, flip, flip, pattern[:-1], pattern), "scale, shift: expected contiguous float32 patterns of 192 values"),
        ((x, 2, dy + 5, dy, flip, flip, pattern, pattern), r"dy, dx: expected offsets in \[0, 4\], got 5, 0"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            kernels.move_normalize(*args)


def test_moves_after_an_interpolating_crop_stay_separate_float_ops():
    aug = create_augment(dict(crop_padding=2, random_resized_crop=[0.5, 1.0], hflip=0.5))
    assert [name for name, _ in aug.ops] == ["crop_padding", "random_resized_crop", "hflip"]
    assert aug.pixel_moves.padding == 2 and aug.float_ops.names == ["random_resized_crop", "hflip"]


def test_ops_draw_per_sample_parameters():
    x = torch.rand(1, 3, 16, 16).repeat(64, 1, 1, 1)  # 64 copies of one image
    g = torch.Generator().manual_seed(0)
    for settings in [dict(rotate=30), dict(blur=1.0), dict(color_jitter=0.5), dict(random_resized_crop=[0.2, 1.0]),
                     dict(trivialaugment=True), dict(randaugment=[2, 9]), dict(random_erasing=1.0)]:
        out = create_augment(settings)(x, g)
        distinct = len({round(v, 5) for v in out.flatten(1).sum(1).tolist()})
        assert distinct > 16, f"{settings}: only {distinct} distinct results over 64 copies"
    flipped = create_augment(dict(hflip=0.5))(x, g)
    n_flipped = sum(torch.equal(flipped[i], x[0].flip(-1)) for i in range(64))
    assert 16 < n_flipped < 48  # about half


def test_augment_replays_from_generator_state_and_stays_in_range():
    x = torch.rand(8, 3, 16, 16)
    aug = create_augment(ALL_OPS)
    assert aug.names == ["crop_padding", "random_resized_crop", "center_crop", "hflip", "vflip", "rotate_translate",
                         "brightness", "color_jitter", "blur", "randaugment", "random_erasing"]
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    first = aug(x, g)
    g.set_state(state)
    assert torch.equal(aug(x, g), first)
    assert first.shape == x.shape and first.min() >= 0 and first.max() <= 1
    assert create_augment({}) is None
    with pytest.raises(ValueError, match="unknown augmentation setting 'hflipp'"):
        create_augment({"hflipp": 0.5})


def test_randaugment_magnitudes_are_torchvision_bins():
    # Recipes are checked against config's copy of the bin count; both must stay torchvision's.
    from torchvision.transforms.v2 import RandAugment

    from cnnbench.train.config import RANDAUGMENT_BINS
    assert A.MAGNITUDE_BINS == RANDAUGMENT_BINS == RandAugment().num_magnitude_bins
    create_augment({"randaugment": [1, A.MAGNITUDE_BINS - 1]})
    for settings, bad in [([2, A.MAGNITUDE_BINS], "magnitude bin 31"), ([2, -1], "magnitude bin -1"),
                          ([0, 9], "num_ops 0")]:
        with pytest.raises(ValueError, match=bad):
            create_augment({"randaugment": settings})


def test_trivialaugment_uses_torchvision_op_table():
    aug = create_augment(dict(trivialaugment=True)).ops[0][1]
    assert list(aug.space) == ["Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
                               "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize"]
    assert aug.num_ops == 1 and aug.magnitude_bin is None


def test_random_erasing_boxes_cover_the_configured_area():
    x = torch.full((200, 3, 32, 32), 0.5)
    out = A.random_erasing(x, torch.Generator().manual_seed(0), p=1.0)
    fractions = (out != 0.5).any(1).float().mean((1, 2))  # (B,) erased share of each image
    assert fractions.min() > 0.005 and fractions.max() < 0.40
    assert 0.1 < fractions.mean() < 0.22  # area drawn uniformly in [0.02, 0.33]: mean ~0.175


def test_mixup_and_cutmix_weights():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8)
    y = torch.arange(4)
    mixed = create_mix(dict(mixup=0.4))(x, y, g)
    torch.testing.assert_close(mixed.inputs, mixed.lam * x + (1 - mixed.lam) * x.roll(1, 0))
    assert mixed.labels_b.tolist() == [3, 0, 1, 2] and 0 <= mixed.lam <= 1
    cut = create_mix(dict(cutmix=1.0))(x, y, g)
    pasted = (cut.inputs != x).any(1)[0].float().mean().item()  # share of image 0 replaced by image 3
    assert math.isclose(cut.lam, 1 - pasted, abs_tol=1e-6)
    assert create_mix(dict(hflip=0.5)) is None


def test_mix_prob_leaves_that_share_of_batches_clean_and_changes_nothing_at_one():
    x, y = torch.rand(4, 3, 8, 8), torch.arange(4)
    half = create_mix(dict(mixup=0.4, cutmix=1.0, mix_prob=0.5))
    g = torch.Generator().manual_seed(0)
    clean = sum(half(x, y, g) is None for _ in range(400))
    assert 160 < clean < 240  # binomial(400, 0.5): sd 10
    # prob 1 draws nothing extra: mixup alone takes its lambda's seed from the generator's first
    # draw, as before the option existed; below 1 that first draw goes to the clean-or-mixed choice
    expected_seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(1)).item())
    expected = float(np.random.default_rng(expected_seed).beta(0.4, 0.4))
    assert create_mix(dict(mixup=0.4, mix_prob=1.0))(x, y, torch.Generator().manual_seed(1)).lam == expected
    assert create_mix(dict(mixup=0.4))(x, y, torch.Generator().manual_seed(1)).lam == expected
    assert create_mix(dict(mixup=0.4, mix_prob=0.999))(x, y, torch.Generator().manual_seed(1)).lam != expected
    assert create_mix(dict(mix_prob=0.5)) is None  # no alpha set: nothing to mix


@pytest.mark.parametrize("name", ["brightness", "color_jitter"])
def test_strength_above_one_never_draws_a_negative_factor(name):
    # torchvision's ColorJitter draws from [max(0, 1 - s), 1 + s]; a negative brightness factor
    # would turn a sixth of these gray images black at s = 1.5 (factor < 0, then clamped).
    x = torch.full((600, 3, 8, 8), 0.5)
    out = create_augment({name: 1.5})(x, torch.Generator().manual_seed(0))
    darkest = out.flatten(1).mean(1)
    assert (darkest < 0.05).float().mean() < 0.1  # factors below 0.1: about 4% of [0, 2.5]
    assert darkest.max() > 0.9  # the upper end is still drawn


def test_color_jitter_applies_each_images_own_order_as_torchvision_does(monkeypatch):
    # torchvision's ColorJitter permutes brightness/contrast/saturation on every call; on a batch
    # each image gets its own order. The order matters: contrast blends with the image's mean.
    import itertools

    from cnnbench.data.augment import color_jitter

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8, generator=g)
    factors = 0.5 + torch.rand(6, 3, generator=g)
    order = torch.tensor(list(itertools.permutations(range(3))))  # all six orders, one per image
    out = color_jitter(x, factors, order)
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    for i in range(6):
        expected = x[i]
        for j in order[i].tolist():
            expected = adjust[j](expected, factors[i, j].item())
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[0], color_jitter(x[:1], factors[:1], order[5:6])[0], atol=1e-3)
    # the batch op draws every image's order: all six turn up in a batch of 600
    seen = []
    monkeypatch.setattr(A, "color_jitter", lambda x, f, o: seen.append(o) or color_jitter(x, f, o))
    create_augment({"color_jitter": 0.4})(torch.rand(600, 3, 8, 8, generator=g), torch.Generator().manual_seed(1))
    assert {tuple(row) for row in seen[0].tolist()} == set(itertools.permutations(range(3)))
