#pragma once
/// @file
/// The MLP op: gated SiLU (LLaMA) or a plain MLP with biases or not (gelu_new, exact GELU, ReLU), from a sublayer
/// input to the branch output, firing
/// mlp.hook_pre, hook_pre_linear (gated only) and hook_post. Its inference forward (SIMD kernels, float), its taped
/// forward and its backward (any floating type).

#include "mechlens/grad/observers.hpp"
#include "mechlens/hooks/policy.hpp"
#include "mechlens/kernels/activation.hpp"
#include "mechlens/kernels/generic.hpp"
#include "mechlens/kernels/matmul.hpp"
#include "mechlens/model/config.hpp"
#include "mechlens/model/ops/common.hpp"
#include "mechlens/model/weights.hpp"
#include "mechlens/model/workspace.hpp"

MECHLENS_BEGIN_NAMESPACE
namespace detail {

/// The activation of a plain MLP: gelu_tanh (gelu_new), exact gelu or relu.
template <class T>
T plain_activation(mlp_kind kind, T x) {
    if (kind == mlp_kind::plain_gelu) return kernels::generic::gelu_tanh(x);
    if (kind == mlp_kind::plain_gelu_erf) return kernels::generic::gelu_erf(x);
    return kernels::generic::relu(x);
}
/// The derivative of plain_activation.
template <class T>
T plain_activation_derivative(mlp_kind kind, T x) {
    if (kind == mlp_kind::plain_gelu) return kernels::generic::gelu_tanh_derivative(x);
    if (kind == mlp_kind::plain_gelu_erf) return kernels::generic::gelu_erf_derivative(x);
    return kernels::generic::relu_derivative(x);
}

/// The MLP of one block, from its normalized input `in` to `out`: gated SiLU (silu(x W_gate^T) * x W_up^T) or plain
/// GELU (gelu_tanh(x W_up^T), TransformerLens's `gelu_new`), then W_down. Not called for attention-only blocks.
template <class Policy>
void run_mlp(Policy& policy, index_t layer, const hook_context& ctx, const model_config& c, const model_weights& all,
             const layer_weights& w, const forward_shape& s, tensor_view<const float, 2> in, workspace& ws,
             tensor_view<float, 2> out) {
    const index_t rows = s.rows();
    const auto gate = ws.gate.matrix(rows, c.d_mlp);  // (batch * pos, d_mlp) pre-activation, then the hidden state
    if (c.mlp == mlp_kind::gated_silu) {
        const auto up = ws.up.matrix(rows, c.d_mlp);  // (batch * pos, d_mlp)
        project(all, in, w.w_gate, {}, gate);
        project(all, in, w.w_up, {}, up);
        fire<site_kind::mlp_pre>(policy, layer, ctx, [&] { return as_sequence(gate, s); });
        fire<site_kind::mlp_pre_linear>(policy, layer, ctx, [&] { return as_sequence(up, s); });
        for (index_t r = 0; r < rows; ++r) kernels::silu_mul(&gate(r, 0), &gate(r, 0), &up(r, 0), c.d_mlp);
    } else {
        project(all, in, w.w_up, w.b_up, gate);
        fire<site_kind::mlp_pre>(policy, layer, ctx, [&] { return as_sequence(gate, s); });
        for (index_t r = 0; r < rows; ++r) {
            if (c.mlp == mlp_kind::plain_gelu)
                kernels::gelu_tanh(&gate(r, 0), &gate(r, 0), c.d_mlp);
            else if (c.mlp == mlp_kind::plain_gelu_erf)
                kernels::gelu_erf(&gate(r, 0), &gate(r, 0), c.d_mlp);
            else
                kernels::relu(&gate(r, 0), &gate(r, 0), c.d_mlp);
        }
    }
    fire<site_kind::mlp_post>(policy, layer, ctx, [&] { return as_sequence(gate, s); });
    project(all, gate, w.w_down, w.b_down, out);
}

/// MLP step, taped forward: from the sublayer input `input2` (rows, d_model) to `branch` (rows, d_model), keeping
/// the pre-activations and the hidden state in the block's tape.
template <class T, class Layer, class Policy>
void taped_mlp_step(Policy& hooks, index_t layer, const hook_context& ctx, const model_config& c, const Layer& w,
                    const taped_shape& shape, const T* input2, block_tape<T>& b, T* branch) {
    const index_t batch = shape.batch, n = shape.positions, rows = shape.rows(), d = c.d_model, m = c.d_mlp;
    const_row_map<T> in2(input2, rows, d);
    T* pre = b.pre.data();    // (rows, d_mlp)
    T* post = b.post.data();  // (rows, d_mlp)
    if (c.mlp == mlp_kind::gated_silu) {
        T* linear = b.pre_linear.data();  // (rows, d_mlp)
        multiply(row_map<T>(pre, rows, m), in2, const_row_map<T>(w.w_gate.data(), m, d).transpose(), false);
        multiply(row_map<T>(linear, rows, m), in2, const_row_map<T>(w.w_up.data(), m, d).transpose(), false);
        fire<site_kind::mlp_pre>(hooks, layer, ctx, [&] { return sequence_view(pre, batch, n, m); });
        fire<site_kind::mlp_pre_linear>(hooks, layer, ctx, [&] { return sequence_view(linear, batch, n, m); });
        for (index_t i = 0; i < rows * m; ++i) post[i] = kernels::generic::silu(pre[i]) * linear[i];
    } else {
        multiply(row_map<T>(pre, rows, m), in2, const_row_map<T>(w.w_up.data(), m, d).transpose(), false);
        if (c.linear_biases) add_bias_rows(pre, w.b_up.data(), rows, m);
        fire<site_kind::mlp_pre>(hooks, layer, ctx, [&] { return sequence_view(pre, batch, n, m); });
        for (index_t i = 0; i < rows * m; ++i) post[i] = plain_activation(c.mlp, pre[i]);
    }
    fire<site_kind::mlp_post>(hooks, layer, ctx, [&] { return sequence_view(post, batch, n, m); });
    multiply(row_map<T>(branch, rows, d), const_row_map<T>(post, rows, m),
             const_row_map<T>(w.w_down.data(), d, m).transpose(), false);
    if (c.linear_biases) add_bias_rows(branch, w.b_down.data(), rows, d);
}

/// MLP step, backward: from the branch gradient `d_branch` (rows, d_model) to the sublayer input's gradient, written
/// to `d_input` with norms and to `d_branch` itself without; adds weight gradients into `gw` when non-null.
template <class T, class Layer, class Policy>
void mlp_step_backward(Policy& hooks, index_t layer, const hook_context& ctx, const model_config& c, const Layer& w,
                       basic_layer_weights<T>* gw, const taped_shape& shape, const T* input2, const block_tape<T>& b,
                       backward_scratch<T>& scratch, T* d_branch, T* d_input) {
    const index_t batch = shape.batch, n = shape.positions, rows = shape.rows(), d = c.d_model, m = c.d_mlp;
    T* d_post = scratch.d_mlp_post.data();  // (rows, d_mlp)
    const_row_map<T> db(d_branch, rows, d);
    if (gw != nullptr) {
        multiply(row_map<T>(gw->w_down.data(), d, m), db.transpose(), const_row_map<T>(b.post.data(), rows, m),
                 true);
        if (c.linear_biases) add_column_sums(gw->b_down.data(), d_branch, rows, d);
    }
    multiply(row_map<T>(d_post, rows, m), db, const_row_map<T>(w.w_down.data(), d, m), false);
    observe_gradient<site_kind::mlp_post>(hooks, layer, ctx,
                                          [&] { return sequence_view(d_post, batch, n, m); });
    T* d_pre = scratch.d_mlp_a.data();  // (rows, d_mlp)
    const T* pre = b.pre.data();
    const_row_map<T> in2(input2, rows, d);
    row_map<T> d_in2(c.has_norm() ? d_input : d_branch, rows, d);
    if (c.mlp == mlp_kind::gated_silu) {
        T* d_linear = scratch.d_mlp_b.data();  // (rows, d_mlp)
        const T* linear = b.pre_linear.data();
        for (index_t i = 0; i < rows * m; ++i)
            kernels::generic::silu_mul_backward(pre[i], linear[i], d_post[i], d_pre[i], d_linear[i]);
        observe_gradient<site_kind::mlp_pre>(hooks, layer, ctx,
                                             [&] { return sequence_view(d_pre, batch, n, m); });
        observe_gradient<site_kind::mlp_pre_linear>(hooks, layer, ctx,
                                                    [&] { return sequence_view(d_linear, batch, n, m); });
        if (gw != nullptr) {
            multiply(row_map<T>(gw->w_gate.data(), m, d), const_row_map<T>(d_pre, rows, m).transpose(), in2,
                     true);
            multiply(row_map<T>(gw->w_up.data(), m, d), const_row_map<T>(d_linear, rows, m).transpose(), in2,
                     true);
        }
        multiply(d_in2, const_row_map<T>(d_pre, rows, m), const_row_map<T>(w.w_gate.data(), m, d), false);
        multiply(d_in2, const_row_map<T>(d_linear, rows, m), const_row_map<T>(w.w_up.data(), m, d), true);
    } else {
        for (index_t i = 0; i < rows * m; ++i) d_pre[i] = d_post[i] * plain_activation_derivative(c.mlp, pre[i]);
        observe_gradient<site_kind::mlp_pre>(hooks, layer, ctx,
                                             [&] { return sequence_view(d_pre, batch, n, m); });
        if (gw != nullptr) {
            multiply(row_map<T>(gw->w_up.data(), m, d), const_row_map<T>(d_pre, rows, m).transpose(), in2,
                     true);
            if (c.linear_biases) add_column_sums(gw->b_up.data(), d_pre, rows, m);
        }
        multiply(d_in2, const_row_map<T>(d_pre, rows, m), const_row_map<T>(w.w_up.data(), m, d), false);
    }
}

}  // namespace detail
MECHLENS_END_NAMESPACE
