#pragma once
/// @file
/// RMSNorm and LayerNorm over one row, SIMD.

#include <cmath>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/kernels/simd.hpp"

MECHLENS_BEGIN_NAMESPACE
namespace kernels {

/// sqrt(mean(x^2) + eps) over x[0..n); n must be positive.
inline float rms_scale(const float* x, index_t n, float eps) {
    const float squares = detail::reduce_sum(
        n, 0.0f, [](const float_batch& acc, const float_batch& v) { return fused_multiply_add(v, v, acc); }, x);
    return std::sqrt(squares / static_cast<float>(n) + eps);
}

/// out = x / rms_scale(x, n, eps) * weight (weight may be null: no gain); returns the scale. `out` may equal `x`.
/// Divides rather than multiplying by a reciprocal: one rounding per element instead of two.
inline float rmsnorm(float* out, const float* x, const float* weight, index_t n, float eps) {
    const float s = rms_scale(x, n, eps);
    const float_batch scale(s);
    if (weight)
        detail::transform(
            out, n, [=](const float_batch& v, const float_batch& g) { return detail::divide(v, scale) * g; }, x, weight);
    else
        detail::transform(
            out, n, [=](const float_batch& v) { return detail::divide(v, scale); }, x);
    return s;
}

/// The mean of a row and its LayerNorm scale sqrt(var + eps).
struct layernorm_stats {
    float mean;   ///< Mean of the row.
    float scale;  ///< sqrt(biased variance + eps).
};

/// The mean and LayerNorm scale of x[0, n): two passes (mean, then centred squares), as layernorm computes them.
inline layernorm_stats layernorm_moments(const float* x, index_t n, float eps) {
    const float sum = detail::reduce_sum(
        n, 0.0f, [](const float_batch& acc, const float_batch& v) { return acc + v; }, x);
    const float mean = sum / static_cast<float>(n);
    const float_batch m(mean);
    const float squares = detail::reduce_sum(
        n, mean,
        [=](const float_batch& acc, const float_batch& v) {
            const float_batch d = v - m;
            return fused_multiply_add(d, d, acc);
        },
        x);
    return {mean, std::sqrt(squares / static_cast<float>(n) + eps)};
}

/// out = (x - mean) / sqrt(var + eps) * weight + bias with the biased variance (weight and bias may each be null);
/// returns sqrt(var + eps). `out` may equal `x`. Two passes (mean, then centred squares) keep the variance accurate
/// when the mean is large compared with the spread.
inline float layernorm(float* out, const float* x, const float* weight, const float* bias, index_t n, float eps) {
    const layernorm_stats stats = layernorm_moments(x, n, eps);
    const float_batch m(stats.mean), scale(stats.scale);
    if (weight && bias)
        detail::transform(
            out, n,
            [=](const float_batch& v, const float_batch& g, const float_batch& b) {
                return fused_multiply_add(detail::divide(v - m, scale), g, b);
            },
            x, weight, bias);
    else if (weight)
        detail::transform(
            out, n, [=](const float_batch& v, const float_batch& g) { return detail::divide(v - m, scale) * g; }, x, weight);
    else if (bias)
        detail::transform(
            out, n, [=](const float_batch& v, const float_batch& b) { return detail::divide(v - m, scale) + b; }, x, bias);
    else
        detail::transform(
            out, n, [=](const float_batch& v) { return detail::divide(v - m, scale); }, x);
    return stats.scale;
}

/// out = x * weight + bias elementwise, fused as layernorm fuses it, so a hooked LayerNorm that applies its gain and
/// bias after the hook rounds exactly like the unhooked one. `out` may equal `x`.
inline void gain_and_bias(float* out, const float* x, const float* weight, const float* bias, index_t n) {
    detail::transform(
        out, n,
        [](const float_batch& v, const float_batch& g, const float_batch& b) { return fused_multiply_add(v, g, b); },
        x, weight, bias);
}

}  // namespace kernels
MECHLENS_END_NAMESPACE
