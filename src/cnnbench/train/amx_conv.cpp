// The weight gradient of a convolution with an odd k x k kernel, padding k / 2 and any stride, on
// channels_last bf16 activations, with Intel AMX tile instructions (TDPBF16PS), on the CPU.
// (Further down: whole convolutions on small maps - forward, input and weight gradient - from the
// pixel pairs their taps join, on the same tiles; see "Convolutions on small maps".)
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
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
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

// A transpose in registers of `rows` vectors (32 or 16), stage by stage: each stage swaps one bit of
// the row index with the same bit of the column index, widest first. These four swap 256-bit halves,
// 128-bit lanes, 64-bit and 32-bit elements (rows / 2, rows / 4, ... apart), the three widest with
// lane and qword shuffles, the narrowest with shifts and blends (which leave the shuffle port free):
// with 16 rows, a 16 x 16 transpose of 32-bit values.
template <int rows>
inline void transpose_down_to_32bit(__m512i* v) {
  const __m512i lo = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0), hi = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
  constexpr int d256 = rows / 2, d128 = rows / 4, d64 = rows / 8, d32 = rows / 16;
  for (int i = 0; i < d256; ++i) {
    const __m512i a = v[i], b = v[i + d256];
    v[i] = _mm512_shuffle_i64x2(a, b, 0x44);
    v[i + d256] = _mm512_shuffle_i64x2(a, b, 0xEE);
  }
  for (int i = 0; i < rows; ++i) {
    if (i & d128) continue;
    const __m512i a = v[i], b = v[i + d128];
    v[i] = _mm512_permutex2var_epi64(a, lo, b);
    v[i + d128] = _mm512_permutex2var_epi64(a, hi, b);
  }
  for (int i = 0; i < rows; ++i) {
    if (i & d64) continue;
    const __m512i a = v[i], b = v[i + d64];
    v[i] = _mm512_unpacklo_epi64(a, b);
    v[i + d64] = _mm512_unpackhi_epi64(a, b);
  }
  for (int i = 0; i < rows; ++i) {
    if (i & d32) continue;
    const __m512i a = v[i], b = v[i + d32];
    v[i] = _mm512_mask_blend_epi32(0xAAAA, a, _mm512_slli_epi64(b, 32));
    v[i + d32] = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(a, 32), b);
  }
}

