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
