#pragma once
/// @file
/// The metric that patching, attribution patching, path patching and integrated gradients share: one number per
/// prompt read from its logits at the answer position (a logit, a logit difference, or a log-probability), averaged
/// over a batch of prompts, with its gradient for the backward pass.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mechlens/kernels/generic.hpp"
#include "mechlens/grad/metric.hpp"
#include "mechlens/tensor/tensor.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// What an answer_metric reads from a prompt's logits.
enum class answer_kind : std::uint8_t {
    logit_diff,  ///< logit(correct) - logit(wrong): the IOI-style metric.
    logit,       ///< logit(correct).
    log_prob,    ///< log softmax(logits)[correct].
};

/// One number per prompt from its logits at `position` (negative counts from the end), for prompt i of a batch of
/// prompts: correct[i] (and wrong[i]). A batch row b of a larger batch (cells or steps stacked on the batch axis)
/// uses prompt b % prompts().
struct answer_metric {
    answer_kind kind = answer_kind::logit_diff;  ///< What is read.
    std::vector<std::int32_t> correct{};         ///< Per prompt: the token whose logit counts positively.
    std::vector<std::int32_t> wrong{};           ///< Per prompt: the subtracted token (logit_diff only).
    index_t position = -1;                       ///< Answer position; -1 is the last.

    /// logit(correct[i]) - logit(wrong[i]) for each prompt i.
    static answer_metric logit_difference(std::vector<std::int32_t> correct, std::vector<std::int32_t> wrong,
                                          index_t position = -1) {
        if (correct.size() != wrong.size())
            throw std::invalid_argument("answer_metric: " + std::to_string(correct.size()) + " correct and " +
                                        std::to_string(wrong.size()) + " wrong tokens; need one of each per prompt");
        return answer_metric{answer_kind::logit_diff, std::move(correct), std::move(wrong), position};
    }
    /// logit(correct[i]) for each prompt i.
    static answer_metric logit_of(std::vector<std::int32_t> correct, index_t position = -1) {
        return answer_metric{answer_kind::logit, std::move(correct), {}, position};
    }
    /// log p(correct[i]) for each prompt i.
    static answer_metric log_probability(std::vector<std::int32_t> correct, index_t position = -1) {
        return answer_metric{answer_kind::log_prob, std::move(correct), {}, position};
    }

    /// Number of prompts the metric has answers for.
    [[nodiscard]] index_t prompts() const noexcept { return static_cast<index_t>(correct.size()); }

    /// The answer position in a sequence of `positions` tokens; throws std::invalid_argument when outside it.
    [[nodiscard]] index_t resolve_position(index_t positions) const {
        const index_t p = position < 0 ? positions + position : position;
        if (p < 0 || p >= positions)
            throw std::invalid_argument("answer_metric: position " + std::to_string(position) + " is outside a " +
                                        std::to_string(positions) + "-token sequence");
        return p;
    }

    /// Throws std::invalid_argument unless there is at least one prompt, the token lists agree with the kind, and
    /// every token is inside [0, d_vocab).
    void check(index_t d_vocab) const {
        if (correct.empty()) throw std::invalid_argument("answer_metric: no prompt has an answer");
        if (kind == answer_kind::logit_diff && wrong.size() != correct.size())
            throw std::invalid_argument("answer_metric: a logit difference needs one wrong token per prompt");
        for (const auto* list : {&correct, &wrong})
            for (std::int32_t t : *list)
                if (t < 0 || t >= d_vocab)
                    throw std::invalid_argument("answer_metric: token " + std::to_string(t) + " is outside [0, " +
                                                std::to_string(d_vocab) + ")");
    }

    /// The metric of batch row `row` from its answer-position logits (d_vocab), accumulated in double.
    [[nodiscard]] double value(index_t row, const float* logits, index_t d_vocab) const {
        const std::size_t i = prompt_of(row);
        const auto at = [&](std::int32_t t) { return static_cast<double>(logits[t]); };
        switch (kind) {
            case answer_kind::logit_diff: return at(correct[i]) - at(wrong[i]);
            case answer_kind::logit: return at(correct[i]);
            case answer_kind::log_prob: return at(correct[i]) - log_sum_exp(logits, d_vocab);
        }
        return 0.0;
    }

    /// Adds `scale` times d(value of row)/d(logits) to `d_logits` (d_vocab).
    void add_gradient(index_t row, const float* logits, index_t d_vocab, double scale, float* d_logits) const {
        const std::size_t i = prompt_of(row);
        switch (kind) {
            case answer_kind::logit_diff:
                d_logits[correct[i]] += static_cast<float>(scale);
                d_logits[wrong[i]] -= static_cast<float>(scale);
                return;
            case answer_kind::logit: d_logits[correct[i]] += static_cast<float>(scale); return;
            case answer_kind::log_prob: {
                const double lse = log_sum_exp(logits, d_vocab);
                for (index_t v = 0; v < d_vocab; ++v)
                    d_logits[v] -= static_cast<float>(
                        scale * kernels::generic::softmax_from_log_sum(static_cast<double>(logits[v]), lse));
                d_logits[correct[i]] += static_cast<float>(scale);
                return;
            }
        }
    }

    /// The metric of each row of `logits` (rows, pos, d_vocab) at the answer position; pos may also be 1 (only the
    /// answer position's logits were computed).
    [[nodiscard]] std::vector<double> values(tensor_view<const float, 3> logits, index_t sequence_length) const {
        check(logits.extent(2));
        const index_t p = logits.extent(1) == 1 ? 0 : resolve_position(sequence_length);
        std::vector<double> out(static_cast<std::size_t>(logits.extent(0)));
        for (index_t b = 0; b < logits.extent(0); ++b)
            out[static_cast<std::size_t>(b)] = value(b, &logits(b, p, 0), logits.extent(2));
        return out;
    }

    /// The mean over rows of values().
    [[nodiscard]] double mean(tensor_view<const float, 3> logits, index_t sequence_length) const {
        const std::vector<double> v = values(logits, sequence_length);
        double total = 0.0;
        for (double x : v) total += x;
        return total / static_cast<double>(v.size());
    }

    /// The metric for forward_backward: the mean over every batch row (or the sum, when `sum` is true: each row's
    /// gradient is then its own metric's gradient, as batched integrated-gradient steps need).
    [[nodiscard]] metric as_grad_metric(bool sum = false) const {
        return metric::custom([self = *this, sum](tensor_view<const float, 3> logits, tensor_view<float, 3> d_logits) {
            self.check(logits.extent(2));
            const index_t rows = logits.extent(0), p = self.resolve_position(logits.extent(1));
            const double weight = sum ? 1.0 : 1.0 / static_cast<double>(rows);
            double total = 0.0;
            for (index_t b = 0; b < rows; ++b) {
                total += self.value(b, &logits(b, p, 0), logits.extent(2));
                self.add_gradient(b, &logits(b, p, 0), logits.extent(2), weight, &d_logits(b, p, 0));
            }
            return static_cast<float>(total * weight);
        });
    }

private:
    [[nodiscard]] std::size_t prompt_of(index_t row) const {
        if (correct.empty()) throw std::invalid_argument("answer_metric: no prompt has an answer");
        return static_cast<std::size_t>(row % prompts());
    }
    static double log_sum_exp(const float* logits, index_t d_vocab) {
        return kernels::generic::softmax_denominator(logits, d_vocab).log_sum();
    }
};

MECHLENS_END_NAMESPACE