// 32 rows of 32 16-bit values transposed in registers: the four stages above, then the 16-bit one.
inline void transpose32(__m512i* v) {
  transpose_down_to_32bit<32>(v);
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

// Eight 16 x 16 tiles of 64-byte rows: 0-3 the fp32 sums of a 2 x 2 block, 4-5 its A rows, 6-7 its B columns.
void configure_tiles() {
  TileConfig config;
  for (int i = 0; i < 8; ++i) {
    config.colsb[i] = 64;
    config.rows[i] = 16;
  }
  _tile_loadconfig(&config);
}

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
  configure_tiles();
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


// --- Convolutions on small maps from pixel pairs (gemm_conv.PixelPairConv) -------------------------
//
// On a small map (ResNet-18's layer3 and layer4 at 64 px: 4 x 4 and 2 x 2) a k x k convolution is a
// sum over the (input pixel q, output pixel p) pairs each tap t joins inside the map of products over
// the batch:
//   forward          out[:, p]  = sum over its (t, q) of x[:, q] W_t^T      (B, C) @ (C, O)
//   input gradient   gx[:, q]   = sum over its (t, p) of grad[:, p] W_t    (B, O) @ (O, C)
//   weight gradient  dW_t       = sum over its (q, p) of grad[:, p]^T x[:, q]  (O, B) @ (B, C)
// Each output tile sums all of its pairs in fp32 AMX tiles and is rounded once, and the padding taps
// are never multiplied (44 of layer3's 144 taps x pixels, 20 of layer4's 36). im2col + matmul
// multiplies them, writes a k * k times larger patch matrix (which oneDNN then repacks) and, for
// the input gradient, rounds each tap's product to bf16 before col2im sums them; a 2 x 2 map's
// one-matmul CoveringConv assembled a (4 O, 4 C) matrix from the taps every step.
//
// Each product's operands are read in the layout AMX takes, with the least packing: the forward pass
// packs the smaller of x and the weight (small_map_pass): where x is (the 2 x 2 layer's x is 0.5 MB,
// its weight 4.7) it runs transposed, (O, C) @ (C, B), so that its A operand is the channels_last
// weight's own rows and only x's channel pairs are transposed per pixel; elsewhere it reads x's rows
// in place against the weight's columns in pairs. The input gradient reads grad's rows as they are
// and interleaves the weight's rows in pairs; the weight gradient transposes grad per pixel and
// interleaves x's batch rows in pairs. Every output tile is one thread's: the same bits on any
// thread count, and in either form of the forward pass.
// ResNet-18's layers at batch 128 (session 22, scratch, caches flushed, medians of 15-21 alternating
// calls), forward / input gradient, ms: layer3's 256 -> 256 at 4 x 4 im2col + matmul 2.07 / 1.79 ->
// 1.09 / 1.06, its strided 128 -> 256 1.10-1.23 / 1.44-1.70 -> 0.79 / 0.86, layer4's 512 -> 512
// CoveringConv 1.99 / 1.39 -> 0.86 / 1.31.

// Two rows of 32 16-bit values interleaved in order (a0 b0 a1 b1 ...), written as two vectors: a pair layout.
struct Interleave {
  __m512i lo, hi;
  Interleave() {
    alignas(64) uint16_t lo_idx[32], hi_idx[32];
    for (int i = 0; i < 16; ++i) {
      lo_idx[2 * i] = i, lo_idx[2 * i + 1] = 32 + i;
      hi_idx[2 * i] = 16 + i, hi_idx[2 * i + 1] = 48 + i;
    }
    lo = _mm512_load_si512(lo_idx), hi = _mm512_load_si512(hi_idx);
  }
  void store(__m512i a, __m512i b, uint16_t* dst) const {
    _mm512_storeu_si512(dst, _mm512_permutex2var_epi16(a, lo, b));
    _mm512_storeu_si512(dst + 32, _mm512_permutex2var_epi16(a, hi, b));
  }
};

// 16 rows of c2 32-bit values (row(i): the row's first value, or null for a row of zeros) transposed in
// 16 x 16 blocks into c2 rows of 16 values, dst_stride values apart: the channel-pair packing of
// pack_pixels_transposed and pack_tap_columns.
template <typename Row>
inline void transpose_16_rows(Row row, int64_t c2, uint32_t* dst, int64_t dst_stride) {
  for (int64_t k = 0; k < c2; k += 16) {
    __m512i v[16];
    for (int i = 0; i < 16; ++i) {
      const uint32_t* r = row(i);
      v[i] = r != nullptr ? _mm512_loadu_si512(r + k) : _mm512_setzero_si512();
    }
    transpose_down_to_32bit<16>(v);
    for (int j = 0; j < 16; ++j) _mm512_storeu_si512(dst + (k + j) * dst_stride, v[j]);
  }
}

// x (B, hw, C) -> out[q][C / 2][bp][2]: per pixel that some pair reads (read[q]), the (B, C / 2) matrix
// of channel pairs transposed, zero columns past B: the forward product's B operand.
void pack_pixels_transposed(const uint16_t* x, int64_t bsz, int64_t hw, int64_t c, int64_t bp,
                            const std::vector<char>& read, uint16_t* out) {
  const auto* x32 = reinterpret_cast<const uint32_t*>(x);
  auto* o32 = reinterpret_cast<uint32_t*>(out);
  const int64_t c2 = c / 2, blocks = bp / 16;
  at::parallel_for(0, hw * blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t unit = first; unit < last; ++unit) {
      const int64_t q = unit / blocks, b0 = (unit % blocks) * 16;
      if (!read[q]) continue;  // a strided 1 x 1 reads a quarter of the pixels
      transpose_16_rows([&](int i) { return b0 + i < bsz ? x32 + ((b0 + i) * hw + q) * c2 : nullptr; }, c2,
                        o32 + q * c2 * bp + b0, bp);
    }
  });
}

// A channels_last weight (O, T, C) -> out[t][O / 2][C][2]: each tap's rows interleaved in pairs, the
// input gradient's B operand.
void pack_tap_rows(const uint16_t* w, int64_t o, int64_t taps, int64_t c, uint16_t* out) {
  const Interleave pairs;
  at::parallel_for(0, taps * (o / 2), 16, [&](int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row) {  // row t * (o / 2) + i: rows 2 i and 2 i + 1 of tap t
      const int64_t t = row / (o / 2), i = row % (o / 2);
      const uint16_t* r0 = w + (2 * i * taps + t) * c;
      const uint16_t* r1 = r0 + taps * c;
      uint16_t* dst = out + row * c * 2;
      for (int64_t k = 0; k < c; k += 32) pairs.store(_mm512_loadu_si512(r0 + k), _mm512_loadu_si512(r1 + k), dst + 2 * k);
    }
  });
}

// A channels_last weight (O, T, C) -> out[t][C / 2][O][2]: each tap's (O, C / 2) matrix of channel
// pairs transposed in 16 x 16 blocks, the forward product's B operand when x is read in place.
void pack_tap_columns(const uint16_t* w, int64_t o, int64_t taps, int64_t c, uint16_t* out) {
  const auto* w32 = reinterpret_cast<const uint32_t*>(w);
  auto* o32 = reinterpret_cast<uint32_t*>(out);
  const int64_t c2 = c / 2;
  at::parallel_for(0, taps * (o / 16), 1, [&](int64_t first, int64_t last) {
    for (int64_t unit = first; unit < last; ++unit) {
      const int64_t t = unit / (o / 16), o0 = (unit % (o / 16)) * 16;
      transpose_16_rows([&](int i) { return w32 + ((o0 + i) * taps + t) * c2; }, c2, o32 + t * c2 * o + o0, o);
    }
  });
}

