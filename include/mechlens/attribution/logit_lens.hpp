#pragma once
/// @file
/// The logit lens and direct logit attribution: what the residual stream "says" after each layer, and how much each
/// component (embedding, every attention head, every MLP) writes directly into one logit or a logit difference.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mechlens/kernels/generic.hpp"
#include "mechlens/hooks/activation_cache.hpp"
#include "mechlens/model/transformer.hpp"
#include "mechlens/tensor/tensor.hpp"

MECHLENS_BEGIN_NAMESPACE

namespace detail {

/// The cached activation of `s`, with a message that says which hook the analysis needs when it is absent.
inline const cached_activation& required(const activation_cache& cache, const site& s, const char* who) {
    if (const cached_activation* found = cache.find(s)) return *found;
    throw std::invalid_argument(std::string(who) + ": the cache has no " + to_string(s) +
                                "; cache it first (e.g. caching_hooks<> over the same tokens)");
}

/// "L3H5" for head 5 of layer 3, "L3 mlp" for head -1. Appends piece by piece: GCC 12 at -O3 reports a spurious
/// -Wrestrict overlap in std::string operator+ chains that start from a literal.
inline std::string component_name(index_t layer, index_t head) {
    std::string name(1, 'L');
    name += std::to_string(layer);
    if (head < 0) {
        name += " mlp";
    } else {
        name += 'H';
        name += std::to_string(head);
    }
    return name;
}

/// The final norm's centre for a residual row: its mean with LayerNorm, else 0.
inline double final_norm_centre(const model_config& c, const float* row) {
    return c.norm == norm_kind::layer ? kernels::generic::mean(row, c.d_model) : 0.0;
}
/// The final norm's divisor for a residual row: its RMS with RMSNorm, its centred RMS with LayerNorm, 1 without.
inline double final_norm_divisor(const model_config& c, const float* row) {
    if (c.norm == norm_kind::layer)
        return kernels::generic::centred_rms_scale(row, c.d_model, final_norm_centre(c, row), c.norm_eps);
    return c.has_norm() ? kernels::generic::rms_scale(row, c.d_model, c.norm_eps) : 1.0;
}

}  // namespace detail

/// The logits a residual-stream state would give if the model stopped there: the final norm (its scale computed
/// from `resid` itself, as the model would) then the unembedding. `resid` is (batch, pos, d_model); returns
/// (batch, pos, d_vocab). Accumulates in double.
inline tensor<float, 3> unembed_residual(const transformer& model, tensor_view<const float, 3> resid) {
    const model_config& c = model.config();
    // Read element by element as floats: of the matrices, only W_U (and W_O below) is decoded when quantised.
    const model_weights& weights = model.stored_weights();
    const tensor_view<const float, 2> unembed = readable(weights, weights.unembed);  // (d_vocab_out, d_model)
    if (resid.extent(2) != c.d_model)
        throw shape_error("unembed_residual: the residual has width " + std::to_string(resid.extent(2)) +
                          ", the model d_model " + std::to_string(c.d_model));
    tensor<float, 3> logits({resid.extent(0), resid.extent(1), c.vocab_out()});
    std::vector<double> normed(static_cast<std::size_t>(c.d_model));
    std::vector<float> row(static_cast<std::size_t>(c.d_model));
    for (index_t b = 0; b < resid.extent(0); ++b)
        for (index_t p = 0; p < resid.extent(1); ++p) {
            for (index_t i = 0; i < c.d_model; ++i) row[static_cast<std::size_t>(i)] = resid(b, p, i);
            const double divisor = detail::final_norm_divisor(c, row.data());
            const double centre = detail::final_norm_centre(c, row.data());
            for (index_t i = 0; i < c.d_model; ++i)
                normed[static_cast<std::size_t>(i)] =
                    (static_cast<double>(row[static_cast<std::size_t>(i)]) - centre) / divisor *
                        (c.has_norm() ? static_cast<double>(weights.final_norm(i)) : 1.0) +
                    (c.norm == norm_kind::layer ? static_cast<double>(weights.final_norm_bias(i)) : 0.0);
            for (index_t v = 0; v < c.vocab_out(); ++v) {
                double dot = c.linear_biases ? static_cast<double>(weights.unembed_bias(v)) : 0.0;
                for (index_t i = 0; i < c.d_model; ++i)
                    dot += normed[static_cast<std::size_t>(i)] * static_cast<double>(unembed(v, i));
                logits(b, p, v) = static_cast<float>(dot);
            }
        }
    return logits;
}

