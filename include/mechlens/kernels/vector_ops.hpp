#pragma once
/// @file
/// BLAS-1 style vector operations (add, scale, axpy, dot), SIMD.

#include "mechlens/detail/namespace.hpp"
#include "mechlens/kernels/simd.hpp"

MECHLENS_BEGIN_NAMESPACE
namespace kernels {

/// out = a + b. `out` may equal `a` or `b` (the residual stream update).
inline void add(float* out, const float* a, const float* b, index_t n) {
    detail::transform(
        out, n, [](const float_batch& u, const float_batch& v) { return u + v; }, a, b);
}

/// x *= s.
inline void scale(float* x, float s, index_t n) {
    const float_batch factor(s);
    detail::transform(
        x, n, [=](const float_batch& v) { return v * factor; }, x);
}

/// y += a * x (fused where the target has FMA). `y` must not partially overlap `x`.
inline void axpy(float* y, float a, const float* x, index_t n) {
    const float_batch factor(a);
    detail::transform(
        y, n, [=](const float_batch& v, const float_batch& u) { return fused_multiply_add(factor, u, v); }, y, x);
}

/// Sum of a[i] * b[i], accumulated with fused multiply-adds in four float batches.
inline float dot(const float* a, const float* b, index_t n) {
    return detail::reduce_sum(
        n, 0.0f,
        [](const float_batch& acc, const float_batch& u, const float_batch& v) {
            return fused_multiply_add(u, v, acc);
        },
        a, b);
}

}  // namespace kernels
MECHLENS_END_NAMESPACE
