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

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

// An (N, H, W, C) input read through a kh x kw window with stride (sh, sw) and zero padding (ph, pw).
struct Window {
  int64_t n, h, w, c, kh, kw, sh, sw, ph, pw, ho, wo;

  Window(int64_t n, int64_t h, int64_t w, int64_t c, std::vector<int64_t> k, std::vector<int64_t> s,
         std::vector<int64_t> p)
      : n(n), h(h), w(w), c(c) {
    TORCH_CHECK(k.size() == 2 && s.size() == 2 && p.size() == 2, "kernel, stride and padding: expected two values each");
    kh = k[0], kw = k[1], sh = s[0], sw = s[1], ph = p[0], pw = p[1];
    TORCH_CHECK(kh > 0 && kw > 0 && sh > 0 && sw > 0 && ph >= 0 && pw >= 0, "kernel and stride > 0, padding >= 0");
    ho = (h + 2 * ph - kh) / sh + 1;
    wo = (w + 2 * pw - kw) / sw + 1;
    TORCH_CHECK(ho > 0 && wo > 0, "the window does not fit the ", h, "x", w, " map");
  }

  // For max pooling: at most 256 taps (a uint8 names the winner) and padding at most half the
  // kernel (every window holds a pixel of the map), as torch requires.
  void check_poolable() const {
    TORCH_CHECK(kh * kw <= 256, "max pooling: at most 256 taps per window");
    TORCH_CHECK(ph * 2 <= kh && pw * 2 <= kw, "max pooling: padding at most half the kernel");
  }

  // The input pixel (y, x) is read by output row oy through kernel row i when y = oy * sh - ph + i.
  // readers(y_axis) lists, for each input row (or column), the (output row, kernel row) pairs that
  // read it, in kernel-row order: computed once per call, so the gathers below do no division per
  // tap (the stem's pool backward did 9 integer divisions and modulos per pixel).
  std::vector<std::vector<std::pair<int64_t, int64_t>>> readers(bool y_axis) const {
    const int64_t size = y_axis ? h : w, k = y_axis ? kh : kw, s = y_axis ? sh : sw, p = y_axis ? ph : pw;
    const int64_t out = y_axis ? ho : wo;
    std::vector<std::vector<std::pair<int64_t, int64_t>>> table(size);
    for (int64_t y = 0; y < size; ++y)
      for (int64_t i = 0; i < k; ++i) {
        const int64_t ny = y + p - i;
        if (ny < 0 || ny % s || ny / s >= out) continue;
        table[y].emplace_back(ny / s, i);
      }
    return table;
  }
};

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

// The backward kernels: each pixel of out (N, H, W, C) sums, in fp32 and in tap order, one row of
// C values per window that reads it (add(acc, pos, tap) adds the row of output pixel pos), then is
// written once. The sizes are copied into locals (and the callers' closures copy theirs) so that
// the channel loops have loop-invariant bounds the compiler vectorises on. (Timing these kernels,
// interleave runs: a fresh 16.8 MB output can cost more in page faults than the kernel itself,
// and the stem's pool backward read 2.1 or 5.1 ms from one run to the next that way.)
template <typename T, typename Add>
void gather_rows(const Window& g, T* out, Add add) {
  const int64_t c = g.c, h = g.h, w = g.w, ho = g.ho, wo = g.wo, kw = g.kw;
  const auto rows = g.readers(true), cols = g.readers(false);
  at::parallel_for(0, g.n * h, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(c);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / h, y = r % h;
      for (int64_t x = 0; x < w; ++x) {
        float* __restrict a = acc.data();
        for (int64_t k = 0; k < c; ++k) a[k] = 0.f;
        for (const auto& [oy, i] : rows[y])  // tap order: kernel row, then column
          for (const auto& [ox, j] : cols[x]) add(a, (b * ho + oy) * wo + ox, i * kw + j);
        T* __restrict dst = out + (r * w + x) * c;
        for (int64_t k = 0; k < c; ++k) dst[k] = store_value<T>(a[k]);
      }
    }
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
  const int64_t c = g.c, h = g.h, w = g.w, wo = g.wo;  // locals: the loops vectorise on them
  dispatch(x, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* xp = data_of<T>(x);
    T* yp = data_of<T>(y);
    uint8_t* tp = taps.data_ptr<uint8_t>();
    at::parallel_for(0, g.n * g.ho, 1, [&](int64_t begin, int64_t end) {
      // the running maximum and its tap as two float rows: loops over same-width values vectorise
      // (with a uint8 tap row beside the float maximum, gcc's loop ran scalar: 33 ms against torch's 2.3)
      std::vector<float> best(c), which(c);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / g.ho, oy = r % g.ho;
        for (int64_t ox = 0; ox < wo; ++ox) {
          float* __restrict m = best.data();
          float* __restrict arg = which.data();
          bool first = true;
          for (int64_t i = 0; i < g.kh; ++i) {
            const int64_t yy = oy * g.sh - g.ph + i;
            if (yy < 0 || yy >= h) continue;
            for (int64_t j = 0; j < g.kw; ++j) {
              const int64_t xx = ox * g.sw - g.pw + j;
              if (xx < 0 || xx >= w) continue;
              const T* __restrict src = xp + ((b * h + yy) * w + xx) * c;
              const float tap = static_cast<float>(i * g.kw + j);
              if (first) {  // the first pixel inside the map (padding at most half the kernel: one exists)
                for (int64_t k = 0; k < c; ++k) { m[k] = load_value(src[k]); arg[k] = tap; }
                first = false;
                continue;
              }
              for (int64_t k = 0; k < c; ++k) {
                const float v = load_value(src[k]);
                const bool win = v > m[k] || v != v;
                m[k] = win ? v : m[k];
                arg[k] = win ? tap : arg[k];
              }
            }
          }
          T* __restrict dst = yp + (r * wo + ox) * c;
          uint8_t* __restrict dst_tap = tp + (r * wo + ox) * c;
          for (int64_t k = 0; k < c; ++k) {
            dst[k] = store_value<T>(m[k]);
            dst_tap[k] = static_cast<uint8_t>(arg[k]);
          }
        }
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
