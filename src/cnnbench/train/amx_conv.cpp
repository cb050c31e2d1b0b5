// The weight gradient of a convolution with an odd k x k kernel, padding k / 2 and any stride, on
// channels_last bf16 activations, with Intel AMX tile instructions (TDPBF16PS), on the CPU.
//
// Stride 1: dW[o, ky, kx, c] = sum over pixels p of grad[p, o] * x[p + (ky - k/2, kx - k/2), c], a
// product whose reduction runs over all B * H * W pixels, for each of the k * k taps (a stride-s
// tap reads one of s * s output-sized "phase" maps of x the same way: see Tap). Both maps are laid
// on one "grid" where every map row is followed by zero columns and every map by zero rows, as
// many as a tap reaches beyond the map (shared between neighbours: the right padding of one row
// is the left padding of the next), so each tap's shifted input is the same grid read at a
// constant offset, and the zeros stand in for the convolution's padding and stop a shift from
// wrapping into the next row or image. Per chunk of KC grid positions, each thread packs
//   - x into AMX's "VNNI" layout: pairs of neighbouring positions interleaved channel by channel
//     (the B operand, (KC / 2) rows of 2 x 32 values per 32 channels), and
//   - grad transposed, (O, KC + 2 M): one row per output channel (the A operand), M positions of
//     margin each side, so that a tap's shift is just another start column (consecutive chunks
//     slide the overlap along instead of transposing it again),
// then runs, for each pair of 16-channel blocks of x and of grad and each tap, KC / 32 steps of
// four tile products into four fp32 accumulator tiles, kept per thread and summed at the end,
// while prefetching the next chunk's rows into L2. The packed chunk stays in the core's L1/L2
// cache, so the two maps are read once from memory. With few input channels (an RGB stem: k * C
// <= 32), a position's "channels" are the k x C values one kernel row reads (see Problem).
//
// The grid's zeros cost compute (16 x 16 maps: 17 x 17 positions per image, 1.13x; 8 x 8: 9 x 9,
// 1.27x) but no branch or mask in the tile loop; the compute runs near the machine's bf16 matmul
// peak (ResNet-18's 64 x 64-channel 16 x 16 layer, batch 128: 2.7 GFLOP in ~1.2 ms here).
//
// Why hand-written: oneDNN's weight-gradient kernel for these shapes (brgconv_bwd_w, AMX) ran at
// 3-5x the time of its own forward on this 2-core AMX Xeon: ResNet-18's 64-channel 16 x 16 layer
// 2.5 ms alone and ~3.5 ms inside a training step, the 128-channel 8 x 8 one 3.2 and ~4.5 ms, the
// strided 64 -> 128 one 2.7 ms, a fifth of the step for layer1 and layer2. Here: 1.45, 1.50 and
// 0.93 ms (session 20, scratch, medians of 21 alternating calls). torch has no other CPU
// weight-gradient kernel for these.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "bf16.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BW__) && defined(__linux__)
#define CNNBENCH_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace {

#ifdef CNNBENCH_AMX

constexpr int64_t kChunk = 256;  // grid positions per chunk: one 32-channel pair of x and of grad fits L1

// A stride-s convolution's tap (ky, kx) reads x[s * y + ky - p, s * x + kx - p] for output pixel
// (y, x): with ky - p = s * a + i (0 <= i < s), that is pixel (y + a, x + b) of the "phase" map
// x[s * r + i, s * c + j], an output-sized map (stride 1: the phase is x itself, a = ky - p).
struct Tap {
  int64_t a, i, b, j;
};

inline Tap tap_of(int64_t ky, int64_t kx, int64_t s, int64_t p) {
  auto split = [s](int64_t d, int64_t& whole, int64_t& rest) {
    whole = (d >= 0 ? d : d - (s - 1)) / s;  // floor division
    rest = d - whole * s;
  };
  Tap t;
  split(ky - p, t.a, t.i);
  split(kx - p, t.b, t.j);
  return t;
}

// Where a batch of output-sized maps lies on the grid: every map row is followed by `pad_c` zero
// columns and every map by `pad_r` zero rows (the largest |b| and |a| of any tap).
struct Grid {
  int64_t b, h, w;      // batch and output map
  int64_t pad_r, pad_c;
  int64_t wp;           // grid row length: w + pad_c
  int64_t size;         // grid positions: (b * (h + pad_r) + pad_r) * wp
  int64_t margin;       // grad's margin each side of a chunk: at least pad_r * wp + pad_c, a multiple of 32

  Grid(int64_t b_, int64_t h_, int64_t w_, int64_t pad_r_, int64_t pad_c_)
      : b(b_), h(h_), w(w_), pad_r(pad_r_), pad_c(pad_c_), wp(w_ + pad_c_),
        size((b_ * (h_ + pad_r_) + pad_r_) * (w_ + pad_c_)),
        margin((pad_r_ * (w_ + pad_c_) + pad_c_ + 31) / 32 * 32) {}

