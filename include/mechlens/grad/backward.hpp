#pragma once
/// @file
/// Exact gradients: a taped forward pass over model_parameters and the backward pass through every block
/// (embedding and learned positions, RMSNorm, rotary attention with grouped keys/values and the causal mask, gated
/// and plain MLPs, unembedding), for float or double. It fires the same hook sites as the inference forward pass
/// (except attn.hook_result), hands gradients to policies that observe them, and fills parameter gradients unless
/// asked for activations only.
///
/// Hook semantics in the backward pass: whatever a forward hook wrote is what the rest of the pass (and so the
/// backward pass) computes with, and the hook itself is treated as the identity (d out / d in = 1), which is exact
/// for additive steering. A policy that replaces values (patching, ablation) cuts the gradient of what it replaced
/// by zeroing it in its own on_gradient; the shipped patch and ablate policies do that.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "mechlens/detail/third_party.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "mechlens/grad/metric.hpp"
#include "mechlens/grad/observers.hpp"
#include "mechlens/hooks/policy.hpp"
#include "mechlens/kernels/generic.hpp"
#include "mechlens/model/block.hpp"
#include "mechlens/model/ops/attention.hpp"
#include "mechlens/model/ops/mlp.hpp"
#include "mechlens/model/ops/norm.hpp"
#include "mechlens/model/ops/residual.hpp"
#include "mechlens/model/parameters.hpp"
#include "mechlens/model/transformer.hpp"
#include "mechlens/tensor/tensor.hpp"

MECHLENS_BEGIN_NAMESPACE

namespace detail {

/// The hyper-parameters of a model the gradient pass runs on: owned parameters or a transformer.
template <class T>
const model_config& config_of(const basic_model_parameters<T>& params) noexcept {
    return params.config();
}
/// The hyper-parameters of a transformer.
inline const model_config& config_of(const transformer& model) noexcept { return model.config(); }
/// The weights the gradient pass reads: owned parameters are their own views.
template <class T>
const basic_model_parameters<T>& weights_of(const basic_model_parameters<T>& params) noexcept {
    return params;
}
/// A transformer's weights: the gradient pass reads them in place, with no copy.
inline const model_weights& weights_of(const transformer& model) { return model.weights(); }

/// True when the gradient pass can run on a `Model` in scalar type T: basic_model_parameters<T>, or a transformer
/// (float).
template <class Model, class T>
inline constexpr bool gradient_model_of = std::is_same_v<Model, basic_model_parameters<T>> ||
                                          (std::is_same_v<Model, transformer> && std::is_same_v<T, float>);

/// True when two configs imply the same parameter shapes (so one's gradients fit the other's parameters).
inline bool same_parameter_shapes(const model_config& a, const model_config& b) noexcept {
    if (a.n_layers != b.n_layers || a.tied_unembed != b.tied_unembed) return false;
    for (const parameter_traits& row : parameter_table)
        if (row.shape(a) != row.shape(b)) return false;
    return true;
}

}  // namespace detail

/// The forward activations a backward pass needs, plus scratch; keep one and reuse it across steps.
template <class T>
class backprop_tape {
public:
    /// Logits of the last forward pass, (batch, pos, d_vocab).
    [[nodiscard]] tensor_view<const T, 3> logits() const noexcept {
        return tensor_view<const T, 3>(logits_.data(), {batch_, positions_, vocab_});
    }
    /// Attention pattern of `layer` from the last forward pass, (batch, head, query_pos, key_pos).
    [[nodiscard]] tensor_view<const T, 4> pattern(index_t layer) const noexcept {
        return tensor_view<const T, 4>(blocks_[static_cast<std::size_t>(layer)].pattern.data(),
                                       {batch_, heads_, positions_, positions_});
    }

private:
    template <class Model, class U, class Policy>
    friend U forward_backward(const Model&, tensor_view<const std::int32_t, 2>, const basic_metric<U>&,
                              basic_model_parameters<U>*, Policy&&, backprop_tape<U>&);
    template <class Model, class U, class Policy>
    friend void taped_forward(const Model&, tensor_view<const std::int32_t, 2>, backprop_tape<U>&, Policy&);
    template <class Model, class U, class Policy>
    friend void taped_backward(const Model&, tensor_view<const std::int32_t, 2>, backprop_tape<U>&,
                               basic_model_parameters<U>*, Policy&);

