#pragma once
/// @file
/// Scalar kernels for any floating type (float or double): the maths of the gradient pass, whose forward runs in
/// the precision being differentiated, and of double-precision reads such as the logit lens. The SIMD kernels in
/// the sibling headers are the float fast path of the inference pass; these are their exact-formula counterparts
/// plus the derivatives the backward pass needs.

#include <algorithm>
#include <cmath>
#include <limits>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/model/config.hpp"

MECHLENS_BEGIN_NAMESPACE
namespace kernels::generic {

/// sqrt(mean(x^2) + eps) over x[0..n), accumulated in double whatever T is.
template <class T>
double rms_scale(const T* x, index_t n, float eps) {
    double squares = 0.0;
    for (index_t i = 0; i < n; ++i) squares += static_cast<double>(x[i]) * static_cast<double>(x[i]);
    return std::sqrt(squares / static_cast<double>(n) + static_cast<double>(eps));
}

/// The mean of x[0, n), in double.
template <class T>
double mean(const T* x, index_t n) {
    double sum = 0.0;
    for (index_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]);
    return sum / static_cast<double>(n);
}

/// LayerNorm's scale sqrt(mean((x - mean)^2) + eps) of x[0, n) around `centre`, in double.
template <class T>
double centred_rms_scale(const T* x, index_t n, double centre, float eps) {
    double squares = 0.0;
    for (index_t i = 0; i < n; ++i) {
        const double c = static_cast<double>(x[i]) - centre;
        squares += c * c;
    }
    return std::sqrt(squares / static_cast<double>(n) + static_cast<double>(eps));
}

/// ReLU.
template <class T>
T relu(T x) {
    return x > T{0} ? x : T{0};
}
/// ReLU's derivative (0 at 0, as PyTorch).
template <class T>
T relu_derivative(T x) {
    return x > T{0} ? T{1} : T{0};
}

/// GELU, exact form: x * Phi(x) = x / 2 * (1 + erf(x / sqrt(2))) (TransformerLens "gelu", PyTorch's default).
template <class T>
T gelu_erf(T x) {
    const double v = static_cast<double>(x);
    return static_cast<T>(0.5 * v * (1.0 + std::erf(v * 0.70710678118654752440)));
}
/// d gelu_erf / dx = Phi(x) + x * phi(x).
template <class T>
T gelu_erf_derivative(T x) {
    const double v = static_cast<double>(x);
    const double cdf = 0.5 * (1.0 + std::erf(v * 0.70710678118654752440));
    const double pdf = 0.39894228040143267794 * std::exp(-0.5 * v * v);
    return static_cast<T>(cdf + v * pdf);
}

/// SiLU: x * sigmoid(x).
template <class T>
T silu(T x) {
    return x / (T{1} + std::exp(-x));
}

/// d silu(x) * b / d x for a gated product silu(x) * b, and d / d b: (d_x, d_b) = dy * (b * silu'(x), silu(x)).
template <class T>
void silu_mul_backward(T x, T b, T dy, T& d_x, T& d_b) {
    const T sigmoid = T{1} / (T{1} + std::exp(-x));
    d_b = dy * x * sigmoid;
    d_x = dy * b * sigmoid * (T{1} + x * (T{1} - sigmoid));
}

/// GELU, tanh approximation (GPT-2's gelu_new).
template <class T>
T gelu_tanh(T x) {
    const T c = static_cast<T>(0.7978845608028654), a = static_cast<T>(0.044715);
    return static_cast<T>(0.5) * x * (T{1} + std::tanh(c * (x + a * x * x * x)));
}

/// d gelu_tanh / dx.
template <class T>
T gelu_tanh_derivative(T x) {
    const T c = static_cast<T>(0.7978845608028654), a = static_cast<T>(0.044715);
    const T t = std::tanh(c * (x + a * x * x * x));
    return static_cast<T>(0.5) * (T{1} + t) + static_cast<T>(0.5) * x * (T{1} - t * t) * c * (T{1} + 3 * a * x * x);
}

/// The denominator of a softmax, max-subtracted and in double: exp(x - largest) summed.
struct exp_sum {
    double largest = 0.0;  ///< The largest input.
    double sum = 0.0;      ///< Sum of exp(x - largest).
    /// log(sum(exp(x))).
    [[nodiscard]] double log_sum() const { return largest + std::log(sum); }
    /// The softmax probability of an input `x`: exp(x - largest) / sum.
    [[nodiscard]] double probability(double x) const { return std::exp(x - largest) / sum; }
};