  int64_t shift(const Tap& t) const { return t.a * wp + t.b; }

  // For grid positions [start, start + len): at(i, n, r, c) for those on map pixel (n, r, c),
  // padding(i) for the others. One division per grid row, not per position.
  template <typename At, typename Padding>
  void walk(int64_t start, int64_t len, At at, Padding padding) const {
    int64_t i = 0;
    for (; i < len && start + i < 0; ++i) padding(i);
    while (i < len) {
      const int64_t q = start + i;
      if (q >= size) {
        padding(i++);
        continue;
      }
      const int64_t row = q / wp, col = q - row * wp, n = row / (h + pad_r), r = row - n * (h + pad_r) - pad_r;
      const bool map_row = r >= 0 && n < b;
      for (int64_t c = col - pad_c, stop = std::min(len, i + (wp - col)); i < stop; ++i, ++c) {
        if (map_row && c >= 0) at(i, n, r, c);
        else padding(i);
      }
    }
  }
};

// The "VNNI" pair layout interleaves two positions' channels with unpacklo/hi_epi16, which work
// per 128-bit lane: slot s of a packed 32-channel block holds this channel of the block.
inline int slot_channel(int s) { return s < 16 ? (s / 4) * 8 + s % 4 : ((s - 16) / 4) * 8 + 4 + (s - 16) % 4; }

// x at kChunk grid positions -> out[kChunk / 2][cp][2] (channels in slot order, cp a multiple of
// 32): position q's values are x[offset[q] + k] for k < cp where bit k % 32 of mask[q] is set, 0
// elsewhere (mask 0: padding; masked-off lanes are never read).
void pack_pairs(int64_t cp, const uint16_t* x, const int64_t* offset, const uint32_t* mask, uint16_t* out) {
  for (int64_t i = 0; i < kChunk / 2; ++i) {
    const uint32_t m0 = mask[2 * i], m1 = mask[2 * i + 1];
    uint16_t* dst = out + i * cp * 2;
    if (!m0 && !m1) {
      std::memset(dst, 0, sizeof(uint16_t) * cp * 2);
      continue;
    }
    for (int64_t k = 0; k < cp; k += 32) {
      const __m512i a = _mm512_maskz_loadu_epi16(m0, x + offset[2 * i] + k);
      const __m512i b = _mm512_maskz_loadu_epi16(m1, x + offset[2 * i + 1] + k);
      _mm512_storeu_si512(dst + 2 * k, _mm512_unpacklo_epi16(a, b));
      _mm512_storeu_si512(dst + 2 * k + 32, _mm512_unpackhi_epi16(a, b));
    }
  }
}

// 32 rows of 32 16-bit values transposed in registers: each of the five stages swaps one bit of
// the row index with the same bit of the column index, the three widest with lane and qword
// shuffles, the two narrowest with shifts and blends (which leave the shuffle port free).
inline void transpose32(__m512i* v) {
  const __m512i lo = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0), hi = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
  for (int i = 0; i < 16; ++i) {
    const __m512i a = v[i], b = v[i + 16];
    v[i] = _mm512_shuffle_i64x2(a, b, 0x44);
    v[i + 16] = _mm512_shuffle_i64x2(a, b, 0xEE);
  }
  for (int i = 0; i < 32; ++i) {
    if (i & 8) continue;
    const __m512i a = v[i], b = v[i + 8];
    v[i] = _mm512_permutex2var_epi64(a, lo, b);
    v[i + 8] = _mm512_permutex2var_epi64(a, hi, b);
  }
  for (int i = 0; i < 32; ++i) {
    if (i & 4) continue;
    const __m512i a = v[i], b = v[i + 4];
    v[i] = _mm512_unpacklo_epi64(a, b);
    v[i + 4] = _mm512_unpackhi_epi64(a, b);
  }
  for (int i = 0; i < 32; ++i) {
    if (i & 2) continue;
    const __m512i a = v[i], b = v[i + 2];
    v[i] = _mm512_mask_blend_epi32(0xAAAA, a, _mm512_slli_epi64(b, 32));
    v[i + 2] = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(a, 32), b);
  }
  for (int i = 0; i < 32; i += 2) {
    const __m512i a = v[i], b = v[i + 1];
    v[i] = _mm512_mask_blend_epi16(0xAAAAAAAAu, a, _mm512_slli_epi32(b, 16));
    v[i + 1] = _mm512_mask_blend_epi16(0xAAAAAAAAu, _mm512_srli_epi32(a, 16), b);
  }
}

