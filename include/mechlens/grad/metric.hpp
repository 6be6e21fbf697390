#pragma once
/// @file
/// Scalar metrics of the logits that the backward pass differentiates: mean next-token cross-entropy, one logit, a
/// logit difference, or any function the user supplies together with its gradient.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "mechlens/kernels/generic.hpp"
#include "mechlens/kernels/softmax.hpp"
#include "mechlens/tensor/tensor.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// What a basic_metric computes.
enum class metric_kind : std::uint8_t {
    cross_entropy,  ///< Mean cross-entropy (natural log) of the target tokens over the counted positions.
    logit,          ///< logits[b, pos, token], averaged over the batch.
    logit_diff,     ///< logits[b, pos, token] - logits[b, pos, other], averaged over the batch.
    custom,         ///< A user function that returns the value and writes d(metric)/d(logits).
};

/// A scalar function of the logits (batch, pos, d_vocab) and its gradient; T is the scalar type of the pass.
template <class T>
struct basic_metric {
    /// Value and gradient of a custom metric: reads the logits, writes d(metric)/d(logits) (same shape, zero-filled
    /// on entry) and returns the value.
    using custom_function = std::function<T(tensor_view<const T, 3> logits, tensor_view<T, 3> d_logits)>;

    metric_kind kind = metric_kind::cross_entropy;  ///< Which metric.
    std::int32_t token = 0;                         ///< The logit's token (logit, logit_diff).
    std::int32_t other = 0;                         ///< The subtracted token (logit_diff).
    index_t position = -1;                          ///< Position of the logit; negative counts from the end.
    /// Cross-entropy targets (batch, pos): the token each position should predict, or -1 to leave it out. Empty means
    /// next-token prediction of the input itself (position t predicts token t+1; the last position is left out).
    tensor<std::int32_t, 2> targets;
    custom_function function;  ///< The custom metric.

    /// Mean next-token cross-entropy of the input sequence.
    static basic_metric cross_entropy() { return basic_metric{}; }
    /// Mean cross-entropy against explicit targets (batch, pos), -1 = not counted.
    static basic_metric cross_entropy(tensor<std::int32_t, 2> targets) {
        basic_metric m;
        m.targets = std::move(targets);
        return m;
    }
    /// logits[:, position, token], averaged over the batch (position -1 = the last).
    static basic_metric logit(std::int32_t token, index_t position = -1) {
        basic_metric m;
        m.kind = metric_kind::logit;
        m.token = token;
        m.position = position;
        return m;
    }
    /// logits[:, position, token] - logits[:, position, other], averaged over the batch.
    static basic_metric logit_diff(std::int32_t token, std::int32_t other, index_t position = -1) {
        basic_metric m = logit(token, position);
        m.kind = metric_kind::logit_diff;
        m.other = other;
        return m;
    }
    /// Any function of the logits, given with its gradient.
    static basic_metric custom(custom_function fn) {
        basic_metric m;
        m.kind = metric_kind::custom;
        m.function = std::move(fn);
        return m;
    }