// grad (B, hw, O) -> out[p][O][bp]: each pixel's gradient transposed, the batch padded with zero
// columns to bp (a multiple of 32): the weight gradient's A operand.
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
// channel, zero rows past B: the weight gradient's B operand.
void pack_batch_pairs(const uint16_t* x, int64_t bsz, int64_t hw, int64_t c, int64_t bp, uint16_t* out) {
  const Interleave pairs;
  for (int64_t q = 0; q < hw; ++q)
    for (int64_t i = 0; i < bp / 2; ++i) {
      const int64_t b0 = 2 * i, b1 = 2 * i + 1;
      uint16_t* dst = out + (q * (bp / 2) + i) * c * 2;
      for (int64_t k = 0; k < c; k += 32) {
        const __m512i a = b0 < bsz ? _mm512_loadu_si512(x + (b0 * hw + q) * c + k) : _mm512_setzero_si512();
        const __m512i b = b1 < bsz ? _mm512_loadu_si512(x + (b1 * hw + q) * c + k) : _mm512_setzero_si512();
        pairs.store(a, b, dst + 2 * k);
      }
    }
}

// Row i (0-31) of a 2 x 2 block's fp32 tiles (tiles 0-1: rows 0-15, 2-3: rows 16-31, each pair 32 columns)
// -> 32 bf16 values at dst.
inline void store_block_row(uint16_t* dst, const float (*tile)[256], int64_t i) {
  const float* lo = tile[(i / 16) * 2] + (i % 16) * 16;
  store_bf16x16(dst, lo);
  store_bf16x16(dst + 16, lo + 256);
}

// The 2 x 2 block's steps over one product's reduction: k values (a multiple of 32) from A's rows a0
// and a1 (a_stride bytes apart) and B's pair rows b0 and b1 (b_stride bytes apart), 32 per step.
inline void tile_steps(const uint16_t* a0, const uint16_t* a1, int64_t a_stride, int64_t a_step, const uint16_t* b0,
                       const uint16_t* b1, int64_t b_stride, int64_t b_step, int64_t k) {
  for (int64_t s = 0; s < k / 32; ++s) {
    _tile_loadd(4, a0 + s * a_step, a_stride);
    _tile_loadd(5, a1 + s * a_step, a_stride);
    _tile_loadd(6, b0 + s * b_step, b_stride);
    _tile_loadd(7, b1 + s * b_step, b_stride);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
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

using PairLists = std::vector<std::vector<std::pair<int64_t, int64_t>>>;

// Which pixel a kernel's lists of pairs are for: each tap's (q, p), each output pixel's (t, q) or
// each input pixel's (t, p).
enum class PairsOf { tap, output, input };

// The pixel pairs of a k x k convolution on an hin x win map with an ho x wo output, listed per tap
// or per pixel; walked output pixel by output pixel, each one's taps in order.
PairLists pixel_pairs(PairsOf of, int64_t hin, int64_t win, int64_t k, int64_t stride, int64_t padding, int64_t ho,
                      int64_t wo) {
  PairLists lists(of == PairsOf::tap ? k * k : of == PairsOf::output ? ho * wo : hin * win);
  for (int64_t p = 0; p < ho * wo; ++p)
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) {
        const int64_t y = (p / wo) * stride - padding + i, xx = (p % wo) * stride - padding + j;
        if (y < 0 || y >= hin || xx < 0 || xx >= win) continue;
        const int64_t t = i * k + j, q = y * win + xx;
        if (of == PairsOf::tap) lists[t].emplace_back(q, p);
        else if (of == PairsOf::output) lists[p].emplace_back(t, q);
        else lists[q].emplace_back(t, p);
      }
  return lists;
}

#ifdef CNNBENCH_AMX
// The forward pass as (O, C) @ (C, B) products: w (O, T, C) (a channels_last weight, the A operand as it
// is), xt = pack_pixels_transposed(x), lists[p] = the (t, q) of output pixel p -> out (B, P, O). Each
// (32 o, 32 b) block of output pixel p is one work unit; its fp32 tiles are transposed back in
// registers and rounded into out's rows.
void forward_transposed_tiles(const uint16_t* w, int64_t o, int64_t taps, int64_t c, const uint16_t* xt, int64_t bsz,
                              int64_t bp, const PairLists& lists, uint16_t* out) {
  const int64_t outputs = static_cast<int64_t>(lists.size()), nb = bp / 32, no = o / 32;
  at::parallel_for(0, outputs * no * nb, 1, [&](int64_t first, int64_t last) {
    configure_tiles();
    alignas(64) float tile[4][256];
    for (int64_t unit = first; unit < last; ++unit) {
      const int64_t b0 = (unit % nb) * 32, o0 = ((unit / nb) % no) * 32, p = unit / (nb * no);
      _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
      for (const auto& [t, q] : lists[p]) {
        const uint16_t* a0 = w + (o0 * taps + t) * c;
        const uint16_t* b0p = xt + (q * (c / 2) * bp + b0) * 2;
        tile_steps(a0, a0 + 16 * taps * c, taps * c * 2, 32, b0p, b0p + 32, bp * 4, 32 * bp, c);
      }
      _tile_stored(0, tile[0], 64); _tile_stored(1, tile[1], 64); _tile_stored(2, tile[2], 64); _tile_stored(3, tile[3], 64);
      for (int i = 0; i < 4; ++i) {  // tile i: output channels o0 + 16 (i / 2).., batch rows b0 + 16 (i % 2)..
        __m512i v[16];
        for (int r = 0; r < 16; ++r) v[r] = _mm512_load_si512(tile[i] + r * 16);
        transpose_down_to_32bit<16>(v);
        for (int r = 0; r < 16 && b0 + 16 * (i % 2) + r < bsz; ++r) {
          uint16_t* dst = out + ((b0 + 16 * (i % 2) + r) * outputs + p) * o + o0 + 16 * (i / 2);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), round_to_bf16(_mm512_castsi512_ps(v[r])));
        }
      }
    }
    _tile_release();
  });
}

