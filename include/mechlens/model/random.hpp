#pragma once
/// @file
/// Models with random weights: for benchmarks at real shapes, tests, and training from scratch.

#include <cmath>
#include <cstdint>
#include <memory>

#include "mechlens/model/sampling.hpp"
#include "mechlens/model/weights.hpp"
#include "mechlens/tensor/tensor.hpp"

MECHLENS_BEGIN_NAMESPACE

/// A model with weights drawn uniformly from [-scale, scale] (norm gains 1), reproducible from `seed`, for every
/// variant of model_config: weights the config does not use stay empty views (see layer_weights). The weights live
/// in one owned buffer kept alive by `weights.storage`.
inline loaded_model random_model(const model_config& config, std::uint64_t seed, float scale = 0.05f) {
    config.validate("random_model");
    const index_t d = config.d_model, q = config.n_heads * config.d_head(), kv = config.n_kv_heads * config.d_head();
    const bool norms = config.has_norm(), mlp = !config.attn_only(), gated = config.mlp == mlp_kind::gated_silu;
    const index_t norm_width = norms ? d : 0;
    const index_t mlp_matrices = !mlp ? 0 : gated ? 3 : 2;
    const index_t per_layer = norm_width * (mlp ? 2 : 1) + q * d + 2 * kv * d + d * q + mlp_matrices * config.d_mlp * d;
    const index_t positions = config.rotary() ? 0 : config.n_ctx * d;
    const index_t total =
        config.d_vocab * d * (config.tied_unembed ? 1 : 2) + norm_width + config.n_layers * per_layer + positions;
    auto buffer = std::make_shared<tensor<float, 1>>(extents<1>{total});
    random_generator rng(seed);
    float* cursor = buffer->data();
    auto take = [&](index_t count, bool gain) {
        float* begin = cursor;
        for (index_t i = 0; i < count; ++i)
            cursor[i] = gain ? 1.0f : static_cast<float>((2.0 * rng.uniform() - 1.0) * static_cast<double>(scale));
        cursor += count;
        return begin;
    };
    auto matrix = [&](index_t rows, index_t cols) {
        return tensor_view<const float, 2>(take(rows * cols, false), {rows, cols});
    };
    // Gains draw nothing from the generator, so leaving them out keeps every other weight as it was.
    auto gain = [&](index_t n) { return tensor_view<const float, 1>(take(n, true), {n}); };

    // The draw order is fixed: the LLaMA layout first, exactly as before the variants existed (tests pin those
    // weights), and the position table last, so adding it changes nothing else.
    loaded_model model{config, {}};
    model_weights& w = model.weights;
    w.token_embedding = matrix(config.d_vocab, d);
    for (index_t l = 0; l < config.n_layers; ++l) {
        layer_weights layer;
        if (norms) layer.attn_norm = gain(d);
        layer.w_q = matrix(q, d);
        layer.w_k = matrix(kv, d);
        layer.w_v = matrix(kv, d);
        layer.w_o = matrix(d, q);
        if (mlp) {
            if (norms) layer.mlp_norm = gain(d);
            if (gated) layer.w_gate = matrix(config.d_mlp, d);
            layer.w_up = matrix(config.d_mlp, d);
            layer.w_down = matrix(d, config.d_mlp);
        }
        w.layers.push_back(layer);
    }
    if (norms) w.final_norm = gain(d);
    w.unembed = config.tied_unembed ? w.token_embedding : matrix(config.d_vocab, d);
    if (!config.rotary()) w.pos_embedding = matrix(config.n_ctx, d);
    w.storage = buffer;
    return model;
}

MECHLENS_END_NAMESPACE