// grad at grid positions pixel[from .. len) -> out[o][from .. len) of rows of len, transposed
// (from and len multiples of 32).
void pack_transposed(int64_t o, const uint16_t* grad, const int64_t* pixel, int64_t from, int64_t len, uint16_t* out) {
  for (int64_t q = from; q < len; q += 32) {
    bool any = false;
    for (int i = 0; i < 32; ++i) any |= pixel[q + i] >= 0;
    for (int64_t k = 0; k < o; k += 32) {
      __m512i v[32];
      if (any) {
        for (int i = 0; i < 32; ++i)
          v[i] = pixel[q + i] >= 0 ? _mm512_loadu_si512(grad + pixel[q + i] * o + k) : _mm512_setzero_si512();
        transpose32(v);
      } else {
        for (int i = 0; i < 32; ++i) v[i] = _mm512_setzero_si512();
      }
      for (int i = 0; i < 32; ++i) _mm512_storeu_si512(out + (k + i) * len + q, v[i]);
    }
  }
}

// Cache lines of up to two address ranges, prefetched into L2 a few at a time.
struct Prefetch {
  const char* at[2] = {nullptr, nullptr};
  const char* end[2] = {nullptr, nullptr};
  int ranges = 0;
  int64_t per_step = 0;

  void add(const uint16_t* from, const uint16_t* to) {
    at[ranges] = reinterpret_cast<const char*>(from);
    end[ranges++] = reinterpret_cast<const char*>(to);
  }
  int64_t lines() const {
    int64_t n = 0;
    for (int r = 0; r < ranges; ++r) n += (end[r] - at[r] + 63) / 64;
    return n;
  }
  void step() {
    for (int64_t n = 0; n < per_step; ++n) {
      int r = at[0] < end[0] ? 0 : 1;
      if (r >= ranges || at[r] >= end[r]) return;
      _mm_prefetch(at[r], _MM_HINT_T1);
      at[r] += 64;
    }
  }
};

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

template <typename T>
std::unique_ptr<T[], FreeDeleter> aligned_buffer(int64_t count) {
  const size_t bytes = (sizeof(T) * count + 63) / 64 * 64;
  T* p = static_cast<T*>(std::aligned_alloc(64, bytes));
  TORCH_CHECK(p != nullptr, "the AMX weight gradient could not allocate ", bytes, " bytes");
  return std::unique_ptr<T[], FreeDeleter>(p);
}

// Linux hands out AMX's tile state only to processes that ask (once; oneDNN asks too).
bool tiles_permitted() {
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  static const bool permitted = syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  return permitted;
}

// The convolution: x (b, hin, win, c) -> grad's map (b, h, w, o), a k x k kernel, stride, padding.
//
// With c a multiple of 32, each tap (ky, kx) is a shifted read of a phase map of x, and x's
// channels are the product's. With fewer channels (a stem's 3), where k * c <= 32, the k
// neighbouring pixels a kernel row reads form one position's "channels" instead (its window,
// x[row, s * col - p .. s * col - p + k) x c, read as one masked load of k * c values from the
// channels_last rows): the taps are the k kernel rows only, and the product's k * c channels are
// the weight's (kx, c) in its channels_last memory order.
struct Problem {
  int64_t c, o, k, stride, padding, hin, win;
  bool window;
  int64_t cx, cp;                  // x's channels in the product (c, or k * c in a window) and rounded up to 32
  int64_t taps;                    // k * k, or k in a window
  Grid g;
  std::vector<Tap> tap;            // per tap, ky * k + kx (ky in a window)
  std::vector<int64_t> phase;      // per tap: which of the phase maps it reads
  std::vector<std::pair<int64_t, int64_t>> phases;  // (i, j) of each phase map read

  Problem(int64_t b, int64_t h, int64_t w, int64_t c_, int64_t o_, int64_t k_, int64_t s_, int64_t p_, int64_t hin_,
          int64_t win_)
      : c(c_), o(o_), k(k_), stride(s_), padding(p_), hin(hin_), win(win_), window(c_ % 32 != 0),
        cx(window ? k_ * c_ : c_), cp((cx + 31) / 32 * 32), taps(window ? k_ : k_ * k_),
        g(b, h, w, reach(k_, s_, p_), window ? 0 : reach(k_, s_, p_)) {
    for (int64_t t = 0; t < taps; ++t) {
      Tap one = window ? tap_of(t, p_, s_, p_) : tap_of(t / k, t % k, s_, p_);  // a window: kx = p, no column shift
      const auto ij = std::make_pair(one.i, one.j);
      auto at = std::find(phases.begin(), phases.end(), ij);
      phase.push_back(at - phases.begin());
      if (at == phases.end()) phases.push_back(ij);
      tap.push_back(one);
    }
  }

  // The farthest a tap reads outside the output map, in output pixels.
  static int64_t reach(int64_t k, int64_t s, int64_t p) {
    int64_t far = 0;
    for (int64_t d = 0; d < k; ++d) {
      const Tap t = tap_of(d, d, s, p);
      far = std::max({far, -t.a, t.a});
    }
    return far;
  }

