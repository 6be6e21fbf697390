#pragma once
/// @file
/// Model weights as non-owning views, plus the storage that keeps them alive.

#include <memory>
#include <vector>

#include "mechlens/model/config.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Weights of one block; every matrix is (out_features, in_features), row-major, as in llama2.c and GGUF.
/// Views a config does not use (norm gains without norms, MLP weights of attention-only blocks, w_gate of a plain
/// MLP) are empty (extents 0).
struct layer_weights {
    tensor_view<const float, 1> attn_norm;  ///< (d_model) RMSNorm gain before attention.
    tensor_view<const float, 2> w_q;        ///< (n_heads * d_head, d_model)
    tensor_view<const float, 2> w_k;        ///< (n_kv_heads * d_head, d_model)
    tensor_view<const float, 2> w_v;        ///< (n_kv_heads * d_head, d_model)
    tensor_view<const float, 2> w_o;        ///< (d_model, n_heads * d_head)
    tensor_view<const float, 1> mlp_norm;   ///< (d_model) RMSNorm gain before the MLP.
    tensor_view<const float, 2> w_gate;     ///< (d_mlp, d_model) "w1"; SiLU is applied to its output (gated MLP).
    tensor_view<const float, 2> w_up;       ///< (d_mlp, d_model) "w3", multiplied with the gate; W_in of a plain MLP.
    tensor_view<const float, 2> w_down;     ///< (d_model, d_mlp) "w2".
};

/// All weights of a model: views into storage owned elsewhere (a memory-mapped file or converted buffers).
struct model_weights {
    tensor_view<const float, 2> token_embedding;  ///< (d_vocab, d_model)
    tensor_view<const float, 2> pos_embedding;    ///< (n_ctx, d_model) with learned positions, else empty.
    std::vector<layer_weights> layers;            ///< One entry per block.
    tensor_view<const float, 1> final_norm;       ///< (d_model), empty without norms.
    tensor_view<const float, 2> unembed;          ///< (d_vocab, d_model); aliases token_embedding when tied.
    /// Keeps the memory behind the views alive (mapped file, converted F16 tensors, ...).
    std::shared_ptr<const void> storage;
};

/// What a loader returns: hyper-parameters plus weight views (which keep their storage alive).
struct loaded_model {
    model_config config;    ///< Hyper-parameters read from the file.
    model_weights weights;  ///< Views into the file's mapping or into converted buffers.
};

/// Throws shape_error unless every weight view has the extents `config` implies (empty where the config has no
/// such weight).
inline void validate_weights(const model_config& config, const model_weights& w) {
    const index_t d = config.d_model, q = config.n_heads * config.d_head(), kv = config.n_kv_heads * config.d_head();
    const index_t norm_width = config.has_norm() ? d : 0;
    const index_t mlp_width = config.attn_only() ? 0 : config.d_mlp;
    const index_t mlp_in = config.attn_only() ? 0 : d;
    const bool gated = config.mlp == mlp_kind::gated_silu;
    require_shape(w.token_embedding, {config.d_vocab, d}, "token_embedding");
    if (config.rotary())
        require_shape(w.pos_embedding, {0, 0}, "pos_embedding (rotary positions have none)");
    else
        require_shape(w.pos_embedding, {config.n_ctx, d}, "pos_embedding");
    require_shape(w.final_norm, {norm_width}, "final_norm");
    require_shape(w.unembed, {config.d_vocab, d}, "unembed");
    if (static_cast<index_t>(w.layers.size()) != config.n_layers)
        throw shape_error("model has " + std::to_string(w.layers.size()) + " layers of weights, config says " +
                          std::to_string(config.n_layers));
    for (const layer_weights& l : w.layers) {
        require_shape(l.attn_norm, {norm_width}, "attn_norm");
        require_shape(l.w_q, {q, d}, "w_q");
        require_shape(l.w_k, {kv, d}, "w_k");
        require_shape(l.w_v, {kv, d}, "w_v");
        require_shape(l.w_o, {d, q}, "w_o");
        require_shape(l.mlp_norm, {config.attn_only() ? 0 : norm_width}, "mlp_norm");
        require_shape(l.w_gate, {gated ? mlp_width : 0, gated ? mlp_in : 0}, "w_gate");
        require_shape(l.w_up, {mlp_width, mlp_in}, "w_up");
        require_shape(l.w_down, {mlp_in, mlp_width}, "w_down");
    }
}

MECHLENS_END_NAMESPACE