/// The logit lens: for every layer L, the logits of `blocks.L.hook_resid_post` from `cache` (see unembed_residual).
/// Returns (n_layers, batch, pos, d_vocab); row n_layers - 1 is the model's own output (up to rounding).
inline tensor<float, 4> logit_lens(const transformer& model, const activation_cache& cache) {
    const model_config& c = model.config();
    const cached_activation& first = detail::required(cache, site{site_kind::resid_post, 0}, "logit_lens");
    const auto shape = first.view<3>().shape();
    tensor<float, 4> out({c.n_layers, shape[0], shape[1], c.vocab_out()});
    for (index_t layer = 0; layer < c.n_layers; ++layer) {
        const auto resid = detail::required(cache, site{site_kind::resid_post, layer}, "logit_lens").view<3>();
        const tensor<float, 3> logits = unembed_residual(model, resid);
        std::copy(logits.data(), logits.data() + logits.size(), &out(layer, 0, 0, 0));
    }
    return out;
}

/// One token's standing in a row of logits.
struct token_standing {
    std::int32_t token = 0;    ///< The token id.
    float probability = 0.0f;  ///< Its softmax probability.
    index_t rank = 0;          ///< 0 for the most likely token; ties go to the lower id.
};

/// The standing of `token` in `logits` (d_vocab): softmax probability (computed in double) and rank.
inline token_standing standing_of(tensor_view<const float, 1> logits, std::int32_t token) {
    const index_t n = logits.extent(0);
    if (token < 0 || token >= n)
        throw std::invalid_argument("standing_of: token " + std::to_string(token) + " is outside [0, " +
                                    std::to_string(n) + ")");
    const kernels::generic::exp_sum denominator =
        kernels::generic::softmax_denominator(&logits(0), n, logits.stride(0));
    index_t rank = 0;
    for (index_t v = 0; v < n; ++v)
        rank += logits(v) > logits(token) || (logits(v) == logits(token) && v < token) ? 1 : 0;
    return {token, static_cast<float>(denominator.probability(static_cast<double>(logits(token)))), rank};
}

/// The `k` most likely tokens of `logits` (d_vocab), most likely first.
inline std::vector<token_standing> top_tokens(tensor_view<const float, 1> logits, index_t k) {
    const index_t n = logits.extent(0);
    std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
    std::iota(ids.begin(), ids.end(), 0);
    const auto count = static_cast<std::ptrdiff_t>(std::clamp<index_t>(k, 0, n));
    std::partial_sort(ids.begin(), ids.begin() + count, ids.end(), [&](std::int32_t a, std::int32_t b) {
        return logits(a) > logits(b) || (logits(a) == logits(b) && a < b);
    });
    std::vector<token_standing> out;
    for (std::ptrdiff_t i = 0; i < count; ++i) out.push_back(standing_of(logits, ids[static_cast<std::size_t>(i)]));
    return out;
}

/// Direct logit attribution at one (batch, position): each component's share of a logit (or logit difference).
struct logit_attribution {
    std::vector<std::string> components;  ///< "embed", "pos_embed", "L0H0" ... "L0H{n-1}", "L0 mlp", ... in order.
    std::vector<double> values;           ///< What each component writes into the logit, through the final norm.
    double total = 0.0;                   ///< The logit (difference) the final residual stream gives: sum of values.
};

