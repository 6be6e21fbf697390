#pragma once
/// @file
/// The transformer block, described once as data: a fixed sequence of typed steps (normalise, attend, add to the
/// residual stream, normalise, MLP, add), each naming its hook sites and its parameters at compile time. The inference
/// pass (model/forward.hpp), the partial pass used by patching, and the taped forward + backward pass
/// (grad/backward.hpp) are loops over this one description; what each step computes lives with its op in
/// model/ops/. A config turns steps off at run time (no norms, attention-only blocks) without changing the sequence.

#include <array>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "mechlens/hooks/site.hpp"
#include "mechlens/model/config.hpp"
#include "mechlens/model/parameter_table.hpp"

MECHLENS_BEGIN_NAMESPACE

/// What one step of a block does.
enum class block_op : std::uint8_t {
    norm,          ///< The sublayer input: the residual stream normalised (or the stream itself without norms).
    attention,     ///< Causal grouped-query attention from the sublayer input to the branch output.
    mlp,           ///< The MLP (gated SiLU or GELU) from the sublayer input to the branch output.
    residual_add,  ///< Fires the branch site, adds the branch to the residual stream, fires the stream site.
};

/// One step of a block with everything about it that is known at compile time. A structural type, so a step can
/// be a template argument and its sites reach the static hook policies as constants.
struct block_step {
    block_op op = block_op::norm;           ///< What the step does.
    site_kind first_site = site_kind::embed;   ///< norm: its scale site; residual_add: the branch site.
    site_kind second_site = site_kind::embed;  ///< norm: its normalized site; residual_add: the stream site after.
    site_kind attn_only_site = site_kind::embed;  ///< residual_add in an attention-only block: the stream site then.
    parameter_id weight = parameter_id::attn_norm;  ///< norm: the gain's parameter-table row.
    int half = 0;  ///< 0: the attention half of the block; 1: the MLP half, skipped in attention-only blocks.
    parameter_id bias = parameter_id::attn_norm_bias;  ///< norm: the bias's row (LayerNorm).
};

/// The decoder block of every model mechlens runs (LLaMA, GPT-2 style, GPT-NeoX and their variants): pre-norm
/// attention and MLP sublayers, each added to the residual stream (in a parallel block both read the block's input,
/// see stream_read_by). `blocks.L.hook_resid_pre` fires before the first step.
inline constexpr std::array<block_step, 6> decoder_block{{
    {block_op::norm, site_kind::ln1_scale, site_kind::ln1_normalized, site_kind::embed, parameter_id::attn_norm, 0,
     parameter_id::attn_norm_bias},
    {block_op::attention, site_kind::embed, site_kind::embed, site_kind::embed, parameter_id::attn_norm, 0},
    {block_op::residual_add, site_kind::attn_out, site_kind::resid_mid, site_kind::resid_post, parameter_id::attn_norm,
     0},
    {block_op::norm, site_kind::ln2_scale, site_kind::ln2_normalized, site_kind::embed, parameter_id::mlp_norm, 1,
     parameter_id::mlp_norm_bias},
    {block_op::mlp, site_kind::embed, site_kind::embed, site_kind::embed, parameter_id::attn_norm, 1},
    {block_op::residual_add, site_kind::mlp_out, site_kind::resid_post, site_kind::resid_post, parameter_id::attn_norm,
     1},
}};

/// The norm before the unembedding, as a step (its weight is model-wide).
inline constexpr block_step final_norm_step{block_op::norm, site_kind::ln_final_scale,
                                            site_kind::ln_final_normalized, site_kind::embed,
                                            parameter_id::final_norm, 0, parameter_id::final_norm_bias};

/// True when the step runs in a block of a model with config `c`.
constexpr bool step_runs(const block_step& step, const model_config& c) noexcept {
    return !(step.half == 1 && c.attn_only());
}

/// The stream a step of half `step.half` reads, as an offset from the block's input: the block input (0) for the
/// attention half; for the MLP half, the stream after attention (1), or the block input again in a parallel block
/// (GPT-NeoX), where attention and MLP both read hook_resid_pre and the block adds both branches to it.
constexpr int stream_read_by(const block_step& step, const model_config& c) noexcept {
    return c.parallel_attn_mlp ? 0 : step.half;
}

/// Calls f.template operator()<Step>() for every step of `Block` in order (Block is a constexpr array of steps):
/// the interpreters' loop, unrolled so each step's sites stay compile-time constants.
template <const auto& Block, class F>
constexpr void for_each_step(F&& f) {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
        (f.template operator()<Block[I]>(), ...);
    }(std::make_index_sequence<Block.size()>{});
}

/// for_each_step in reverse order: the backward pass's loop.
template <const auto& Block, class F>
constexpr void for_each_step_reversed(F&& f) {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
        (f.template operator()<Block[Block.size() - 1 - I]>(), ...);
    }(std::make_index_sequence<Block.size()>{});
}

MECHLENS_END_NAMESPACE