    void reserve(const model_config& c, index_t batch, index_t positions) {
        batch_ = batch;
        positions_ = positions;
        vocab_ = c.vocab_out();
        heads_ = c.n_heads;
        const index_t rows = batch * positions, d = c.d_model, q = c.n_heads * c.d_head();
        const index_t kv = c.n_kv_heads * c.d_head(), mlp = c.attn_only() ? 0 : c.d_mlp;
        blocks_.resize(static_cast<std::size_t>(c.n_layers));
        stream_.resize(static_cast<std::size_t>(2 * c.n_layers + 1));
        for (auto& s : stream_) s.reserve(rows * d);
        for (auto& b : blocks_) {
            for (int half = 0; half < 2; ++half)
                if (c.has_norm() && (half == 0 || mlp > 0)) {
                    b.norms[half].scale.reserve(rows);
                    b.norms[half].normalized.reserve(rows * d);
                    b.norms[half].input.reserve(rows * d);
                }
            b.q.reserve(rows * q);
            b.k.reserve(rows * kv);
            b.v.reserve(rows * kv);
            b.pattern.reserve(batch * c.n_heads * positions * positions);
            b.z.reserve(rows * q);
            if (mlp > 0) {
                b.pre.reserve(rows * mlp);
                b.pre_linear.reserve(rows * mlp);
                b.post.reserve(rows * mlp);
            }
        }
        embed_.reserve(rows * d);
        pos_embed_.reserve(rows * d);
        final_norm_.scale.reserve(rows);
        final_norm_.normalized.reserve(rows * d);
        final_norm_.input.reserve(rows * d);
        logits_.reserve(rows * c.vocab_out());
        d_logits_.reserve(rows * c.vocab_out());
        d_stream_.reserve(rows * d);
        d_branch_.reserve(rows * d);
        d_input_.reserve(rows * d);
        d_mlp_input_path_.reserve(c.parallel_attn_mlp ? rows * d : 0);
        scratch_.d_q.reserve(rows * q);
        scratch_.d_k.reserve(rows * q);  // per query head before the groups are summed
        scratch_.d_v.reserve(rows * q);
        scratch_.d_k_grouped.reserve(rows * kv);
        scratch_.d_v_grouped.reserve(rows * kv);
        scratch_.d_z.reserve(rows * q);
        scratch_.d_pattern.reserve(batch * c.n_heads * positions * positions);
        scratch_.d_scores.reserve(batch * c.n_heads * positions * positions);
        scratch_.d_scale.reserve(rows);
        scratch_.d_mlp_a.reserve(rows * mlp);
        scratch_.d_mlp_b.reserve(rows * mlp);
        scratch_.d_mlp_post.reserve(rows * mlp);
        rope_cos_.reserve(positions * c.rotary_dim() / 2);
        rope_sin_.reserve(positions * c.rotary_dim() / 2);
    }

    index_t batch_ = 0, positions_ = 0, vocab_ = 0, heads_ = 0;
    std::vector<detail::block_tape<T>> blocks_;
    std::vector<detail::grad_buffer<T>>
        stream_;  // resid_pre of block L at 2L, resid_mid at 2L + 1, final at 2 n_layers
    detail::grad_buffer<T> embed_, pos_embed_, logits_;
    detail::norm_tape<T> final_norm_;
    detail::grad_buffer<T> d_logits_, d_stream_, d_branch_, d_input_;
    detail::grad_buffer<T> d_mlp_input_path_;  // parallel blocks: the MLP half's gradient to the block's input
    detail::backward_scratch<T> scratch_;
    detail::grad_buffer<T> rope_cos_, rope_sin_;
};

namespace detail {

/// Throws unless the tokens fit the model.
inline void check_backprop_tokens(const model_config& c, tensor_view<const std::int32_t, 2> tokens) {
    if (tokens.extent(0) <= 0 || tokens.extent(1) <= 0)
        throw shape_error("forward_backward: tokens must be (batch, pos) with both positive, got " +
                          format_extents(tokens.shape()));
    if (tokens.extent(1) > c.n_ctx)
        throw shape_error("forward_backward: " + std::to_string(tokens.extent(1)) + " positions exceed n_ctx " +
                          std::to_string(c.n_ctx));
    check_token_ids(c, tokens, "forward_backward");
}

}  // namespace detail

