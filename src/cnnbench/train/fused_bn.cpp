// Training-mode batch norm (+ residual add, + ReLU) on channels_last bf16 activations, on the CPU.
//
// A channels_last (N, C, H, W) tensor is a contiguous (M = N*H*W, C) matrix: every loop below runs
// over rows with the channels innermost, so the compiler vectorises it (-O3 -march=native) and the
// per-channel sums stay in a few registers. Rows are cut into fixed blocks whose partial sums are
// added in block order, so the result does not depend on the thread count (deterministic runs and
// exact resume stay exact).
//
// Why hand-written: ATen's channels_last bf16 batch norm took 13 ms forward for (128, 64, 32, 32)
// here, four times its own NCHW kernel (3.6 ms) and eight times a copy of the tensor (1.7 ms), and
// the ReLU and residual add after it are two more passes each way (see fused_bn.py for the
// measurements). torch.compile's code for the same BN + ReLU was 5x slower than eager on this CPU.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "bf16.h"
#include "window.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512BW__) && defined(__AVX512VL__)
#define CNNBENCH_AVX512 1
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlockRows = 256;  // rows per partial sum: fp32 sums of <= 256 values, then double

const uint16_t* bf16_data(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }
uint16_t* bf16_data_mut(at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

// A bf16 tensor whose memory is a row-major (rows, C) matrix: (N, C, H, W) in channels_last, or (M, C).
// Outputs are allocated with empty_like, so they come back in the input's own shape and layout
// (fresh tensors, not views: an in-place ReLU after the batch norm then stays a plain in-place op).
int64_t channels_of(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16, name, ": expected bfloat16, got ", t.scalar_type());
  TORCH_CHECK((t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast)) || (t.dim() == 2 && t.is_contiguous()),
              name, ": expected a channels_last (N, C, H, W) or contiguous (M, C) tensor");
  return t.size(1);
}

// Same shape, and (by channels_of) the same row-major (rows, C) memory order. Strides are not compared:
// over a size-1 dimension they are arbitrary, so a (N, C, 1, 1) gradient viewed from an (N, C) matrix,
// strides (C, 1, 1, 1), lies in memory exactly as a channels_last conv output with strides (C, 1, C, C).
void check_like(const at::Tensor& t, const at::Tensor& x, const char* name) {
  channels_of(t, name);
  TORCH_CHECK(t.sizes() == x.sizes(), name, ": expected the shape of x");
}

// Two per-channel sums over all rows: row_sums(r, s1, s2) adds row r into its block's fp32 partials;
// blocks run in parallel, and their partials are added in block order, in double.
template <typename RowSums>
void per_channel_sums(int64_t m, int64_t c, RowSums row_sums, std::vector<double>& t1, std::vector<double>& t2) {
  const int64_t blocks = (m + kBlockRows - 1) / kBlockRows;
  std::vector<float> part1(blocks * c), part2(blocks * c);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      float* __restrict s1 = part1.data() + blk * c;
      float* __restrict s2 = part2.data() + blk * c;
      for (int64_t j = 0; j < c; ++j) s1[j] = s2[j] = 0.f;
      const int64_t r_end = std::min(m, (blk + 1) * kBlockRows);
      for (int64_t r = blk * kBlockRows; r < r_end; ++r) row_sums(r, s1, s2);
    }
  });
  t1.assign(c, 0.0);
  t2.assign(c, 0.0);
  for (int64_t blk = 0; blk < blocks; ++blk)
    for (int64_t j = 0; j < c; ++j) { t1[j] += part1[blk * c + j]; t2[j] += part2[blk * c + j]; }
}

// The batch statistics of x (M rows, C) bf16 and what normalising with them takes.
struct BatchStats {
  at::Tensor mean, var, invstd;     // (C) float32; var is the biased batch variance
  std::vector<float> scale, offset;  // x * scale + offset = (x - mean) * invstd * w + b
};

