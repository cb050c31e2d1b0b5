// Patch extraction (im2col), its adjoint (col2im) and max pooling on channels_last activations, on the CPU.
//
// A channels_last (N, C, H, W) tensor is a contiguous (N, H, W, C) array: a pixel's C channels lie
// next to each other, so every kernel here moves or reduces whole pixel rows of C values, which
// the compiler vectorises (-O3 -march=native). The backward kernels gather: each input pixel adds
// up the gradients of the windows that read it, in a fixed order, and writes itself once — no
// zero-filled buffer, no scatter races, and the same bits with any thread count.
//
// Why hand-written: gemm_conv.py built its patch matrices from k*k strided slices joined by
// torch.cat, and their gradient by k*k strided add_ calls into a zero-filled padded buffer: on
// ResNet-18 at 64 px (batch 128, bf16) that was 18 ms of a 180 ms training step for the 4x4-map
// convolutions alone. torch's max_pool2d on channels_last bf16 took 6.4 ms forward and 7.2 ms
// backward (3 ms of it zero-filling the input gradient) for the ResNet stem's (128, 64, 32, 32)
// map, several times a pass over the tensor. (torch 2.14, 2-core AMX Xeon, torch.profiler.)
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "bf16.h"
#include "window.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

// (N, H, W, C) contiguous, float or bf16.
void check_nhwc(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4 && t.is_contiguous(), name, ": expected a contiguous (N, H, W, C) tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, name,
              ": expected float32 or bfloat16, got ", t.scalar_type());
}

template <typename F>
void dispatch(const at::Tensor& t, F f) {
  if (t.scalar_type() == at::kFloat) f(static_cast<float*>(nullptr));
  else f(static_cast<uint16_t*>(nullptr));
}

template <typename T>
T* data_of(const at::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }

// The backward kernels' gather (window.h) writing each pixel's sum as it is: out (N, H, W, C).
template <typename T, typename Add>
void gather_rows(const Window& g, T* out, Add add) {
  const int64_t c = g.c;
  gather_pixels(g, add, [out, c](int64_t pixel, const float* __restrict a) {
    T* __restrict dst = out + pixel * c;
    for (int64_t k = 0; k < c; ++k) dst[k] = store_value<T>(a[k]);
  });
}

}  // namespace

// x (N, H, W, C) -> patches (N, Ho, Wo, kh * kw * C) in (kh, kw, C) order; taps in the padding are 0.
at::Tensor im2col(const at::Tensor& x, std::vector<int64_t> kernel, std::vector<int64_t> stride,
                  std::vector<int64_t> padding) {
  check_nhwc(x, "x");
  const Window g(x.size(0), x.size(1), x.size(2), x.size(3), kernel, stride, padding);
  auto patches = at::empty({g.n, g.ho, g.wo, g.kh * g.kw * g.c}, x.options());
  const int64_t row = g.c * x.element_size();  // bytes of one pixel
  const char* src = static_cast<const char*>(x.data_ptr());
  char* dst_all = static_cast<char*>(patches.data_ptr());
  at::parallel_for(0, g.n * g.ho, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / g.ho, oy = r % g.ho;
      char* dst = dst_all + r * g.wo * g.kh * g.kw * row;
      for (int64_t ox = 0; ox < g.wo; ++ox) {
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t y = oy * g.sh - g.ph + i;
          for (int64_t j = 0; j < g.kw; ++j, dst += row) {
            const int64_t xx = ox * g.sw - g.pw + j;
            if (y < 0 || y >= g.h || xx < 0 || xx >= g.w) std::memset(dst, 0, row);
            else std::memcpy(dst, src + ((b * g.h + y) * g.w + xx) * row, row);
          }
        }
      }
    }
  });
  return patches;
}

