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
#include "mechlens/model/parameters.hpp"
#include "mechlens/tensor/tensor.hpp"

MECHLENS_BEGIN_NAMESPACE

namespace detail {

/// A dense row-major matrix of T as an Eigen map.
template <class T>
using row_map = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
/// A read-only dense row-major matrix of T as an Eigen map.
template <class T>
using const_row_map = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
/// A read-only row-major matrix with a row stride (one head's columns inside a wider matrix).
template <class T>
using const_strided_map =
    Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0, Eigen::OuterStride<>>;
/// A row-major matrix with a row stride.
template <class T>
using strided_map =
    Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0, Eigen::OuterStride<>>;

/// A growable buffer of T handing out dense matrix views.
template <class T>
struct grad_buffer {
    std::vector<T> values;  ///< Storage; grows, never shrinks.
    /// Grows to `count` elements.
    void reserve(index_t count) {
        if (static_cast<index_t>(values.size()) < count) values.resize(static_cast<std::size_t>(count));
    }
    /// Start of the storage.
    [[nodiscard]] T* data() noexcept { return values.data(); }
    /// Start of the storage.
    [[nodiscard]] const T* data() const noexcept { return values.data(); }
};

/// The activations one block keeps for its backward pass; each is (batch * pos, width) row-major unless noted.
template <class T>
struct block_tape {
    grad_buffer<T> scale1, normalized1, input1;  ///< ln1: (rows), (rows, d_model) before and after the gain.
    grad_buffer<T> q, k, v;                      ///< (rows, heads * d_head): q and k after rotary embedding.
    grad_buffer<T> pattern;                      ///< (batch, head, pos, pos)
    grad_buffer<T> z;                            ///< (rows, n_heads * d_head)
    grad_buffer<T> scale2, normalized2, input2;  ///< ln2, like ln1.
    grad_buffer<T> pre, pre_linear, post;        ///< (rows, d_mlp) MLP activations.
};

/// dst = a * b, or dst += a * b, through Eigen's GEMM, serially. Eigen's GEMM packs its operands, so every element
/// is summed in the same order whatever the addresses (a lazy product would not be: its vectorised dot products peel
/// by alignment). It stays on the calling thread because Eigen's parallel GEMM synchronises its threads many times
/// per product: with a core shared with other work, one descheduled thread stalls the other, measured here as a
/// 17x slowdown of a training step. Callers parallelise across independent passes instead.
template <class Dst, class Lhs, class Rhs>
void multiply(Dst&& dst, const Lhs& a, const Rhs& b, bool accumulate) {
#if defined(_OPENMP)
    // Eigen sizes its team by omp_get_max_threads(), a per-thread setting: lower it for this product only.
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
    if (accumulate)
        dst.noalias() += a * b;
    else
        dst.noalias() = a * b;
#if defined(_OPENMP)
    omp_set_num_threads(threads);
#endif
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
    template <class U, class Policy>
    friend U forward_backward(const basic_model_parameters<U>&, tensor_view<const std::int32_t, 2>,
                              const basic_metric<U>&, basic_model_parameters<U>*, Policy&&, backprop_tape<U>&);
    template <class U, class Policy>
    friend void taped_forward(const basic_model_parameters<U>&, tensor_view<const std::int32_t, 2>, backprop_tape<U>&,
                              Policy&);
    template <class U, class Policy>
    friend void taped_backward(const basic_model_parameters<U>&, tensor_view<const std::int32_t, 2>, backprop_tape<U>&,
                               basic_model_parameters<U>*, Policy&);

    void reserve(const model_config& c, index_t batch, index_t positions) {
        batch_ = batch;
        positions_ = positions;
        vocab_ = c.d_vocab;
        heads_ = c.n_heads;
        const index_t rows = batch * positions, d = c.d_model, q = c.n_heads * c.d_head();
        const index_t kv = c.n_kv_heads * c.d_head(), mlp = c.attn_only() ? 0 : c.d_mlp;
        blocks_.resize(static_cast<std::size_t>(c.n_layers));
        stream_.resize(static_cast<std::size_t>(2 * c.n_layers + 1));
        for (auto& s : stream_) s.reserve(rows * d);
        for (auto& b : blocks_) {
            if (c.has_norm()) {
                b.scale1.reserve(rows);
                b.normalized1.reserve(rows * d);
                b.input1.reserve(rows * d);
            }
            b.q.reserve(rows * q);
            b.k.reserve(rows * kv);
            b.v.reserve(rows * kv);
            b.pattern.reserve(batch * c.n_heads * positions * positions);
            b.z.reserve(rows * q);
            if (mlp > 0) {
                if (c.has_norm()) {
                    b.scale2.reserve(rows);
                    b.normalized2.reserve(rows * d);
                    b.input2.reserve(rows * d);
                }
                b.pre.reserve(rows * mlp);
                b.pre_linear.reserve(rows * mlp);
                b.post.reserve(rows * mlp);
            }
        }
        embed_.reserve(rows * d);
        pos_embed_.reserve(rows * d);
        scale_final_.reserve(rows);
        normalized_final_.reserve(rows * d);
        input_final_.reserve(rows * d);
        logits_.reserve(rows * c.d_vocab);
        d_logits_.reserve(rows * c.d_vocab);
        d_stream_.reserve(rows * d);
        d_branch_.reserve(rows * d);
        d_input_.reserve(rows * d);
        d_q_.reserve(rows * q);
        d_k_.reserve(rows * q);  // per query head before the groups are summed
        d_v_.reserve(rows * q);
        d_k_grouped_.reserve(rows * kv);
        d_v_grouped_.reserve(rows * kv);
        d_z_.reserve(rows * q);
        d_pattern_.reserve(batch * c.n_heads * positions * positions);
        d_scores_.reserve(batch * c.n_heads * positions * positions);
        d_scale_.reserve(rows);
        d_mlp_a_.reserve(rows * mlp);
        d_mlp_b_.reserve(rows * mlp);
        d_mlp_post_.reserve(rows * mlp);
        rope_cos_.reserve(positions * c.d_head() / 2);
        rope_sin_.reserve(positions * c.d_head() / 2);
    }

    index_t batch_ = 0, positions_ = 0, vocab_ = 0, heads_ = 0;
    std::vector<detail::block_tape<T>> blocks_;
    std::vector<detail::grad_buffer<T>>
        stream_;  // resid_pre of block L at 2L, resid_mid at 2L + 1, final at 2 n_layers
    detail::grad_buffer<T> embed_, pos_embed_, scale_final_, normalized_final_, input_final_, logits_;
    detail::grad_buffer<T> d_logits_, d_stream_, d_branch_, d_input_, d_q_, d_k_, d_v_, d_k_grouped_, d_v_grouped_;
    detail::grad_buffer<T> d_z_, d_pattern_, d_scores_, d_scale_, d_mlp_a_, d_mlp_b_, d_mlp_post_;
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
    for (index_t b = 0; b < tokens.extent(0); ++b)
        for (index_t p = 0; p < tokens.extent(1); ++p)
            if (tokens(b, p) < 0 || tokens(b, p) >= c.d_vocab)
                throw std::out_of_range("forward_backward: token id " + std::to_string(tokens(b, p)) + " at (" +
                                        std::to_string(b) + ", " + std::to_string(p) + ") is outside [0, " +
                                        std::to_string(c.d_vocab) + ")");
}

/// Views a (rows, width) buffer as (batch, pos, width).
template <class T>
tensor_view<T, 3> sequence_view(T* data, index_t batch, index_t positions, index_t width) {
    return tensor_view<T, 3>(data, {batch, positions, width});
}
/// Views a (rows, heads * d_head) buffer as (batch, pos, heads, d_head).
template <class T>
tensor_view<T, 4> heads_view(T* data, index_t batch, index_t positions, index_t heads, index_t d_head) {
    return tensor_view<T, 4>(data, {batch, positions, heads, d_head});
}

/// RMSNorm forward with hooks: scale, normalized (x / scale), then input = normalized * gain.
template <site_kind ScaleSite, site_kind NormalizedSite, class T, class Policy>
void taped_norm(Policy& hooks, index_t layer, const hook_context& ctx, index_t batch, index_t positions, const T* x,
                tensor_view<const T, 1> gain, float eps, index_t d, T* scale, T* normalized, T* input) {
    const index_t rows = batch * positions;
    for (index_t r = 0; r < rows; ++r) scale[r] = static_cast<T>(kernels::generic::rms_scale(x + r * d, d, eps));
    fire<ScaleSite>(hooks, layer, ctx, [&] { return sequence_view(scale, batch, positions, index_t{1}); });
    for (index_t r = 0; r < rows; ++r)
        for (index_t i = 0; i < d; ++i) normalized[r * d + i] = x[r * d + i] / scale[r];
    fire<NormalizedSite>(hooks, layer, ctx, [&] { return sequence_view(normalized, batch, positions, d); });
    for (index_t r = 0; r < rows; ++r)
        for (index_t i = 0; i < d; ++i) input[r * d + i] = normalized[r * d + i] * gain(i);
}

/// RMSNorm backward: from d(input) (rows, d) adds d(x) into `dx` and, when `d_gain` is non-null, d(gain) into it.
/// Observers see d(normalized) and d(scale).
template <site_kind ScaleSite, site_kind NormalizedSite, class T, class Policy>
void norm_backward(Policy& hooks, index_t layer, const hook_context& ctx, index_t batch, index_t positions, const T* x,
                   tensor_view<const T, 1> gain, const T* scale, const T* normalized, index_t d, T* d_input, T* d_scale,
                   T* dx, T* d_gain) {
    const index_t rows = batch * positions;
    if (d_gain != nullptr)
        for (index_t r = 0; r < rows; ++r)
            for (index_t i = 0; i < d; ++i) d_gain[i] += d_input[r * d + i] * normalized[r * d + i];
    for (index_t r = 0; r < rows; ++r)  // d(normalized), in place
        for (index_t i = 0; i < d; ++i) d_input[r * d + i] *= gain(i);
    observe_gradient<NormalizedSite>(hooks, layer, ctx, [&] { return sequence_view(d_input, batch, positions, d); });
    for (index_t r = 0; r < rows; ++r) {  // normalized = x / scale: d(scale) = -sum(d_n * x) / scale^2
        double dot = 0.0;
        for (index_t i = 0; i < d; ++i)
            dot += static_cast<double>(d_input[r * d + i]) * static_cast<double>(x[r * d + i]);
        d_scale[r] = static_cast<T>(-dot / (static_cast<double>(scale[r]) * static_cast<double>(scale[r])));
    }
    observe_gradient<ScaleSite>(hooks, layer, ctx,
                                [&] { return sequence_view(d_scale, batch, positions, index_t{1}); });
    for (index_t r = 0; r < rows; ++r) {  // scale = sqrt(mean(x^2) + eps): d(scale)/dx_i = x_i / (d * scale)
        const T s = scale[r], through_scale = d_scale[r] / (static_cast<T>(d) * s);
        for (index_t i = 0; i < d; ++i) dx[r * d + i] += d_input[r * d + i] / s + through_scale * x[r * d + i];
    }
}

}  // namespace detail