BatchStats batch_stats(const at::Tensor& x, int64_t c, int64_t m, const at::Tensor& weight, const at::Tensor& bias,
                       double eps) {
  auto w = weight.to(at::kFloat).contiguous(), b = bias.to(at::kFloat).contiguous();
  const uint16_t* xp = bf16_data(x);
  // Per-block sums of (x - shift) and its square, shift = the first row (a shifted single-pass
  // variance stays accurate when |mean| >> std, where E[x^2] - E[x]^2 would cancel).
  std::vector<float> shift(c);
  for (int64_t j = 0; j < c; ++j) shift[j] = bf16_to_float(xp[j]);
  const float* k = shift.data();
  std::vector<double> t1, t2;
  per_channel_sums(m, c, [&](int64_t r, float* __restrict s1, float* __restrict s2) {
    const uint16_t* __restrict row = xp + r * c;
    for (int64_t j = 0; j < c; ++j) {
      float d = bf16_to_float(row[j]) - k[j];
      s1[j] += d;
      s2[j] += d * d;
    }
  }, t1, t2);
  BatchStats st{at::empty({c}, x.options().dtype(at::kFloat)), at::empty({c}, x.options().dtype(at::kFloat)),
                at::empty({c}, x.options().dtype(at::kFloat)), std::vector<float>(c), std::vector<float>(c)};
  const float* wp = w.data_ptr<float>();
  const float* bp = b.data_ptr<float>();
  for (int64_t j = 0; j < c; ++j) {
    double mu = t1[j] / m, v = std::max(t2[j] / m - mu * mu, 0.0);
    double is = 1.0 / std::sqrt(v + eps);
    st.mean.data_ptr<float>()[j] = static_cast<float>(shift[j] + mu);
    st.var.data_ptr<float>()[j] = static_cast<float>(v);
    st.invstd.data_ptr<float>()[j] = static_cast<float>(is);
    st.scale[j] = static_cast<float>(wp[j] * is);
    st.offset[j] = static_cast<float>(bp[j] - (shift[j] + mu) * wp[j] * is);
  }
  return st;
}

// What the batch norm's backward takes from its two per-channel sums over m rows, t1 = sum(dz) and
// t2 = sum(dz * (x - mean)): grad_bias, grad_weight, and grad_x's coefficients k1, k2, k3 in
// grad_x = k1 * (dz - k2 - (x - mean) * k3) = w * invstd * (dz - mean(dz) - (x - mean) * invstd^2 * mean(dz * (x - mean))).
struct BackwardCoefficients {
  at::Tensor grad_weight, grad_bias;
  std::vector<float> k1, k2, k3;
};

BackwardCoefficients backward_coefficients(const std::vector<double>& t1, const std::vector<double>& t2,
                                           const at::Tensor& weight, const float* is, int64_t m, const at::Tensor& like) {
  const int64_t c = static_cast<int64_t>(t1.size());
  auto w = weight.to(at::kFloat).contiguous();
  const float* wp = w.data_ptr<float>();
  BackwardCoefficients k{at::empty({c}, like.options()), at::empty({c}, like.options()), std::vector<float>(c),
                         std::vector<float>(c), std::vector<float>(c)};
  for (int64_t j = 0; j < c; ++j) {
    k.grad_bias.data_ptr<float>()[j] = static_cast<float>(t1[j]);
    k.grad_weight.data_ptr<float>()[j] = static_cast<float>(t2[j] * is[j]);
    k.k1[j] = wp[j] * is[j];
    k.k2[j] = static_cast<float>(t1[j] / m);
    k.k3[j] = static_cast<float>(t2[j] / m * is[j] * is[j]);
  }
  return k;
}

// The normalised value before rounding: one explicit fused multiply-add, so that bn_relu_pool_forward,
// which normalises only each window's winner, gets bn_forward's bits (a bare x * a + o may or may not
// be contracted to an FMA, differently in each loop).
inline float normalised(float x, float scale, float offset) { return std::fma(x, scale, offset); }

}  // namespace

