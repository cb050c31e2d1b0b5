// Flush-to-zero (FTZ) and denormals-are-zero (DAZ) on every thread of torch's intra-op pool.
//
// Why hand-written: torch.set_flush_denormal sets these x86 MXCSR bits on the calling thread
// only, and torch's other threads keep computing with subnormal floats, each operation on one
// taking a slow microcode path. With 2 threads, the engine's fused Adam over report 000's model E
// (42.7 M parameters, half of the weights and first moments subnormal, as its run had after six
// epochs) took 291 ms per step with torch.set_flush_denormal(True), 293 without it, and 26 with
// the bits set here on both threads (benchmarks/probe_denormal.py).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cstdint>

#if defined(__SSE3__)
#include <pmmintrin.h>
#include <xmmintrin.h>
#endif

namespace {

// Sets or clears FTZ and DAZ on each thread of the intra-op pool (at::parallel_for hands each of
// get_num_threads() threads one index, the calling thread included) and returns how many threads
// were set; 0 where the CPU has no such bits.
int64_t set_flush_denormal(bool on) {
#if defined(__SSE3__)
  const int64_t threads = at::get_num_threads();
  std::atomic<int64_t> done{0};
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      _MM_SET_FLUSH_ZERO_MODE(on ? _MM_FLUSH_ZERO_ON : _MM_FLUSH_ZERO_OFF);
      _MM_SET_DENORMALS_ZERO_MODE(on ? _MM_DENORMALS_ZERO_ON : _MM_DENORMALS_ZERO_OFF);
      done.fetch_add(1);
    }
  });
  return done.load();
#else
  (void)on;
  return 0;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("set_flush_denormal", &set_flush_denormal,
             "FTZ + DAZ on (True) or off on every intra-op thread; returns the threads set");
}