/// The taped forward pass (used by forward_backward; call it directly to inspect the tape): fills `tape` with every
/// activation the backward pass needs and the logits, firing the hook sites `hooks` wants (not attn.hook_result).
template <class T, class Policy>
void taped_forward(const basic_model_parameters<T>& params, tensor_view<const std::int32_t, 2> tokens,
                   backprop_tape<T>& tape, Policy& hooks) {
    using namespace detail;
    const model_config& c = params.config();
    check_backprop_tokens(c, tokens);
    const index_t batch = tokens.extent(0), n = tokens.extent(1), rows = batch * n, d = c.d_model;
    const index_t heads = c.n_heads, kv_heads = c.n_kv_heads, d_head = c.d_head(), group = c.group_size();
    tape.reserve(c, batch, n);
    const hook_context ctx{0};

    if (c.rotary())
        kernels::generic::rope_tables(c.rope_theta, d_head, n, tape.rope_cos_.data(), tape.rope_sin_.data());

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

    const T inverse_sqrt_d = T{1} / std::sqrt(static_cast<T>(d_head));
    for (index_t layer = 0; layer < c.n_layers; ++layer) {
        auto& b = tape.blocks_[static_cast<std::size_t>(layer)];
        const auto& w = params.layers[static_cast<std::size_t>(layer)];
        T* resid_pre = tape.stream_[static_cast<std::size_t>(2 * layer)].data();       // (rows, d_model)
        T* resid_mid = tape.stream_[static_cast<std::size_t>(2 * layer + 1)].data();   // (rows, d_model)
        T* resid_post = tape.stream_[static_cast<std::size_t>(2 * layer + 2)].data();  // (rows, d_model)
        fire<site_kind::resid_pre>(hooks, layer, ctx, [&] { return sequence_view(resid_pre, batch, n, d); });

        const T* input1 = resid_pre;  // (rows, d_model) what the q/k/v projections read
        if (c.has_norm()) {
            taped_norm<site_kind::ln1_scale, site_kind::ln1_normalized>(
                hooks, layer, ctx, batch, n, resid_pre, tensor_view<const T, 1>(w.attn_norm), c.norm_eps, d,
                b.scale1.data(), b.normalized1.data(), b.input1.data());
            input1 = b.input1.data();
        }
        const_row_map<T> in1(input1, rows, d);
        multiply(row_map<T>(b.q.data(), rows, heads * d_head), in1,
                 const_row_map<T>(w.w_q.data(), heads * d_head, d).transpose(), false);
        multiply(row_map<T>(b.k.data(), rows, kv_heads * d_head), in1,
                 const_row_map<T>(w.w_k.data(), kv_heads * d_head, d).transpose(), false);
        multiply(row_map<T>(b.v.data(), rows, kv_heads * d_head), in1,
                 const_row_map<T>(w.w_v.data(), kv_heads * d_head, d).transpose(), false);
        fire<site_kind::attn_q>(hooks, layer, ctx, [&] { return heads_view(b.q.data(), batch, n, heads, d_head); });
        fire<site_kind::attn_k>(hooks, layer, ctx, [&] { return heads_view(b.k.data(), batch, n, kv_heads, d_head); });
        fire<site_kind::attn_v>(hooks, layer, ctx, [&] { return heads_view(b.v.data(), batch, n, kv_heads, d_head); });
        if (c.rotary()) {
            const T* cos = tape.rope_cos_.data();  // (pos, d_head / 2)
            const T* sin = tape.rope_sin_.data();  // (pos, d_head / 2)
            kernels::generic::rotate_heads(c.rope, d_head, n, b.q.data(), rows, heads, cos, sin, T{1});
            kernels::generic::rotate_heads(c.rope, d_head, n, b.k.data(), rows, kv_heads, cos, sin, T{1});
            fire<site_kind::attn_rot_q>(hooks, layer, ctx,
                                        [&] { return heads_view(b.q.data(), batch, n, heads, d_head); });
            fire<site_kind::attn_rot_k>(hooks, layer, ctx,
                                        [&] { return heads_view(b.k.data(), batch, n, kv_heads, d_head); });
        }

        // Scores into the pattern buffer, then the softmax in place. (batch, head, query_pos, key_pos)
        const tensor_view<T, 4> pattern(b.pattern.data(), {batch, heads, n, n});
        for (index_t bh = 0; bh < batch * heads; ++bh) {
            const index_t s = bh / heads, h = bh % heads;
            const const_strided_map<T> q(b.q.data() + s * n * heads * d_head + h * d_head, n, d_head,
                                         Eigen::OuterStride<>(heads * d_head));
            const const_strided_map<T> k(b.k.data() + s * n * kv_heads * d_head + (h / group) * d_head, n, d_head,
                                         Eigen::OuterStride<>(kv_heads * d_head));
            row_map<T> scores(&pattern(s, h, 0, 0), n, n);
            multiply(scores, q, k.transpose(), false);
            scores *= inverse_sqrt_d;
            for (index_t i = 0; i < n; ++i)
                for (index_t j = i + 1; j < n; ++j) scores(i, j) = -std::numeric_limits<T>::infinity();
        }
        fire<site_kind::attn_scores>(hooks, layer, ctx, [&] { return pattern; });
        for (index_t s = 0; s < batch; ++s)
            for (index_t h = 0; h < heads; ++h)
                for (index_t i = 0; i < n; ++i) kernels::generic::causal_softmax(&pattern(s, h, i, 0), i + 1, n);
        fire<site_kind::attn_pattern>(hooks, layer, ctx, [&] { return pattern; });
        for (index_t bh = 0; bh < batch * heads; ++bh) {
            const index_t s = bh / heads, h = bh % heads;
            const const_strided_map<T> v(b.v.data() + s * n * kv_heads * d_head + (h / group) * d_head, n, d_head,
                                         Eigen::OuterStride<>(kv_heads * d_head));
            strided_map<T> z(b.z.data() + s * n * heads * d_head + h * d_head, n, d_head,
                             Eigen::OuterStride<>(heads * d_head));
            multiply(z, const_row_map<T>(&pattern(s, h, 0, 0), n, n), v, false);
        }
        fire<site_kind::attn_z>(hooks, layer, ctx, [&] { return heads_view(b.z.data(), batch, n, heads, d_head); });
        T* branch = tape.d_branch_.data();  // (rows, d_model) attention output (scratch)
        multiply(row_map<T>(branch, rows, d), const_row_map<T>(b.z.data(), rows, heads * d_head),
                 const_row_map<T>(w.w_o.data(), d, heads * d_head).transpose(), false);
        fire<site_kind::attn_out>(hooks, layer, ctx, [&] { return sequence_view(branch, batch, n, d); });
        for (index_t i = 0; i < rows * d; ++i) resid_mid[i] = resid_pre[i] + branch[i];
        if (!c.attn_only())  // attention-only blocks have no resid_mid site (as in TransformerLens)
            fire<site_kind::resid_mid>(hooks, layer, ctx, [&] { return sequence_view(resid_mid, batch, n, d); });

        if (c.attn_only()) {
            std::copy(resid_mid, resid_mid + rows * d, resid_post);
        } else {
            const index_t m = c.d_mlp;
            const T* input2 = resid_mid;  // (rows, d_model)
            if (c.has_norm()) {
                taped_norm<site_kind::ln2_scale, site_kind::ln2_normalized>(
                    hooks, layer, ctx, batch, n, resid_mid, tensor_view<const T, 1>(w.mlp_norm), c.norm_eps, d,
                    b.scale2.data(), b.normalized2.data(), b.input2.data());
                input2 = b.input2.data();
            }
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
                fire<site_kind::mlp_pre>(hooks, layer, ctx, [&] { return sequence_view(pre, batch, n, m); });
                for (index_t i = 0; i < rows * m; ++i) post[i] = kernels::generic::gelu_tanh(pre[i]);
            }
            fire<site_kind::mlp_post>(hooks, layer, ctx, [&] { return sequence_view(post, batch, n, m); });
            multiply(row_map<T>(branch, rows, d), const_row_map<T>(post, rows, m),
                     const_row_map<T>(w.w_down.data(), d, m).transpose(), false);
            fire<site_kind::mlp_out>(hooks, layer, ctx, [&] { return sequence_view(branch, batch, n, d); });
            for (index_t i = 0; i < rows * d; ++i) resid_post[i] = resid_mid[i] + branch[i];
        }
        fire<site_kind::resid_post>(hooks, layer, ctx, [&] { return sequence_view(resid_post, batch, n, d); });
    }

    const T* final_stream = tape.stream_[static_cast<std::size_t>(2 * c.n_layers)].data();  // (rows, d_model)
    const T* final_input = final_stream;
    if (c.has_norm()) {
        taped_norm<site_kind::ln_final_scale, site_kind::ln_final_normalized>(
            hooks, -1, ctx, batch, n, final_stream, tensor_view<const T, 1>(params.final_norm), c.norm_eps, d,
            tape.scale_final_.data(), tape.normalized_final_.data(), tape.input_final_.data());
        final_input = tape.input_final_.data();
    }
    multiply(row_map<T>(tape.logits_.data(), rows, c.d_vocab), const_row_map<T>(final_input, rows, d),
             const_row_map<T>(params.unembed.data(), c.d_vocab, d).transpose(), false);
    fire<site_kind::unembed_out>(hooks, -1, ctx,
                                 [&] { return sequence_view(tape.logits_.data(), batch, n, c.d_vocab); });
}