/// exp_sum over x[0], x[stride], ..., x[(n - 1) * stride] (n > 0), in double whatever T is.
template <class T>
exp_sum softmax_denominator(const T* x, index_t n, index_t stride = 1) {
    exp_sum out{-std::numeric_limits<double>::infinity(), 0.0};
    for (index_t v = 0; v < n; ++v) out.largest = std::max(out.largest, static_cast<double>(x[v * stride]));
    for (index_t v = 0; v < n; ++v) out.sum += std::exp(static_cast<double>(x[v * stride]) - out.largest);
    return out;
}

/// exp(x - log_sum): a softmax probability from log(sum(exp)), as cross-entropy's gradient needs it.
inline double softmax_from_log_sum(double x, double log_sum) { return std::exp(x - log_sum); }

/// Unnormalised sampling weights exp((x - max) / temperature) of n float logits into `weights`; returns their sum.
inline double tempered_exp_weights(const float* logits, index_t n, float temperature, double* weights) {
    const double max_logit = static_cast<double>(*std::max_element(logits, logits + n));
    double total = 0.0;
    for (index_t i = 0; i < n; ++i) {
        weights[i] = std::exp((static_cast<double>(logits[i]) - max_logit) / static_cast<double>(temperature));
        total += weights[i];
    }
    return total;
}

/// Softmax over row[0..visible) in place (max-subtracted), zeros in row[visible..n): one causal attention row.
template <class T>
void causal_softmax(T* row, index_t visible, index_t n) {
    T largest = -std::numeric_limits<T>::infinity();
    for (index_t j = 0; j < visible; ++j) largest = std::max(largest, row[j]);
    T sum = 0;
    for (index_t j = 0; j < visible; ++j) sum += (row[j] = std::exp(row[j] - largest));
    for (index_t j = 0; j < visible; ++j) row[j] /= sum;
    for (index_t j = visible; j < n; ++j) row[j] = T{0};
}

/// The softmax's backward for one causal row: d_scores = p * (d_p - sum(p * d_p)) over [0..visible), 0 after.
template <class T>
void causal_softmax_backward(const T* p, const T* d_p, T* d_scores, index_t visible, index_t n) {
    T dot = 0;
    for (index_t j = 0; j < visible; ++j) dot += p[j] * d_p[j];
    for (index_t j = 0; j < visible; ++j) d_scores[j] = p[j] * (d_p[j] - dot);
    for (index_t j = visible; j < n; ++j) d_scores[j] = T{0};
}

/// Rotary tables for positions [0, positions): cos and sin (positions, d_head / 2) of position * theta^(-2i/d_head)
/// (pass the rotary width as d_head when only part of each head rotates),
/// angles in double (as kernels::make_rope_tables computes them), rounded to T once.
template <class T>
void rope_tables(float theta, index_t d_head, index_t positions, T* cos, T* sin) {
    const index_t half = d_head / 2;
    for (index_t i = 0; i < half; ++i) {
        const double frequency =
            std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / static_cast<double>(d_head));
        for (index_t p = 0; p < positions; ++p) {
            cos[p * half + i] = static_cast<T>(std::cos(static_cast<double>(p) * frequency));
            sin[p * half + i] = static_cast<T>(std::sin(static_cast<double>(p) * frequency));
        }
    }
}

/// Rotates the first `rotary_dim` dimensions of each head of `m` (rows, heads * d_head) by its position
/// (row % positions) with per-position tables cos/sin (positions, rotary_dim / 2), in `layout`'s pairing (split halves
/// pair i with i + rotary_dim / 2); the other dimensions pass through. `sign` -1 applies the inverse rotation, which
/// is the backward pass of a rotation.
template <class T>
void rotate_heads(rope_layout layout, index_t d_head, index_t rotary_dim, index_t positions, T* m, index_t rows,
                  index_t heads, const T* cos, const T* sin, T sign) {
    const index_t half = rotary_dim / 2;
    for (index_t r = 0; r < rows; ++r) {
        const index_t p = r % positions;
        for (index_t h = 0; h < heads; ++h) {
            T* x = m + (r * heads + h) * d_head;
            for (index_t i = 0; i < half; ++i) {
                const T cs = cos[p * half + i], sn = sign * sin[p * half + i];
                const index_t a = layout == rope_layout::adjacent_pairs ? 2 * i : i;
                const index_t b = layout == rope_layout::adjacent_pairs ? 2 * i + 1 : i + half;
                const T x0 = x[a], x1 = x[b];
                x[a] = x0 * cs - x1 * sn;
                x[b] = x0 * sn + x1 * cs;
            }
        }
    }
}

}  // namespace kernels::generic
MECHLENS_END_NAMESPACE
