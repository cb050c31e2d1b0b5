// One SGD or Adam(W) step over float32 CPU parameters in one pass, writing each weight's bf16 copy on the way.
//
// Why hand-written: under bf16 autocast every convolution and linear layer casts its float32
// weight to bf16 in the forward pass (a read of the weight and a write of the copy, every step),
// and torch's SGD then updates the weight in three passes (momentum *= mu, momentum += g,
// weight -= lr * momentum), each reading and writing whole tensors. On ResNet-18 at 64 px
// (batch 128, 2-core AMX Xeon, torch 2.14) those weight-sized passes took about 20 ms of a 195 ms
// training step (torch.profiler, session 18). Here each element is read once, updated in
// registers and written once, and its bf16 rounding is written beside it for the next forward
// pass (cnnbench.train.weight_copies).
//
// The arithmetic is torch's single-tensor SGD and Adam, operation for operation and in float32 as
// ATen's vectorised kernels do it: each `add(x, alpha=a)`, `lerp` and `addcmul` is one fused
// multiply-add, written as std::fma, and `addcdiv` a multiply, a divide and an add (no expression
// here adds a bare product, which the compiler could fuse on its own). SGD's weights come out bit
// for bit as torch.optim.SGD's default CPU path leaves them; Adam's too except where torch's
// square root, taken through MKL's vector math, rounds otherwise than the correctly rounded one
// here (a few values in a thousand, one unit in the last place; tests/train/test_weight_copies.py).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "bf16.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

namespace {

struct Hyper {
  float lr, momentum, dampening_complement, weight_decay;
  bool nesterov, maximize;
};

// G: float, or uint16_t holding a bf16 gradient (widened exactly, as grad.to(float32) does).
template <typename G, bool kDecay, bool kMomentum, bool kFirst, bool kCopy>
void update(float* __restrict p, const G* __restrict g, float* __restrict m, uint16_t* __restrict copy,
            int64_t begin, int64_t end, const Hyper& h) {
  const float neg_lr = -h.lr;
  for (int64_t i = begin; i < end; ++i) {
    const float gi = load_value(g[i]);
    float d = h.maximize ? -gi : gi;
    if (kDecay) d = std::fma(p[i], h.weight_decay, d);        // grad.add(param, alpha=weight_decay)
    if (kMomentum) {
      float buf;
      if (kFirst) {
        buf = d;                                              // torch.clone(grad)
      } else {
        buf = m[i] * h.momentum;                              // buf.mul_(momentum)
        buf = std::fma(d, h.dampening_complement, buf);       // .add_(grad, alpha=1 - dampening)
      }
      m[i] = buf;
      d = h.nesterov ? std::fma(buf, h.momentum, d) : buf;    // grad.add(buf, alpha=momentum) or buf
    }
    const float w = std::fma(d, neg_lr, p[i]);                // param.add_(grad, alpha=-lr)
    p[i] = w;
    if (kCopy) copy[i] = float_to_bf16(w);
  }
}

template <typename G>
using Update = void (*)(float*, const G*, float*, uint16_t*, int64_t, int64_t, const Hyper&);

template <typename G, bool kDecay, bool kMomentum, bool kFirst>
Update<G> pick_copy(bool copy) {
  return copy ? update<G, kDecay, kMomentum, kFirst, true> : update<G, kDecay, kMomentum, kFirst, false>;
}

template <typename G, bool kDecay>
Update<G> pick_momentum(bool momentum, bool first, bool copy) {
  if (!momentum) return pick_copy<G, kDecay, false, false>(copy);
  return first ? pick_copy<G, kDecay, true, true>(copy) : pick_copy<G, kDecay, true, false>(copy);
}

template <typename G>
Update<G> pick(bool decay, bool momentum, bool first, bool copy) {
  return decay ? pick_momentum<G, true>(momentum, first, copy) : pick_momentum<G, false>(momentum, first, copy);
}

struct AdamHyper {
  float decay, weight_decay, lerp_weight, beta2, one_minus_beta2, bias_correction2_sqrt, eps, neg_step_size;
  bool maximize;
};

// torch's _single_tensor_adam for one tensor (amsgrad off); kDecoupled: AdamW's param.mul_(1 - lr * wd).
template <typename G, bool kDecay, bool kDecoupled>
void adam_block(float* __restrict p, const G* __restrict g, float* __restrict m, float* __restrict v,
                int64_t begin, int64_t end, const AdamHyper& h) {
  const bool small = std::abs(h.lerp_weight) < 0.5f;
  const float coeff = small ? h.lerp_weight : h.lerp_weight - 1.f;
  for (int64_t i = begin; i < end; ++i) {
    const float gi = load_value(g[i]);
    float d = h.maximize ? -gi : gi;
    float w = p[i];
    if (kDecay && kDecoupled) w = w * h.decay;                   // param.mul_(1 - lr * weight_decay)
    if (kDecay && !kDecoupled) d = std::fma(w, h.weight_decay, d);  // grad.add(param, alpha=weight_decay)
    const float diff = d - m[i];
    const float mi = std::fma(coeff, diff, small ? m[i] : d);    // exp_avg.lerp_(grad, 1 - beta1)
    m[i] = mi;
    const float vi = std::fma(h.one_minus_beta2 * d, d, v[i] * h.beta2);  // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    v[i] = vi;
    const float denom = std::sqrt(vi) / h.bias_correction2_sqrt + h.eps;  // (sqrt / bc2_sqrt).add_(eps)
    p[i] = w + h.neg_step_size * mi / denom;                     // param.addcdiv_(exp_avg, denom, value=-step_size)
  }
}

// The update in blocks of 2048 values, each block's bf16 copy written right after it while the
// block is in cache (one loop doing both ran at half the speed: gcc vectorised neither part well).
template <typename G, bool kDecay, bool kDecoupled, bool kCopy>
void adam_update(float* __restrict p, const G* __restrict g, float* __restrict m, float* __restrict v,
                 uint16_t* __restrict copy, int64_t begin, int64_t end, const AdamHyper& h) {
  constexpr int64_t kBlock = 2048;
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t e = std::min(end, b + kBlock);
    adam_block<G, kDecay, kDecoupled>(p, g, m, v, b, e, h);
    if (kCopy)
      for (int64_t i = b; i < e; ++i) copy[i] = float_to_bf16(p[i]);
  }
}