  // grid positions [start, start + len) of phase map (i, j) of x: element offsets and load masks
  void map_x(int64_t start, int64_t len, int64_t* offset, uint32_t* mask, int64_t i, int64_t j) const {
    const int64_t s = stride;
    auto pad = [=](int64_t q) { offset[q] = 0; mask[q] = 0; };
    if (!window) {
      g.walk(start, len, [=](int64_t q, int64_t n, int64_t r, int64_t col) {
        const int64_t y = s * r + i, x = s * col + j;
        if (y < hin && x < win) {
          offset[q] = ((n * hin + y) * win + x) * c;
          mask[q] = ~0u;
        } else {
          pad(q);
        }
      }, pad);
      return;
    }
    g.walk(start, len, [=](int64_t q, int64_t n, int64_t r, int64_t col) {
      const int64_t y = s * r + i, first = s * col - padding;  // the window's first pixel, maybe left of x
      const int64_t lo = std::max<int64_t>(0, -first) * c, hi = std::min(k, win - first) * c;
      if (y < hin && hi > lo) {
        offset[q] = ((n * hin + y) * win + first) * c;
        mask[q] = static_cast<uint32_t>(((hi >= 32 ? ~0ull : ((1ull << hi) - 1)) >> lo) << lo);
      } else {
        pad(q);
      }
    }, pad);
  }

  // grid positions [start, start + len) of grad: pixel indices, -1 for padding
  void map_grad(int64_t start, int64_t len, int64_t* pixel) const {
    const int64_t h = g.h, w = g.w;
    g.walk(start, len, [=](int64_t q, int64_t n, int64_t r, int64_t col) { pixel[q] = col < w ? (n * h + r) * w + col : -1; },
           [=](int64_t q) { pixel[q] = -1; });
  }
};

// One thread's chunks [first, last): accumulates into acc[tap][o / 16][c / 16][16][16] (fp32).
void accumulate(const Problem& pr, const uint16_t* x, const uint16_t* grad, int64_t first, int64_t last, float* acc) {
  const Grid& g = pr.g;
  const int64_t len = kChunk + 2 * g.margin, taps = pr.taps, ob = pr.o / 16, cb = pr.cp / 16;
  const int64_t phases = static_cast<int64_t>(pr.phases.size());
  // Grid maps of this chunk and the next (x: element offsets and load masks per phase; grad: pixel
  // indices): the next chunk's, made for its prefetch, are this one's at the next step.
  std::unique_ptr<int64_t[], FreeDeleter> offsets[2], pixels[2];
  std::unique_ptr<uint32_t[], FreeDeleter> masks[2];
  for (int b = 0; b < 2; ++b) {
    offsets[b] = aligned_buffer<int64_t>(phases * kChunk);
    masks[b] = aligned_buffer<uint32_t>(phases * kChunk);
    pixels[b] = aligned_buffer<int64_t>(len);
  }
  auto map_chunk = [&](int64_t start, int b) {
    for (int64_t f = 0; f < phases; ++f)
      pr.map_x(start, kChunk, offsets[b].get() + f * kChunk, masks[b].get() + f * kChunk, pr.phases[f].first,
               pr.phases[f].second);
    pr.map_grad(start - g.margin, len, pixels[b].get());
  };
  auto pairs = aligned_buffer<uint16_t>(phases * kChunk * pr.cp);
  auto rows = aligned_buffer<uint16_t>(pr.o * len);
  std::vector<int64_t> shift(taps);
  for (int64_t t = 0; t < taps; ++t) shift[t] = g.shift(pr.tap[t]);
  TileConfig config;
  for (int i = 0; i < 8; ++i) {
    config.colsb[i] = 64;
    config.rows[i] = 16;
  }
  _tile_loadconfig(&config);
  const int64_t stride_pairs = pr.cp * 4, stride_rows = len * 2;  // bytes between tile rows
  // The next chunk's rows of x and grad are prefetched into L2 while this chunk's tiles run (a few
  // cache lines per tile step): the packing then reads them from cache, not memory.
  // (element offsets of the rows read; masks say which positions read anything)
  auto span = [](const int64_t* at, const uint32_t* read, int64_t n, int64_t width, int64_t& lo, int64_t& hi) {
    for (int64_t i = 0; i < n; ++i)
      if (read == nullptr ? at[i] >= 0 : read[i] != 0) {
        const int64_t from = read == nullptr ? at[i] * width : at[i];
        lo = std::min(lo, from);
        hi = std::max(hi, from + width);
      }
  };
  const int64_t steps = (cb / 2) * (ob / 2) * taps * (kChunk / 32);
  int cur = 0;
  if (first < last) map_chunk(first * kChunk, cur);
  for (int64_t chunk = first; chunk < last; ++chunk, cur = 1 - cur) {
    for (int64_t f = 0; f < phases; ++f)
      pack_pairs(pr.cp, x, offsets[cur].get() + f * kChunk, masks[cur].get() + f * kChunk,
                 pairs.get() + f * kChunk * pr.cp);
    // Consecutive chunks' grad columns overlap by the two margins: slide them along instead of
    // transposing them again (a stem's 32-wide map has margins of 64 on chunks of 256).
    int64_t from = 0;
    if (chunk > first) {
      from = 2 * g.margin;
      for (int64_t r = 0; r < pr.o; ++r) std::memmove(rows.get() + r * len, rows.get() + r * len + kChunk, sizeof(uint16_t) * from);
    }
    pack_transposed(pr.o, grad, pixels[cur].get(), from, len, rows.get());
    Prefetch ahead;
    if (chunk + 1 < last) {
      const int next = 1 - cur;
      map_chunk((chunk + 1) * kChunk, next);
      int64_t xlo = INT64_MAX, xhi = -1, glo = INT64_MAX, ghi = -1;
      span(offsets[next].get(), masks[next].get(), phases * kChunk, pr.cx, xlo, xhi);
      span(pixels[next].get(), nullptr, len, pr.o, glo, ghi);
      if (xhi > xlo) ahead.add(x + std::max<int64_t>(xlo, 0), x + xhi);
      if (ghi > glo) ahead.add(grad + glo, grad + ghi);
      ahead.per_step = (ahead.lines() + steps - 1) / steps;
    }
    for (int64_t j = 0; j < cb; j += 2) {
      for (int64_t i = 0; i < ob; i += 2) {
        for (int64_t t = 0; t < taps; ++t) {
          float* c00 = acc + ((t * ob + i) * cb + j) * 256;
          float* c01 = c00 + 256;
          float* c10 = c00 + cb * 256;
          float* c11 = c10 + 256;
          if (chunk == first) {
            _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
          } else {
            _tile_loadd(0, c00, 64); _tile_loadd(1, c01, 64); _tile_loadd(2, c10, 64); _tile_loadd(3, c11, 64);
          }
          const uint16_t* a0 = rows.get() + i * 16 * len + g.margin - shift[t];
          const uint16_t* a1 = a0 + 16 * len;
          const uint16_t* b0 = pairs.get() + pr.phase[t] * kChunk * pr.cp + j * 32;
          const uint16_t* b1 = b0 + 32;
          for (int64_t s = 0; s < kChunk / 32; ++s) {
            _tile_loadd(4, a0 + s * 32, stride_rows);
            _tile_loadd(5, a1 + s * 32, stride_rows);
            _tile_loadd(6, b0 + s * 32 * pr.cp, stride_pairs);
            _tile_loadd(7, b1 + s * 32 * pr.cp, stride_pairs);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
            ahead.step();
          }
          _tile_stored(0, c00, 64); _tile_stored(1, c01, 64); _tile_stored(2, c10, 64); _tile_stored(3, c11, 64);
        }
      }
    }
  }
  _tile_release();
}


