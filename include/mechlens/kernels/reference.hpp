#pragma once
/// @file
/// Scalar reference kernels: the same signatures as the SIMD kernels, written as the textbook formulas and
/// evaluated in double (rounded to float once per output), so tests can measure the SIMD kernels' float error.

#include <cmath>
#include <numbers>
#include <stdexcept>
#include <string>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/kernels/generic.hpp"
#include "mechlens/kernels/matmul.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE
namespace kernels::reference {

/// sqrt(mean(x^2) + eps) over x[0..n).
inline float rms_scale(const float* x, index_t n, float eps) {
    return static_cast<float>(generic::rms_scale(x, n, eps));
}

/// out = x / rms_scale(x) * weight (weight may be null: no gain); returns the scale. `out` may equal `x`.
inline float rmsnorm(float* out, const float* x, const float* weight, index_t n, float eps) {
    const double scale = generic::rms_scale(x, n, eps);
    for (index_t i = 0; i < n; ++i) {
        const double g = weight ? static_cast<double>(weight[i]) : 1.0;
        out[i] = static_cast<float>(static_cast<double>(x[i]) / scale * g);
    }
    return static_cast<float>(scale);
}

/// out = (x - mean) / sqrt(var + eps) * weight + bias, biased variance (weight/bias may be null); returns
/// sqrt(var + eps). `out` may equal `x`.
inline float layernorm(float* out, const float* x, const float* weight, const float* bias, index_t n, float eps) {
    double sum = 0.0;
    for (index_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]);
    const double mean = sum / static_cast<double>(n);
    double squares = 0.0;
    for (index_t i = 0; i < n; ++i) {
        const double d = static_cast<double>(x[i]) - mean;
        squares += d * d;
    }
    const double scale = std::sqrt(squares / static_cast<double>(n) + static_cast<double>(eps));
    for (index_t i = 0; i < n; ++i) {
        double y = (static_cast<double>(x[i]) - mean) / scale;
        if (weight) y *= static_cast<double>(weight[i]);
        if (bias) y += static_cast<double>(bias[i]);
        out[i] = static_cast<float>(y);
    }
    return static_cast<float>(scale);
}

/// In-place softmax of x[0..n), shifted by the maximum for stability.
inline void softmax(float* x, index_t n) {
    if (n <= 0) return;
    double max = static_cast<double>(x[0]);
    // fmax written out: GCC 12's vectoriser crashes (internal compiler error in vect_transform_reduction) on an
    // fmax reduction loop when targeting AArch64. Same result: a NaN is skipped unless everything before was NaN.
    for (index_t i = 1; i < n; ++i) {
        const double v = static_cast<double>(x[i]);
        if (std::isnan(max) || v > max) max = v;
    }
    double sum = 0.0;
    for (index_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - max);
    for (index_t i = 0; i < n; ++i) x[i] = static_cast<float>(std::exp(static_cast<double>(x[i]) - max) / sum);
}

/// Softmax over row[0..valid), zeros in row[valid..n); throws std::invalid_argument unless 1 <= valid <= n.
inline void masked_softmax(float* row, index_t valid, index_t n) {
    if (valid < 1 || valid > n)
        throw std::invalid_argument("masked_softmax: need 1 <= valid <= n, got valid " + std::to_string(valid) +
                                    ", n " + std::to_string(n));
    softmax(row, valid);
    for (index_t i = valid; i < n; ++i) row[i] = 0.0f;
}

/// out = x * sigmoid(x). `out` may equal `x`.
inline void silu(float* out, const float* x, index_t n) {
    for (index_t i = 0; i < n; ++i) out[i] = static_cast<float>(generic::silu(static_cast<double>(x[i])));
}

/// out = silu(gate) * up (the SwiGLU gate). `out` may equal `gate` or `up`.
inline void silu_mul(float* out, const float* gate, const float* up, index_t n) {
    for (index_t i = 0; i < n; ++i)
        out[i] = static_cast<float>(generic::silu(static_cast<double>(gate[i])) * static_cast<double>(up[i]));
}

/// out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). `out` may equal `x`.
inline void gelu_tanh(float* out, const float* x, index_t n) {
    const double k = std::sqrt(2.0 / std::numbers::pi);
    for (index_t i = 0; i < n; ++i) {
        const double v = static_cast<double>(x[i]);
        out[i] = static_cast<float>(0.5 * v * (1.0 + std::tanh(k * (v + 0.044715 * v * v * v))));
    }
}