template <typename G>
using AdamUpdate = void (*)(float*, const G*, float*, float*, uint16_t*, int64_t, int64_t, const AdamHyper&);

template <typename G>
AdamUpdate<G> pick_adam(bool decay, bool decoupled, bool copy) {
  if (!decay) return copy ? adam_update<G, false, false, true> : adam_update<G, false, false, false>;
  if (decoupled) return copy ? adam_update<G, true, true, true> : adam_update<G, true, true, false>;
  return copy ? adam_update<G, true, false, true> : adam_update<G, true, false, false>;
}

void check_like(const at::Tensor& t, const at::Tensor& param, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype, name, ": expected a CPU ", c10::toString(dtype), " tensor");
  TORCH_CHECK(t.sizes() == param.sizes() && t.strides() == param.strides(), name,
              ": expected the parameter's shape and strides");
}

// What both steps check: a dense float32 CPU parameter and a float32 or bf16 gradient laid out like it.
void check_param_and_grad(const at::Tensor& param, const at::Tensor& grad) {
  TORCH_CHECK(param.device().is_cpu() && param.scalar_type() == at::kFloat && param.is_non_overlapping_and_dense(),
              "parameters must be dense float32 CPU tensors");
  TORCH_CHECK(grad.scalar_type() == at::kFloat || grad.scalar_type() == at::kBFloat16,
              "gradient: expected float32 or bfloat16, got ", grad.scalar_type());
  check_like(grad, param, grad.scalar_type(), "gradient");
}

// The bf16 copy's bits, checked against the parameter, or nullptr without a copy.
uint16_t* copy_data(const c10::optional<at::Tensor>& copy, const at::Tensor& param) {
  if (!copy) return nullptr;
  check_like(*copy, param, at::kBFloat16, "copy");
  return reinterpret_cast<uint16_t*>(copy->data_ptr<at::BFloat16>());
}

// run(gp) with the gradient's data as const float* or, for bf16, as its const uint16_t* bits.
template <typename Run>
void with_grad_data(const at::Tensor& grad, Run run) {
  if (grad.scalar_type() == at::kFloat) run(grad.data_ptr<float>());
  else run(reinterpret_cast<const uint16_t*>(grad.data_ptr<at::BFloat16>()));
}

