#pragma once
/// @file
/// Model weights as non-owning views, plus the storage that keeps them alive.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "mechlens/kernels/encoded_matmul.hpp"
#include "mechlens/model/config.hpp"
#include "mechlens/model/decoded_on_demand.hpp"
#include "mechlens/model/parameter_table.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Weights of one block as views of T (const float for a loaded model, float or double for owned parameters and
/// their gradients); every matrix is (out_features, in_features), row-major, as in llama2.c and GGUF. Views a config
/// does not use (see the parameter table) are empty (extents 0).
template <class T>
struct basic_layer_weights {
    tensor_view<T, 1> attn_norm;       ///< (d_model) norm gain before attention.
    tensor_view<T, 1> attn_norm_bias;  ///< (d_model) norm bias before attention (LayerNorm).
    tensor_view<T, 2> w_q;             ///< (n_heads * d_head, d_model)
    tensor_view<T, 1> b_q;             ///< (n_heads * d_head)
    tensor_view<T, 2> w_k;             ///< (n_kv_heads * d_head, d_model)
    tensor_view<T, 1> b_k;             ///< (n_kv_heads * d_head)
    tensor_view<T, 2> w_v;             ///< (n_kv_heads * d_head, d_model)
    tensor_view<T, 1> b_v;             ///< (n_kv_heads * d_head)
    tensor_view<T, 2> w_o;             ///< (d_model, n_heads * d_head)
    tensor_view<T, 1> b_o;             ///< (d_model)
    tensor_view<T, 1> mlp_norm;        ///< (d_model) norm gain before the MLP.
    tensor_view<T, 1> mlp_norm_bias;   ///< (d_model) norm bias before the MLP (LayerNorm).
    tensor_view<T, 2> w_gate;          ///< (d_mlp, d_model) "w1"; SiLU is applied to its output (gated MLP).
    tensor_view<T, 2> w_up;            ///< (d_mlp, d_model) "w3", multiplied with the gate; W_in of a plain MLP.
    tensor_view<T, 1> b_up;            ///< (d_mlp) b_in of a plain MLP.
    tensor_view<T, 2> w_down;          ///< (d_model, d_mlp) "w2".
    tensor_view<T, 1> b_down;          ///< (d_model) b_out.
};

/// Weights of one block of a loaded model.
using layer_weights = basic_layer_weights<const float>;

/// Calls f(parameter_id, view) for every per-block view of `layer` (a basic_layer_weights), in table order: the one
/// place that pairs the table's block rows with the struct's members.
template <class Layer, class F>
void for_each_block_view(Layer& layer, F&& f) {
    f(parameter_id::attn_norm, layer.attn_norm);
    f(parameter_id::attn_norm_bias, layer.attn_norm_bias);
    f(parameter_id::w_q, layer.w_q);
    f(parameter_id::b_q, layer.b_q);
    f(parameter_id::w_k, layer.w_k);
    f(parameter_id::b_k, layer.b_k);
    f(parameter_id::w_v, layer.w_v);
    f(parameter_id::b_v, layer.b_v);
    f(parameter_id::w_o, layer.w_o);
    f(parameter_id::b_o, layer.b_o);
    f(parameter_id::mlp_norm, layer.mlp_norm);
    f(parameter_id::mlp_norm_bias, layer.mlp_norm_bias);
    f(parameter_id::w_gate, layer.w_gate);
    f(parameter_id::w_up, layer.w_up);
    f(parameter_id::b_up, layer.b_up);
    f(parameter_id::w_down, layer.w_down);
    f(parameter_id::b_down, layer.b_down);
}

/// Calls f(parameter_id, view) for every model-wide view of `model` (model_weights or basic_model_parameters), in
/// table order: the one place that pairs the table's global rows with the members.
template <class Model, class F>
void for_each_global_view(Model& model, F&& f) {
    f(parameter_id::token_embedding, model.token_embedding);
    f(parameter_id::pos_embedding, model.pos_embedding);
    f(parameter_id::final_norm, model.final_norm);
    f(parameter_id::final_norm_bias, model.final_norm_bias);
    f(parameter_id::unembed, model.unembed);
    f(parameter_id::unembed_bias, model.unembed_bias);
}

/// Calls f(parameter_id, layer, view) for every view of `model`, layer -1 for the global ones: globals before the
/// blocks in table order, the blocks in order, then the globals after them.
template <class Model, class F>
void for_each_view(Model& model, F&& f) {
    for_each_global_view(model, [&](parameter_id id, auto& view) {
        if (stored_before_blocks(id)) f(id, index_t{-1}, view);
    });
    for (std::size_t l = 0; l < model.layers.size(); ++l)
        for_each_block_view(model.layers[l],
                            [&](parameter_id id, auto& view) { f(id, static_cast<index_t>(l), view); });
    for_each_global_view(model, [&](parameter_id id, auto& view) {
        if (stored_after_blocks(id)) f(id, index_t{-1}, view);
    });
}