// x (M rows, C) bf16 -> (y, mean, invstd, var): y = [relu](x * w * invstd + (b - mean * w * invstd) [+ residual]);
// var is the biased batch variance (the caller turns it into the unbiased running estimate).
std::vector<at::Tensor> bn_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                   const c10::optional<at::Tensor>& residual, double eps, bool relu) {
  const int64_t c = channels_of(x, "x"), m = c ? x.numel() / c : 0;
  TORCH_CHECK(m > 0, "x: no rows");
  if (residual) check_like(*residual, x, "residual");
  const uint16_t* xp = bf16_data(x);
  const int64_t blocks = (m + kBlockRows - 1) / kBlockRows;
  BatchStats st = batch_stats(x, c, m, weight, bias, eps);
  const std::vector<float>& scale = st.scale;
  const std::vector<float>& offset = st.offset;

  // Pass 2: normalise, add, clamp.
  auto y = at::empty_like(x);
  uint16_t* yp = bf16_data_mut(y);
  const uint16_t* rp = residual ? bf16_data(*residual) : nullptr;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    const float* __restrict a = scale.data();
    const float* __restrict o = offset.data();
    for (int64_t r = begin * kBlockRows; r < std::min(m, end * kBlockRows); ++r) {
      const uint16_t* __restrict xr = xp + r * c;
      uint16_t* __restrict yr = yp + r * c;
      if (rp) {
        const uint16_t* __restrict rr = rp + r * c;
        for (int64_t j = 0; j < c; ++j) {
          float v = normalised(bf16_to_float(xr[j]), a[j], o[j]) + bf16_to_float(rr[j]);
          yr[j] = float_to_bf16(relu ? std::max(v, 0.f) : v);
        }
      } else {
        for (int64_t j = 0; j < c; ++j) {
          float v = normalised(bf16_to_float(xr[j]), a[j], o[j]);
          yr[j] = float_to_bf16(relu ? std::max(v, 0.f) : v);
        }
      }
    }
  });
  return {y, st.mean, st.invstd, st.var};
}

// Gradients of bn_forward: (grad_x, grad_weight, grad_bias). With relu the gradient passes where the
// saved output y > 0; the residual's gradient is that masked gradient itself (the caller's).
std::vector<at::Tensor> bn_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& y,
                                    const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& weight,
                                    bool relu, bool want_grad_z) {
  const int64_t c = channels_of(x, "x"), m = c ? x.numel() / c : 0;
  TORCH_CHECK(m > 0, "x: no rows");
  check_like(grad_y, x, "grad_y");
  if (relu) check_like(y, x, "y");
  const uint16_t* gp = bf16_data(grad_y);
  const uint16_t* xp = bf16_data(x);
  const uint16_t* yp = relu ? bf16_data(y) : nullptr;
  const float* mu = mean.data_ptr<float>();
  const float* is = invstd.data_ptr<float>();
  const int64_t blocks = (m + kBlockRows - 1) / kBlockRows;

  // Pass 1: sum(dz) and sum(dz * (x - mean)) per channel, dz = grad_y masked by the ReLU.
  std::vector<double> t1, t2;
  per_channel_sums(m, c, [&](int64_t r, float* __restrict s1, float* __restrict s2) {
    const uint16_t* __restrict gr = gp + r * c;
    const uint16_t* __restrict xr = xp + r * c;
    const uint16_t* __restrict yr = yp ? yp + r * c : nullptr;
    for (int64_t j = 0; j < c; ++j) {
      float dz = bf16_to_float(gr[j]);
      if (yr) dz = bf16_to_float(yr[j]) > 0.f ? dz : 0.f;
      s1[j] += dz;
      s2[j] += dz * (bf16_to_float(xr[j]) - mu[j]);
    }
  }, t1, t2);
  BackwardCoefficients k = backward_coefficients(t1, t2, weight, is, m, mean);

  // Pass 2: grad_x (and the masked gradient for a residual input).
  auto grad_x = at::empty_like(x);
  at::Tensor grad_z = want_grad_z ? at::empty_like(x) : at::Tensor();
  uint16_t* dxp = bf16_data_mut(grad_x);
  uint16_t* dzp = want_grad_z ? bf16_data_mut(grad_z) : nullptr;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    const float* __restrict a = k.k1.data();
    const float* __restrict md = k.k2.data();
    const float* __restrict q = k.k3.data();
    for (int64_t r = begin * kBlockRows; r < std::min(m, end * kBlockRows); ++r) {
      const uint16_t* __restrict gr = gp + r * c;
      const uint16_t* __restrict xr = xp + r * c;
      const uint16_t* __restrict yr = yp ? yp + r * c : nullptr;
      uint16_t* __restrict dxr = dxp + r * c;
      for (int64_t j = 0; j < c; ++j) {
        float dz = bf16_to_float(gr[j]);
        if (yr) dz = bf16_to_float(yr[j]) > 0.f ? dz : 0.f;
        dxr[j] = float_to_bf16(a[j] * (dz - md[j] - (bf16_to_float(xr[j]) - mu[j]) * q[j]));
      }
      if (dzp) {
        uint16_t* __restrict dzr = dzp + r * c;
        for (int64_t j = 0; j < c; ++j) dzr[j] = yr && !(bf16_to_float(yr[j]) > 0.f) ? static_cast<uint16_t>(0) : gr[j];
      }
    }
  });
  return {grad_x, k.grad_weight, k.grad_bias, grad_z};
}

