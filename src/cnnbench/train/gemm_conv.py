"""Small convolutions as one matrix multiply on the CPU (im2col + matmul).

At 64 px a ResNet's last stages work on 4x4 and 2x2 maps, and there oneDNN's convolution
kernels are far from the machine's matmul speed. Measured on this 2-core AMX Xeon with
``python benchmarks/probe_convs.py`` (torch 2.15, batch 128, channels_last, ms forward +
backward, input gradient included; median of 5; the shared VM's speed drifts by up to 2x
between minutes, so compare within one run):

    conv (in -> out, input map, kernel, stride)   oneDNN bf16   matmul bf16   oneDNN fp32   matmul fp32
    64 -> 64, 16x16, 3x3, s1                            19.1          91.5          48.1         114.3
    64 -> 128, 16x16, 3x3, s2                           10.5          18.8          20.6          30.6
    128 -> 128, 8x8, 3x3, s1                            10.3          19.8          31.7          67.9
    128 -> 256, 8x8, 3x3, s2  (4x4 out)                 12.0           9.3          22.9          24.8
    256 -> 256, 4x4, 3x3, s1                            18.4          13.8          37.1          40.8
    256 -> 512, 4x4, 3x3, s2  (2x2 out)                 33.8           8.1          50.0          21.3
    512 -> 512, 2x2, 3x3, s1  (CoveringConv)            69.0          12.1          96.0          37.3
      the same as im2col + matmul                                     13.2                        45.9
    256 -> 512, 4x4, 1x1, s2  (shortcut)                 6.0           1.8           6.0           3.1

so ``auto`` uses the matmul for outputs of at most 16 pixels (4x4) in bf16 and 4 pixels
(2x2) in fp32, and torch's convolution everywhere else. The same run's whole ResNet-18 64 px
training step, bf16 + channels_last: 159 img/s with torch's convolutions, 335 with these.

On a 2x2 map every 3x3 window (padding 1) covers the whole map, so the convolution is one
(B, 4C) @ (4C, 4O) matmul whose matrix holds the kernel's taps per pair of pixels
(``CoveringConv``): 16 of the 36 im2col taps touch a pixel, and no patch matrix is built. A
scratch run at batch 128 (bf16 autocast, 512 -> 512) measured 26-34 ms for it against 38-68 ms
for im2col, alternating in one process; the probe's line above, after the channels_last weight
view below also sped up im2col, shows the smaller remaining gap.

The matmul's weight matrix is a view of the weight in its (O, kh, kw, C) channels_last memory
order, transposed, so the forward copies nothing and the gradient comes back in the weight's
own layout (a permuted (kh, kw, C, O) copy cost a strided copy of the gradient on every step).

Why hand-written: torch's ``F.unfold`` wants NCHW (on channels_last input it was slower still,
30-70 ms for the 4x4 and 2x2 rows, in a one-off scratch measurement this session), and the
patch matrix built from k*k slices of the NHWC view is right, but autograd's backward of each
slice allocates and zero-fills a whole input-sized gradient before summing them (9 per 3x3
conv); ``Im2col.backward`` adds the k*k taps into one buffer instead (same scratch
measurement: 512 -> 512 at 2x2, 31.4 -> 27.3 ms; 128 -> 256 at 8x8, 25.2 -> 16.7 ms). Those
slices, their ``torch.cat`` and the k*k strided adds still cost 18 ms of a 180 ms ResNet-18 step
(torch.profiler, session 10), so channels_last inputs now take one C++ pass each way
(``nhwc_ops.cpp``, see ``Im2col``); the Python path stays for other layouts and where no
compiler is present.

On CPUs with AMX-BF16, bf16 training runs these layers as ``PixelPairConv`` instead (every pass
from the pixel pairs each tap joins, on ``amx_conv.cpp``'s tiles: no patch matrix, no padding
taps); im2col + matmul stays for fp32, other CPUs and channel counts that are no multiple of 32.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from cnnbench.train.amx_conv import AMX_CONV
from cnnbench.train.amx_conv import load as load_amx
from cnnbench.train.native import NHWC_OPS

# Largest output map (H_out * W_out) that runs as a matmul, per autocast dtype (None = fp32).
AUTO_MAX_AREA = {torch.bfloat16: 16, None: 4}


class Im2col(torch.autograd.Function):
    """(B, H, W, C) -> patches (B, Ho, Wo, kh*kw*C) in (kh, kw, C) order, zero padding.

    A contiguous float32 or bf16 input (a channels_last activation, permuted) runs ``nhwc_ops.cpp``:
    one pass writing the patches, and a backward where each input pixel sums the taps that read it
    in fp32 (ResNet-18 at 64 px, batch 128, bf16, forward / forward + backward, ms: 256 ch at 4x4
    0.48 / 2.88 in Python -> 0.19 / 0.44; 128 ch at 8x8, stride 2, 0.46 / 2.05 -> 0.16 / 0.38;
    scratch, medians of 9). Anything else, or no compiler, takes the Python path below."""

    @staticmethod
    def forward(ctx, nhwc: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int], native: bool = True) -> torch.Tensor:
        b, h, w, c = nhwc.shape
        (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        ctx.geometry = (nhwc.shape, kernel, stride, padding, ho, wo)
        ops = _native_ops(nhwc) if native else None
        ctx.native = ops is not None
        if ops is not None:
            return ops.im2col(nhwc, list(kernel), list(stride), list(padding))
        padded = F.pad(nhwc, (0, 0, pw, pw, ph, ph)) if ph or pw else nhwc
        taps = [padded[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] for i in range(kh) for j in range(kw)]
        return torch.cat(taps, dim=3) if len(taps) > 1 else taps[0].contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (b, h, w, c), (kh, kw), (sh, sw), (ph, pw), ho, wo = ctx.geometry
        if ctx.native:
            return NHWC_OPS.module.col2im(grad.contiguous(), h, w, [kh, kw], [sh, sw], [ph, pw]), None, None, None, None
        grad_padded = grad.new_zeros((b, h + 2 * ph, w + 2 * pw, c))
        taps = grad.view(b, ho, wo, kh * kw, c)
        for t in range(kh * kw):  # each tap's gradient lands on the input pixels it read
            i, j = divmod(t, kw)
            grad_padded[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw].add_(taps[:, :, :, t])
        return grad_padded[:, ph:ph + h, pw:pw + w], None, None, None, None


class PatchMatmul(torch.autograd.Function):
    """patches (M, K) @ matrix (O, K)^T -> (M, O), the weight gradient as a plain product.

    Autograd's own backward of ``patches @ matrix.t()`` computes the weight gradient as
    ``grad.t() @ patches``, whose transposed left operand oneDNN's bf16 matmul takes at about
    half its speed; here the (M, O) gradient is transposed first (``nhwc_ops.cpp``'s
    ``transpose2d``; torch's copy of the transposed view cost twice as long) and the product
    runs on two contiguous operands. Session 19, scratch, bf16, medians of 41 alternating calls:
    ResNet-18's layer3 (M 2048, K 2304, O 256) 2.82 -> 1.98 ms with the transpose, layer4
    (512, 4608, 512) 1.63 -> 1.35.

    The bf16 forward runs in slices of at most ``OUT_SLICE`` output channels: with a (512, K) @
    (K, 512) product (layer4's 2x2 maps, batch 128) oneDNN ran at about half the speed it reaches
    with 256 columns (same scratch runs, medians of 31: K 4608 3.02 -> 1.95 ms, K 2304 1.58 ->
    1.00), and not slower where O <= 256 (layer3: M 2048, O 256 was fastest whole). The slices
    round like the whole product up to the order oneDNN sums in (at most one bf16 step apart)."""

    OUT_SLICE = 256

    @staticmethod
    def product(patches: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """patches @ matrix.t(), in slices of ``OUT_SLICE`` output channels in bf16 on the CPU."""
        o, step = matrix.shape[0], PatchMatmul.OUT_SLICE
        if o <= step or patches.device.type != "cpu" or patches.dtype != torch.bfloat16:
            return patches @ matrix.t()
        out = patches.new_empty((patches.shape[0], o))
        for i in range(0, o, step):
            torch.mm(patches, matrix[i:i + step].t(), out=out[:, i:i + step])
        return out

    @staticmethod
    def forward(ctx, patches: torch.Tensor, matrix: torch.Tensor, native: bool = True) -> torch.Tensor:
        ctx.save_for_backward(patches, matrix)
        ctx.native = native
        return PatchMatmul.product(patches, matrix)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        patches, matrix = ctx.saved_tensors
        grad_patches = grad @ matrix if ctx.needs_input_grad[0] else None
        grad_matrix = None
        if ctx.needs_input_grad[1]:
            grad = grad.contiguous()
            ops = _native_ops(grad) if ctx.native else None
            grad_t = ops.transpose2d(grad) if ops is not None else grad.t().contiguous()
            grad_matrix = grad_t @ patches
        return grad_patches, grad_matrix, None


def _native_ops(nhwc: torch.Tensor):
    """The compiled NHWC kernels where they apply to ``nhwc`` (a contiguous float32 or bf16 CPU
    tensor, as a channels_last activation permuted to (B, H, W, C) is, or a contiguous matrix for
    ``transpose2d``), else None."""
    if nhwc.device.type != "cpu" or nhwc.dtype not in (torch.float32, torch.bfloat16) or not nhwc.is_contiguous():
        return None
    return NHWC_OPS.load()


def covering_pairs(h: int, w: int, kernel: tuple[int, int], stride: tuple[int, int],
                   padding: tuple[int, int]) -> list | None:
    """For a stride-1 convolution whose output is its input's size: if every output pixel's window
    covers every input pixel, the (input pixel q, output pixel p, tap i, tap j) pairs; else None
    (``gemm_conv2d`` then uses im2col)."""
    (kh, kw), (ph, pw) = kernel, padding
    if tuple(stride) != (1, 1) or h + 2 * ph - kh + 1 != h or w + 2 * pw - kw + 1 != w or h - 1 > min(ph, kh - 1 - ph) or w - 1 > min(pw, kw - 1 - pw):
        return None
    pixels = [(y, x) for y in range(h) for x in range(w)]
    return [(q, p, qy - py + ph, qx - px + pw) for q, (qy, qx) in enumerate(pixels) for p, (py, px) in enumerate(pixels)]


def pixel_pair_count(h: int, w: int, k: int, stride: int, padding: int) -> int:
    """How many (tap, input pixel, output pixel) triples of a k x k convolution on an h x w map read
    a pixel inside the map: the products each of ``PixelPairConv``'s three passes executes per
    (batch row, input channel, output channel), where im2col's executes k * k * Ho * Wo."""
    def inside(size: int) -> int:  # per axis: (output position, tap) pairs that land in the map
        out = (size + 2 * padding - k) // stride + 1
        return sum(0 <= y * stride - padding + i < size for y in range(out) for i in range(k))
    return inside(h) * inside(w)


class CoveringConv(torch.autograd.Function):
    """A stride-1 convolution on a map so small that every window covers all of it (2x2 maps
    under a 3x3 kernel with padding 1, 1x1 maps): one (B, H*W*C) @ (H*W*C, H*W*O) matmul, the
    matrix assembled from the kernel's taps. Its multiply-adds are only the ones that touch a
    pixel (16 of a 2x2 map's 36 im2col taps), and no patch matrix is built.

    The matrix is kept transposed, (H*W*O, H*W*C): its (output pixel, input pixel) blocks are the
    taps' (O, C) matrices, which a channels_last weight holds with C contiguous, so assembling it
    is one contiguous row copy per block row, where the (H*W*C, H*W*O) form needed the whole
    weight transposed first (session 18, scratch, 512 -> 512 at 2x2, bf16, batch 128, medians of
    21-31 alternating calls: assembly 2.18 -> 0.97 ms; forward + both gradients 7.12 ms against
    7.56 for im2col + matmul, a tie within this machine's noise, so ``gemm_conv2d`` keeps im2col
    where the C++ kernels run and this for the Python path).

    With ``amx_conv.cpp``'s kernels (bf16 on CPUs with AMX-BF16) such a layer runs as ``PixelPairConv``,
    which multiplies the same pixel pairs without assembling the matrix (forward 1.99 -> 0.87 ms
    for ResNet-18's 512 -> 512 layer at 2x2, batch 128; see ``PixelPairConv``)."""

    @staticmethod
    def forward(ctx, x2d: torch.Tensor, weight: torch.Tensor, pairs: list, hw: int) -> torch.Tensor:
        o, c = weight.shape[:2]
        rows = weight.permute(0, 2, 3, 1)  # (O, kh, kw, C): a view of a channels_last weight
        matrix_t = weight.new_empty((hw, o, hw, c))
        for q, p, i, j in pairs:
            matrix_t[p, :, q] = rows[:, i, j]
        matrix_t = matrix_t.view(hw * o, hw * c)
        ctx.save_for_backward(x2d, matrix_t)
        ctx.geometry = (pairs, hw, (weight.shape[2], weight.shape[3], c, o),
                        weight.is_contiguous(memory_format=torch.channels_last))
        return x2d @ matrix_t.t()  # (B, H*W*O): channels-last pixels

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x2d, matrix_t = ctx.saved_tensors
        pairs, hw, tap_shape, weight_cl = ctx.geometry
        grad_x = grad @ matrix_t if ctx.needs_input_grad[0] else None
        grad_taps = None
        if ctx.needs_input_grad[1]:
            kh, kw, c, o = tap_shape
            b = x2d.shape[0]
            x3, g3 = x2d.view(b, hw, c), grad.view(b, hw, o)
            by_tap: dict[tuple[int, int], list[tuple[int, int]]] = {}
            for q, p, i, j in pairs:
                by_tap.setdefault((i, j), []).append((q, p))
            # taps that join no pixel pair (all but the centre on a 1x1 map) get no gradient
            grad_taps = (grad.new_empty if len(by_tap) == kh * kw else grad.new_zeros)((kh, kw, o, c))
            for (i, j), qp in by_tap.items():  # a tap's gradient sums x_q^T grad_p over the pixel pairs it joins:
                qs, ps = zip(*qp)              # one matmul over the stacked pairs (no block-by-block adds)
                xs = x3[:, list(qs)].reshape(b * len(qs), c)
                gs = g3[:, list(ps)].reshape(b * len(ps), o)
                torch.mm(gs.t(), xs, out=grad_taps[i, j])
            # (kh, kw, O, C) -> (O, C, kh, kw) in the weight's own memory format (a channels_last
            # model's weights are channels_last), so accumulating it into .grad is a plain add
            fmt = torch.channels_last if weight_cl else torch.contiguous_format
            grad_taps = grad_taps.permute(2, 3, 0, 1).contiguous(memory_format=fmt)
        return grad_x, grad_taps, None, None


def gemm_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: tuple[int, int], padding: tuple[int, int], covering: bool | None = None,
                native: bool = True, pixel_pairs: bool = False) -> torch.Tensor:
    """``F.conv2d`` (groups=1, dilation=1, zero padding) as im2col + one matmul.

    x (B, C, H, W) -> (B, O, H_out, W_out) with channels_last strides. Under CPU autocast the
    input and weight are cast first, so the patch matrix is built in the low-precision dtype.
    Where the patch matrix is built in Python (``native=False``, for comparisons, or where
    ``nhwc_ops.cpp`` does not apply), a stride-1 convolution whose every window covers the whole
    map runs as ``CoveringConv`` instead (``covering=True`` or ``False`` forces either, for comparisons).
    With ``pixel_pairs`` (``use_pixel_pair_convs``: bf16 on CPUs with AMX-BF16, a square kernel,
    stride and padding, channels in multiples of 32), the convolution runs as ``PixelPairConv``:
    ``amx_conv.cpp``'s tiles multiply only the pixel pairs each tap joins, forward and backward.
    """
    if torch.is_autocast_enabled("cpu") and x.device.type == "cpu":
        dtype = torch.get_autocast_dtype("cpu")
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    b, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    nhwc = x.permute(0, 2, 3, 1)
    if pixel_pairs and _pixel_pairs_apply(x, weight, stride, padding):
        ho, wo = (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1
        out = PixelPairConv.apply(nhwc.reshape(b, h * w, c).contiguous(), weight.contiguous(memory_format=torch.channels_last),
                                  h, w, stride[0], padding[0]).view(b * ho * wo, o)
    else:
        # With the C++ im2col, a 2x2 map's im2col + matmul (2.25x the multiply-adds, no matrix
        # assembly, no per-tap gradients) runs as fast as CoveringConv: ResNet-18's step, 25
        # alternating steps, 747 vs 732 img/s (session 10; the probe's per-conv times went either way
        # between runs). The simpler path wins that tie; CoveringConv runs on the Python path, where
        # it is faster.
        in_cpp = native and _native_ops(nhwc) is not None  # im2col and col2im run nhwc_ops.cpp
        pairs = covering_pairs(h, w, (kh, kw), stride, padding) if covering or (covering is None and not in_cpp) else None
        if pairs is not None:  # (B, H*W*C) @ (H*W*C, H*W*O): the output pixels come out channels-last
            ho, wo = h, w
            out = CoveringConv.apply(nhwc.reshape(b, h * w * c), weight, pairs, h * w).view(b * h * w, o)
        else:
            patches = Im2col.apply(nhwc, (kh, kw), stride, padding, native)  # (B, Ho, Wo, kh*kw*C)
            ho, wo = patches.shape[1:3]
            # (O, kh, kw, C) -> (O, kh*kw*C): a view of a channels_last weight (which a channels_last
            # model has), so no copy forward and a gradient in the weight's own layout back
            matrix = weight.permute(0, 2, 3, 1).reshape(o, kh * kw * c)
            out = PatchMatmul.apply(patches.reshape(b * ho * wo, kh * kw * c), matrix, native)  # (B*Ho*Wo, O)
    if bias is not None:
        out = out + bias
    return out.view(b, ho, wo, o).permute(0, 3, 1, 2)  # (B, Ho, Wo, O) -> (B, O, Ho, Wo), channels_last


def _pixel_pairs_apply(x: torch.Tensor, weight: torch.Tensor, stride, padding) -> bool:
    """Whether ``amx_conv.cpp``'s pixel-pair kernels take this convolution: bf16 CPU tensors, a
    square kernel, stride and padding, channels in multiples of 32, the kernels loaded."""
    o, c, kh, kw = weight.shape
    return (x.device.type == "cpu" and x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16 and kh == kw
            and stride[0] == stride[1] and padding[0] == padding[1] and c % 32 == 0 and o % 32 == 0
            and AMX_CONV.module is not None)


class PixelPairConv(torch.autograd.Function):
    """A convolution on a small map from the pixel pairs its taps join (``amx_conv.cpp``): x (B, H*W, C)
    bf16 and a channels_last (O, C, k, k) weight -> (B, Ho*Wo, O). The forward pass, the input
    gradient and the weight gradient each sum, per output tile, the products of every (input pixel,
    output pixel) pair a tap joins inside the map in fp32 AMX tiles and round once: the padding taps
    are never multiplied (100 of layer3's 144 taps x pixels at 64 px remain), no patch matrix is built
    and only x is kept for the backward pass. Replaces im2col + matmul (and, on 2x2 maps, the
    ``CoveringConv`` matrix) wherever the kernels run.

    Batch 128, bf16, caches flushed, medians of 15-21 alternating calls (session 22, scratch),
    forward / input gradient: layer3's 256 -> 256 at 4x4, im2col + matmul 2.07 / 1.79 ms -> 1.18 /
    1.09; layer4's 512 -> 512 at 2x2, ``CoveringConv`` 1.99 / 1.39 -> 0.87 / 1.56; weight gradient
    (session 21): 256 -> 256 2.85 -> 1.59, strided 128 -> 256 1.46 -> 1.15. ResNet-18's model-only
    step against im2col / ``CoveringConv`` with the same AMX weight gradient: +7.4% (paired medians
    of 31 alternating steps, 987 -> 1,062 img/s)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, h: int, w: int, stride: int, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry = (h, w, stride, padding)
        return AMX_CONV.module.small_map_forward(x, weight, h, w, stride, padding)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        h, w, stride, padding = ctx.geometry
        grad = grad.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = AMX_CONV.module.small_map_input_grad(grad, weight, h, w, stride, padding)
        if ctx.needs_input_grad[1]:  # (O, C, k, k), channels_last
            grad_w = AMX_CONV.module.small_map_weight_grad(x, grad, h, w, weight.shape[-1], stride, padding)
        return grad_x, grad_w, None, None, None, None


class GemmConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` computed by ``gemm_conv2d``: same parameters, same state_dict."""

    native_im2col = True
    """Build patch matrices with ``nhwc_ops.cpp`` where it applies (False: the Python path, for comparisons)."""

    pixel_pairs = False
    """Run as ``PixelPairConv`` on ``amx_conv.cpp``'s tiles (``use_pixel_pair_convs`` sets it where the
    kernels run)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return gemm_conv2d(input, weight, bias, self.stride, self.padding, native=self.native_im2col,
                           pixel_pairs=self.pixel_pairs)


def _eligible(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.groups == 1 and conv.dilation == (1, 1)
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def map_sizes(model: nn.Module, example: torch.Tensor, modules: list[nn.Module]) -> dict[nn.Module, tuple]:
    """((H_in, W_in), (H_out, W_out)) of each of ``modules`` that runs on ``example`` (one eval forward)."""
    sizes: dict[nn.Module, tuple] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out: sizes.__setitem__(mod, (tuple(inp[0].shape[-2:]),
                                                                                     tuple(out.shape[-2:]))))
             for m in modules]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return sizes


def output_areas(model: nn.Module, example: torch.Tensor) -> dict[nn.Conv2d, int]:
    """H_out * W_out of every plain ``nn.Conv2d`` that runs on ``example`` (one eval forward)."""
    sizes = map_sizes(model, example, [m for m in model.modules() if _eligible(m)])
    return {conv: out[0] * out[1] for conv, (_, out) in sizes.items()}


def use_gemm_convs(model: nn.Module, example: torch.Tensor, max_area: int) -> int:
    """Switch the convolutions whose output has at most ``max_area`` pixels to ``GemmConv2d``
    (in place; parameters untouched). ``example`` is one input of the training size. Returns how
    many were switched."""
    switched = 0
    for conv, area in output_areas(model, example).items():
        if area <= max_area:
            conv.__class__ = GemmConv2d
            switched += 1
    if switched:
        NHWC_OPS.load()  # compile the im2col kernels now, not inside the first training step
    return switched


def use_pixel_pair_convs(model: nn.Module) -> int:
    """Let the ``GemmConv2d`` layers of ``model`` run as ``PixelPairConv`` where ``amx_conv.cpp`` runs
    here (bf16 training on CPUs with AMX-BF16; ``gemm_conv2d`` checks dtype per call): those with a
    square kernel, stride and padding and channels in multiples of 32. Returns how many."""
    convs = [m for m in model.modules() if isinstance(m, GemmConv2d)]
    if not convs or load_amx() is not None:
        return 0
    switched = 0
    for conv in convs:
        if (conv.in_channels % 32 == 0 and conv.out_channels % 32 == 0 and conv.kernel_size[0] == conv.kernel_size[1]
                and conv.stride[0] == conv.stride[1] and conv.padding[0] == conv.padding[1]):
            conv.pixel_pairs = True
            switched += 1
    return switched