/// All weights of a model: views into storage owned elsewhere (a memory-mapped file or converted buffers).
struct model_weights {
    tensor_view<const float, 2> token_embedding;  ///< (d_vocab, d_model)
    tensor_view<const float, 2> pos_embedding;    ///< (n_ctx, d_model) with learned positions, else empty.
    std::vector<layer_weights> layers;            ///< One entry per block.
    tensor_view<const float, 1> final_norm;       ///< (d_model), empty without norms.
    tensor_view<const float, 1> final_norm_bias;  ///< (d_model), LayerNorm only.
    tensor_view<const float, 2> unembed;          ///< (d_vocab_out, d_model); aliases token_embedding when tied.
    tensor_view<const float, 1> unembed_bias;     ///< (d_vocab_out), with linear biases.
    /// Keeps the memory behind the views alive (mapped file, converted F16 tensors, ...).
    std::shared_ptr<const void> storage;
    /// Matrices whose file also keeps them as quantised blocks (Q8_0, Q4_K, Q6_K), each tied to the decoded floats
    /// it stands for; the blocks live in `storage`'s mapping. The forward passes multiply by these instead of the
    /// floats, with the same bits (kernels/encoded_matmul.hpp). Empty for weights that have no such blocks.
    std::vector<kernels::encoded_matrix> encoded;
    /// Where the floats of the encoded matrices are decoded when first needed (null when every view is readable
    /// as loaded): until decode_all_floats() or readable() asks, those views must not be read.
    std::shared_ptr<const decoded_on_demand> on_demand;
};

/// Makes every float view of `weights` readable: decodes each encoded matrix whose floats are still held on demand
/// (once, thread-safe; transformer::weights() calls this). Throws std::bad_alloc when memory runs out.
inline void decode_all_floats(const model_weights& weights) {
    if (weights.on_demand != nullptr) weights.on_demand->decode_all();
}

/// `view`, a view of `weights`, once readable: decodes the one encoded matrix it lies in when that matrix's floats
/// are still held on demand, and nothing else.
template <class View>
const View& readable(const model_weights& weights, const View& view) {
    if (weights.on_demand != nullptr && view.size() > 0) weights.on_demand->decode_containing(view.data());
    return view;
}

/// The blocks of `w` when `weights` keeps `w`'s floats (or a range of their rows) as encoded blocks, else nothing.
/// Matches by address: a view of other floats, even equal ones, has no blocks.
[[nodiscard]] inline std::optional<kernels::encoded_matrix> encoded_blocks_of(const model_weights& weights,
                                                                             tensor_view<const float, 2> w) noexcept {
    if (w.extent(0) == 0 || (w.extent(1) > 1 && w.stride(1) != 1)) return std::nullopt;
    const auto address = reinterpret_cast<std::uintptr_t>(w.data());
    for (const kernels::encoded_matrix& m : weights.encoded) {
        if (w.extent(1) != m.depth || (w.extent(0) > 1 && w.stride(0) != m.depth) || m.depth == 0) continue;
        const auto begin = reinterpret_cast<std::uintptr_t>(m.decoded);
        const std::uintptr_t row_size = static_cast<std::uintptr_t>(m.depth) * sizeof(float);
        if (address < begin || (address - begin) % row_size != 0) continue;
        const auto first = static_cast<index_t>((address - begin) / row_size);
        if (first + w.extent(0) > m.rows) continue;
        return kernels::encoded_rows(m, first, w.extent(0));
    }
    return std::nullopt;
}

/// What a loader returns: hyper-parameters plus weight views (which keep their storage alive).
struct loaded_model {
    model_config config;    ///< Hyper-parameters read from the file.
    model_weights weights;  ///< Views into the file's mapping or into converted buffers.
};

/// Throws shape_error unless every weight view has the extents `config` implies (the parameter table; empty where
/// the config has no such weight).
inline void validate_weights(const model_config& config, const model_weights& w) {
    if (static_cast<index_t>(w.layers.size()) != config.n_layers)
        throw shape_error("model has " + std::to_string(w.layers.size()) + " layers of weights, config says " +
                          std::to_string(config.n_layers));
    for_each_view(w, [&](parameter_id id, index_t, const auto& view) {
        const parameter_traits& row = traits_of(id);
        const extents<2> e = row.shape(config);
        if constexpr (std::remove_cvref_t<decltype(view)>::rank == 1)
            require_shape(view, {e[0]}, row.name.data());
        else
            require_shape(view, e, row.name.data());
    });
}

MECHLENS_END_NAMESPACE