template <typename P>
using Elem = std::remove_const_t<std::remove_pointer_t<P>>;

// The update went around ATen's in-place ops: count it on the tensors' version counters as
// torch.optim's in-place ops would, so that anything holding an older version (autograd's saved
// tensors, the forward pass's check of the copy) sees the change.
void bump_versions(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors)
    if (t != nullptr) torch::autograd::impl::bump_version(*t);
}

// One SGD step of one parameter: param -= lr * direction(grad) (a float32 or bf16 gradient), with
// its momentum buffer (none without momentum; first: the buffer starts as the gradient, as torch's
// first step does) and, with a copy, copy = bf16(param) after the update.
void sgd_step(at::Tensor param, at::Tensor grad, c10::optional<at::Tensor> buf, bool first,
              c10::optional<at::Tensor> copy, double lr, double momentum, double dampening, double weight_decay,
              bool nesterov, bool maximize) {
  check_param_and_grad(param, grad);
  const bool use_momentum = momentum != 0.0;
  TORCH_CHECK(!use_momentum || buf, "sgd_step: momentum needs a buffer");
  float* m = nullptr;
  if (use_momentum) {
    check_like(*buf, param, at::kFloat, "momentum buffer");
    m = buf->data_ptr<float>();
  }
  uint16_t* c = copy_data(copy, param);
  // Scalars as ATen passes them to a float32 kernel: each Python float rounded to float once.
  const Hyper h{static_cast<float>(lr), static_cast<float>(momentum), static_cast<float>(1.0 - dampening),
                static_cast<float>(weight_decay), nesterov, maximize};
  float* w = param.data_ptr<float>();
  with_grad_data(grad, [&](auto* gp) {
    const auto f = pick<Elem<decltype(gp)>>(weight_decay != 0.0, use_momentum, use_momentum && first, c != nullptr);
    at::parallel_for(0, param.numel(), 1 << 15, [&](int64_t begin, int64_t end) { f(w, gp, m, c, begin, end, h); });
  });
  bump_versions({&param, use_momentum ? &*buf : nullptr, c ? &*copy : nullptr});
}

// One Adam (or AdamW, decoupled) step of one parameter: param, its float32 or bf16 gradient, its
// exp_avg and exp_avg_sq (torch's state), an optional bf16 copy to write; step is the step count
// after this update (torch's state["step"]), from which the bias corrections come, in double, as
// torch computes them.
void adam_step(at::Tensor param, at::Tensor grad, at::Tensor exp_avg, at::Tensor exp_avg_sq,
               c10::optional<at::Tensor> copy, double step, double lr, double beta1, double beta2, double eps,
               double weight_decay, bool decoupled, bool maximize) {
  check_param_and_grad(param, grad);
  check_like(exp_avg, param, at::kFloat, "exp_avg");
  check_like(exp_avg_sq, param, at::kFloat, "exp_avg_sq");
  uint16_t* c = copy_data(copy, param);
  const double bias_correction1 = 1.0 - std::pow(beta1, step);
  const double bias_correction2 = 1.0 - std::pow(beta2, step);
  const AdamHyper h{static_cast<float>(1.0 - lr * weight_decay), static_cast<float>(weight_decay),
                    static_cast<float>(1.0 - beta1), static_cast<float>(beta2), static_cast<float>(1.0 - beta2),
                    static_cast<float>(std::pow(bias_correction2, 0.5)), static_cast<float>(eps),
                    static_cast<float>(-(lr / bias_correction1)), maximize};
  float* w = param.data_ptr<float>();
  float* m = exp_avg.data_ptr<float>();
  float* v = exp_avg_sq.data_ptr<float>();
  with_grad_data(grad, [&](auto* gp) {
    const auto f = pick_adam<Elem<decltype(gp)>>(weight_decay != 0.0, decoupled, c != nullptr);
    at::parallel_for(0, param.numel(), 1 << 15, [&](int64_t begin, int64_t end) { f(w, gp, m, v, c, begin, end, h); });
  });
  bump_versions({&param, &exp_avg, &exp_avg_sq, c ? &*copy : nullptr});
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("sgd_step", &sgd_step, "torch.optim.SGD's step of one tensor in one pass, writing its bf16 copy");
  module.def("adam_step", &adam_step, "torch.optim.Adam's (or AdamW's) step of one tensor in one pass, writing its bf16 copy");
}