// The adjoint of im2col: grad_patches (N, Ho, Wo, kh * kw * C) -> grad_x (N, H, W, C); each input
// pixel sums, in fp32, the taps that read it.
at::Tensor col2im(const at::Tensor& grad_patches, int64_t h, int64_t w, std::vector<int64_t> kernel,
                  std::vector<int64_t> stride, std::vector<int64_t> padding) {
  check_nhwc(grad_patches, "grad_patches");
  const int64_t n = grad_patches.size(0);
  TORCH_CHECK(kernel.size() == 2 && grad_patches.size(3) % (kernel[0] * kernel[1]) == 0,
              "grad_patches: the last dimension is not kh * kw * C");
  const Window g(n, h, w, grad_patches.size(3) / (kernel[0] * kernel[1]), kernel, stride, padding);
  TORCH_CHECK(grad_patches.size(1) == g.ho && grad_patches.size(2) == g.wo, "grad_patches: expected a ",
              g.ho, "x", g.wo, " output map for a ", h, "x", w, " input");
  auto grad_x = at::empty({n, h, w, g.c}, grad_patches.options());
  dispatch(grad_patches, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* gp = data_of<T>(grad_patches);
    const int64_t c = g.c, taps = g.kh * g.kw;
    gather_rows(g, data_of<T>(grad_x), [gp, c, taps](float* __restrict a, int64_t pos, int64_t tap) {
      const int64_t n = c;  // a local, loop-invariant bound
      const T* __restrict src = gp + (pos * taps + tap) * n;
      for (int64_t k = 0; k < n; ++k) a[k] += load_value(src[k]);
    });
  });
  return grad_x;
}

// x (N, H, W, C) -> (y, taps): the window maxima as a fresh channels_last (N, C, Ho, Wo) tensor (its
// memory is (N, Ho, Wo, C); a permuted view returned to autograd would turn an in-place op after it
// into a slow view replay, as fused_bn.py found) and which tap held each, (N, Ho, Wo, C) uint8.
// As torch: padding never wins, the first maximum wins ties, and a NaN wins.
std::vector<at::Tensor> max_pool_forward(const at::Tensor& x, std::vector<int64_t> kernel, std::vector<int64_t> stride,
                                         std::vector<int64_t> padding) {
  check_nhwc(x, "x");
  const Window g(x.size(0), x.size(1), x.size(2), x.size(3), kernel, stride, padding);
  g.check_poolable();
  auto y = at::empty({g.n, g.c, g.ho, g.wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  auto taps = at::empty({g.n, g.ho, g.wo, g.c}, x.options().dtype(at::kByte));
  const int64_t c = g.c, wo = g.wo;
  dispatch(x, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    T* yp = data_of<T>(y);
    uint8_t* tp = taps.data_ptr<uint8_t>();
    window_winners(g, data_of<T>(x), [](int64_t, T v) { return load_value(v); },
                   [&](int64_t r, int64_t ox, const float* __restrict m, const float* __restrict arg) {
      const int64_t n = c;  // a local bound: with c read through the closure the loop ran scalar
      T* __restrict dst = yp + (r * wo + ox) * n;
      uint8_t* __restrict dst_tap = tp + (r * wo + ox) * n;
      for (int64_t k = 0; k < n; ++k) {
        dst[k] = store_value<T>(m[k]);
        dst_tap[k] = static_cast<uint8_t>(arg[k]);
      }
    });
  });
  return {y, taps};
}

// grad_y (N, Ho, Wo, C) and the forward's taps -> grad_x (N, H, W, C): each input pixel sums the
// gradients of the windows whose maximum it was.
at::Tensor max_pool_backward(const at::Tensor& grad_y, const at::Tensor& taps, int64_t h, int64_t w,
                             std::vector<int64_t> kernel, std::vector<int64_t> stride, std::vector<int64_t> padding) {
  check_nhwc(grad_y, "grad_y");
  const Window g(grad_y.size(0), h, w, grad_y.size(3), kernel, stride, padding);
  TORCH_CHECK(grad_y.size(1) == g.ho && grad_y.size(2) == g.wo, "grad_y: expected a ", g.ho, "x", g.wo, " map");
  TORCH_CHECK(taps.scalar_type() == at::kByte && taps.sizes() == grad_y.sizes() && taps.is_contiguous(),
              "taps: expected the forward's uint8 taps, shaped as grad_y");
  auto grad_x = at::empty({g.n, h, w, g.c}, grad_y.options());
  dispatch(grad_y, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* gp = data_of<T>(grad_y);
    const uint8_t* tp = taps.data_ptr<uint8_t>();
    const int64_t c = g.c;
    gather_rows(g, data_of<T>(grad_x), [gp, tp, c](float* __restrict a, int64_t pos, int64_t tap) {
      const int64_t n = c;  // a local, loop-invariant bound
      const T* __restrict src = gp + pos * n;
      const uint8_t* __restrict arg = tp + pos * n;
      const uint8_t t = static_cast<uint8_t>(tap);
      for (int64_t k = 0; k < n; ++k) a[k] += arg[k] == t ? load_value(src[k]) : 0.f;
    });
  });
  return grad_x;
}