#ifdef CNNBENCH_AVX512
namespace {

// The stem's pool on bf16 bits, 32 channels per vector, where C is a multiple of 32 (the float keys of
// window_winners take 16 channels per vector and two more conversions per tap: 2.5 of the stem's 3.3 ms
// forward at (128, 64, 32, 32), session 23). A bf16 value's key is a 16-bit integer that orders as the
// float does: v for v >= 0, -(v & 0x7FFF) for v < 0, so -0 ties +0 as in float; a NaN gets the largest key
// and always wins (the last NaN of a window, as window_winners' `v != v`). flip (0x8000 where a channel's
// scale is negative) negates x first: those channels pool the minimum. flat (0xFFFF where a channel's
// scale is 0) keys every value 0 but +-inf and NaN, which win: float's 0 * x. Per output pixel, win gets
// the winner's x bits and tap its tap, then done(r, ox) as window_winners' done. (Denormal x order by
// value here, where float keys tie them with zero once the CPU flushes denormals, as training does: the
// taps of such a window may differ, never its output.)
template <typename Done>
void bf16_window_winners(const Window& g, const uint16_t* xp, const uint16_t* flip, const uint16_t* flat,
                         uint16_t* win, uint8_t* tap, Done done) {
  const int64_t c = g.c, wo = g.wo;
  const __m512i magnitude = _mm512_set1_epi16(0x7FFF), inf = _mm512_set1_epi16(0x7F80), zero = _mm512_setzero_si512();
  at::parallel_for(0, g.n * g.ho, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / g.ho, oy = r % g.ho;
      for (int64_t ox = 0; ox < wo; ++ox) {
        uint16_t* wr = win + (r * wo + ox) * c;
        uint8_t* tr = tap + (r * wo + ox) * c;
        for (int64_t cb = 0; cb < c; cb += 32) {
          const __m512i sign = _mm512_loadu_si512(flip + cb), flats = _mm512_loadu_si512(flat + cb);
          const __mmask32 flat_lanes = _mm512_test_epi16_mask(flats, flats);
          __m512i best_key = zero, best_v = zero;
          __m256i best_tap = _mm256_setzero_si256();
          bool first = true;
          window_pixels(g, b, oy, ox, [&](int64_t pixel, int64_t tap_index) {
            const __m512i v = _mm512_xor_si512(_mm512_loadu_si512(xp + pixel * c + cb), sign);
            const __m512i a = _mm512_and_si512(v, magnitude);
            const __mmask32 nan = _mm512_cmpgt_epi16_mask(a, inf) | (flat_lanes & _mm512_cmpeq_epi16_mask(a, inf));
            __m512i key = _mm512_mask_sub_epi16(v, _mm512_movepi16_mask(v), zero, a);
            key = _mm512_mask_mov_epi16(_mm512_mask_mov_epi16(key, flat_lanes, zero), nan, magnitude);
            const __mmask32 wins = first ? ~__mmask32(0) : (_mm512_cmpgt_epi16_mask(key, best_key) | nan);
            first = false;
            best_key = _mm512_mask_mov_epi16(best_key, wins, key);
            best_v = _mm512_mask_mov_epi16(best_v, wins, v);
            best_tap = _mm256_mask_mov_epi8(best_tap, wins, _mm256_set1_epi8(static_cast<char>(tap_index)));
          });
          _mm512_storeu_si512(wr + cb, _mm512_xor_si512(best_v, sign));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(tr + cb), best_tap);
        }
        done(r, ox);
      }
    }
  });
}

