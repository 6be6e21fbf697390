#pragma once
/// @file
/// The parameter table: every weight tensor a model can have, once, with its shape as a function of the config and
/// where each file format stores it. Layouts, weight validation, loaders, checkpoints, gradient buffers and optimizer
/// state are all derived from it; a new weight is a new row (plus its member in basic_layer_weights or the model
/// struct and one line in the visitor beside it, see weights.hpp).

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "mechlens/model/config.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Every weight tensor a model can have; the order is the parameter table's (and the flat buffer's) order.
enum class parameter_id : std::uint8_t {
    token_embedding,  ///< (d_vocab, d_model)
    pos_embedding,    ///< (n_ctx, d_model), learned positions only
    attn_norm,        ///< (d_model) gain of the norm before attention, with norms only
    attn_norm_bias,   ///< (d_model) bias of that norm, LayerNorm only
    w_q,              ///< (n_heads * d_head, d_model)
    b_q,              ///< (n_heads * d_head), with linear biases
    w_k,              ///< (n_kv_heads * d_head, d_model)
    b_k,              ///< (n_kv_heads * d_head), with linear biases
    w_v,              ///< (n_kv_heads * d_head, d_model)
    b_v,              ///< (n_kv_heads * d_head), with linear biases
    w_o,              ///< (d_model, n_heads * d_head)
    b_o,              ///< (d_model), with linear biases
    mlp_norm,         ///< (d_model) gain of the norm before the MLP, with norms and an MLP
    mlp_norm_bias,    ///< (d_model) bias of that norm, LayerNorm and an MLP
    w_gate,           ///< (d_mlp, d_model), gated MLP only
    w_up,             ///< (d_mlp, d_model), any MLP (W_in of a plain one)
    b_up,             ///< (d_mlp), an MLP with linear biases (b_in)
    w_down,           ///< (d_model, d_mlp), any MLP
    b_down,           ///< (d_model), an MLP with linear biases (b_out)
    final_norm,       ///< (d_model) gain of the final norm, with norms only
    final_norm_bias,  ///< (d_model) bias of the final norm, LayerNorm only
    unembed,          ///< (d_vocab_out, d_model); the token embedding's memory when tied
    unembed_bias,     ///< (d_vocab_out), with linear biases
};

/// Number of rows in the parameter table.
inline constexpr std::size_t parameter_count = static_cast<std::size_t>(parameter_id::unembed_bias) + 1;

/// One row of the parameter table.
struct parameter_traits {
    parameter_id id;               ///< Which weight.
    std::string_view name;         ///< Field name; layouts and checkpoints prefix block rows with `blocks.L.`.
    bool per_block;                ///< One per block (true) or one per model.
    std::size_t rank;              ///< 1 (a gain or a bias) or 2 (a matrix, (out_features, in_features)).
    bool norm_gain;                ///< A norm's gain: 1 in a fresh model (biases start at 0). Rank 1: no decay.
    std::string_view gguf_name;    ///< GGUF (llama.cpp) tensor name; block rows are prefixed with `blk.L.`.
    int llama2c_section;           ///< Index of its array in a llama2.c `.bin` (layers stacked), -1 if absent.
    extents<2> (*shape)(const model_config&);  ///< Extents the config implies ({0, 0} when it has no such weight).
};

namespace detail {
/// Norm gain width: d_model with norms, else 0.
constexpr index_t norm_width(const model_config& c) noexcept { return c.has_norm() ? c.d_model : 0; }
/// MLP hidden width: d_mlp with an MLP, else 0.
constexpr index_t mlp_width(const model_config& c) noexcept { return c.attn_only() ? 0 : c.d_mlp; }
/// d_model when the block has an MLP, else 0.
constexpr index_t mlp_side(const model_config& c) noexcept { return c.attn_only() ? 0 : c.d_model; }
/// A norm bias's width: d_model with LayerNorm, else 0.
constexpr index_t norm_bias_width(const model_config& c) noexcept {
    return c.norm == norm_kind::layer ? c.d_model : 0;
}
/// `width` with linear biases, else 0.
constexpr index_t bias_width(const model_config& c, index_t width) noexcept { return c.linear_biases ? width : 0; }
}  // namespace detail

