#pragma once
/// @file
/// Element-wise activations (SiLU, SwiGLU gate, GELU in its tanh and erf forms), SIMD.
///
/// Each is written in a form that stays finite and accurate at both extremes: x * sigmoid(y) as x / (1 + exp(-y))
/// gives x when exp(-y) underflows and a signed zero when it overflows, with no 1 + (-1) cancellation.

#include <cmath>
#include <numbers>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/kernels/simd.hpp"

MECHLENS_BEGIN_NAMESPACE
namespace kernels {

namespace detail {

/// x * sigmoid(x), lane-wise.
inline float_batch silu(const float_batch& x) { return detail::divide(x, float_batch(1.0f) + xsimd::exp(-x)); }

/// 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), evaluated as x * sigmoid(2u), lane-wise.
inline float_batch gelu_tanh(const float_batch& x) {
    static constexpr double k = 2.0 * std::numbers::inv_sqrtpi * std::numbers::sqrt2;  // 2 sqrt(2/pi)
    const float_batch linear(static_cast<float>(k));
    const float_batch cubic(static_cast<float>(k * 0.044715));
    const float_batch two_u = x * fused_multiply_add(cubic, x * x, linear);
    return detail::divide(x, float_batch(1.0f) + xsimd::exp(-two_u));
}

/// 0.5 x (1 + erf(x / sqrt 2)), evaluated as 0.5 x erfc(-x / sqrt 2) so the negative tail keeps its relative
/// accuracy, lane-wise.
inline float_batch gelu_erf(const float_batch& x) {
    const float_batch inv_sqrt2(static_cast<float>(1.0 / std::numbers::sqrt2));
    return float_batch(0.5f) * x * xsimd::erfc(-x * inv_sqrt2);
}

}  // namespace detail

/// out = x * sigmoid(x). `out` may equal `x`.
inline void silu(float* out, const float* x, index_t n) {
    detail::transform(
        out, n, [](const float_batch& v) { return detail::silu(v); }, x);
}

/// out = silu(gate) * up (the SwiGLU gate of Llama MLPs). `out` may equal `gate` or `up`.
inline void silu_mul(float* out, const float* gate, const float* up, index_t n) {
    detail::transform(
        out, n, [](const float_batch& g, const float_batch& u) { return detail::silu(g) * u; }, gate, up);
}

/// out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (GPT-2's "gelu_new"). `out` may equal `x`.
inline void gelu_tanh(float* out, const float* x, index_t n) {
    detail::transform(
        out, n, [](const float_batch& v) { return detail::gelu_tanh(v); }, x);
}

/// out = 0.5 x (1 + erf(x / sqrt 2)) (the exact GELU). `out` may equal `x`.
inline void gelu_erf(float* out, const float* x, index_t n) {
    detail::transform(
        out, n, [](const float_batch& v) { return detail::gelu_erf(v); }, x);
}

/// out = max(x, 0). `out` may equal `x`.
inline void relu(float* out, const float* x, index_t n) {
    detail::transform(
        out, n, [](const float_batch& v) { return xsimd::max(v, float_batch(0.0f)); }, x);
}

}  // namespace kernels
MECHLENS_END_NAMESPACE
