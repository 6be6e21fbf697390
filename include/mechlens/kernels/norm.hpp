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
        n, 0.0f, [](const float_batch& acc, const float_batch& v) { return xsimd::fma(v, v, acc); }, x);
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

/// out = (x - mean) / sqrt(var + eps) * weight + bias with the biased variance (weight and bias may each be null);
/// returns sqrt(var + eps). `out` may equal `x`. Two passes (mean, then centred squares) keep the variance accurate
/// when the mean is large compared with the spread.
inline float layernorm(float* out, const float* x, const float* weight, const float* bias, index_t n, float eps) {
    const float sum = detail::reduce_sum(
        n, 0.0f, [](const float_batch& acc, const float_batch& v) { return acc + v; }, x);
    const float mean = sum / static_cast<float>(n);
    const float_batch m(mean);
    const float squares = detail::reduce_sum(
        n, mean,
        [=](const float_batch& acc, const float_batch& v) {
            const float_batch d = v - m;
            return xsimd::fma(d, d, acc);
        },
        x);
    const float s = std::sqrt(squares / static_cast<float>(n) + eps);
    const float_batch scale(s);
    if (weight && bias)
        detail::transform(
            out, n,
            [=](const float_batch& v, const float_batch& g, const float_batch& b) {
                return xsimd::fma(detail::divide(v - m, scale), g, b);
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
    return s;
}

}  // namespace kernels
MECHLENS_END_NAMESPACE
