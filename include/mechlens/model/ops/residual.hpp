#pragma once
/// @file
/// The residual-add op: fires the branch's site (hook_attn_out, hook_mlp_out), adds the branch to the residual
/// stream and fires the stream's site after it (hook_resid_mid, hook_resid_post; an attention-only block goes straight
/// to hook_resid_post, as TransformerLens has no hook_resid_mid there). In a parallel block (GPT-NeoX) the attention
/// half's sum goes aside, for the MLP half still reads the block's input, and the MLP half adds its branch to that
/// sum: resid_post = (resid_pre + attn_out) + mlp_out, TransformerLens's order, with no hook_resid_mid. Inference,
/// taped forward and backward.

#include <algorithm>

#include "mechlens/grad/observers.hpp"
#include "mechlens/hooks/policy.hpp"
#include "mechlens/kernels/vector_ops.hpp"
#include "mechlens/model/block.hpp"
#include "mechlens/model/config.hpp"
#include "mechlens/model/ops/common.hpp"

MECHLENS_BEGIN_NAMESPACE
namespace detail {

/// True when the step's stream site is the attention-only one (the attention half's add in an attention-only block).
constexpr bool adds_to_block_output(const block_step& step, const model_config& c) noexcept {
    return step.half == 0 && c.attn_only();
}

/// True when the step is the attention half's add of a parallel block: its sum is set aside, not the stream.
constexpr bool sets_sum_aside(const block_step& step, const model_config& c) noexcept {
    return step.half == 0 && c.parallel_attn_mlp;
}

/// Residual-add step, inference: x += branch, both (batch * pos, d_model), firing the branch and stream sites. In a
/// parallel block the attention half writes x + branch to `parallel_sum` (x is left for the MLP half to read) and
/// the MLP half writes parallel_sum + branch to x.
template <block_step Step, class Policy>
void residual_add_step(Policy& policy, index_t layer, const hook_context& ctx, const forward_shape& s,
                       const model_config& c, tensor_view<float, 2> x, tensor_view<float, 2> branch,
                       tensor_view<float, 2> parallel_sum) {
    static_assert(Step.op == block_op::residual_add);
    fire<Step.first_site>(policy, layer, ctx, [&] { return as_sequence(branch, s); });
    if (sets_sum_aside(Step, c)) {
        for (index_t r = 0; r < s.rows(); ++r) kernels::add(&parallel_sum(r, 0), &x(r, 0), &branch(r, 0), c.d_model);
        return;
    }
    const auto before = c.parallel_attn_mlp ? parallel_sum : x;  // (batch * pos, d_model)
    for (index_t r = 0; r < s.rows(); ++r) kernels::add(&x(r, 0), &before(r, 0), &branch(r, 0), c.d_model);
    if (adds_to_block_output(Step, c))
        fire<Step.attn_only_site>(policy, layer, ctx, [&] { return as_sequence(x, s); });
    else
        fire<Step.second_site>(policy, layer, ctx, [&] { return as_sequence(x, s); });
}

/// Residual-add step, taped forward: `out` = `in` + `branch` (rows, d_model each), firing the branch and stream
/// sites; in an attention-only block the sum is also the block's output, copied to `block_out` (the tape keeps
/// every stream state apart). The attention half of a parallel block fires no stream site: its sum is no stream.
template <block_step Step, class T, class Policy>
void taped_residual_add_step(Policy& hooks, index_t layer, const hook_context& ctx, const model_config& c,
                             const taped_shape& shape, const T* in, T* branch, T* out, T* block_out) {
    static_assert(Step.op == block_op::residual_add);
    const index_t batch = shape.batch, n = shape.positions, rows = shape.rows(), d = c.d_model;
    fire<Step.first_site>(hooks, layer, ctx, [&] { return sequence_view(branch, batch, n, d); });
    for (index_t i = 0; i < rows * d; ++i) out[i] = in[i] + branch[i];
    if (adds_to_block_output(Step, c)) {
        std::copy(out, out + rows * d, block_out);
        fire<Step.attn_only_site>(hooks, layer, ctx, [&] { return sequence_view(block_out, batch, n, d); });
    } else if (!sets_sum_aside(Step, c)) {
        fire<Step.second_site>(hooks, layer, ctx, [&] { return sequence_view(out, batch, n, d); });
    }
}

/// Residual-add step, backward: observers see the stream's gradient `d_stream`, which is also the branch's
/// (copied to `d_branch`); the stream keeps its own (the add's other input). For the attention half of a parallel
/// block, `d_mlp_input_path` (rows, d_model) is what the MLP half's norm sent back to the block's input, added to
/// the stream's gradient after the branch took its copy (null otherwise).
template <block_step Step, class T, class Policy>
void residual_add_step_backward(Policy& hooks, index_t layer, const hook_context& ctx, const model_config& c,
                                const taped_shape& shape, T* d_stream, T* d_branch, const T* d_mlp_input_path) {
    static_assert(Step.op == block_op::residual_add);
    const index_t batch = shape.batch, n = shape.positions, rows = shape.rows(), d = c.d_model;
    if (adds_to_block_output(Step, c))
        observe_gradient<Step.attn_only_site>(hooks, layer, ctx, [&] { return sequence_view(d_stream, batch, n, d); });
    else if (!sets_sum_aside(Step, c))
        observe_gradient<Step.second_site>(hooks, layer, ctx, [&] { return sequence_view(d_stream, batch, n, d); });
    std::copy(d_stream, d_stream + rows * d, d_branch);
    observe_gradient<Step.first_site>(hooks, layer, ctx, [&] { return sequence_view(d_branch, batch, n, d); });
    if (sets_sum_aside(Step, c))
        for (index_t i = 0; i < rows * d; ++i) d_stream[i] += d_mlp_input_path[i];
}

}  // namespace detail
MECHLENS_END_NAMESPACE
