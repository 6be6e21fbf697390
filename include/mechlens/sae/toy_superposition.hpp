#pragma once
/// @file
/// Toy models of superposition (Elhage et al. 2022, as SAELens's toy_model): n sparse features, each active with
/// probability p and magnitude uniform in [0, 1], embedded along n random unit directions of a space of m < n
/// dimensions. An SAE trained on the embeddings should recover the directions as decoder rows;
/// toy_direction_recovery measures how well.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <stdexcept>
#include <string>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/sae/training.hpp"

MECHLENS_BEGIN_NAMESPACE

/// The generator's shape and randomness.
struct toy_superposition_options {
    index_t features = 32;     ///< n: true features.
    index_t dims = 16;         ///< m: embedding dimension (m < n for superposition).
    double probability = 0.05; ///< Each feature's chance of being active in a row.
    std::uint64_t seed = 0;    ///< Seeds the directions and every row.
};

/// An endless, seeded stream of toy rows (dims wide): row r depends only on (seed, r), so seeking is free.
class toy_superposition final : public sae_batch_source {
public:
    /// Draws the directions; throws std::invalid_argument for non-positive sizes or p outside [0, 1].
    explicit toy_superposition(const toy_superposition_options& options) : o_(options) {
        if (o_.features <= 0 || o_.dims <= 0 || !(o_.probability >= 0 && o_.probability <= 1))
            throw std::invalid_argument("toy_superposition: need features > 0, dims > 0 and probability in [0, 1]");
        std::uint64_t state = o_.seed ^ 0x5DEECE66Dull;
        directions_.resize(static_cast<std::size_t>(o_.features * o_.dims));
        for (index_t f = 0; f < o_.features; ++f) {
            double norm = 0;
            for (index_t i = 0; i < o_.dims; ++i) {
                // Box-Muller: a Gaussian vector, normalized, is a uniform direction.
                const double u1 = (static_cast<double>(next(state) >> 11) + 0.5) * 0x1.0p-53;
                const double u2 = static_cast<double>(next(state) >> 11) * 0x1.0p-53;
                const double g = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
                directions_[static_cast<std::size_t>(f * o_.dims + i)] = static_cast<float>(g);
                norm += g * g;
            }
            norm = std::sqrt(norm);
            for (index_t i = 0; i < o_.dims; ++i) {
                float& v = directions_[static_cast<std::size_t>(f * o_.dims + i)];
                v = static_cast<float>(static_cast<double>(v) / norm);
            }
        }
    }

    /// (features, dims) the unit directions, row-major.
    [[nodiscard]] const std::vector<float>& directions() const noexcept { return directions_; }
    /// The options.
    [[nodiscard]] const toy_superposition_options& options() const noexcept { return o_; }
    /// Width of a row.
    [[nodiscard]] index_t width() const override { return o_.dims; }
    /// The next `rows` rows of toy data (no targets).
    void next(std::vector<float>& x, std::vector<float>& /*y*/, index_t rows) override {
        x.assign(static_cast<std::size_t>(rows * o_.dims), 0.0f);
        for (index_t r = 0; r < rows; ++r) {
            std::uint64_t state = o_.seed * 0x9E3779B97F4A7C15ull + static_cast<std::uint64_t>(row_++) * 0xD1B54A32D192ED03ull;
            float* out = x.data() + r * o_.dims;
            for (index_t f = 0; f < o_.features; ++f) {
                const double u = static_cast<double>(next(state) >> 11) * 0x1.0p-53;
                if (u >= o_.probability) continue;
                const auto magnitude = static_cast<float>(static_cast<double>(next(state) >> 40) * 0x1.0p-24);
                const float* d = directions_.data() + f * o_.dims;
                for (index_t i = 0; i < o_.dims; ++i) out[i] += magnitude * d[i];
            }
        }
    }
    /// Moves to row `row` (modulo the rows held, where the source cycles).
    void seek(std::int64_t row) override { row_ = row; }

private:
    static std::uint64_t next(std::uint64_t& state) noexcept {
        std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    toy_superposition_options o_;
    std::vector<float> directions_;  // (features, dims)
    std::int64_t row_ = 0;
};

/// The mean, over the true directions (features, dims), of the best cosine similarity between the direction and
/// any decoder row of w_dec (d_sae, dims): 1 when every feature has a latent that writes exactly it.
inline double toy_direction_recovery(const std::vector<float>& directions, const std::vector<float>& w_dec, index_t dims) {
    if (dims <= 0 || directions.size() % static_cast<std::size_t>(dims) != 0 ||
        w_dec.size() % static_cast<std::size_t>(dims) != 0 || directions.empty() || w_dec.empty())
        throw std::invalid_argument("toy_direction_recovery: need whole, non-empty rows of width " + std::to_string(dims));
    const auto d = static_cast<std::size_t>(dims);
    const std::size_t features = directions.size() / d, latents = w_dec.size() / d;
    double total = 0;
    for (std::size_t f = 0; f < features; ++f) {
        double best = -1;
        for (std::size_t j = 0; j < latents; ++j) {
            double dot = 0, nd = 0, nw = 0;
            for (std::size_t i = 0; i < d; ++i) {
                const auto a = static_cast<double>(directions[f * d + i]), b = static_cast<double>(w_dec[j * d + i]);
                dot += a * b;
                nd += a * a;
                nw += b * b;
            }
            if (nd > 0 && nw > 0) best = std::max(best, dot / std::sqrt(nd * nw));
        }
        total += best;
    }
    return total / static_cast<double>(features);
}

MECHLENS_END_NAMESPACE