// x (R, C) -> its transpose (C, R), contiguous, float or bf16. Why hand-written: torch's copy of a
// transposed bf16 view took 0.38 ms for ResNet-18's (2048, 256) layer3 gradient here, a third of
// the matmul it feeds (gemm_conv.py: the weight gradient as a plain (O, M) @ (M, K) product).
// Square tiles keep both the rows read and the rows written in L1.
at::Tensor transpose2d(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x: expected a contiguous 2-d tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "x: expected float32 or bfloat16, got ", x.scalar_type());
  const int64_t rows = x.size(0), cols = x.size(1);
  auto out = at::empty({cols, rows}, x.options());
  constexpr int64_t kTile = 32;
  dispatch(x, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* src = data_of<T>(x);
    T* dst = data_of<T>(out);
    at::parallel_for(0, (cols + kTile - 1) / kTile, 1, [&](int64_t begin, int64_t end) {
      for (int64_t j0 = begin * kTile; j0 < std::min(cols, end * kTile); j0 += kTile) {
        const int64_t j1 = std::min(cols, j0 + kTile);
        for (int64_t i0 = 0; i0 < rows; i0 += kTile) {
          const int64_t i1 = std::min(rows, i0 + kTile);
          for (int64_t j = j0; j < j1; ++j)
            for (int64_t i = i0; i < i1; ++i) dst[j * rows + i] = src[i * cols + j];
        }
      }
    });
  });
  return out;
}

