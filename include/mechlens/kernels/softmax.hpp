#pragma once
/// @file
/// Numerically stable softmax over one row, and its causal-mask variant, SIMD.

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/kernels/simd.hpp"

MECHLENS_BEGIN_NAMESPACE
namespace kernels {

/// In-place softmax of x[0..n), shifted by the row maximum so no exponential overflows. A row whose maximum is
/// not finite (all -inf, or containing +inf or NaN) yields NaN.
inline void softmax(float* x, index_t n) {
    if (n <= 0) return;
    const float_batch peak(detail::max_of(x, n));
    // Tail lanes are padded with -inf so exp() makes them contribute exactly zero to the sum.
    float_batch acc0(0.0f), acc1(0.0f);
    index_t i = 0;
    for (; i + 2 * simd_width <= n; i += 2 * simd_width) {
        const float_batch e0 = xsimd::exp(float_batch::load_unaligned(x + i) - peak);
        const float_batch e1 = xsimd::exp(float_batch::load_unaligned(x + i + simd_width) - peak);
        e0.store_unaligned(x + i);
        e1.store_unaligned(x + i + simd_width);
        acc0 += e0;
        acc1 += e1;
    }
    for (; i + simd_width <= n; i += simd_width) {
        const float_batch e = xsimd::exp(float_batch::load_unaligned(x + i) - peak);
        e.store_unaligned(x + i);
        acc0 += e;
    }
    if (i < n) {
        const float_batch e =
            xsimd::exp(detail::load_partial(x + i, n - i, -std::numeric_limits<float>::infinity()) - peak);
        detail::store_partial(x + i, e, n - i);
        acc1 += e;
    }
    const float_batch sum(xsimd::hadd(acc0 + acc1));
    // Dividing (not multiplying by 1/sum) keeps each probability within one rounding of exp/sum.
    detail::transform(
        x, n, [=](const float_batch& v) { return detail::divide(v, sum); }, x);
}

/// Softmax over row[0..valid), zeros in row[valid..n) (a causal attention row of which only the first `valid`
/// keys are visible). Throws std::invalid_argument unless 1 <= valid <= n.
inline void masked_softmax(float* row, index_t valid, index_t n) {
    if (valid < 1 || valid > n)
        throw std::invalid_argument("masked_softmax: need 1 <= valid <= n, got valid " + std::to_string(valid) +
                                    ", n " + std::to_string(n));
    softmax(row, valid);
    std::fill(row + valid, row + n, 0.0f);
}

}  // namespace kernels
MECHLENS_END_NAMESPACE