// --- Weight gradients on small maps from pixel pairs (gemm_conv.CoveringConv, AmxPatchConv) ---------
//
// On a small map (ResNet-18's layer3 and layer4 at 64 px: 4 x 4 and 2 x 2), tap t's gradient is the
// sum, over the (input pixel q, output pixel p) pairs that t joins inside the map, of
// grad[:, p]^T x[:, q]: (O, B) @ (B, C) products whose reduction runs over the batch only. Here each
// output tile sums all of its tap's pairs in fp32 tiles and is rounded once, and the padding taps
// are never multiplied. im2col's (O, M) @ (M, k * k * C) product multiplies them (44 of layer3's 144
// taps x pixels) after oneDNN repacks the whole patch matrix; where every window covers the map
// (layer4's 2 x 2), torch had the gradient as one small matmul per tap over gathered pixel pairs
// (2.3-2.9 ms for 512 -> 512 at batch 128, scratch, session 21) or as one dense product whose 16
// blocks are then summed into 9 taps (rounding every block to bf16 first).

// grad (B, hw, O) -> out[p][O][bp]: each pixel's gradient transposed, the batch padded with zero
// columns to bp (a multiple of 32): the A operand, 16 channels x 32 batch values per tile row block.
void pack_batch_transposed(const uint16_t* g, int64_t bsz, int64_t hw, int64_t o, int64_t bp, uint16_t* out) {
  for (int64_t p = 0; p < hw; ++p)
    for (int64_t k = 0; k < o; k += 32)
      for (int64_t b0 = 0; b0 < bp; b0 += 32) {
        __m512i v[32];
        for (int i = 0; i < 32; ++i)
          v[i] = b0 + i < bsz ? _mm512_loadu_si512(g + ((b0 + i) * hw + p) * o + k) : _mm512_setzero_si512();
        transpose32(v);
        for (int i = 0; i < 32; ++i) _mm512_storeu_si512(out + (p * o + k + i) * bp + b0, v[i]);
      }
}