// A batch of uint8 images (B, H, W, C) -> float32 (B, H, W, C), augmented and normalised in one pass: per
// sample i, output pixel (r, c) is pixel (reflect(r' + dy[i] - p), reflect(c' + dx[i] - p)) of image i, with
// r' = H - 1 - r where vflip[i] (else r) and c' = W - 1 - c where hflip[i] (else c), reflect() mirroring
// about the first and last row or column without repeating it (torch's "reflect" padding); then
// v * scale + shift with the (H * W * C) patterns in that memory order, a product then a sum, each
// rounded, as torch.addcmul(shift, v, scale) on float32 rounds them. The random crop (pad p) and flips
// of augment.PixelMoves, uint8 -> float and BatchPipeline's normalisation, which took four passes and a
// Python loop over the samples (2.6 ms of a ResNet-18 step at batch 128 here, session 23).
at::Tensor move_normalize(const at::Tensor& x, int64_t p, const at::Tensor& dy, const at::Tensor& dx,
                          const at::Tensor& hflip, const at::Tensor& vflip, const at::Tensor& scale,
                          const at::Tensor& shift) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous() && x.scalar_type() == at::kByte,
              "x: expected a contiguous uint8 (B, H, W, C) tensor");
  const int64_t b = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3), row = w * c;
  TORCH_CHECK(p >= 0 && p < h && p < w, "padding ", p, ": expected 0 <= padding < ", std::min(h, w));
  for (const auto* t : {&dy, &dx})
    TORCH_CHECK(t->dim() == 1 && t->size(0) == b && t->scalar_type() == at::kLong && t->is_contiguous(),
                "dy, dx: expected contiguous int64 tensors of ", b, " offsets");
  for (const auto* t : {&hflip, &vflip})
    TORCH_CHECK(t->dim() == 1 && t->size(0) == b && t->scalar_type() == at::kBool && t->is_contiguous(),
                "hflip, vflip: expected contiguous bool tensors of ", b, " flags");
  for (const auto* t : {&scale, &shift})
    TORCH_CHECK(t->dim() == 1 && t->numel() == h * row && t->scalar_type() == at::kFloat && t->is_contiguous(),
                "scale, shift: expected contiguous float32 patterns of ", h * row, " values");
  const int64_t* oy = dy.data_ptr<int64_t>();
  const int64_t* ox = dx.data_ptr<int64_t>();
  const bool* fh = hflip.data_ptr<bool>();
  const bool* fv = vflip.data_ptr<bool>();
  for (int64_t i = 0; i < b; ++i)
    TORCH_CHECK(oy[i] >= 0 && oy[i] <= 2 * p && ox[i] >= 0 && ox[i] <= 2 * p, "dy, dx: expected offsets in [0, ",
                2 * p, "], got ", oy[i], ", ", ox[i]);
  auto out = at::empty({b, h, w, c}, x.options().dtype(at::kFloat));
  const uint8_t* xp = x.data_ptr<uint8_t>();
  const float* sp = scale.data_ptr<float>();
  const float* hp = shift.data_ptr<float>();
  float* op = out.data_ptr<float>();
  auto reflect = [](int64_t i, int64_t n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); };
  at::parallel_for(0, b * h, 16, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> moved(row);
    for (int64_t q = begin; q < end; ++q) {
      const int64_t i = q / h, r = q % h;
      const int64_t y = reflect((fv[i] ? h - 1 - r : r) + oy[i] - p, h);
      const uint8_t* src = xp + (i * h + y) * row;
      uint8_t* __restrict mv = moved.data();
      const int64_t s = ox[i] - p;
      auto copy_pixels = [&](int64_t from, int64_t to, auto column) {  // output columns [from, to), C bytes each
        for (int64_t col = from; col < to; ++col) {
          const uint8_t* px = src + reflect(column(col) + s, w) * c;
          for (int64_t ch = 0; ch < c; ++ch) mv[col * c + ch] = px[ch];
        }
      };
      if (fh[i]) {
        copy_pixels(0, w, [w](int64_t col) { return w - 1 - col; });
      } else {  // output columns [a, e) read the image's columns [a + s, e + s): one copy; the rest reflect
        const int64_t a = std::max<int64_t>(0, -s), e = std::min(w, w - s);
        std::memcpy(mv + a * c, src + (a + s) * c, (e - a) * c);
        copy_pixels(0, a, [](int64_t col) { return col; });
        copy_pixels(e, w, [](int64_t col) { return col; });
      }
      const int64_t n = row;  // locals: the loop vectorises
      const uint8_t* __restrict m = moved.data();
      const float* __restrict sc = sp + r * row;
      const float* __restrict sh = hp + r * row;
      float* __restrict o = op + q * row;
      for (int64_t k = 0; k < n; ++k) {
        const float product = static_cast<float>(m[k]) * sc[k];
        o[k] = product + sh[k];
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("im2col", &im2col, "(N, H, W, C) -> (N, Ho, Wo, kh*kw*C) patches, zero padding");
  module.def("col2im", &col2im, "the adjoint of im2col: patch gradients summed onto their input pixels");
  module.def("max_pool_forward", &max_pool_forward, "(N, H, W, C) max pooling -> (channels_last values, uint8 taps)");
  module.def("max_pool_backward", &max_pool_backward, "gradient of max_pool_forward");
  module.def("transpose2d", &transpose2d, "(R, C) -> (C, R), contiguous");
  module.def("move_normalize", &move_normalize,
             "uint8 (B, H, W, C), padding, dy, dx, hflip, vflip, scale, shift -> float32 (B, H, W, C), cropped, flipped, normalised");
}