// One input pixel's 32 channels from one window it is read by: acc (two vectors of 16 floats) adds the
// window's gradient g where the pixel won it (its tap is t) and the window's output y is > 0 (not -0, not
// NaN: the float compare of the scalar path).
inline void add_won_gradient(__m512 acc[2], const uint16_t* g, const uint16_t* y, const uint8_t* tap, uint8_t t) {
  const __mmask32 won = _mm256_cmpeq_epi8_mask(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(tap)),
                                               _mm256_set1_epi8(static_cast<char>(t)));
  const __m512i yv = _mm512_loadu_si512(y);
  const __mmask32 passed = won & _mm512_cmpgt_epi16_mask(yv, _mm512_setzero_si512()) &
                           _mm512_cmple_epi16_mask(yv, _mm512_set1_epi16(0x7F80));
  acc[0] = _mm512_mask_add_ps(acc[0], static_cast<__mmask16>(passed), acc[0], load_bf16x16(g));
  acc[1] = _mm512_mask_add_ps(acc[1], static_cast<__mmask16>(passed >> 16), acc[1], load_bf16x16(g + 16));
}

}  // namespace
#endif

// A ResNet stem's batch norm + ReLU + max pool, x (N, C, H, W) channels_last bf16 -> (y, taps, winners,
// mean, invstd, var): y the pooled output (N, C, Ho, Wo) channels_last, taps (N, Ho, Wo, C) uint8 which
// tap of each window won, winners (N, C, Ho, Wo) the winners' input values.
//
// The pool runs on x before normalising: relu(x * scale + offset) rounded to bf16 is non-decreasing in x
// where scale > 0 (non-increasing where scale < 0, constant where 0), so the window maximum of the
// normalised map is the normalised window maximum of x (minimum where scale < 0), and only the Ho x Wo
// winners are normalised, where bn_forward + max_pool_forward normalise and write the whole H x W map and
// read it back. The values are those two kernels' bits; the taps are too except where two pixels of a
// window differ in x but round to the same bf16 output: the two kernels pass the gradient to the first
// of them, this one to the larger x (the pixel that wins in float32). A NaN wins, as there.
std::vector<at::Tensor> bn_relu_pool_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                             double eps, std::vector<int64_t> kernel, std::vector<int64_t> stride,
                                             std::vector<int64_t> padding) {
  const int64_t c = channels_of(x, "x");
  TORCH_CHECK(x.dim() == 4, "x: expected a channels_last (N, C, H, W) tensor");
  const Window g(x.size(0), x.size(2), x.size(3), c, kernel, stride, padding);
  g.check_poolable();
  const int64_t m = g.n * g.h * g.w;
  TORCH_CHECK(m > 0, "x: no rows");
  BatchStats st = batch_stats(x, c, m, weight, bias, eps);
  // Each channel pools sign * x: x's maximum where scale > 0, its minimum where scale < 0 (sign * (sign *
  // x) = x gives the winner back); where scale is 0 every output is the same, the key is 0, the first
  // pixel wins, as in max_pool_forward, and its x is read back through its tap.
  std::vector<float> sign(c);
  std::vector<int64_t> flat;  // the channels whose scale is 0 (none, in a trained network)
  for (int64_t j = 0; j < c; ++j) {
    sign[j] = st.scale[j] > 0.f ? 1.f : (st.scale[j] < 0.f ? -1.f : 0.f);
    if (sign[j] == 0.f) flat.push_back(j);
  }

  const auto options = x.options().memory_format(at::MemoryFormat::ChannelsLast);
  auto y = at::empty({g.n, c, g.ho, g.wo}, options);
  auto winners = at::empty({g.n, c, g.ho, g.wo}, options);
  auto taps = at::empty({g.n, g.ho, g.wo, c}, x.options().dtype(at::kByte));
  const uint16_t* xp = bf16_data(x);
  uint16_t* yp = bf16_data_mut(y);
  uint16_t* wp = bf16_data_mut(winners);
  uint8_t* tp = taps.data_ptr<uint8_t>();
  const int64_t h = g.h, w = g.w, wo = g.wo;
  const float* sg = sign.data();
  const float* a = st.scale.data();
  const float* o = st.offset.data();
#ifdef CNNBENCH_AVX512
  if (c % 32 == 0) {
    std::vector<uint16_t> flip(c), flat_lanes(c);
    for (int64_t j = 0; j < c; ++j) {
      flip[j] = sign[j] < 0.f ? 0x8000 : 0;
      flat_lanes[j] = sign[j] == 0.f ? 0xFFFF : 0;
    }
    bf16_window_winners(g, xp, flip.data(), flat_lanes.data(), wp, tp, [&](int64_t r, int64_t ox) {
      const int64_t n = c;  // locals, as below: the loop vectorises
      const float* __restrict an = a;
      const float* __restrict on = o;
      const int64_t at = (r * wo + ox) * n;
      uint16_t* __restrict dy = yp + at;
      uint16_t* __restrict dw = wp + at;
      for (int64_t k = 0; k < n; ++k) {
        const float v = bf16_to_float(dw[k]);  // the winner's x
        dy[k] = float_to_bf16(std::max(normalised(v, an[k], on[k]), 0.f));
        dw[k] = float_to_bf16(v);  // a NaN as the scalar path writes it
      }
    });
    return {y, taps, winners, st.mean, st.invstd, st.var};
  }
#endif
  window_winners(g, xp, [sg](int64_t k, uint16_t v) { return bf16_to_float(v) * sg[k]; },
                 [&](int64_t r, int64_t ox, float* __restrict kk, const float* __restrict arg) {
    const int64_t b = r / g.ho, oy = r % g.ho;
    for (int64_t k : flat) {  // the key lost x: read the winner's
      const int64_t tap = static_cast<int64_t>(arg[k]);
      const int64_t yy = oy * g.sh - g.ph + tap / g.kw, xx = ox * g.sw - g.pw + tap % g.kw;
      kk[k] = bf16_to_float(xp[((b * h + yy) * w + xx) * c + k]);
    }
    // Locals for the bound and the pointers: read through the [&] closure inside the loop (the stores
    // below might alias it, for all gcc knows), they kept the loop scalar ("number of iterations cannot
    // be computed", "no vectype for stmt ... sg"): 3.5 of the stem's 6.6 ms forward (session 21).
    const int64_t n = c;
    const float* __restrict sgn = sg;
    const float* __restrict an = a;
    const float* __restrict on = o;
    const int64_t at = (r * wo + ox) * n;
    uint16_t* __restrict dy = yp + at;
    uint16_t* __restrict dw = wp + at;
    uint8_t* __restrict dt = tp + at;
    for (int64_t k = 0; k < n; ++k) {
      const float v = sgn[k] != 0.f ? kk[k] * sgn[k] : kk[k];
      dy[k] = float_to_bf16(std::max(normalised(v, an[k], on[k]), 0.f));
      dw[k] = float_to_bf16(v);
      dt[k] = static_cast<uint8_t>(arg[k]);
    }
  });
  return {y, taps, winners, st.mean, st.invstd, st.var};
}