/// The backward pass over a tape filled by taped_forward, from d(metric)/d(logits) already in the tape. Fills
/// `grads` (zeroed first) unless it is null (activations only), and hands gradients to observing policies.
template <class T, class Policy>
void taped_backward(const basic_model_parameters<T>& params, tensor_view<const std::int32_t, 2> tokens,
                    backprop_tape<T>& tape, basic_model_parameters<T>* grads, Policy& hooks) {
    using namespace detail;
    const model_config& c = params.config();
    const index_t batch = tokens.extent(0), n = tokens.extent(1), rows = batch * n, d = c.d_model;
    const index_t heads = c.n_heads, kv_heads = c.n_kv_heads, d_head = c.d_head(), group = c.group_size();
    const index_t q_width = heads * d_head, kv_width = kv_heads * d_head;
    const hook_context ctx{0};
    if (grads != nullptr) {
        if (grads->size() != params.size() || grads->config().n_layers != c.n_layers)
            throw shape_error("forward_backward: the gradient parameters were made for another model");
        grads->fill(T{0});
    }
    auto weight_grads = [&](index_t layer) -> typename basic_model_parameters<T>::layer* {
        return grads != nullptr ? &grads->layers[static_cast<std::size_t>(layer)] : nullptr;
    };

    T* d_logits = tape.d_logits_.data();  // (rows, d_vocab)
    observe_gradient<site_kind::unembed_out>(hooks, -1, ctx,
                                             [&] { return sequence_view(d_logits, batch, n, c.d_vocab); });
    const T* final_stream = tape.stream_[static_cast<std::size_t>(2 * c.n_layers)].data();
    const T* final_input = c.has_norm() ? tape.input_final_.data() : final_stream;
    T* d_stream = tape.d_stream_.data();  // (rows, d_model) gradient of the residual stream
    T* d_input = tape.d_input_.data();    // (rows, d_model) gradient of a norm's output
    const_row_map<T> dl(d_logits, rows, c.d_vocab);
    if (grads != nullptr)
        multiply(row_map<T>(grads->unembed.data(), c.d_vocab, d), dl.transpose(),
                 const_row_map<T>(final_input, rows, d), true);
    multiply(row_map<T>(c.has_norm() ? d_input : d_stream, rows, d), dl,
             const_row_map<T>(params.unembed.data(), c.d_vocab, d), false);
    if (c.has_norm()) {
        std::fill(d_stream, d_stream + rows * d, T{0});
        norm_backward<site_kind::ln_final_scale, site_kind::ln_final_normalized>(
            hooks, -1, ctx, batch, n, final_stream, tensor_view<const T, 1>(params.final_norm),
            tape.scale_final_.data(), tape.normalized_final_.data(), d, d_input, tape.d_scale_.data(), d_stream,
            grads != nullptr ? grads->final_norm.data() : nullptr);
    }

    T* d_branch = tape.d_branch_.data();  // (rows, d_model) gradient of one branch's output
    const T inverse_sqrt_d = T{1} / std::sqrt(static_cast<T>(d_head));
    for (index_t layer = c.n_layers - 1; layer >= 0; --layer) {
        auto& b = tape.blocks_[static_cast<std::size_t>(layer)];
        const auto& w = params.layers[static_cast<std::size_t>(layer)];
        auto* gw = weight_grads(layer);
        const T* resid_pre = tape.stream_[static_cast<std::size_t>(2 * layer)].data();
        const T* resid_mid = tape.stream_[static_cast<std::size_t>(2 * layer + 1)].data();
        observe_gradient<site_kind::resid_post>(hooks, layer, ctx,
                                                [&] { return sequence_view(d_stream, batch, n, d); });

        if (!c.attn_only()) {
            const index_t m = c.d_mlp;
            std::copy(d_stream, d_stream + rows * d, d_branch);
            observe_gradient<site_kind::mlp_out>(hooks, layer, ctx,
                                                 [&] { return sequence_view(d_branch, batch, n, d); });
            const T* input2 = c.has_norm() ? b.input2.data() : resid_mid;
            T* d_post = tape.d_mlp_post_.data();  // (rows, d_mlp)
            const_row_map<T> db(d_branch, rows, d);
            if (gw != nullptr)
                multiply(row_map<T>(gw->w_down.data(), d, m), db.transpose(), const_row_map<T>(b.post.data(), rows, m),
                         true);
            multiply(row_map<T>(d_post, rows, m), db, const_row_map<T>(w.w_down.data(), d, m), false);
            observe_gradient<site_kind::mlp_post>(hooks, layer, ctx,
                                                  [&] { return sequence_view(d_post, batch, n, m); });
            T* d_pre = tape.d_mlp_a_.data();  // (rows, d_mlp)
            const T* pre = b.pre.data();
            const_row_map<T> in2(input2, rows, d);
            row_map<T> d_in2(c.has_norm() ? d_input : d_branch, rows, d);
            if (c.mlp == mlp_kind::gated_silu) {
                T* d_linear = tape.d_mlp_b_.data();  // (rows, d_mlp)
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
                for (index_t i = 0; i < rows * m; ++i) d_pre[i] = d_post[i] * kernels::generic::gelu_tanh_derivative(pre[i]);
                observe_gradient<site_kind::mlp_pre>(hooks, layer, ctx,
                                                     [&] { return sequence_view(d_pre, batch, n, m); });
                if (gw != nullptr)
                    multiply(row_map<T>(gw->w_up.data(), m, d), const_row_map<T>(d_pre, rows, m).transpose(), in2,
                             true);
                multiply(d_in2, const_row_map<T>(d_pre, rows, m), const_row_map<T>(w.w_up.data(), m, d), false);
            }
            if (c.has_norm()) {
                norm_backward<site_kind::ln2_scale, site_kind::ln2_normalized>(
                    hooks, layer, ctx, batch, n, resid_mid, tensor_view<const T, 1>(w.mlp_norm), b.scale2.data(),
                    b.normalized2.data(), d, d_input, tape.d_scale_.data(), d_stream,
                    gw != nullptr ? gw->mlp_norm.data() : nullptr);
            } else {
                for (index_t i = 0; i < rows * d; ++i) d_stream[i] += d_branch[i];
            }
        }
        if (!c.attn_only())
            observe_gradient<site_kind::resid_mid>(hooks, layer, ctx,
                                                   [&] { return sequence_view(d_stream, batch, n, d); });

        // Attention.
        std::copy(d_stream, d_stream + rows * d, d_branch);
        observe_gradient<site_kind::attn_out>(hooks, layer, ctx, [&] { return sequence_view(d_branch, batch, n, d); });
        T* d_z = tape.d_z_.data();  // (rows, n_heads * d_head)
        const_row_map<T> db(d_branch, rows, d);
        if (gw != nullptr)
            multiply(row_map<T>(gw->w_o.data(), d, q_width), db.transpose(),
                     const_row_map<T>(b.z.data(), rows, q_width), true);
        multiply(row_map<T>(d_z, rows, q_width), db, const_row_map<T>(w.w_o.data(), d, q_width), false);
        observe_gradient<site_kind::attn_z>(hooks, layer, ctx,
                                            [&] { return heads_view(d_z, batch, n, heads, d_head); });

        const tensor_view<const T, 4> pattern(b.pattern.data(), {batch, heads, n, n});
        const tensor_view<T, 4> d_pattern(tape.d_pattern_.data(), {batch, heads, n, n});
        const tensor_view<T, 4> d_scores(tape.d_scores_.data(), {batch, heads, n, n});
        T* d_q = tape.d_q_.data();  // (rows, n_heads * d_head)
        T* d_k = tape.d_k_.data();  // (rows, n_heads * d_head): per query head, summed into groups below
        T* d_v = tape.d_v_.data();  // (rows, n_heads * d_head)
        for (index_t bh = 0; bh < batch * heads; ++bh) {
            const index_t s = bh / heads, h = bh % heads;
            const const_strided_map<T> v(b.v.data() + s * n * kv_width + (h / group) * d_head, n, d_head,
                                         Eigen::OuterStride<>(kv_width));
            const const_strided_map<T> dz(d_z + s * n * q_width + h * d_head, n, d_head, Eigen::OuterStride<>(q_width));
            const const_row_map<T> p(&pattern(s, h, 0, 0), n, n);
            row_map<T> dp(&d_pattern(s, h, 0, 0), n, n);
            multiply(dp, dz, v.transpose(),
                     false);  // masked entries too, as TransformerLens's z = pattern @ v has them
            multiply(strided_map<T>(d_v + s * n * q_width + h * d_head, n, d_head, Eigen::OuterStride<>(q_width)),
                     p.transpose(), dz, false);
        }
        observe_gradient<site_kind::attn_pattern>(hooks, layer, ctx, [&] { return d_pattern; });
        for (index_t s = 0; s < batch; ++s)
            for (index_t h = 0; h < heads; ++h)
                for (index_t i = 0; i < n; ++i)
                    kernels::generic::causal_softmax_backward(&pattern(s, h, i, 0), &d_pattern(s, h, i, 0),
                                                              &d_scores(s, h, i, 0), i + 1, n);
        observe_gradient<site_kind::attn_scores>(hooks, layer, ctx, [&] { return d_scores; });
        for (index_t bh = 0; bh < batch * heads; ++bh) {
            const index_t s = bh / heads, h = bh % heads;
            const const_strided_map<T> q(b.q.data() + s * n * q_width + h * d_head, n, d_head,
                                         Eigen::OuterStride<>(q_width));
            const const_strided_map<T> k(b.k.data() + s * n * kv_width + (h / group) * d_head, n, d_head,
                                         Eigen::OuterStride<>(kv_width));
            const const_row_map<T> ds(&d_scores(s, h, 0, 0), n, n);
            strided_map<T> dq_h(d_q + s * n * q_width + h * d_head, n, d_head, Eigen::OuterStride<>(q_width));
            strided_map<T> dk_h(d_k + s * n * q_width + h * d_head, n, d_head, Eigen::OuterStride<>(q_width));
            multiply(dq_h, ds, k, false);
            multiply(dk_h, ds.transpose(), q, false);
            dq_h *= inverse_sqrt_d;
            dk_h *= inverse_sqrt_d;
        }
        T* d_k_grouped = tape.d_k_grouped_.data();  // (rows, n_kv_heads * d_head)
        T* d_v_grouped = tape.d_v_grouped_.data();  // (rows, n_kv_heads * d_head)
        std::fill(d_k_grouped, d_k_grouped + rows * kv_width, T{0});
        std::fill(d_v_grouped, d_v_grouped + rows * kv_width, T{0});
        for (index_t r = 0; r < rows; ++r)
            for (index_t h = 0; h < heads; ++h)
                for (index_t i = 0; i < d_head; ++i) {
                    d_k_grouped[r * kv_width + (h / group) * d_head + i] += d_k[r * q_width + h * d_head + i];
                    d_v_grouped[r * kv_width + (h / group) * d_head + i] += d_v[r * q_width + h * d_head + i];
                }
        if (c.rotary()) {
            observe_gradient<site_kind::attn_rot_q>(hooks, layer, ctx,
                                                    [&] { return heads_view(d_q, batch, n, heads, d_head); });
            observe_gradient<site_kind::attn_rot_k>(
                hooks, layer, ctx, [&] { return heads_view(d_k_grouped, batch, n, kv_heads, d_head); });
            const T* cos = tape.rope_cos_.data();  // (pos, d_head / 2)
            const T* sin = tape.rope_sin_.data();  // (pos, d_head / 2)
            kernels::generic::rotate_heads(c.rope, d_head, n, d_q, rows, heads, cos, sin, T{-1});
            kernels::generic::rotate_heads(c.rope, d_head, n, d_k_grouped, rows, kv_heads, cos, sin, T{-1});
        }
        observe_gradient<site_kind::attn_q>(hooks, layer, ctx,
                                            [&] { return heads_view(d_q, batch, n, heads, d_head); });
        observe_gradient<site_kind::attn_k>(hooks, layer, ctx,
                                            [&] { return heads_view(d_k_grouped, batch, n, kv_heads, d_head); });
        observe_gradient<site_kind::attn_v>(hooks, layer, ctx,
                                            [&] { return heads_view(d_v_grouped, batch, n, kv_heads, d_head); });
        const T* input1 = c.has_norm() ? b.input1.data() : resid_pre;
        const_row_map<T> in1(input1, rows, d);
        const_row_map<T> dq(d_q, rows, q_width), dk(d_k_grouped, rows, kv_width), dv(d_v_grouped, rows, kv_width);
        if (gw != nullptr) {
            multiply(row_map<T>(gw->w_q.data(), q_width, d), dq.transpose(), in1, true);
            multiply(row_map<T>(gw->w_k.data(), kv_width, d), dk.transpose(), in1, true);
            multiply(row_map<T>(gw->w_v.data(), kv_width, d), dv.transpose(), in1, true);
        }
        row_map<T> d_in1(c.has_norm() ? d_input : d_branch, rows, d);
        multiply(d_in1, dq, const_row_map<T>(w.w_q.data(), q_width, d), false);
        multiply(d_in1, dk, const_row_map<T>(w.w_k.data(), kv_width, d), true);
        multiply(d_in1, dv, const_row_map<T>(w.w_v.data(), kv_width, d), true);
        if (c.has_norm()) {
            norm_backward<site_kind::ln1_scale, site_kind::ln1_normalized>(
                hooks, layer, ctx, batch, n, resid_pre, tensor_view<const T, 1>(w.attn_norm), b.scale1.data(),
                b.normalized1.data(), d, d_input, tape.d_scale_.data(), d_stream,
                gw != nullptr ? gw->attn_norm.data() : nullptr);
        } else {
            for (index_t i = 0; i < rows * d; ++i) d_stream[i] += d_branch[i];
        }
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
template <class T, class Policy>
T forward_backward(const basic_model_parameters<T>& params, tensor_view<const std::int32_t, 2> tokens,
                   const basic_metric<T>& objective, basic_model_parameters<T>* grads, Policy&& hooks,
                   backprop_tape<T>& tape) {
    auto& policy = hooks;
    taped_forward(params, tokens, tape, policy);
    const index_t batch = tokens.extent(0), n = tokens.extent(1), vocab = params.config().d_vocab;
    const T value = objective.evaluate(tensor_view<const T, 3>(tape.logits_.data(), {batch, n, vocab}),
                                       tensor_view<T, 3>(tape.d_logits_.data(), {batch, n, vocab}), tokens);
    taped_backward(params, tokens, tape, grads, policy);
    return value;
}

/// forward_backward with a temporary tape.
template <class T, class Policy = no_hooks>
T forward_backward(const basic_model_parameters<T>& params, tensor_view<const std::int32_t, 2> tokens,
                   const basic_metric<T>& objective, basic_model_parameters<T>* grads, Policy&& hooks = Policy{}) {
    backprop_tape<T> tape;
    return forward_backward(params, tokens, objective, grads, std::forward<Policy>(hooks), tape);
}

MECHLENS_END_NAMESPACE