// out[b, r, :] = sum over (t, s) in lists[r] of map[b, s, :] @ tap t: map (B, S, K) read in place, each tap
// t's (K, N) B operand taken from the channels_last weight (T taps): the input gradient's weight (K, T, N)
// with its rows interleaved in pairs (pack_tap_rows), or with `columns` the forward pass's weight (N, T, K)
// transposed (pack_tap_columns) -> out (B, R, N). Each (32 b, 32 n) block of an output pixel r is one work
// unit; the last rows, fewer than 32, are read from a zero-padded copy. A k x k weight is packed a block of 32
// columns at a time by the thread that runs that block's units, into a buffer that stays in its cache; a
// 1 x 1's all at once first. Input gradient ms, batch 128, caches flushed, medians of 21 alternating calls
// (session 23, ab_small.py), the whole weight packed first -> by blocks: layer4's 512 -> 512 at 2 x 2
// 1.29-1.55 -> 0.82-0.92, its strided 256 -> 512 0.79-0.89 -> 0.58-0.72, layer3's 256 -> 256 0.94-1.06 ->
// 0.94-0.98, a 1 x 1's 0.37 -> 0.41 (so not by blocks); layer3's 256 -> 256 forward 1.37-1.42 -> 0.92-0.94,
// its strided 128 -> 256 0.85 -> 0.85-0.87.
void map_rows_tiles(const uint16_t* map, int64_t bsz, int64_t pixels, int64_t k, const uint16_t* weight, int64_t taps,
                    int64_t n, const PairLists& lists, uint16_t* out, bool columns) {
  const int64_t outputs = static_cast<int64_t>(lists.size()), nb = (bsz + 31) / 32, full = bsz / 32, nn = n / 32;
  const int64_t row = pixels * k;  // map's elements per batch row
  std::unique_ptr<uint16_t[], FreeDeleter> tail;
  if (full < nb) {
    tail = aligned_buffer<uint16_t>(32 * row);
    const int64_t rows = bsz - full * 32;
    std::memcpy(tail.get(), map + full * 32 * row, sizeof(uint16_t) * rows * row);
    std::memset(tail.get() + rows * row, 0, sizeof(uint16_t) * (32 - rows) * row);
  }
  // One unit: batch rows bb * 32.. of output pixel r, columns n0..n0 + 32; tap t's B operand at b_of(t),
  // its pair rows b_stride bytes apart.
  auto unit_tiles = [&](int64_t bb, int64_t r, int64_t n0, auto b_of, int64_t b_stride, float (*tile)[256]) {
    const int64_t rows = std::min<int64_t>(32, bsz - bb * 32);
    if (lists[r].empty()) {  // a pixel no tap reaches (a strided 1 x 1's skipped input pixels)
      for (int64_t i = 0; i < rows; ++i) std::memset(out + ((bb * 32 + i) * outputs + r) * n + n0, 0, 64);
      return;
    }
    const uint16_t* base = bb < full ? map + bb * 32 * row : tail.get();
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    for (const auto& [t, s] : lists[r]) {
      const uint16_t* a0 = base + s * k;
      const uint16_t* b0 = b_of(t);
      tile_steps(a0, a0 + 16 * row, row * 2, 32, b0, b0 + 32, b_stride, 8 * b_stride, k);
    }
    _tile_stored(0, tile[0], 64); _tile_stored(1, tile[1], 64); _tile_stored(2, tile[2], 64); _tile_stored(3, tile[3], 64);
    for (int64_t i = 0; i < rows; ++i) store_block_row(out + ((bb * 32 + i) * outputs + r) * n + n0, tile, i);
  };
  if (taps > 1) {  // by blocks: taps x k / 2 pair rows of 64 values per 32 columns
    const int64_t pairs = k / 2;
    at::parallel_for(0, nn, 1, [&](int64_t first, int64_t last) {
      configure_tiles();
      alignas(64) float tile[4][256];
      auto block = aligned_buffer<uint16_t>(taps * pairs * 64);
      const Interleave interleave;
      for (int64_t nbk = first; nbk < last; ++nbk) {
        const int64_t n0 = nbk * 32;
        if (columns) {  // pack_tap_columns' 16 x 16 transposes, for these 32 columns
          const auto* w32 = reinterpret_cast<const uint32_t*>(weight);
          auto* b32 = reinterpret_cast<uint32_t*>(block.get());
          for (int64_t t = 0; t < taps; ++t)
            for (int64_t half = 0; half < 2; ++half)
              transpose_16_rows([&](int i) { return w32 + ((n0 + 16 * half + i) * taps + t) * pairs; }, pairs,
                                b32 + t * pairs * 32 + 16 * half, 32);
        } else {  // pack_tap_rows' pairs of rows, for these 32 columns
          for (int64_t i = 0; i < pairs; ++i)
            for (int64_t t = 0; t < taps; ++t) {
              const uint16_t* r0 = weight + (2 * i * taps + t) * n + n0;
              interleave.store(_mm512_loadu_si512(r0), _mm512_loadu_si512(r0 + taps * n), block.get() + (t * pairs + i) * 64);
            }
        }
        for (int64_t r = 0; r < outputs; ++r)
          for (int64_t bb = 0; bb < nb; ++bb)
            unit_tiles(bb, r, n0, [&](int64_t t) { return block.get() + t * pairs * 64; }, 128, tile);
      }
      _tile_release();
    });
    return;
  }
  auto packed = aligned_buffer<uint16_t>(taps * k * n);
  if (columns) pack_tap_columns(weight, n, taps, k, packed.get());
  else pack_tap_rows(weight, k, taps, n, packed.get());
  at::parallel_for(0, outputs * nn * nb, 1, [&](int64_t first, int64_t last) {
    configure_tiles();
    alignas(64) float tile[4][256];
    for (int64_t unit = first; unit < last; ++unit) {
      const int64_t bb = unit % nb, n0 = ((unit / nb) % nn) * 32, r = unit / (nb * nn);
      unit_tiles(bb, r, n0, [&](int64_t t) { return packed.get() + t * k * n + n0 * 2; }, n * 4, tile);
    }
    _tile_release();
  });
}