// Gradients of bn_relu_pool_forward: (grad_x, grad_weight, grad_bias) from the pooled gradient. A window
// passes its gradient to its winner where its output is > 0 (the ReLU); the batch norm's two sums run over
// the windows (the winners' x was kept), and grad_x is one gather: each input pixel adds the gradients of
// the windows it won, in tap order, and applies the batch norm's backward, so the H x W gradient of the
// pool is never written nor read back (max_pool_backward then bn_backward: three passes over it).
std::vector<at::Tensor> bn_relu_pool_backward(const at::Tensor& grad_y, const at::Tensor& taps, const at::Tensor& y,
                                              const at::Tensor& winners, const at::Tensor& x, const at::Tensor& mean,
                                              const at::Tensor& invstd, const at::Tensor& weight,
                                              std::vector<int64_t> kernel, std::vector<int64_t> stride,
                                              std::vector<int64_t> padding) {
  const int64_t c = channels_of(x, "x");
  TORCH_CHECK(x.dim() == 4, "x: expected a channels_last (N, C, H, W) tensor");
  const Window g(x.size(0), x.size(2), x.size(3), c, kernel, stride, padding);
  const int64_t m = g.n * g.h * g.w, windows = g.n * g.ho * g.wo;
  TORCH_CHECK(m > 0, "x: no rows");
  channels_of(grad_y, "grad_y");
  TORCH_CHECK(grad_y.dim() == 4 && grad_y.size(0) == g.n && grad_y.size(1) == c && grad_y.size(2) == g.ho &&
              grad_y.size(3) == g.wo, "grad_y: expected the pooled output's shape");
  check_like(y, grad_y, "y");
  check_like(winners, grad_y, "winners");
  TORCH_CHECK(taps.scalar_type() == at::kByte && taps.is_contiguous() && taps.numel() == grad_y.numel(),
              "taps: expected the forward's uint8 taps");
  const uint16_t* gp = bf16_data(grad_y);
  const uint16_t* yp = bf16_data(y);
  const uint16_t* vp = bf16_data(winners);
  const uint16_t* xp = bf16_data(x);
  const uint8_t* tp = taps.data_ptr<uint8_t>();
  const float* mu = mean.data_ptr<float>();
  const float* is = invstd.data_ptr<float>();

  // Pass 1, over the windows: sum(dz) and sum(dz * (x - mean)), dz a window's gradient where it passed.
  std::vector<double> t1, t2;
  per_channel_sums(windows, c, [&](int64_t r, float* __restrict s1, float* __restrict s2) {
    const uint16_t* __restrict gr = gp + r * c;
    const uint16_t* __restrict yr = yp + r * c;
    const uint16_t* __restrict vr = vp + r * c;
    for (int64_t j = 0; j < c; ++j) {
      const float dz = bf16_to_float(yr[j]) > 0.f ? bf16_to_float(gr[j]) : 0.f;
      s1[j] += dz;
      s2[j] += dz * (bf16_to_float(vr[j]) - mu[j]);
    }
  }, t1, t2);
  BackwardCoefficients k = backward_coefficients(t1, t2, weight, is, m, mean);

  // Pass 2, over the input pixels: gather dz from the windows each one won, then grad_x.
  auto grad_x = at::empty_like(x);
  uint16_t* dxp = bf16_data_mut(grad_x);
  const float* a = k.k1.data();
  const float* md = k.k2.data();
  const float* q = k.k3.data();
  auto finish = [&](int64_t pixel, const float* __restrict dz) {
    const uint16_t* __restrict xr = xp + pixel * c;
    uint16_t* __restrict dxr = dxp + pixel * c;
    for (int64_t k = 0; k < c; ++k)
      dxr[k] = float_to_bf16(a[k] * (dz[k] - md[k] - (bf16_to_float(xr[k]) - mu[k]) * q[k]));
  };
#ifdef CNNBENCH_AVX512
  if (c % 32 == 0) {
    // gather_pixels with its sums in registers, 32 channels at a time (add_won_gradient, in its tap
    // order: the same sums), and finish's arithmetic on them in the same vectors. (Stores past the
    // cache for grad_x, which is not read again here, were slower: 3.7-4.0 against 3.1-3.2 ms.)
    const auto rows = g.readers(true), cols = g.readers(false);
    const int64_t h = g.h, w = g.w, ho = g.ho, wo = g.wo, kw = g.kw;
    at::parallel_for(0, g.n * h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / h, yy = r % h;
        for (int64_t xx = 0; xx < w; ++xx) {
          const int64_t pixel = (r * w + xx) * c;
          for (int64_t cb = 0; cb < c; cb += 32) {
            __m512 dz[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
            for (const auto& [oy, i] : rows[yy])
              for (const auto& [ox, j] : cols[xx]) {
                const int64_t at = ((b * ho + oy) * wo + ox) * c + cb;
                add_won_gradient(dz, gp + at, yp + at, tp + at, static_cast<uint8_t>(i * kw + j));
              }
            __m256i out[2];
            for (int half = 0; half < 2; ++half) {  // finish's a * (dz - md - (x - mean) * q), op for op
              const int64_t ch = cb + 16 * half;
              const __m512 centred = _mm512_sub_ps(load_bf16x16(xp + pixel + ch), _mm512_loadu_ps(mu + ch));
              const __m512 inner = _mm512_sub_ps(_mm512_sub_ps(dz[half], _mm512_loadu_ps(md + ch)),
                                                 _mm512_mul_ps(centred, _mm512_loadu_ps(q + ch)));
              out[half] = round_to_bf16(_mm512_mul_ps(_mm512_loadu_ps(a + ch), inner));
            }
            const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(out[0]), out[1], 1);
            _mm512_storeu_si512(dxp + pixel + cb, both);
          }
        }
      }
    });
    return {grad_x, k.grad_weight, k.grad_bias};
  }