/// The taped forward pass (used by forward_backward; call it directly to inspect the tape): fills `tape` with every
/// activation the backward pass needs and the logits, firing the hook sites `hooks` wants (not attn.hook_result).
template <class Model, class T, class Policy>
void taped_forward(const Model& model, tensor_view<const std::int32_t, 2> tokens, backprop_tape<T>& tape,
                   Policy& hooks) {
    using namespace detail;
    static_assert(gradient_model_of<Model, T>, "taped_forward: the model's weights are not of the tape's type");
    const model_config& c = config_of(model);
    const auto& params = weights_of(model);
    check_backprop_tokens(c, tokens);
    const index_t batch = tokens.extent(0), n = tokens.extent(1), rows = batch * n, d = c.d_model;
    tape.reserve(c, batch, n);
    const hook_context ctx{0};

    if (c.rotary())
        kernels::generic::rope_tables(c.rope_theta, c.rotary_dim(), n, tape.rope_cos_.data(), tape.rope_sin_.data());

    T* embed = tape.embed_.data();  // (rows, d_model)
    for (index_t r = 0; r < rows; ++r) {
        const T* row = &params.token_embedding(tokens(r / n, r % n), 0);
        std::copy(row, row + d, embed + r * d);
    }
    fire<site_kind::embed>(hooks, -1, ctx, [&] { return sequence_view(embed, batch, n, d); });
    T* x = tape.stream_[0].data();  // (rows, d_model) resid_pre of block 0
    std::copy(embed, embed + rows * d, x);
    if (!c.rotary()) {
        T* pos = tape.pos_embed_.data();  // (rows, d_model)
        for (index_t r = 0; r < rows; ++r) {
            const T* row = &params.pos_embedding(r % n, 0);
            std::copy(row, row + d, pos + r * d);
        }
        fire<site_kind::pos_embed>(hooks, -1, ctx, [&] { return sequence_view(pos, batch, n, d); });
        for (index_t i = 0; i < rows * d; ++i) x[i] += pos[i];
    }

    // The blocks: the interpreter of decoder_block (model/block.hpp) for the taped pass. The tape keeps every
    // stream state apart: block L reads stream 2L, its attention half writes 2L + 1, its MLP half 2L + 2.
    const taped_shape shape{batch, n};
    T* branch = tape.d_branch_.data();  // (rows, d_model) a sublayer's output (scratch)
    for (index_t layer = 0; layer < c.n_layers; ++layer) {
        auto& b = tape.blocks_[static_cast<std::size_t>(layer)];
        const auto& w = params.layers[static_cast<std::size_t>(layer)];
        auto stream = [&](index_t offset) { return tape.stream_[static_cast<std::size_t>(2 * layer + offset)].data(); };
        fire<site_kind::resid_pre>(hooks, layer, ctx, [&] { return sequence_view(stream(0), batch, n, d); });
        const T* sublayer_in = nullptr;  // (rows, d_model)
        for_each_step<decoder_block>([&]<block_step Step>() {
            if (!step_runs(Step, c)) return;
            if constexpr (Step.op == block_op::norm)
                sublayer_in =
                    taped_norm_step<Step>(hooks, layer, ctx, c, shape, stream(stream_read_by(Step, c)),
                                          tensor_view<const T, 1>(gain_view(w, Step.weight)),
                                          tensor_view<const T, 1>(gain_view(w, Step.bias)), b.norms[Step.half]);
            else if constexpr (Step.op == block_op::attention)
                taped_attention_step(hooks, layer, ctx, c, w, shape, sublayer_in, tape.rope_cos_.data(),
                                     tape.rope_sin_.data(), b, branch);
            else if constexpr (Step.op == block_op::mlp)
                taped_mlp_step(hooks, layer, ctx, c, w, shape, sublayer_in, b, branch);
            else
                taped_residual_add_step<Step>(hooks, layer, ctx, c, shape, stream(Step.half), branch,
                                              stream(Step.half + 1), stream(2));
        });
    }

    const T* final_stream = tape.stream_[static_cast<std::size_t>(2 * c.n_layers)].data();  // (rows, d_model)
    const T* final_input =
        taped_norm_step<final_norm_step>(hooks, -1, ctx, c, shape, final_stream,  // (rows, d_model)
                                         tensor_view<const T, 1>(params.final_norm),
                                         tensor_view<const T, 1>(params.final_norm_bias), tape.final_norm_);
    const index_t vocab = c.vocab_out();
    multiply(row_map<T>(tape.logits_.data(), rows, vocab), const_row_map<T>(final_input, rows, d),
             const_row_map<T>(params.unembed.data(), vocab, d).transpose(), false);
    if (c.linear_biases) add_bias_rows(tape.logits_.data(), params.unembed_bias.data(), rows, vocab);
    fire<site_kind::unembed_out>(hooks, -1, ctx, [&] { return sequence_view(tape.logits_.data(), batch, n, vocab); });
}

