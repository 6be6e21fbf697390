#pragma once
/// @file
/// Head detectors: how much of each head's attention goes where a previous-token, duplicate-token or induction head
/// would put it, with TransformerLens's "mul" measure (transformer_lens/head_detector.py).

#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/hooks/activation_cache.hpp"
#include "mechlens/hooks/site.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/tensor.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// The kinds of head a detection pattern describes.
enum class head_kind : std::uint8_t {
    previous_token,   ///< Query t attends to key t - 1.
    duplicate_token,  ///< Query t attends to earlier keys j < t holding the same token.
    induction,        ///< Query t attends to key j <= t whose predecessor j - 1 holds the same token as t.
};

/// What head detection leaves out of both sums of the score (TransformerLens's detect_head keywords).
struct head_detector_options {
    bool exclude_bos = false;            ///< Zero the attention to key 0 before scoring.
    bool exclude_current_token = false;  ///< Zero the attention of each query to its own position.
};

/// TransformerLens's detection pattern for `tokens` of one sequence: (pos, pos), 1 where a head of `kind` attends
/// (query row, key column), else 0; lower triangular. Duplicate: tokens[j] == tokens[t] for j < t. Induction: the
/// duplicate pattern shifted one key to the right, i.e. 1 <= j <= t and tokens[j - 1] == tokens[t].
inline tensor<float, 2> detection_pattern(head_kind kind, std::span<const std::int32_t> tokens) {
    const auto n = static_cast<index_t>(tokens.size());
    tensor<float, 2> out({n, n});
    const auto token = [&](index_t i) { return tokens[static_cast<std::size_t>(i)]; };
    for (index_t t = 0; t < n; ++t)
        for (index_t j = 0; j <= t; ++j) {
            bool hit = false;
            switch (kind) {
                case head_kind::previous_token: hit = j == t - 1; break;
                case head_kind::duplicate_token: hit = j < t && token(j) == token(t); break;
                case head_kind::induction: hit = j >= 1 && token(j - 1) == token(t); break;
            }
            out(t, j) = hit ? 1.0f : 0.0f;
        }
    return out;
}

/// The score of each head for one detector: for every sequence b, sum(pattern * detection) / sum(pattern) over the
/// (query, key) entries, after the exclusions, accumulated in double; then the mean over the batch, as
/// TransformerLens's detect_head does for a list of sequences. `pattern` is (batch, head, query, key) with
/// key extent = pos; `tokens` is (batch, pos); `query_positions` gives the absolute position of each query row
/// (empty: 0, 1, ..., pos - 1, the square pattern TransformerLens requires). A sequence whose pattern sums to 0
/// after the exclusions scores 0 (TransformerLens would give NaN). Returns (head). Throws shape_error on
/// mismatched shapes or query positions outside [0, pos), std::invalid_argument for an empty batch.
inline tensor<float, 1> detect_head(tensor_view<const float, 4> pattern, tensor_view<const std::int32_t, 2> tokens,
                                    head_kind kind, const head_detector_options& options = {},
                                    std::span<const index_t> query_positions = {}) {
    const index_t batch = pattern.extent(0), heads = pattern.extent(1), queries = pattern.extent(2);
    const index_t pos = tokens.extent(1);
    if (batch < 1) throw std::invalid_argument("detect_head: empty batch");
    if (tokens.extent(0) != batch || pattern.extent(3) != pos)
        throw shape_error("detect_head: pattern " + detail::format_extents(pattern.shape()) +
                          " does not match tokens " + detail::format_extents(tokens.shape()) +
                          " (expected (batch, head, query, pos) and (batch, pos))");
    if (query_positions.empty() ? queries != pos : static_cast<index_t>(query_positions.size()) != queries)
        throw shape_error("detect_head: " + std::to_string(queries) + " query rows for " +
                          (query_positions.empty() ? std::to_string(pos) + " positions"
                                                   : std::to_string(query_positions.size()) + " query positions"));
    for (const index_t q : query_positions)
        if (q < 0 || q >= pos)
            throw shape_error("detect_head: query position " + std::to_string(q) + " outside [0, " +
                              std::to_string(pos) + ")");

    std::vector<double> sums(static_cast<std::size_t>(heads), 0.0);
    std::vector<std::int32_t> row(static_cast<std::size_t>(pos));
    for (index_t b = 0; b < batch; ++b) {
        for (index_t t = 0; t < pos; ++t) row[static_cast<std::size_t>(t)] = tokens(b, t);
        const tensor<float, 2> detect = detection_pattern(kind, row);
        for (index_t h = 0; h < heads; ++h) {
            double hit = 0.0, total = 0.0;
            for (index_t i = 0; i < queries; ++i) {
                const index_t q = query_positions.empty() ? i : query_positions[static_cast<std::size_t>(i)];
                for (index_t j = 0; j < pos; ++j) {
                    if ((options.exclude_bos && j == 0) || (options.exclude_current_token && j == q)) continue;
                    const double a = static_cast<double>(pattern(b, h, i, j));
                    total += a;
                    hit += a * static_cast<double>(detect(q, j));
                }
            }
            sums[static_cast<std::size_t>(h)] += total != 0.0 ? hit / total : 0.0;
        }
    }
    tensor<float, 1> out({heads});
    for (index_t h = 0; h < heads; ++h)
        out(h) = static_cast<float>(sums[static_cast<std::size_t>(h)] / static_cast<double>(batch));
    return out;
}