#endif
  gather_pixels(g, [gp, yp, tp, c](float* __restrict dz, int64_t pos, int64_t tap) {
    const int64_t n = c;  // a local, loop-invariant bound
    const uint16_t* __restrict gr = gp + pos * n;
    const uint16_t* __restrict yr = yp + pos * n;
    const uint8_t* __restrict tr = tp + pos * n;
    const uint8_t t = static_cast<uint8_t>(tap);
    for (int64_t k = 0; k < n; ++k) dz[k] += tr[k] == t && bf16_to_float(yr[k]) > 0.f ? bf16_to_float(gr[k]) : 0.f;
  }, finish);
  return {grad_x, k.grad_weight, k.grad_bias};
}

// a + b for two bf16 tensors of one shape and row-major (rows, C) memory order: each value rounded
// once from the float32 sum, the bits of torch's bf16 add. A residual block's input gradient is such
// a sum (its first convolution's input gradient plus the skip connection's), which autograd adds
// with torch's add: 1.69 ms for ResNet-18's (128, 64, 16, 16) layer1 map with both operands out of
// cache here (a copy of one: 0.60), where this streams both in one pass (see fused_bn.py, _Fork).
at::Tensor add_grads(const at::Tensor& a, const at::Tensor& b) {
  channels_of(a, "a");
  check_like(b, a, "b");
  auto out = at::empty_like(a);
  const uint16_t* ap = bf16_data(a);
  const uint16_t* bp = bf16_data(b);
  uint16_t* op = bf16_data_mut(out);
  const int64_t n = a.numel();
  at::parallel_for(0, n, 1 << 15, [&](int64_t begin, int64_t end) {
    const uint16_t* __restrict x = ap;
    const uint16_t* __restrict y = bp;
    uint16_t* __restrict z = op;
    for (int64_t i = begin; i < end; ++i) z[i] = float_to_bf16(bf16_to_float(x[i]) + bf16_to_float(y[i]));
  });
  return out;
}