/// out = 0.5 x (1 + erf(x / sqrt 2)). `out` may equal `x`.
inline void gelu_erf(float* out, const float* x, index_t n) {
    for (index_t i = 0; i < n; ++i) {
        const double v = static_cast<double>(x[i]);
        out[i] = static_cast<float>(0.5 * v * (1.0 + std::erf(v / std::numbers::sqrt2)));
    }
}

/// out = a + b. `out` may equal `a` or `b`.
inline void add(float* out, const float* a, const float* b, index_t n) {
    for (index_t i = 0; i < n; ++i) out[i] = static_cast<float>(static_cast<double>(a[i]) + static_cast<double>(b[i]));
}

/// x *= s.
inline void scale(float* x, float s, index_t n) {
    for (index_t i = 0; i < n; ++i) x[i] = static_cast<float>(static_cast<double>(x[i]) * static_cast<double>(s));
}

/// y += a * x.
inline void axpy(float* y, float a, const float* x, index_t n) {
    for (index_t i = 0; i < n; ++i)
        y[i] = static_cast<float>(static_cast<double>(y[i]) + static_cast<double>(a) * static_cast<double>(x[i]));
}

/// Sum of a[i] * b[i].
inline float dot(const float* a, const float* b, index_t n) {
    double sum = 0.0;
    for (index_t i = 0; i < n; ++i) sum += static_cast<double>(a[i]) * static_cast<double>(b[i]);
    return static_cast<float>(sum);
}

/// Rotates pairs (2i, 2i+1) of head[0..d_head) by the angles whose cos/sin are cos[i]/sin[i] (llama2.c, GGUF).
inline void rope_adjacent(float* head, const float* cos, const float* sin, index_t d_head) {
    for (index_t i = 0; i < d_head / 2; ++i) {
        const double a = static_cast<double>(head[2 * i]), b = static_cast<double>(head[2 * i + 1]);
        const double c = static_cast<double>(cos[i]), s = static_cast<double>(sin[i]);
        head[2 * i] = static_cast<float>(a * c - b * s);
        head[2 * i + 1] = static_cast<float>(a * s + b * c);
    }
}

/// Rotates pairs (i, i + d_head/2) of head[0..d_head) by the angles whose cos/sin are cos[i]/sin[i] (Hugging Face).
inline void rope_split_halves(float* head, const float* cos, const float* sin, index_t d_head) {
    const index_t half = d_head / 2;
    for (index_t i = 0; i < half; ++i) {
        const double a = static_cast<double>(head[i]), b = static_cast<double>(head[i + half]);
        const double c = static_cast<double>(cos[i]), s = static_cast<double>(sin[i]);
        head[i] = static_cast<float>(a * c - b * s);
        head[i + half] = static_cast<float>(a * s + b * c);
    }
}

/// y += x w^T by the naive triple loop (double accumulation); same shape rules as kernels::linear_accumulate.
inline void linear_accumulate(tensor_view<const float, 2> x, tensor_view<const float, 2> w, tensor_view<float, 2> y) {
    kernels::detail::require_linear_shapes(x, w, y, "reference::linear_accumulate");
    for (index_t r = 0; r < x.extent(0); ++r)
        for (index_t o = 0; o < w.extent(0); ++o) {
            double sum = static_cast<double>(y(r, o));
            for (index_t k = 0; k < x.extent(1); ++k)
                sum += static_cast<double>(x(r, k)) * static_cast<double>(w(o, k));
            y(r, o) = static_cast<float>(sum);
        }
}

/// y = x w^T by the naive triple loop (double accumulation); same shape rules as kernels::linear.
inline void linear(tensor_view<const float, 2> x, tensor_view<const float, 2> w, tensor_view<float, 2> y) {
    kernels::detail::require_linear_shapes(x, w, y, "reference::linear");
    for (index_t r = 0; r < x.extent(0); ++r)
        for (index_t o = 0; o < w.extent(0); ++o) y(r, o) = 0.0f;
    linear_accumulate(x, w, y);
}

}  // namespace kernels::reference
MECHLENS_END_NAMESPACE