/// The parameter table, one row per parameter_id, in enum order.
inline constexpr std::array<parameter_traits, parameter_count> parameter_table{{
    {parameter_id::token_embedding, "token_embedding", false, 2, false, "token_embd.weight", 0,
     [](const model_config& c) { return extents<2>{c.d_vocab, c.d_model}; }},
    {parameter_id::pos_embedding, "pos_embedding", false, 2, false, "position_embd.weight", -1,
     [](const model_config& c) { return c.rotary() ? extents<2>{0, 0} : extents<2>{c.n_ctx, c.d_model}; }},
    {parameter_id::attn_norm, "attn_norm", true, 1, true, "attn_norm.weight", 1,
     [](const model_config& c) { return extents<2>{detail::norm_width(c), 0}; }},
    {parameter_id::attn_norm_bias, "attn_norm_bias", true, 1, false, "attn_norm.bias", -1,
     [](const model_config& c) { return extents<2>{detail::norm_bias_width(c), 0}; }},
    {parameter_id::w_q, "w_q", true, 2, false, "attn_q.weight", 2,
     [](const model_config& c) { return extents<2>{c.n_heads * c.d_head(), c.d_model}; }},
    {parameter_id::b_q, "b_q", true, 1, false, "attn_q.bias", -1,
     [](const model_config& c) { return extents<2>{detail::bias_width(c, c.n_heads * c.d_head()), 0}; }},
    {parameter_id::w_k, "w_k", true, 2, false, "attn_k.weight", 3,
     [](const model_config& c) { return extents<2>{c.n_kv_heads * c.d_head(), c.d_model}; }},
    {parameter_id::b_k, "b_k", true, 1, false, "attn_k.bias", -1,
     [](const model_config& c) { return extents<2>{detail::bias_width(c, c.n_kv_heads * c.d_head()), 0}; }},
    {parameter_id::w_v, "w_v", true, 2, false, "attn_v.weight", 4,
     [](const model_config& c) { return extents<2>{c.n_kv_heads * c.d_head(), c.d_model}; }},
    {parameter_id::b_v, "b_v", true, 1, false, "attn_v.bias", -1,
     [](const model_config& c) { return extents<2>{detail::bias_width(c, c.n_kv_heads * c.d_head()), 0}; }},
    {parameter_id::w_o, "w_o", true, 2, false, "attn_output.weight", 5,
     [](const model_config& c) { return extents<2>{c.d_model, c.n_heads * c.d_head()}; }},
    {parameter_id::b_o, "b_o", true, 1, false, "attn_output.bias", -1,
     [](const model_config& c) { return extents<2>{detail::bias_width(c, c.d_model), 0}; }},
    {parameter_id::mlp_norm, "mlp_norm", true, 1, true, "ffn_norm.weight", 6,
     [](const model_config& c) { return extents<2>{c.attn_only() ? 0 : detail::norm_width(c), 0}; }},
    {parameter_id::mlp_norm_bias, "mlp_norm_bias", true, 1, false, "ffn_norm.bias", -1,
     [](const model_config& c) { return extents<2>{c.attn_only() ? 0 : detail::norm_bias_width(c), 0}; }},
    {parameter_id::w_gate, "w_gate", true, 2, false, "ffn_gate.weight", 7,
     [](const model_config& c) {
         return c.mlp == mlp_kind::gated_silu ? extents<2>{c.d_mlp, c.d_model} : extents<2>{0, 0};
     }},
    {parameter_id::w_up, "w_up", true, 2, false, "ffn_up.weight", 9,
     [](const model_config& c) { return extents<2>{detail::mlp_width(c), detail::mlp_side(c)}; }},
    {parameter_id::b_up, "b_up", true, 1, false, "ffn_up.bias", -1,
     [](const model_config& c) { return extents<2>{detail::bias_width(c, detail::mlp_width(c)), 0}; }},
    {parameter_id::w_down, "w_down", true, 2, false, "ffn_down.weight", 8,
     [](const model_config& c) { return extents<2>{detail::mlp_side(c), detail::mlp_width(c)}; }},
    {parameter_id::b_down, "b_down", true, 1, false, "ffn_down.bias", -1,
     [](const model_config& c) { return extents<2>{detail::bias_width(c, detail::mlp_side(c)), 0}; }},
    {parameter_id::final_norm, "final_norm", false, 1, true, "output_norm.weight", 10,
     [](const model_config& c) { return extents<2>{detail::norm_width(c), 0}; }},
    {parameter_id::final_norm_bias, "final_norm_bias", false, 1, false, "output_norm.bias", -1,
     [](const model_config& c) { return extents<2>{detail::norm_bias_width(c), 0}; }},
    {parameter_id::unembed, "unembed", false, 2, false, "output.weight", 13,
     [](const model_config& c) { return extents<2>{c.vocab_out(), c.d_model}; }},
    {parameter_id::unembed_bias, "unembed_bias", false, 1, false, "output.bias", -1,
     [](const model_config& c) { return extents<2>{detail::bias_width(c, c.vocab_out()), 0}; }},
}};

