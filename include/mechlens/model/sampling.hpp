#pragma once
/// @file
/// Turning logits into tokens: greedy, temperature and nucleus (top-p) sampling with a reproducible generator.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "mechlens/kernels/generic.hpp"
#include "mechlens/detail/namespace.hpp"

MECHLENS_BEGIN_NAMESPACE

/// A small, fast, fully specified random generator (splitmix64), so a seed gives the same tokens on every platform.
class random_generator {
public:
    /// Seeds the generator.
    explicit random_generator(std::uint64_t seed) noexcept : state_(seed) {}
    /// Next 64 random bits.
    std::uint64_t next() noexcept {
        std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }
    /// Uniform double in [0, 1) with 53 random bits.
    double uniform() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

private:
    std::uint64_t state_;
};

/// Index of the largest logit (the first one on ties).
inline std::int32_t argmax(const float* logits, index_t n) {
    if (n <= 0) throw std::invalid_argument("argmax: empty logits");
    return static_cast<std::int32_t>(std::max_element(logits, logits + n) - logits);
}

/// How to pick the next token.
struct sampling_options {
    float temperature = 0.0f;  ///< 0 means greedy (argmax); otherwise logits are divided by it.
    float top_p = 1.0f;        ///< Nucleus: sample among the most likely tokens whose mass reaches top_p (1 = all).
    std::uint64_t seed = 42;   ///< Seed of the generator.
};

/// Samples tokens from logits according to sampling_options; stateful (owns its generator).
class sampler {
public:
    /// Validates the options (temperature >= 0, top_p in (0, 1]).
    explicit sampler(const sampling_options& options) : options_(options), rng_(options.seed) {
        if (!(options.temperature >= 0.0f) || !std::isfinite(options.temperature))
            throw std::invalid_argument("sampler: temperature must be a finite number >= 0, got " +
                                        std::to_string(options.temperature));
        if (!(options.top_p > 0.0f && options.top_p <= 1.0f))
            throw std::invalid_argument("sampler: top_p must be in (0, 1], got " + std::to_string(options.top_p));
    }

    /// Picks one token id from `n` logits.
    std::int32_t sample(const float* logits, index_t n) {
        if (options_.temperature == 0.0f) return argmax(logits, n);
        // Probabilities in double: the sampled id must not depend on float summation order.
        const auto count = static_cast<std::size_t>(n);
        probabilities_.resize(count);
        double total = kernels::generic::tempered_exp_weights(logits, n, options_.temperature, probabilities_.data());
        order_.resize(count);
        std::iota(order_.begin(), order_.end(), 0);
        if (options_.top_p < 1.0f) {
            // Most likely first; ties by id keep the order deterministic.
            std::sort(order_.begin(), order_.end(), [&](std::int32_t a, std::int32_t b) {
                const auto pa = probabilities_[static_cast<std::size_t>(a)];
                const auto pb = probabilities_[static_cast<std::size_t>(b)];
                return pa != pb ? pa > pb : a < b;
            });
            double mass = 0.0;
            std::size_t keep = 0;
            while (keep < count && mass < static_cast<double>(options_.top_p) * total)
                mass += probabilities_[static_cast<std::size_t>(order_[keep++])];
            order_.resize(std::max<std::size_t>(keep, 1));
            total = mass;
        }
        const double target = rng_.uniform() * total;
        double running = 0.0;
        for (std::int32_t id : order_) {
            running += probabilities_[static_cast<std::size_t>(id)];
            if (target < running) return id;
        }
        return order_.back();  // only reached through rounding at the very top of the range
    }

private:
    sampling_options options_;
    random_generator rng_;
    std::vector<double> probabilities_;
    std::vector<std::int32_t> order_;
};

MECHLENS_END_NAMESPACE