    /// Returns the metric of `logits` (batch, pos, d_vocab) and writes its gradient into `d_logits` (same shape).
    /// Throws std::invalid_argument for a token or position outside the logits, or targets of the wrong shape.
    T evaluate(tensor_view<const T, 3> logits, tensor_view<T, 3> d_logits,
               tensor_view<const std::int32_t, 2> tokens) const {
        const index_t batch = logits.extent(0), positions = logits.extent(1), vocab = logits.extent(2);
        for (index_t b = 0; b < batch; ++b)
            for (index_t p = 0; p < positions; ++p)
                for (index_t v = 0; v < vocab; ++v) d_logits(b, p, v) = T{0};
        auto check_token = [&](std::int32_t id) {
            if (id < 0 || id >= vocab)
                throw std::invalid_argument("metric: token " + std::to_string(id) + " is outside [0, " +
                                            std::to_string(vocab) + ")");
        };
        switch (kind) {
            case metric_kind::cross_entropy:
                return cross_entropy_of(logits, d_logits, tokens);
            case metric_kind::logit:
            case metric_kind::logit_diff: {
                check_token(token);
                if (kind == metric_kind::logit_diff) check_token(other);
                const index_t p = position < 0 ? positions + position : position;
                if (p < 0 || p >= positions)
                    throw std::invalid_argument("metric: position " + std::to_string(position) + " is outside a " +
                                                std::to_string(positions) + "-token sequence");
                const T weight = T{1} / static_cast<T>(batch);
                double total = 0.0;
                for (index_t b = 0; b < batch; ++b) {
                    double value = static_cast<double>(logits(b, p, token));
                    d_logits(b, p, token) += weight;
                    if (kind == metric_kind::logit_diff) {
                        value -= static_cast<double>(logits(b, p, other));
                        d_logits(b, p, other) -= weight;
                    }
                    total += value;
                }
                return static_cast<T>(total / static_cast<double>(batch));
            }
            case metric_kind::custom:
                if (!function) throw std::invalid_argument("metric: the custom function is empty");
                return function(logits, d_logits);
        }
        return T{0};
    }

private:
    T cross_entropy_of(tensor_view<const T, 3> logits, tensor_view<T, 3> d_logits,
                       tensor_view<const std::int32_t, 2> tokens) const {
        const index_t batch = logits.extent(0), positions = logits.extent(1), vocab = logits.extent(2);
        const bool explicit_targets = targets.size() > 0;
        if (explicit_targets && (targets.extent(0) != batch || targets.extent(1) != positions))
            throw std::invalid_argument("metric: cross-entropy targets are (" + std::to_string(targets.extent(0)) +
                                        ", " + std::to_string(targets.extent(1)) + "), the logits (" +
                                        std::to_string(batch) + ", " + std::to_string(positions) + ", ...)");
        auto target_of = [&](index_t b, index_t p) -> std::int32_t {
            if (explicit_targets) return targets(b, p);
            return p + 1 < positions ? tokens(b, p + 1) : -1;
        };
        index_t counted = 0;
        for (index_t b = 0; b < batch; ++b)
            for (index_t p = 0; p < positions; ++p) {
                const std::int32_t t = target_of(b, p);
                if (t < -1 || t >= vocab)
                    throw std::invalid_argument("metric: target " + std::to_string(t) + " is outside [-1, " +
                                                std::to_string(vocab) + ")");
                counted += t >= 0 ? 1 : 0;
            }
        if (counted == 0) throw std::invalid_argument("metric: cross-entropy has no position to count");
        const double weight = 1.0 / static_cast<double>(counted);
        double total = 0.0;
        for (index_t b = 0; b < batch; ++b)
            for (index_t p = 0; p < positions; ++p) {
                const std::int32_t t = target_of(b, p);
                if (t < 0) continue;
                if constexpr (std::is_same_v<T, float>) {
                    // The SIMD softmax of the row, straight into the gradient: vocabularies of 32k make this loop
                    // as costly as a small model's forward pass if done with scalar double exponentials.
                    if (logits.stride(2) == 1 && d_logits.stride(2) == 1) {
                        float* d_row = &d_logits(b, p, 0);
                        std::copy(&logits(b, p, 0), &logits(b, p, 0) + vocab, d_row);
                        kernels::softmax(d_row, vocab);
                        const double target_probability = static_cast<double>(d_row[t]);
                        if (target_probability > 1e-30) {  // else fall through to the log-sum-exp below
                            total += -std::log(target_probability);
                            const auto w = static_cast<float>(weight);
                            for (index_t v = 0; v < vocab; ++v) d_row[v] *= w;
                            d_row[t] -= w;
                            continue;
                        }
                    }
                }
                const double log_sum =
                    kernels::generic::softmax_denominator(&logits(b, p, 0), vocab, logits.stride(2)).log_sum();
                total += log_sum - static_cast<double>(logits(b, p, t));
                for (index_t v = 0; v < vocab; ++v)
                    d_logits(b, p, v) =
                        static_cast<T>(kernels::generic::softmax_from_log_sum(static_cast<double>(logits(b, p, v)),
                                                                              log_sum) *
                                       weight);
                d_logits(b, p, t) -= static_cast<T>(weight);
            }
        return static_cast<T>(total * weight);
    }
};

/// A float metric (what the library's float passes use).
using metric = basic_metric<float>;

MECHLENS_END_NAMESPACE
