#pragma once
/// @file
/// One activation row per prompt: what probes and contrastive directions are fitted on. For each prompt (token
/// ids, any length) a forward pass caches only the chosen row (the last token by default) of the chosen sites, and
/// the rows are stacked into a (prompts, width) matrix per site. Sites whose position axis is 1 are supported
/// (the residual stream, attention and MLP outputs, per-head hook_z as head * d_head values, ...); attention
/// patterns and scores (one row per query and key) are not.

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/hooks/caching.hpp"
#include "mechlens/hooks/names.hpp"
#include "mechlens/hooks/site_traits.hpp"
#include "mechlens/model/forward.hpp"
#include "mechlens/model/transformer.hpp"
#include "mechlens/tensor/tensor.hpp"

MECHLENS_BEGIN_NAMESPACE

/// The rows of one site: (prompts, width).
struct site_rows {
    site where;               ///< The site.
    tensor<float, 2> values;  ///< (prompts, width) one row per prompt.
};

/// Progress of collect_rows: prompts done of the total.
using collect_rows_callback = std::function<void(std::size_t done, std::size_t total)>;

/// The row at `position` (the last token of each prompt when -1) of every site in `sites`, for every prompt, in
/// prompt order. Throws std::invalid_argument for an empty prompt list, an empty prompt, a prompt longer than
/// n_ctx, a position a prompt does not reach, or a site whose position axis is not 1; std::out_of_range for a token
/// outside the vocabulary.
inline std::vector<site_rows> collect_rows(const transformer& model,
                                           const std::vector<std::vector<std::int32_t>>& prompts,
                                           const std::vector<site>& sites, index_t position = -1,
                                           const collect_rows_callback& progress = {}) {
    if (prompts.empty()) throw std::invalid_argument("collect_rows: no prompts");
    if (sites.empty()) throw std::invalid_argument("collect_rows: no sites");
    for (const site& s : sites)
        if (position_axis(s.kind) != 1 || s.extension >= 0 || !kind_set::all_but_result().contains(s.kind))
            throw std::invalid_argument("collect_rows: " + to_string(s) +
                                        " is not supported (use a site shaped (batch, pos, ...) other than "
                                        "attn.hook_result)");
    std::vector<site_rows> out;
    for (const site& s : sites) out.push_back({s, {}});
    workspace ws;
    for (std::size_t p = 0; p < prompts.size(); ++p) {
        const std::vector<std::int32_t>& ids = prompts[p];
        const auto length = static_cast<index_t>(ids.size());
        if (length == 0) throw std::invalid_argument("collect_rows: prompt " + std::to_string(p) + " is empty");
        if (length > model.config().n_ctx)
            throw std::invalid_argument("collect_rows: prompt " + std::to_string(p) + " has " + std::to_string(length) +
                                        " tokens, more than n_ctx " + std::to_string(model.config().n_ctx));
        const index_t row = position < 0 ? length - 1 : position;
        if (row >= length)
            throw std::invalid_argument("collect_rows: prompt " + std::to_string(p) + " has " + std::to_string(length) +
                                        " tokens; position " + std::to_string(row) + " is past its end");
        caching_hooks<> cache(cache_filter().sites(sites).positions({row}));
        tensor<float, 3> logits({1, length, model.config().vocab_out()});
        forward(model, tensor_view<const std::int32_t, 2>(ids.data(), {1, length}), logits.view(), ws, cache);
        const activation_cache cached = cache.take();
        for (site_rows& rows : out) {
            const cached_activation& a = cached.at(rows.where);
            const auto width = static_cast<index_t>(a.values.size());
            if (p == 0) rows.values = tensor<float, 2>({static_cast<index_t>(prompts.size()), width});
            for (index_t i = 0; i < width; ++i)
                rows.values(static_cast<index_t>(p), i) = a.values[static_cast<std::size_t>(i)];
        }
        if (progress) progress(p + 1, prompts.size());
    }
    return out;
}

MECHLENS_END_NAMESPACE