// x (B, hw, C) -> out[q][bp / 2][C][2]: for each pixel, pairs of batch rows interleaved channel by
// channel in channel order (the B operand's pair layout), zero rows past B.
void pack_batch_pairs(const uint16_t* x, int64_t bsz, int64_t hw, int64_t c, int64_t bp, uint16_t* out) {
  alignas(64) uint16_t lo_idx[32], hi_idx[32];
  for (int i = 0; i < 16; ++i) {
    lo_idx[2 * i] = i, lo_idx[2 * i + 1] = 32 + i;
    hi_idx[2 * i] = 16 + i, hi_idx[2 * i + 1] = 48 + i;
  }
  const __m512i lo = _mm512_load_si512(lo_idx), hi = _mm512_load_si512(hi_idx);
  for (int64_t q = 0; q < hw; ++q)
    for (int64_t i = 0; i < bp / 2; ++i) {
      const int64_t b0 = 2 * i, b1 = 2 * i + 1;
      uint16_t* dst = out + (q * (bp / 2) + i) * c * 2;
      for (int64_t k = 0; k < c; k += 32) {
        const __m512i a = b0 < bsz ? _mm512_loadu_si512(x + (b0 * hw + q) * c + k) : _mm512_setzero_si512();
        const __m512i b = b1 < bsz ? _mm512_loadu_si512(x + (b1 * hw + q) * c + k) : _mm512_setzero_si512();
        _mm512_storeu_si512(dst + 2 * k, _mm512_permutex2var_epi16(a, lo, b));
        _mm512_storeu_si512(dst + 2 * k + 32, _mm512_permutex2var_epi16(a, hi, b));
      }
    }
}

#endif  // CNNBENCH_AMX

}  // namespace

// Whether this build and this process can run the kernel: compiled for a CPU with AMX-BF16, on
// Linux, and the kernel granted the tile state.
bool available() {
#ifdef CNNBENCH_AMX
  return tiles_permitted();
#else
  return false;
#endif
}

// x (N, H, W, C) and grad (N, Ho, Wo, O), contiguous bf16 (channels_last activations, permuted),
// O a multiple of 32 and C too or k * C <= 32, of a k x k convolution with this stride and padding
// -> the weight gradient (O, C, k, k) in bf16 with channels_last strides. Every tap that leaves an output map
// row or column must leave x too (true of any odd k with padding k / 2, at any stride, on any map),
// which is what lets the grid's zeros stand in for the padding.
at::Tensor weight_grad(const at::Tensor& x, const at::Tensor& grad, int64_t k, int64_t stride, int64_t padding) {
  TORCH_CHECK(available(), "the AMX weight gradient needs a CPU with AMX-BF16 under Linux");
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous() && x.scalar_type() == at::kBFloat16,
              "x: expected a contiguous bf16 (N, H, W, C) tensor");
  TORCH_CHECK(grad.dim() == 4 && grad.is_contiguous() && grad.scalar_type() == at::kBFloat16,
              "grad: expected a contiguous bf16 (N, H, W, O) tensor");
  TORCH_CHECK(k >= 1 && stride >= 1 && padding >= 0 && padding < k, "k, stride, padding: expected k >= 1, stride >= 1, ",
              "0 <= padding < k, got ", k, ", ", stride, ", ", padding);
  const int64_t hin = x.size(1), win = x.size(2);
  const int64_t ho = (hin + 2 * padding - k) / stride + 1, wo = (win + 2 * padding - k) / stride + 1;
  TORCH_CHECK(grad.size(0) == x.size(0) && grad.size(1) == ho && grad.size(2) == wo,
              "grad: expected the output map (", x.size(0), ", ", ho, ", ", wo, "), got (",
              grad.size(0), ", ", grad.size(1), ", ", grad.size(2), ")");
  TORCH_CHECK((x.size(3) % 32 == 0 || k * x.size(3) <= 32) && grad.size(3) % 32 == 0,
              "channels: expected a multiple of 32 out and in (or at most 32 / k in), got ", x.size(3), " in and ",
              grad.size(3), " out");
  for (int64_t d = 0; d < k; ++d) {
    const Tap t = tap_of(d, d, stride, padding);
    // a tap reading past the map's last row (a > 0) must read past x's too, where x is zero
    TORCH_CHECK(t.a <= 0 || (stride * ho + t.i >= hin && stride * wo + t.i >= win),
                "k, stride, padding: ", k, ", ", stride, ", ", padding, " on a ", hin, " x ", win,
                " map read pixels beyond the output map's grid");
  }