// The weight gradient: x (B, Q, C), grad (B, P, O), by_tap[t] = the (q, p) of tap t -> (O, C, k, k)
// channels_last. Each (tap, 32 o, 32 c) block sums all its pairs over the batch; taps without pairs
// get zeros.
void weight_grad_tiles(const uint16_t* x, const uint16_t* grad, int64_t bsz, int64_t hw_in, int64_t hw_out, int64_t c,
                       int64_t o, int64_t taps, const PairLists& by_tap, uint16_t* out) {
  const int64_t bp = std::max<int64_t>(32, (bsz + 31) / 32 * 32);
  auto gt = aligned_buffer<uint16_t>(hw_out * o * bp);
  auto xv = aligned_buffer<uint16_t>(hw_in * bp * c);
  at::parallel_for(0, 2, 1, [&](int64_t first, int64_t last) {  // the two packings side by side
    for (int64_t which = first; which < last; ++which) {
      if (which == 0) pack_batch_transposed(grad, bsz, hw_out, o, bp, gt.get());
      else pack_batch_pairs(x, bsz, hw_in, c, bp, xv.get());
    }
  });
  const int64_t ob = o / 32;
  at::parallel_for(0, taps * ob, 1, [&](int64_t first, int64_t last) {
    configure_tiles();
    alignas(64) float tile[4][256];
    for (int64_t unit = first; unit < last; ++unit) {
      const int64_t t = unit / ob, o0 = (unit % ob) * 32;
      for (int64_t c0 = 0; c0 < c; c0 += 32) {
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
        for (const auto& [q, p] : by_tap[t]) {
          const uint16_t* a0 = gt.get() + (p * o + o0) * bp;
          const uint16_t* b0 = xv.get() + q * (bp / 2) * c * 2 + c0 * 2;
          tile_steps(a0, a0 + 16 * bp, bp * 2, 32, b0, b0 + 32, c * 4, 32 * c, bp);
        }
        _tile_stored(0, tile[0], 64); _tile_stored(1, tile[1], 64); _tile_stored(2, tile[2], 64); _tile_stored(3, tile[3], 64);
        for (int i = 0; i < 4; ++i) {  // tile i: rows o0 + 16 (i / 2).., columns c0 + 16 (i % 2)..
          for (int r = 0; r < 16; ++r) {
            uint16_t* dst = out + ((o0 + 16 * (i / 2) + r) * taps + t) * c + c0 + 16 * (i % 2);
            store_bf16x16(dst, tile[i] + r * 16);
          }
        }
      }
    }
    _tile_release();
  });
}
#endif  // CNNBENCH_AMX

const uint16_t* bits(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr()); }
uint16_t* bits_out(at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr()); }

