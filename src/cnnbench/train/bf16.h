// bf16 <-> float for the CPU kernels (fused_bn.cpp, nhwc_ops.cpp): bf16 tensors are read as their
// uint16_t bits and widened by hand, which the compiler vectorises (-O3 -march=native), where
// c10::BFloat16's operators go through a function call per element.
#pragma once

#include <cstdint>
#include <cstring>

inline float bf16_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint16_t float_to_bf16(float f) {  // round to nearest even, NaN kept NaN (as c10::BFloat16)
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return f != f ? static_cast<uint16_t>(0x7FC0) : static_cast<uint16_t>(rounded);
}

// Element access for kernels templated on the storage type: float, or uint16_t holding bf16 bits.
inline float load_value(float v) { return v; }
inline float load_value(uint16_t v) { return bf16_to_float(v); }

template <typename T> inline T store_value(float f);
template <> inline float store_value<float>(float f) { return f; }
template <> inline uint16_t store_value<uint16_t>(float f) { return float_to_bf16(f); }

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>

// 16 floats -> 16 bf16 with float_to_bf16's rounding (to nearest even, a NaN as 0x7FC0), for the AVX-512
// paths (gcc leaves float_to_bf16 over a 16-value row scalar: fp32 tiles to bf16 outputs in amx_conv.cpp).
inline __m256i round_to_bf16(__m512 f) {
  const __m512i u = _mm512_castps_si512(f);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(r);
}

// 16 bf16 at p -> 16 floats (exact).
inline __m512 load_bf16x16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}

// round_to_bf16 of 16 floats at src, stored at dst.
inline void store_bf16x16(uint16_t* dst, const float* src) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), round_to_bf16(_mm512_loadu_ps(src)));
}
#endif