#ifdef CNNBENCH_AMX
  const Problem pr(x.size(0), ho, wo, x.size(3), grad.size(3), k, stride, padding, hin, win);
  const int64_t taps = pr.taps, ob = pr.o / 16, cb = pr.cp / 16, acc_size = taps * ob * cb * 256;
  const int64_t chunks = (pr.g.size + kChunk - 1) / kChunk;
  const int threads = at::get_num_threads();
  std::vector<float> accs(acc_size * threads, 0.f);  // threads that get no chunk add zeros
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr());
  const auto* gp = reinterpret_cast<const uint16_t*>(grad.data_ptr());
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    accumulate(pr, xp, gp, first, last, accs.data() + acc_size * at::get_thread_num());
  });
  // Sum the threads' tiles in a fixed order and write (O, k, k, C), a channels_last weight's memory:
  // (O, taps, cx) either way (a window's taps are the kernel rows, its channels (kx, c)).
  auto out = at::empty({pr.o, pr.c, k, k}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr());
  int channel[32];
  for (int s = 0; s < 32; ++s) channel[s] = slot_channel(s);
  at::parallel_for(0, pr.o, 1, [&](int64_t first, int64_t last) {
    for (int64_t o = first; o < last; ++o)
      for (int64_t t = 0; t < taps; ++t)
        for (int64_t j = 0; j < cb; ++j) {
          const int64_t at_ = ((t * ob + o / 16) * cb + j) * 256 + (o % 16) * 16;
          for (int s = 0; s < 16; ++s) {
            const int64_t ch = (j / 2) * 32 + channel[(j % 2) * 16 + s];
            if (ch >= pr.cx) continue;  // a window's padding channels
            float sum = accs[at_ + s];
            for (int th = 1; th < threads; ++th) sum += accs[th * acc_size + at_ + s];
            op[(o * taps + t) * pr.cx + ch] = float_to_bf16(sum);
          }
        }
  });
  return out;
#else
  return at::Tensor();
#endif
}

namespace {

// The weight gradient (O, C, k, k) of a convolution on small maps, x (B, hin * win, C) and grad (B, ho * wo, O)
// contiguous bf16, from each tap's (input pixel q, output pixel p) pairs: tap t's gradient is the sum over
// its pairs of grad[:, p]^T x[:, q], (O, B) @ (B, C) products over the batch, summed in fp32 AMX tiles and
// rounded once; taps without pairs get zeros. O and C multiples of 32, any batch. Each output tile is
// one thread's: the same bits on any thread count. Only the pairs are multiplied: no padding taps.
at::Tensor pixel_pairs_grad(const at::Tensor& x, const at::Tensor& grad, int64_t hw_in, int64_t hw_out, int64_t k,
                            const std::vector<std::vector<std::pair<int64_t, int64_t>>>& pairs) {
#ifdef CNNBENCH_AMX
  const int64_t bsz = x.size(0), c = x.size(2), o = grad.size(2), taps = k * k;
  const int64_t bp = std::max<int64_t>(32, (bsz + 31) / 32 * 32);
  auto gt = aligned_buffer<uint16_t>(hw_out * o * bp);
  auto xv = aligned_buffer<uint16_t>(hw_in * bp * c);
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr());
  const auto* gp = reinterpret_cast<const uint16_t*>(grad.data_ptr());
  at::parallel_for(0, 2, 1, [&](int64_t first, int64_t last) {  // the two packings side by side
    for (int64_t which = first; which < last; ++which) {
      if (which == 0) pack_batch_transposed(gp, bsz, hw_out, o, bp, gt.get());
      else pack_batch_pairs(xp, bsz, hw_in, c, bp, xv.get());
    }
  });
  auto out = at::empty({o, c, k, k}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr());  // (O, k, k, C) in memory
  const int64_t ob = o / 32, a_stride = bp * 2, b_stride = c * 4;  // bytes between tile rows
  at::parallel_for(0, taps * ob, 1, [&](int64_t first, int64_t last) {
    TileConfig config;
    for (int i = 0; i < 8; ++i) {
      config.colsb[i] = 64;
      config.rows[i] = 16;
    }
    _tile_loadconfig(&config);
    alignas(64) float tile[4][256];
    for (int64_t unit = first; unit < last; ++unit) {
      const int64_t t = unit / ob, o0 = (unit % ob) * 32;
      for (int64_t c0 = 0; c0 < c; c0 += 32) {
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
        for (const auto& [q, p] : pairs[t]) {
          const uint16_t* a0 = gt.get() + (p * o + o0) * bp;
          const uint16_t* a1 = a0 + 16 * bp;
          const uint16_t* b0 = xv.get() + q * (bp / 2) * c * 2 + c0 * 2;
          const uint16_t* b1 = b0 + 32;
          for (int64_t s = 0; s < bp / 32; ++s) {
            _tile_loadd(4, a0 + s * 32, a_stride);
            _tile_loadd(5, a1 + s * 32, a_stride);
            _tile_loadd(6, b0 + s * 16 * c * 2, b_stride);
            _tile_loadd(7, b1 + s * 16 * c * 2, b_stride);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
        }
        _tile_stored(0, tile[0], 64); _tile_stored(1, tile[1], 64); _tile_stored(2, tile[2], 64); _tile_stored(3, tile[3], 64);
        for (int half = 0; half < 4; ++half) {  // tile (oi, ci): rows o0 + 16 oi.., columns c0 + 16 ci..
          const int64_t oi = half / 2, ci = half % 2;
          for (int r = 0; r < 16; ++r) {
            uint16_t* dst = op + ((o0 + 16 * oi + r) * taps + t) * c + c0 + 16 * ci;
            for (int n = 0; n < 16; ++n) dst[n] = float_to_bf16(tile[half][r * 16 + n]);
          }
        }
      }
    }
    _tile_release();
  });
  return out;
#else
  return at::Tensor();
#endif
}

void check_pair_inputs(const at::Tensor& x, const at::Tensor& grad) {
  TORCH_CHECK(available(), "the AMX weight gradient needs a CPU with AMX-BF16 under Linux");
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous() && x.scalar_type() == at::kBFloat16,
              "x: expected a contiguous bf16 (B, H*W, C) tensor");
  TORCH_CHECK(grad.dim() == 3 && grad.is_contiguous() && grad.scalar_type() == at::kBFloat16,
              "grad: expected a contiguous bf16 (B, H*W, O) tensor");
  TORCH_CHECK(x.size(2) % 32 == 0 && grad.size(2) % 32 == 0, "channels: expected multiples of 32, got ", x.size(2),
              " in and ", grad.size(2), " out");
}

}  // namespace