// The small-map kernels' checks. The geometry -> the output map (ho, wo).
std::pair<int64_t, int64_t> check_geometry(int64_t hin, int64_t win, int64_t k, int64_t stride, int64_t padding) {
  TORCH_CHECK(available(), "the AMX kernels need a CPU with AMX-BF16 under Linux");
  TORCH_CHECK(k >= 1 && stride >= 1 && padding >= 0 && hin >= 1 && win >= 1 && hin + 2 * padding >= k &&
              win + 2 * padding >= k, "k, stride, padding: ", k, ", ", stride, ", ", padding, " do not fit a ", hin,
              " x ", win, " map");
  return {(hin + 2 * padding - k) / stride + 1, (win + 2 * padding - k) / stride + 1};
}

// A (B, h * w, C) map: contiguous bf16, C a multiple of 32 (and `channels` where >= 0), B `batch` where >= 0.
void check_map(const char* name, const at::Tensor& t, int64_t batch, int64_t h, int64_t w, int64_t channels) {
  TORCH_CHECK(t.dim() == 3 && t.is_contiguous() && t.scalar_type() == at::kBFloat16, name,
              ": expected a contiguous bf16 (B, H*W, C) tensor");
  TORCH_CHECK(t.size(1) == h * w && t.size(2) % 32 == 0 && (channels < 0 || t.size(2) == channels) &&
              (batch < 0 || t.size(0) == batch), name, ": expected (", batch < 0 ? "B" : std::to_string(batch), ", ",
              h * w, ", ", channels < 0 ? "C" : std::to_string(channels), ") for a ", h, " x ", w,
              " map, channels in multiples of 32, got ", t.sizes());
}

// A square weight (O, C, k, k): channels_last bf16, O and C multiples of 32. Returns k.
int64_t check_weight(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 4 && w.scalar_type() == at::kBFloat16 && w.is_contiguous(at::MemoryFormat::ChannelsLast) &&
              w.size(2) == w.size(3) && w.size(0) % 32 == 0 && w.size(1) % 32 == 0,
              "weight: expected a channels_last bf16 (O, C, k, k) tensor with O and C multiples of 32, got ", w.sizes());
  return w.size(2);
}

}  // namespace

// x (B, hin * win, C) and grad (B, ho * wo, O), contiguous bf16, of a k x k convolution with this stride
// and zero padding -> its weight gradient (O, C, k, k) in bf16 with channels_last strides, from the pixel
// pairs each tap joins inside the map (weight_grad_tiles).
at::Tensor small_map_weight_grad(const at::Tensor& x, const at::Tensor& grad, int64_t hin, int64_t win, int64_t k,
                                 int64_t stride, int64_t padding) {
  const auto [ho, wo] = check_geometry(hin, win, k, stride, padding);
  check_map("x", x, -1, hin, win, -1);
  check_map("grad", grad, x.size(0), ho, wo, -1);
  const int64_t c = x.size(2), o = grad.size(2);
  const PairLists by_tap = pixel_pairs(PairsOf::tap, hin, win, k, stride, padding, ho, wo);
  auto out = at::empty({o, c, k, k}, x.options().memory_format(at::MemoryFormat::ChannelsLast));  // (O, k, k, C) in memory
#ifdef CNNBENCH_AMX
  weight_grad_tiles(bits(x), bits(grad), x.size(0), hin * win, ho * wo, c, o, k * k, by_tap, bits_out(out));
#endif
  return out;
}

namespace {

// The forward pass (of == PairsOf::output: x -> the output) or the input gradient (PairsOf::input: grad
// -> x's gradient) of a k x k convolution on an hin x win map with this stride and zero padding, from
// `map` (B, pixels, channels) and the channels_last weight (O, C, k, k).
at::Tensor small_map_pass(PairsOf of, const at::Tensor& map, const at::Tensor& weight, int64_t hin, int64_t win,
                          int64_t stride, int64_t padding) {
  const int64_t k = check_weight(weight), o = weight.size(0), c = weight.size(1);
  const auto [ho, wo] = check_geometry(hin, win, k, stride, padding);
  const bool forward = of == PairsOf::output;
  if (forward) check_map("x", map, -1, hin, win, c);
  else check_map("grad", map, -1, ho, wo, o);
  const int64_t bsz = map.size(0);
  const PairLists lists = pixel_pairs(of, hin, win, k, stride, padding, ho, wo);
  auto out = forward ? at::empty({bsz, ho * wo, o}, map.options()) : at::empty({bsz, hin * win, c}, map.options());
#ifdef CNNBENCH_AMX
  const int64_t taps = k * k;
  if (forward) {
    // Pack the smaller operand: x's pixels that pairs read (transposed), or the weight, unless x is not
    // under half the weight (the transposed form's epilogue costs a transpose per tile). Batch 128,
    // caches flushed, medians of 21 alternating calls (session 22, scratch), ms transposed / weight
    // packed: layer4's 512 -> 512 at 2 x 2 (x 0.5 MB, weight 4.7) 1.05 / 2.19, its strided 256 -> 512
    // (x 1 MB, weight 2.4) 0.90 / 1.19; layer3's 256 -> 256 (x 1 MB, weight 1.2) 1.42 / 1.22, its
    // strided 128 -> 256 (x 2 MB, weight 0.6) 1.32 / 0.88; the same bits either way.
    const int64_t bp = std::max<int64_t>(32, (bsz + 31) / 32 * 32);
    std::vector<char> read(hin * win, 0);
    for (const auto& list : lists)
      for (const auto& pair : list) read[pair.second] = 1;
    const int64_t read_pixels = std::count(read.begin(), read.end(), 1);
    if (2 * read_pixels * bp < taps * o) {
      auto xt = aligned_buffer<uint16_t>(hin * win * c * bp);
      pack_pixels_transposed(bits(map), bsz, hin * win, c, bp, read, xt.get());
      forward_transposed_tiles(bits(weight), o, taps, c, xt.get(), bsz, bp, lists, bits_out(out));
    } else {
      map_rows_tiles(bits(map), bsz, hin * win, c, bits(weight), taps, o, lists, bits_out(out), true);
    }
  } else {
    map_rows_tiles(bits(map), bsz, ho * wo, o, bits(weight), taps, c, lists, bits_out(out), false);
  }
#endif
  return out;
}

}  // namespace