/// The table's row for `id`.
constexpr const parameter_traits& traits_of(parameter_id id) noexcept {
    return parameter_table[static_cast<std::size_t>(id)];
}

/// Number of elements of a row's tensor under `c` (0 when the config has no such weight).
constexpr index_t parameter_size(const parameter_traits& row, const model_config& c) noexcept {
    const extents<2> e = row.shape(c);
    return row.rank == 1 ? e[0] : e[0] * e[1];
}

/// True when a model with config `c` stores its own copy of the row's tensor (a tied unembedding is the token
/// embedding's memory, not stored twice).
constexpr bool parameter_stored(const parameter_traits& row, const model_config& c) noexcept {
    if (row.id == parameter_id::unembed && c.tied_unembed) return false;
    return parameter_size(row, c) > 0;
}

namespace detail {
/// True when the table lists every parameter_id once, in enum order (checked at compile time below).
constexpr bool parameter_table_is_in_order() noexcept {
    for (std::size_t i = 0; i < parameter_count; ++i)
        if (static_cast<std::size_t>(parameter_table[i].id) != i) return false;
    return true;
}
static_assert(parameter_table_is_in_order(), "parameter_table must list every parameter_id once, in enum order");
/// True when the per-block rows are contiguous in the table, so global rows fall before or after the blocks.
constexpr bool block_rows_are_contiguous() noexcept {
    std::size_t first = parameter_count, last = 0;
    for (std::size_t i = 0; i < parameter_count; ++i)
        if (parameter_table[i].per_block) {
            first = std::min(first, i);
            last = i;
        }
    for (std::size_t i = first; i <= last; ++i)
        if (!parameter_table[i].per_block) return false;
    return true;
}
static_assert(block_rows_are_contiguous(), "parameter_table: the per-block rows must be contiguous");
}  // namespace detail

/// True for a model-wide row stored before the blocks (the embeddings); false for per-block rows and those after.
constexpr bool stored_before_blocks(parameter_id id) noexcept {
    for (const parameter_traits& row : parameter_table) {
        if (row.per_block) return false;
        if (row.id == id) return true;
    }
    return false;
}
/// True for a model-wide row stored after the blocks (the final norm and the unembedding).
constexpr bool stored_after_blocks(parameter_id id) noexcept {
    return !traits_of(id).per_block && !stored_before_blocks(id);
}

namespace detail {
}  // namespace detail

MECHLENS_END_NAMESPACE