// x (B, hin * win, C) and grad (B, ho * wo, O), contiguous bf16, of a k x k convolution with this stride
// and zero padding -> its weight gradient (O, C, k, k) from the pixel pairs each tap joins inside the map
// (pixel_pairs_grad).
at::Tensor small_map_weight_grad(const at::Tensor& x, const at::Tensor& grad, int64_t hin, int64_t win, int64_t k,
                                 int64_t stride, int64_t padding) {
  check_pair_inputs(x, grad);
  TORCH_CHECK(k >= 1 && stride >= 1 && padding >= 0 && hin + 2 * padding >= k && win + 2 * padding >= k,
              "k, stride, padding: ", k, ", ", stride, ", ", padding, " do not fit a ", hin, " x ", win, " map");
  const int64_t ho = (hin + 2 * padding - k) / stride + 1, wo = (win + 2 * padding - k) / stride + 1;
  TORCH_CHECK(x.size(1) == hin * win && grad.size(1) == ho * wo && grad.size(0) == x.size(0),
              "x, grad: expected (B, ", hin * win, ", C) and (B, ", ho * wo, ", O) for a ", hin, " x ", win, " map");
  std::vector<std::vector<std::pair<int64_t, int64_t>>> pairs(k * k);  // in p then q order
  for (int64_t p = 0; p < ho * wo; ++p)
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) {
        const int64_t y = (p / wo) * stride - padding + i, xx = (p % wo) * stride - padding + j;
        if (y >= 0 && y < hin && xx >= 0 && xx < win) pairs[i * k + j].emplace_back(y * win + xx, p);
      }
  return pixel_pairs_grad(x, grad, hin * win, ho * wo, k, pairs);
}

// x (B, hw, C) and grad (B, hw, O), contiguous bf16, of a stride-1 convolution on an h x w map
// whose every k x k window covers the whole map (gemm_conv.covering_pairs) -> the weight gradient
// (O, C, k, k) in bf16 with channels_last strides: small_map_weight_grad, once the geometry is checked.
at::Tensor covering_weight_grad(const at::Tensor& x, const at::Tensor& grad, int64_t h, int64_t w, int64_t k,
                                int64_t padding) {
  check_pair_inputs(x, grad);
  TORCH_CHECK(h >= 1 && w >= 1 && x.size(1) == h * w && grad.size(1) == h * w && grad.size(0) == x.size(0),
              "x, grad: expected (B, ", h * w, ", C) and (B, ", h * w, ", O) for a ", h, " x ", w, " map");
  TORCH_CHECK(k >= 1 && padding >= 0 && h + 2 * padding - k + 1 == h && w + 2 * padding - k + 1 == w &&
              h - 1 <= std::min(padding, k - 1 - padding) && w - 1 <= std::min(padding, k - 1 - padding),
              "k, padding: ", k, ", ", padding, " on a ", h, " x ", w, " map: not every window covers the map");
  return small_map_weight_grad(x, grad, h, w, k, 1, padding);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("available", &available, "whether this CPU and process can run the AMX kernels");
  module.def("weight_grad", &weight_grad,
             "(N, H, W, C) x, (N, Ho, Wo, O) grad, k, stride, padding -> (O, C, k, k) weight gradient");
  module.def("small_map_weight_grad", &small_map_weight_grad,
             "(B, Hin*Win, C) x, (B, Ho*Wo, O) grad, hin, win, k, stride, padding -> (O, C, k, k) weight gradient");
  module.def("covering_weight_grad", &covering_weight_grad,
             "(B, H*W, C) x, (B, H*W, O) grad, h, w, k, padding of a covering convolution -> (O, C, k, k) weight gradient");
}
