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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("im2col", &im2col, "(N, H, W, C) -> (N, Ho, Wo, kh*kw*C) patches, zero padding");
  module.def("col2im", &col2im, "the adjoint of im2col: patch gradients summed onto their input pixels");
  module.def("max_pool_forward", &max_pool_forward, "(N, H, W, C) max pooling -> (channels_last values, uint8 taps)");
  module.def("max_pool_backward", &max_pool_backward, "gradient of max_pool_forward");
  module.def("transpose2d", &transpose2d, "(R, C) -> (C, R), contiguous");
}