// x (B, hin * win, C) contiguous bf16 and a channels_last bf16 weight (O, C, k, k) of a k x k
// convolution with this stride and zero padding -> its output (B, ho * wo, O), from the pixel pairs
// each output pixel's taps join inside the map (forward_transposed_tiles or map_rows_tiles).
at::Tensor small_map_forward(const at::Tensor& x, const at::Tensor& weight, int64_t hin, int64_t win, int64_t stride,
                             int64_t padding) {
  return small_map_pass(PairsOf::output, x, weight, hin, win, stride, padding);
}

// grad (B, ho * wo, O) contiguous bf16 and the channels_last bf16 weight (O, C, k, k) of a k x k
// convolution on an hin x win map with this stride and zero padding -> the input gradient
// (B, hin * win, C), from the pixel pairs each input pixel's taps join (map_rows_tiles).
at::Tensor small_map_input_grad(const at::Tensor& grad, const at::Tensor& weight, int64_t hin, int64_t win, int64_t stride,
                                int64_t padding) {
  return small_map_pass(PairsOf::input, grad, weight, hin, win, stride, padding);
}

// --- The forward pass of an image's few-channel stem (an RGB 7 x 7) -----------------------------------
//
// With k * C <= 32 (an RGB 7 x 7: 21 values), the k pixels one kernel row reads are consecutive values of
// a channels_last image row, so output pixel ox's window on input row y starts s * ox * C values into
// that row (padded left by p pixels): an A tile whose 16 rows are 16 consecutive output pixels is one
// tile load with a row stride of s * C values, 32 values per row of which the kernel row's k * C are the
// window (the weight's other rows are zeros). Each output row sums its k kernel rows' products (those
// inside the image) in fp32 tiles and is rounded to bf16 once, as oneDNN's is. oneDNN's kernel for this
// shape (3 input channels) ran at a third of its speed on the layers after it: ResNet-18's stem at 64 px,
// batch 128, 3.0-5.8 ms of the step (session 23).
#ifdef CNNBENCH_AMX
namespace {

// The weight (O, k, k, C) -> out[i][O / 16][16][16][2]: kernel row i's k * C values (zero to 32) as B
// operands of 16 output channels, in pairs.
void pack_window_weight(const uint16_t* w, int64_t o, int64_t k, int64_t c, uint16_t* out) {
  const int64_t row = k * c;
  for (int64_t i = 0; i < k; ++i)
    for (int64_t ob = 0; ob < o / 16; ++ob)
      for (int64_t pr = 0; pr < 16; ++pr)
        for (int64_t n = 0; n < 16; ++n)
          for (int64_t e = 0; e < 2; ++e) {
            const int64_t kk = 2 * pr + e, oc = ob * 16 + n;
            out[(((i * (o / 16) + ob) * 16 + pr) * 16 + n) * 2 + e] = kk < row ? w[(oc * k + i) * row + kk] : 0;
          }
}

}  // namespace
#endif