// nn.BatchNorm2d's running statistics after a training step, in one call where the Python of
// FusedBatchNorm2d._update_running_stats (an add, two casts, a multiply and two lerps per batch norm)
// cost ResNet-18's step ~3 ms here (session 22, scratch: 151.9 vs 148.5 ms skipping it, paired medians
// of 41 steps). The same bits as that Python: the count + 1; momentum (< 0: the cumulative average,
// 1 / count); var scaled by rows / (rows - 1) in float; each running value moved towards the batch's
// as torch's vectorised lerp does, fma(w, end - start, start) for w < 0.5 and fma(w - 1, end - start,
// end) otherwise.
void update_running_stats(at::Tensor& running_mean, at::Tensor& running_var, at::Tensor& num_batches_tracked,
                          const at::Tensor& mean, const at::Tensor& var, double momentum, int64_t rows) {
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&running_mean, &running_var, &mean, &var})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == mean.numel(),
                "running statistics: expected contiguous float32 tensors of one size");
  TORCH_CHECK(num_batches_tracked.scalar_type() == at::kLong && num_batches_tracked.numel() == 1,
              "num_batches_tracked: expected one int64");
  const int64_t count = ++*num_batches_tracked.data_ptr<int64_t>();
  const float w = static_cast<float>(momentum < 0 ? 1.0 / static_cast<double>(count) : momentum);
  const float unbiased = static_cast<float>(static_cast<double>(rows) / static_cast<double>(std::max<int64_t>(rows - 1, 1)));
  const bool small = std::abs(w) < 0.5f;
  float* rm = running_mean.data_ptr<float>();
  float* rv = running_var.data_ptr<float>();
  const float* m = mean.data_ptr<float>();
  const float* v = var.data_ptr<float>();
  auto lerp = [w, small](float start, float end) {
    const float d = end - start;
    return small ? std::fma(w, d, start) : std::fma(w - 1.f, d, end);
  };
  for (int64_t j = 0; j < mean.numel(); ++j) {
    float scaled = v[j] * unbiased;
    asm("" : "+x"(scaled));  // rounded here, as torch's multiply is: not contracted into lerp's subtraction
    rm[j] = lerp(rm[j], m[j]);
    rv[j] = lerp(rv[j], scaled);
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("update_running_stats", &update_running_stats, "nn.BatchNorm2d's running statistics after a training step");
  module.def("add_grads", &add_grads, "a + b for bf16 tensors of one shape and memory order (a residual input's gradient)");
  module.def("bn_forward", &bn_forward, "channels_last bf16 batch norm (+ residual, + ReLU), training mode");
  module.def("bn_backward", &bn_backward, "gradients of bn_forward");
  module.def("bn_relu_pool_forward", &bn_relu_pool_forward, "channels_last bf16 batch norm + ReLU + max pool, training mode");
  module.def("bn_relu_pool_backward", &bn_relu_pool_backward, "gradients of bn_relu_pool_forward");
}