/// Direct logit attribution of `token` (minus `other` when given) at (batch, position), from a cache of one forward
/// pass holding `hook_embed` (and `hook_pos_embed`), every `attn.hook_z` and `hook_mlp_out`, and, with RMSNorm,
/// `ln_final.hook_scale`. Each component's output (per head: z_h W_O,h^T) is divided by the final norm's cached
/// scale (RMSNorm is not centred, so nothing is subtracted first), times the gain, and projected on the unembedding
/// direction. The values sum to `total`, the logit of the final residual stream (tested).
inline logit_attribution direct_logit_attribution(const transformer& model, const activation_cache& cache,
                                                  index_t batch, index_t position, std::int32_t token,
                                                  std::optional<std::int32_t> other = std::nullopt) {
    const model_config& c = model.config();
    // Read element by element as floats: of the matrices, only W_U (and W_O below) is decoded when quantised.
    const model_weights& weights = model.stored_weights();
    const tensor_view<const float, 2> unembed = readable(weights, weights.unembed);  // (d_vocab_out, d_model)
    const char* who = "direct_logit_attribution";
    for (const std::int32_t t : {token, other.value_or(token)})
        if (t < 0 || t >= c.vocab_out())
            throw std::invalid_argument(std::string(who) + ": token " + std::to_string(t) + " is outside [0, " +
                                        std::to_string(c.vocab_out()) + ")");
    const auto embed = detail::required(cache, site{site_kind::embed, -1}, who).view<3>();  // (batch, pos, d_model)
    if (batch < 0 || batch >= embed.extent(0) || position < 0 || position >= embed.extent(1))
        throw std::invalid_argument(std::string(who) + ": (" + std::to_string(batch) + ", " + std::to_string(position) +
                                    ") is outside the cached (batch, pos) = (" + std::to_string(embed.extent(0)) +
                                    ", " + std::to_string(embed.extent(1)) + ")");
    // The direction each component is read along: gain * (W_U[token] - W_U[other]) / scale.
    double scale = 1.0;
    if (c.has_norm())
        scale = static_cast<double>(
            detail::required(cache, site{site_kind::ln_final_scale, -1}, who).view<3>()(batch, position, 0));
    std::vector<double> direction(static_cast<std::size_t>(c.d_model));
    for (index_t i = 0; i < c.d_model; ++i) {
        double u = static_cast<double>(unembed(token, i));
        if (other) u -= static_cast<double>(unembed(*other, i));
        const double gain = c.has_norm() ? static_cast<double>(weights.final_norm(i)) : 1.0;
        direction[static_cast<std::size_t>(i)] = u * gain / scale;
    }
    // LayerNorm centres each component before scaling it: reading (x - mean(x)) along `direction` is reading x along
    // the centred direction.
    double bias_term = 0.0;  // what no component carries: the final norm's bias and the unembedding's, read out
    if (c.norm == norm_kind::layer) {
        double mean = 0.0;
        for (double v : direction) mean += v;
        mean /= static_cast<double>(c.d_model);
        for (double& v : direction) v -= mean;
        for (index_t i = 0; i < c.d_model; ++i) {
            double u = static_cast<double>(unembed(token, i));
            if (other) u -= static_cast<double>(unembed(*other, i));
            bias_term += u * static_cast<double>(weights.final_norm_bias(i));
        }
    }
    if (c.linear_biases)
        bias_term += static_cast<double>(weights.unembed_bias(token)) -
                     (other ? static_cast<double>(weights.unembed_bias(*other)) : 0.0);
    auto read = [&](const float* vector, index_t stride) {
        double dot = 0.0;
        for (index_t i = 0; i < c.d_model; ++i)
            dot += static_cast<double>(vector[i * stride]) * direction[static_cast<std::size_t>(i)];
        return dot;
    };

    logit_attribution out;
    auto add = [&](std::string name, double value) {
        out.components.push_back(std::move(name));
        out.values.push_back(value);
        out.total += value;
    };
    add("embed", read(&embed(batch, position, 0), embed.stride(2)));
    if (!c.rotary()) {
        const auto pos = detail::required(cache, site{site_kind::pos_embed, -1}, who).view<3>();
        add("pos_embed", read(&pos(batch, position, 0), pos.stride(2)));
    }
    const index_t d_head = c.d_head();
    for (index_t layer = 0; layer < c.n_layers; ++layer) {
        const auto z =
            detail::required(cache, site{site_kind::attn_z, layer}, who).view<4>();     // (b, pos, head, d_head)
        const auto& layer_w_o = weights.layers[static_cast<std::size_t>(layer)].w_o;
        const auto& w_o = readable(weights, layer_w_o);  // (d_model, heads * d_head)
        for (index_t h = 0; h < c.n_heads; ++h) {
            double value = 0.0;  // direction . (W_O,h z_h)
            for (index_t i = 0; i < c.d_model; ++i) {
                double row = 0.0;
                for (index_t j = 0; j < d_head; ++j)
                    row += static_cast<double>(w_o(i, h * d_head + j)) * static_cast<double>(z(batch, position, h, j));
                value += row * direction[static_cast<std::size_t>(i)];
            }
            add(detail::component_name(layer, h), value);
        }
        if (c.linear_biases) {  // b_O is added after the heads: a component of its own
            const auto& b_o = weights.layers[static_cast<std::size_t>(layer)].b_o;
            add("L" + std::to_string(layer) + ".b_O", read(b_o.data(), b_o.stride(0)));
        }
        if (!c.attn_only()) {
            const auto mlp = detail::required(cache, site{site_kind::mlp_out, layer}, who).view<3>();
            add(detail::component_name(layer, -1), read(&mlp(batch, position, 0), mlp.stride(2)));
        }
    }
    if (c.norm == norm_kind::layer || c.linear_biases) add("biases", bias_term);
    return out;
}

MECHLENS_END_NAMESPACE
