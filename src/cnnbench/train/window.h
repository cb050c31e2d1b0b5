// The window geometry shared by the channels_last kernels (nhwc_ops.cpp: im2col, max pooling;
// fused_bn.cpp: the ResNet stem's batch norm + ReLU + max pool).
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <utility>
#include <vector>

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

// visit(pixel, tap) for each pixel of image b that output pixel (oy, ox)'s window reads, in tap order
// (kernel row, then column; padding skipped), pixel = (b * H + y) * W + x, tap = i * kw + j.
template <typename Visit>
inline void window_pixels(const Window& g, int64_t b, int64_t oy, int64_t ox, Visit visit) {
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t yy = oy * g.sh - g.ph + i;
    if (yy < 0 || yy >= g.h) continue;
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t xx = ox * g.sw - g.pw + j;
      if (xx < 0 || xx >= g.w) continue;
      visit((b * g.h + yy) * g.w + xx, i * g.kw + j);
    }
  }
}

// Every window's winner over an (N, H, W, C) map of T: for each output pixel and channel k, the tap
// whose key(k, value) is largest, visited in tap order (kernel row, then column): the first maximum
// wins ties, a NaN key wins, padding never does. Then done(r, ox, keys, taps) for output pixel (r / ho,
// r % ho, ox), keys and taps as float rows of C. Float rows for both: loops over same-width values
// vectorise (with a uint8 tap row beside the float maximum, gcc's loop ran scalar: 33 ms against
// torch's 2.3 for the ResNet stem's pool).
template <typename T, typename Key, typename Done>
void window_winners(const Window& g, const T* xp, Key key, Done done) {
  const int64_t c = g.c, wo = g.wo;  // locals: the channel loops vectorise on them
  at::parallel_for(0, g.n * g.ho, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> best(c), which(c);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / g.ho, oy = r % g.ho;
      for (int64_t ox = 0; ox < wo; ++ox) {
        float* __restrict m = best.data();
        float* __restrict arg = which.data();
        bool first = true;
        window_pixels(g, b, oy, ox, [&](int64_t pixel, int64_t t) {
          const T* __restrict src = xp + pixel * c;
          const float tap = static_cast<float>(t);
          if (first) {  // the first pixel inside the map (padding at most half the kernel: one exists)
            for (int64_t k = 0; k < c; ++k) { m[k] = key(k, src[k]); arg[k] = tap; }
            first = false;
            return;
          }
          for (int64_t k = 0; k < c; ++k) {
            const float v = key(k, src[k]);
            const bool win = v > m[k] || v != v;
            m[k] = win ? v : m[k];
            arg[k] = win ? tap : arg[k];
          }
        });
        done(r, ox, m, arg);
      }
    }
  });
}

// The backward kernels' gather: each pixel of an (N, H, W, C) map sums, in fp32 and in tap order, one
// row of C values per window that reads it (add(acc, pos, tap) adds the row of output pixel pos), then
// finish(pixel, acc) writes it once (pixel = (b * H + y) * W + x). No zero-filled buffer, no scatter
// races, and the same bits with any thread count. The sizes are copied into locals (and the callers'
// closures copy theirs) so that the channel loops have loop-invariant bounds the compiler vectorises
// on. (Timing these kernels, interleave runs: a fresh 16.8 MB output can cost more in page faults than
// the kernel itself, and the stem's pool backward read 2.1 or 5.1 ms from one run to the next that way.)
template <typename Add, typename Finish>
void gather_pixels(const Window& g, Add add, Finish finish) {
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
        finish(r * w + x, a);
      }
    }
  });
}