/// The backward pass over a tape filled by taped_forward, from d(metric)/d(logits) already in the tape. Fills
/// `grads` (zeroed first) unless it is null (activations only), and hands gradients to observing policies.
template <class Model, class T, class Policy>
void taped_backward(const Model& model, tensor_view<const std::int32_t, 2> tokens, backprop_tape<T>& tape,
                    basic_model_parameters<T>* grads, Policy& hooks) {
    using namespace detail;
    static_assert(gradient_model_of<Model, T>, "taped_backward: the model's weights are not of the tape's type");
    const model_config& c = config_of(model);
    const auto& params = weights_of(model);
    const index_t batch = tokens.extent(0), n = tokens.extent(1), rows = batch * n, d = c.d_model;
    const hook_context ctx{0};
    if (grads != nullptr) {
        if (!same_parameter_shapes(grads->config(), c))
            throw shape_error("forward_backward: the gradient parameters were made for another model");
        grads->fill(T{0});
    }
    auto weight_grads = [&](index_t layer) -> typename basic_model_parameters<T>::layer* {
        return grads != nullptr ? &grads->layers[static_cast<std::size_t>(layer)] : nullptr;
    };

    T* d_logits = tape.d_logits_.data();  // (rows, d_vocab)
    observe_gradient<site_kind::unembed_out>(hooks, -1, ctx,
                                             [&] { return sequence_view(d_logits, batch, n, c.vocab_out()); });
    const T* final_stream = tape.stream_[static_cast<std::size_t>(2 * c.n_layers)].data();
    const T* final_input = c.has_norm() ? tape.final_norm_.input.data() : final_stream;  // (rows, d_model)
    T* d_stream = tape.d_stream_.data();  // (rows, d_model) gradient of the residual stream
    T* d_input = tape.d_input_.data();    // (rows, d_model) gradient of a norm's output
    const index_t vocab = c.vocab_out();
    const_row_map<T> dl(d_logits, rows, vocab);
    if (grads != nullptr) {
        multiply(row_map<T>(grads->unembed.data(), vocab, d), dl.transpose(), const_row_map<T>(final_input, rows, d),
                 true);
        if (c.linear_biases) add_column_sums(grads->unembed_bias.data(), d_logits, rows, vocab);
    }
    multiply(row_map<T>(c.has_norm() ? d_input : d_stream, rows, d), dl,
             const_row_map<T>(params.unembed.data(), vocab, d), false);
    T* d_branch = tape.d_branch_.data();  // (rows, d_model) gradient of one branch's output
    const taped_shape shape{batch, n};
    if (c.has_norm()) {
        std::fill(d_stream, d_stream + rows * d, T{0});
        norm_step_backward<final_norm_step>(hooks, -1, ctx, c, shape, final_stream,
                                            tensor_view<const T, 1>(params.final_norm), tape.final_norm_, d_input,
                                            d_branch, tape.scratch_.d_scale.data(), d_stream,
                                            grads != nullptr ? grads->final_norm.data() : nullptr,
                                            grads != nullptr && c.norm == norm_kind::layer
                                                ? grads->final_norm_bias.data()
                                                : nullptr);
    }

    // The blocks, last first: decoder_block's steps in reverse, each turning its output's gradient into its input's.
    // In a parallel block the MLP half's norm sends its input gradient to d_mlp_input_path (the block's input), and
    // the attention half's add folds it into the stream's gradient after the attention branch took its copy.
    T* d_mlp_input_path = c.parallel_attn_mlp ? tape.d_mlp_input_path_.data() : nullptr;  // (rows, d_model)
    for (index_t layer = c.n_layers - 1; layer >= 0; --layer) {
        const auto& b = tape.blocks_[static_cast<std::size_t>(layer)];
        const auto& w = params.layers[static_cast<std::size_t>(layer)];
        auto* gw = weight_grads(layer);
        auto stream = [&](index_t offset) { return tape.stream_[static_cast<std::size_t>(2 * layer + offset)].data(); };
        if (d_mlp_input_path != nullptr) std::fill(d_mlp_input_path, d_mlp_input_path + rows * d, T{0});
        for_each_step_reversed<decoder_block>([&]<block_step Step>() {
            if (!step_runs(Step, c)) return;
            const T* half_in = stream(stream_read_by(Step, c));  // (rows, d_model) the stream this half reads
            T* d_half_in = Step.half == 1 && d_mlp_input_path != nullptr ? d_mlp_input_path : d_stream;
            const T* sublayer_in = c.has_norm() ? b.norms[Step.half].input.data() : half_in;  // (rows, d_model)
            if constexpr (Step.op == block_op::norm)
                norm_step_backward<Step>(hooks, layer, ctx, c, shape, half_in,
                                         tensor_view<const T, 1>(gain_view(w, Step.weight)), b.norms[Step.half],
                                         d_input, d_branch, tape.scratch_.d_scale.data(), d_half_in,
                                         gw != nullptr ? gain_view(*gw, Step.weight).data() : nullptr,
                                         gw != nullptr && c.norm == norm_kind::layer
                                             ? gain_view(*gw, Step.bias).data()
                                             : nullptr);
            else if constexpr (Step.op == block_op::attention)
                attention_step_backward(hooks, layer, ctx, c, w, gw, shape, sublayer_in, tape.rope_cos_.data(),
                                        tape.rope_sin_.data(), b, tape.scratch_, d_branch, d_input);
            else if constexpr (Step.op == block_op::mlp)
                mlp_step_backward(hooks, layer, ctx, c, w, gw, shape, sublayer_in, b, tape.scratch_, d_branch, d_input);
            else
                residual_add_step_backward<Step>(hooks, layer, ctx, c, shape, d_stream, d_branch,
                                                 static_cast<const T*>(d_mlp_input_path));
        });
        observe_gradient<site_kind::resid_pre>(hooks, layer, ctx, [&] { return sequence_view(d_stream, batch, n, d); });
    }

    // Embeddings: the residual stream's gradient at block 0 reaches both the token and the position embedding.
    if (!c.rotary()) {
        std::copy(d_stream, d_stream + rows * d, d_branch);
        observe_gradient<site_kind::pos_embed>(hooks, -1, ctx, [&] { return sequence_view(d_branch, batch, n, d); });
        if (grads != nullptr)
            for (index_t r = 0; r < rows; ++r)
                for (index_t i = 0; i < d; ++i) grads->pos_embedding(r % n, i) += d_branch[r * d + i];
    }
    observe_gradient<site_kind::embed>(hooks, -1, ctx, [&] { return sequence_view(d_stream, batch, n, d); });
    if (grads != nullptr)
        for (index_t r = 0; r < rows; ++r) {
            T* row = &grads->token_embedding(tokens(r / n, r % n), 0);
            for (index_t i = 0; i < d; ++i) row[i] += d_stream[r * d + i];
        }
}