/// Scores of every head of a model for the three detectors: (n_layers, n_heads) each, row = layer. Layers whose
/// pattern was not cached hold -1, as in TransformerLens.
struct head_detector_scores {
    tensor<float, 2> previous_token;   ///< (n_layers, n_heads)
    tensor<float, 2> duplicate_token;  ///< (n_layers, n_heads)
    tensor<float, 2> induction;        ///< (n_layers, n_heads)

    /// The table of one detector.
    [[nodiscard]] const tensor<float, 2>& operator[](head_kind kind) const noexcept {
        return kind == head_kind::previous_token ? previous_token
               : kind == head_kind::duplicate_token ? duplicate_token
                                                    : induction;
    }
};

/// One detector over every cached `blocks.L.attn.hook_pattern` of `cache` (batch, head, query, key), for the run
/// on `tokens` (batch, pos): a (max cached layer + 1, n_heads) table, -1 for layers not cached. Cached rows kept
/// for some positions only (cached_activation::positions) are scored at those positions. Throws
/// std::invalid_argument when no pattern is cached, shape_error when shapes disagree.
inline tensor<float, 2> detect_heads(const activation_cache& cache, tensor_view<const std::int32_t, 2> tokens,
                                     head_kind kind, const head_detector_options& options = {}) {
    const std::vector<index_t> layers = cache.layers(site_kind::attn_pattern);
    if (layers.empty()) throw std::invalid_argument("detect_heads: the cache holds no attn.hook_pattern");
    index_t heads = -1;
    tensor<float, 2> out;
    for (const index_t layer : layers) {
        const cached_activation& a = cache.at(site{site_kind::attn_pattern, layer});
        const tensor_view<const float, 4> pattern = a.view<4>();
        if (heads < 0) {
            heads = pattern.extent(1);
            out = tensor<float, 2>({layers.back() + 1, heads});
            out.fill(-1.0f);
        } else if (pattern.extent(1) != heads) {
            throw shape_error("detect_heads: layer " + std::to_string(layer) + " has " +
                              std::to_string(pattern.extent(1)) + " heads, an earlier layer " + std::to_string(heads));
        }
        const tensor<float, 1> scores = detect_head(pattern, tokens, kind, options, a.positions);
        for (index_t h = 0; h < heads; ++h) out(layer, h) = scores(h);
    }
    return out;
}

/// All three detectors over the cached patterns; see the single-detector overload.
inline head_detector_scores detect_heads(const activation_cache& cache, tensor_view<const std::int32_t, 2> tokens,
                                         const head_detector_options& options = {}) {
    return {detect_heads(cache, tokens, head_kind::previous_token, options),
            detect_heads(cache, tokens, head_kind::duplicate_token, options),
            detect_heads(cache, tokens, head_kind::induction, options)};
}

MECHLENS_END_NAMESPACE