// x (N, H, W, C) contiguous bf16 and a channels_last bf16 weight (O, C, k, k), k * C <= 32, O a multiple
// of 32, of a k x k convolution with this stride and zero padding -> its output (N, O, Ho, Wo) in bf16
// with channels_last strides; an undefined tensor where x holds an infinity or a NaN (a tile row reads
// past its window, whose zero weights would turn those into NaN: the caller runs torch's convolution).
at::Tensor window_forward(const at::Tensor& x, const at::Tensor& weight, int64_t stride, int64_t padding) {
  TORCH_CHECK(available(), "the AMX kernels need a CPU with AMX-BF16 under Linux");
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous() && x.scalar_type() == at::kBFloat16,
              "x: expected a contiguous bf16 (N, H, W, C) tensor");
  const int64_t n = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3);
  TORCH_CHECK(weight.dim() == 4 && weight.scalar_type() == at::kBFloat16 &&
              weight.is_contiguous(at::MemoryFormat::ChannelsLast) && weight.size(2) == weight.size(3) &&
              weight.size(1) == c && weight.size(0) % 32 == 0 && weight.size(2) * c <= 32,
              "weight: expected a channels_last bf16 (O, ", c, ", k, k) tensor, O a multiple of 32 and k * ", c,
              " <= 32, got ", weight.sizes());
  const int64_t o = weight.size(0), k = weight.size(2);
  TORCH_CHECK(stride >= 1 && padding >= 0 && h + 2 * padding >= k && w + 2 * padding >= k, "k, stride, padding: ", k,
              ", ", stride, ", ", padding, " do not fit a ", h, " x ", w, " map");
  const int64_t ho = (h + 2 * padding - k) / stride + 1, wo = (w + 2 * padding - k) / stride + 1;
  auto out = at::empty({n, o, ho, wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
#ifdef CNNBENCH_AMX
  // Rows padded with zero pixels: p on the left, and on the right as far as the last pair of 16-pixel tiles reads.
  const int64_t tiles = (wo + 31) / 32 * 2;
  const int64_t wp = std::max(w + 2 * padding, stride * (tiles * 16 - 1) + (32 + c - 1) / c);
  const int64_t row = wp * c;
  auto padded = aligned_buffer<uint16_t>(n * h * row);
  const uint16_t* xp = bits(x);
  std::atomic<bool> finite{true};
  at::parallel_for(0, n * h, 16, [&](int64_t first, int64_t last) {
    bool ok = true;
    for (int64_t r = first; r < last; ++r) {
      uint16_t* dst = padded.get() + r * row;
      const uint16_t* src = xp + r * w * c;
      std::memset(dst, 0, sizeof(uint16_t) * padding * c);
      std::memcpy(dst + padding * c, src, sizeof(uint16_t) * w * c);
      std::memset(dst + (padding + w) * c, 0, sizeof(uint16_t) * (wp - padding - w) * c);
      uint16_t special = 0;  // an all-ones exponent: an infinity or a NaN
      for (int64_t i = 0; i < w * c; ++i) special |= static_cast<uint16_t>((src[i] & 0x7F80) == 0x7F80);
      ok &= special == 0;
    }
    if (!ok) finite = false;
  });
  if (!finite) return at::Tensor();
  auto packed = aligned_buffer<uint16_t>(k * o * 32);
  pack_window_weight(bits(weight), o, k, c, packed.get());
  uint16_t* op = bits_out(out);
  const int64_t a_stride = stride * c * 2;  // bytes between consecutive output pixels' windows
  at::parallel_for(0, n * ho, 1, [&](int64_t first, int64_t last) {
    configure_tiles();
    alignas(64) float tile[4][256];
    for (int64_t r = first; r < last; ++r) {
      const int64_t b = r / ho, oy = r % ho;
      for (int64_t t = 0; t < tiles; t += 2) {  // output pixels 16 t.., 16 (t + 1)..
        for (int64_t o0 = 0; o0 < o; o0 += 32) {
          _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
          for (int64_t i = 0; i < k; ++i) {
            const int64_t y = oy * stride - padding + i;
            if (y < 0 || y >= h) continue;
            const uint16_t* a0 = padded.get() + (b * h + y) * row + stride * 16 * t * c;
            const uint16_t* b0 = packed.get() + (i * (o / 16) + o0 / 16) * 512;
            _tile_loadd(4, a0, a_stride);
            _tile_loadd(5, a0 + stride * 16 * c, a_stride);
            _tile_loadd(6, b0, 64);
            _tile_loadd(7, b0 + 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
          _tile_stored(0, tile[0], 64); _tile_stored(1, tile[1], 64); _tile_stored(2, tile[2], 64); _tile_stored(3, tile[3], 64);
          for (int64_t px = 0; px < 32 && 16 * t + px < wo; ++px)  // output pixels 16 t + px
            store_block_row(op + ((b * ho + oy) * wo + 16 * t + px) * o + o0, tile, px);
        }
      }
    }
    _tile_release();
  });
#endif
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("available", &available, "whether this CPU and process can run the AMX kernels");
  module.def("weight_grad", &weight_grad,
             "(N, H, W, C) x, (N, Ho, Wo, O) grad, k, stride, padding -> (O, C, k, k) weight gradient");
  module.def("window_forward", &window_forward,
             "(N, H, W, C) x, (O, C, k, k) weight with k * C <= 32, stride, padding -> (N, O, Ho, Wo) output, or undefined");
  module.def("small_map_forward", &small_map_forward,
             "(B, Hin*Win, C) x, (O, C, k, k) weight, hin, win, stride, padding -> (B, Ho*Wo, O) output");
  module.def("small_map_input_grad", &small_map_input_grad,
             "(B, Ho*Wo, O) grad, (O, C, k, k) weight, hin, win, stride, padding -> (B, Hin*Win, C) input gradient");
  module.def("small_map_weight_grad", &small_map_weight_grad,
             "(B, Hin*Win, C) x, (B, Ho*Wo, O) grad, hin, win, k, stride, padding -> (O, C, k, k) weight gradient");
}