/// Forward and backward pass of `metric` over `tokens` (batch, pos): returns the metric's value, fills `grads`
/// (zeroed first; pass null for activation gradients only, which skips every weight-gradient product), fires
/// the forward hook sites `hooks` wants and hands gradients to it when it observes them (see gradient_observer).
/// `tape` holds the activations and can be reused across calls to avoid allocation.
template <class Model, class T, class Policy>
T forward_backward(const Model& model, tensor_view<const std::int32_t, 2> tokens, const basic_metric<T>& objective,
                   basic_model_parameters<T>* grads, Policy&& hooks, backprop_tape<T>& tape) {
    static_assert(detail::gradient_model_of<Model, T>,
                  "forward_backward: the model's weights are not of the metric's scalar type");
    auto& policy = hooks;
    taped_forward(model, tokens, tape, policy);
    const index_t batch = tokens.extent(0), n = tokens.extent(1), vocab = detail::config_of(model).vocab_out();
    const T value = objective.evaluate(tensor_view<const T, 3>(tape.logits_.data(), {batch, n, vocab}),
                                       tensor_view<T, 3>(tape.d_logits_.data(), {batch, n, vocab}), tokens);
    taped_backward(model, tokens, tape, grads, policy);
    return value;
}

/// forward_backward with a temporary tape.
template <class Model, class T, class Policy = no_hooks>
T forward_backward(const Model& model, tensor_view<const std::int32_t, 2> tokens, const basic_metric<T>& objective,
                   basic_model_parameters<T>* grads, Policy&& hooks = Policy{}) {
    backprop_tape<T> tape;
    return forward_backward(model, tokens, objective, grads, std::forward<Policy>(hooks), tape);
}

MECHLENS_END_NAMESPACE
