#pragma once
/// @file
/// The attention op: q/k/v projections (with biases when the config has them), rotary embedding of queries and keys,
/// causal or bidirectional grouped-query attention over the kv cache, and the output projection (through per-head results when `attn.hook_result` is wanted), from a
/// sublayer input to the branch output. Its inference forward (SIMD kernels, float), its taped forward and its
/// backward (any floating type), with the sites attn.hook_q ... attn.hook_result.

#include <cmath>
#include <limits>

#include "mechlens/grad/observers.hpp"
#include "mechlens/hooks/policy.hpp"
#include "mechlens/kernels/generic.hpp"
#include "mechlens/kernels/matmul.hpp"
#include "mechlens/kernels/rope.hpp"
#include "mechlens/kernels/softmax.hpp"
#include "mechlens/kernels/vector_ops.hpp"
#include "mechlens/model/kv_cache.hpp"
#include "mechlens/model/ops/common.hpp"
#include "mechlens/model/transformer.hpp"
#include "mechlens/model/workspace.hpp"

MECHLENS_BEGIN_NAMESPACE
namespace detail {

/// Rotates every head of every row of a (batch * pos, heads * d_head) matrix by its absolute position (its first
/// rotary_dim dimensions; the rest pass through).
inline void apply_rope(const transformer& model, const forward_shape& s, tensor_view<float, 2> m, index_t heads) {
    const model_config& c = model.config();
    const index_t d_head = c.d_head(), rotary_dim = c.rotary_dim();
    for (index_t r = 0; r < s.rows(); ++r) {
        const index_t position = s.start + r % s.positions;
        const float* cos = &model.rope().cos(position, 0);
        const float* sin = &model.rope().sin(position, 0);
        for (index_t h = 0; h < heads; ++h) {
            float* head = &m(r, h * d_head);
            if (c.rope == rope_layout::adjacent_pairs)
                kernels::rope_adjacent(head, cos, sin, rotary_dim);
            else
                kernels::rope_split_halves(head, cos, sin, rotary_dim);
        }
    }
}

/// Writes the new rows' keys and values (batch * pos, n_kv_heads * d_head) into `cache` at their absolute positions.
inline void store_keys_values(const model_config& c, const forward_shape& s, index_t layer,
                              tensor_view<const float, 2> new_keys, tensor_view<const float, 2> new_values,
                              kv_cache& cache) {
    const index_t d_head = c.d_head();
    const auto keys = cache.keys(layer);      // (batch, kv_head, position, d_head)
    const auto values = cache.values(layer);  // (batch, kv_head, position, d_head)
    for (index_t r = 0; r < s.rows(); ++r) {
        const index_t b = r / s.positions, position = s.start + r % s.positions;
        for (index_t h = 0; h < c.n_kv_heads; ++h)
            for (index_t i = 0; i < d_head; ++i) {
                keys(b, h, position, i) = new_keys(r, h * d_head + i);
                values(b, h, position, i) = new_values(r, h * d_head + i);
            }
    }
}

/// Causal (or bidirectional) multi-head attention with grouped keys/values: fills ws.mixed ("z") from the queries
/// and the cache.
template <class Policy>
void attend(Policy& policy, index_t layer, const hook_context& ctx, const transformer& model, const forward_shape& s,
            kv_cache& cache, workspace& ws) {
    const model_config& c = model.config();
    const index_t heads = c.n_heads, d_head = c.d_head(), group = c.group_size();
    const auto queries = ws.queries.matrix(s.rows(), heads * d_head);  // (batch * pos, n_heads * d_head)
    const auto mixed = ws.mixed.matrix(s.rows(), heads * d_head);      // (batch * pos, n_heads * d_head)
    const auto scores = ws.scores.block({s.batch, heads, s.positions, s.keys});  // (batch, head, query_pos, key_pos)
    const auto keys = cache.keys(layer);                                        // (batch, kv_head, position, d_head)
    const auto values = cache.values(layer);                                    // (batch, kv_head, position, d_head)
    const float inverse_sqrt_d = 1.0f / std::sqrt(static_cast<float>(d_head));
    const index_t pairs = s.batch * heads;
    // Keys query row p sees: those up to its own position (causal), or every key of the call (bidirectional).
    const auto visible = [&](index_t p) { return c.causal() ? s.start + p + 1 : s.keys; };
    // About 100 microseconds of attention work or more is worth a parallel region.
    [[maybe_unused]] const bool worth_parallel = pairs > 1 && pairs * s.positions * s.keys * d_head >= (index_t{1} << 20);

    MECHLENS_PARALLEL_FOR
    for (index_t pair = 0; pair < pairs; ++pair) {
        const index_t b = pair / heads, h = pair % heads;
        const tensor_view<const float, 2> q(&queries(b * s.positions, h * d_head), {s.positions, d_head},
                                            {heads * d_head, 1});                      // (pos, d_head)
        const tensor_view<const float, 2> k(&keys(b, h / group, 0, 0), {s.keys, d_head});  // (keys, d_head)
        const tensor_view<float, 2> score = scores[b][h];                                  // (pos, keys)
        kernels::linear(q, k, score);
        for (index_t p = 0; p < s.positions; ++p) kernels::scale(&score(p, 0), inverse_sqrt_d, visible(p));
    }
    if constexpr (Policy::wants(site_kind::attn_scores)) {
        for (index_t b = 0; b < s.batch; ++b)
            for (index_t h = 0; h < heads; ++h)
                for (index_t p = 0; p < s.positions; ++p)
                    for (index_t key = visible(p); key < s.keys; ++key)
                        scores(b, h, p, key) = -std::numeric_limits<float>::infinity();
        fire<site_kind::attn_scores>(policy, layer, ctx, [&] { return scores; });
    }
    MECHLENS_PARALLEL_FOR
    for (index_t pair = 0; pair < pairs; ++pair) {
        const index_t b = pair / heads, h = pair % heads;
        for (index_t p = 0; p < s.positions; ++p)
            kernels::masked_softmax(&scores(b, h, p, 0), visible(p), s.keys);
    }
    fire<site_kind::attn_pattern>(policy, layer, ctx, [&] { return scores; });
    MECHLENS_PARALLEL_FOR
    for (index_t pair = 0; pair < pairs; ++pair) {
        const index_t b = pair / heads, h = pair % heads;
        // z[p] = sum over visible keys t, in order, of pattern[p][t] * v[t]: each row's sum is the same whether the
        // row was computed in a prefill or in a decode step.
        for (index_t p = 0; p < s.positions; ++p) {
            float* z = &mixed(b * s.positions + p, h * d_head);
            const float* pattern = &scores(b, h, p, 0);
            for (index_t i = 0; i < d_head; ++i) z[i] = 0.0f;
            for (index_t t = 0; t < visible(p); ++t) kernels::axpy(z, pattern[t], &values(b, h / group, t, 0), d_head);
        }
    }
    fire<site_kind::attn_z>(policy, layer, ctx, [&] { return as_heads(mixed, s, heads); });
}

/// The attention output projection; with `attn.hook_result` wanted, goes through per-head results and sums them.
template <class Policy>
void project_heads(Policy& policy, index_t layer, const hook_context& ctx, const transformer& model,
                   const forward_shape& s, workspace& ws, tensor_view<float, 2> out) {
    const model_config& c = model.config();
    const auto mixed = ws.mixed.matrix(s.rows(), c.n_heads * c.d_head());  // (batch * pos, n_heads * d_head)
    const layer_weights& w = model.stored_weights().layers[static_cast<std::size_t>(layer)];
    if constexpr (Policy::wants(site_kind::attn_result)) {
        const index_t heads = c.n_heads, d_head = c.d_head(), d = c.d_model;
        ws.head_result.reserve(s.rows() * heads * d);
        auto result = ws.head_result.block({s.batch, s.positions, heads, d});  // (batch, pos, head, d_model)
        for (index_t h = 0; h < heads; ++h) {
            const tensor_view<const float, 2> z_h(&mixed(0, h * d_head), {s.rows(), d_head},
                                                  {heads * d_head, 1});          // (batch * pos, d_head)
            // A head's columns of W_O cut across quantised blocks: its floats are decoded for this (once).
            const auto w_o = readable(model.stored_weights(), w.w_o);      // (d_model, n_heads * d_head)
            const auto w_h = w_o.slice(1, h * d_head, (h + 1) * d_head);       // (d_model, d_head)
            kernels::linear(z_h, w_h, tensor_view<float, 2>(&result(0, 0, h, 0), {s.rows(), d}, {heads * d, 1}));
        }
        fire<site_kind::attn_result>(policy, layer, ctx, [&] { return result; });
        for (index_t r = 0; r < s.rows(); ++r) {
            float* row = &out(r, 0);
            for (index_t i = 0; i < d; ++i) row[i] = 0.0f;
            for (index_t h = 0; h < heads; ++h) kernels::add(row, row, &result(r / s.positions, r % s.positions, h, 0), d);
            if (w.b_o.size() > 0) kernels::add(row, row, w.b_o.data(), d);  // b_O after the heads, as TransformerLens
        }
    } else {
        (void)policy, (void)ctx;
        project(model.stored_weights(), mixed, w.w_o, w.b_o, out);
    }
}

/// Attention step, inference: from the sublayer input `in` (batch * pos, d_model) to `out` (batch * pos, d_model),
/// appending the rows' keys and values to `cache`.
template <class Policy>
void attention_step(Policy& policy, index_t layer, const hook_context& ctx, const transformer& model,
                    const forward_shape& s, tensor_view<const float, 2> in, kv_cache& cache, workspace& ws,
                    tensor_view<float, 2> out) {
    const model_config& c = model.config();
    const layer_weights& w = model.stored_weights().layers[static_cast<std::size_t>(layer)];
    const index_t rows = s.rows(), d_head = c.d_head();
    const auto queries = ws.queries.matrix(rows, c.n_heads * d_head);           // (batch * pos, n_heads * d_head)
    const auto new_keys = ws.new_keys.matrix(rows, c.n_kv_heads * d_head);      // (batch * pos, n_kv_heads * d_head)
    const auto new_values = ws.new_values.matrix(rows, c.n_kv_heads * d_head);  // (batch * pos, n_kv_heads * d_head)
    project(model.stored_weights(), in, w.w_q, w.b_q, queries);
    project(model.stored_weights(), in, w.w_k, w.b_k, new_keys);
    project(model.stored_weights(), in, w.w_v, w.b_v, new_values);
    fire<site_kind::attn_q>(policy, layer, ctx, [&] { return as_heads(queries, s, c.n_heads); });
    fire<site_kind::attn_k>(policy, layer, ctx, [&] { return as_heads(new_keys, s, c.n_kv_heads); });
    fire<site_kind::attn_v>(policy, layer, ctx, [&] { return as_heads(new_values, s, c.n_kv_heads); });
    if (c.rotary()) {
        apply_rope(model, s, queries, c.n_heads);
        apply_rope(model, s, new_keys, c.n_kv_heads);
        fire<site_kind::attn_rot_q>(policy, layer, ctx, [&] { return as_heads(queries, s, c.n_heads); });
        fire<site_kind::attn_rot_k>(policy, layer, ctx, [&] { return as_heads(new_keys, s, c.n_kv_heads); });
    }
    store_keys_values(c, s, layer, new_keys, new_values, cache);
    attend(policy, layer, ctx, model, s, cache, ws);
    project_heads(policy, layer, ctx, model, s, ws, out);
}

/// Attention step, taped forward: from the sublayer input `input1` (rows, d_model) to `branch` (rows, d_model),
/// keeping q, k (rotated), v, the pattern and z in the block's tape. `rope_cos`/`rope_sin` are (pos, rotary_dim / 2).
template <class T, class Layer, class Policy>
void taped_attention_step(Policy& hooks, index_t layer, const hook_context& ctx, const model_config& c,
                          const Layer& w, const taped_shape& shape, const T* input1, const T* rope_cos,
                          const T* rope_sin, block_tape<T>& b, T* branch) {
    const index_t batch = shape.batch, n = shape.positions, rows = shape.rows(), d = c.d_model;
    const index_t heads = c.n_heads, kv_heads = c.n_kv_heads, d_head = c.d_head(), group = c.group_size();
    const T inverse_sqrt_d = T{1} / std::sqrt(static_cast<T>(d_head));
    const auto visible = [&](index_t i) { return c.causal() ? i + 1 : n; };  // keys query i sees
    const_row_map<T> in1(input1, rows, d);
    multiply(row_map<T>(b.q.data(), rows, heads * d_head), in1,
             const_row_map<T>(w.w_q.data(), heads * d_head, d).transpose(), false);
    multiply(row_map<T>(b.k.data(), rows, kv_heads * d_head), in1,
             const_row_map<T>(w.w_k.data(), kv_heads * d_head, d).transpose(), false);
    multiply(row_map<T>(b.v.data(), rows, kv_heads * d_head), in1,
             const_row_map<T>(w.w_v.data(), kv_heads * d_head, d).transpose(), false);
    if (c.linear_biases) {
        add_bias_rows(b.q.data(), w.b_q.data(), rows, heads * d_head);
        add_bias_rows(b.k.data(), w.b_k.data(), rows, kv_heads * d_head);
        add_bias_rows(b.v.data(), w.b_v.data(), rows, kv_heads * d_head);
    }
    fire<site_kind::attn_q>(hooks, layer, ctx, [&] { return heads_view(b.q.data(), batch, n, heads, d_head); });
    fire<site_kind::attn_k>(hooks, layer, ctx, [&] { return heads_view(b.k.data(), batch, n, kv_heads, d_head); });
    fire<site_kind::attn_v>(hooks, layer, ctx, [&] { return heads_view(b.v.data(), batch, n, kv_heads, d_head); });
    if (c.rotary()) {
        const T* cos = rope_cos;  // (pos, rotary_dim / 2)
        const T* sin = rope_sin;  // (pos, rotary_dim / 2)
        kernels::generic::rotate_heads(c.rope, d_head, c.rotary_dim(), n, b.q.data(), rows, heads, cos, sin, T{1});
        kernels::generic::rotate_heads(c.rope, d_head, c.rotary_dim(), n, b.k.data(), rows, kv_heads, cos, sin, T{1});
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
            for (index_t j = visible(i); j < n; ++j) scores(i, j) = -std::numeric_limits<T>::infinity();
    }
    fire<site_kind::attn_scores>(hooks, layer, ctx, [&] { return pattern; });
    for (index_t s = 0; s < batch; ++s)
        for (index_t h = 0; h < heads; ++h)
            for (index_t i = 0; i < n; ++i) kernels::generic::causal_softmax(&pattern(s, h, i, 0), visible(i), n);
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
    multiply(row_map<T>(branch, rows, d), const_row_map<T>(b.z.data(), rows, heads * d_head),
             const_row_map<T>(w.w_o.data(), d, heads * d_head).transpose(), false);
    if (c.linear_biases) add_bias_rows(branch, w.b_o.data(), rows, d);
}

/// Attention step, backward: from the branch gradient `d_branch` (rows, d_model) to the sublayer input's gradient,
/// written to `d_input` with norms and to `d_branch` itself without; adds weight gradients into `gw` when non-null.
template <class T, class Layer, class Policy>
void attention_step_backward(Policy& hooks, index_t layer, const hook_context& ctx, const model_config& c,
                             const Layer& w, basic_layer_weights<T>* gw, const taped_shape& shape, const T* input1,
                             const T* rope_cos, const T* rope_sin, const block_tape<T>& b,
                             backward_scratch<T>& scratch, T* d_branch, T* d_input) {
    const index_t batch = shape.batch, n = shape.positions, rows = shape.rows(), d = c.d_model;
    const index_t heads = c.n_heads, kv_heads = c.n_kv_heads, d_head = c.d_head(), group = c.group_size();
    const index_t q_width = heads * d_head, kv_width = kv_heads * d_head;
    const T inverse_sqrt_d = T{1} / std::sqrt(static_cast<T>(d_head));
    const auto visible = [&](index_t i) { return c.causal() ? i + 1 : n; };  // keys query i sees
    T* d_z = scratch.d_z.data();  // (rows, n_heads * d_head)
    const_row_map<T> db(d_branch, rows, d);
    if (gw != nullptr) {
        multiply(row_map<T>(gw->w_o.data(), d, q_width), db.transpose(),
                 const_row_map<T>(b.z.data(), rows, q_width), true);
        if (c.linear_biases) add_column_sums(gw->b_o.data(), d_branch, rows, d);
    }
    multiply(row_map<T>(d_z, rows, q_width), db, const_row_map<T>(w.w_o.data(), d, q_width), false);
    observe_gradient<site_kind::attn_z>(hooks, layer, ctx,
                                        [&] { return heads_view(d_z, batch, n, heads, d_head); });

    const tensor_view<const T, 4> pattern(b.pattern.data(), {batch, heads, n, n});
    const tensor_view<T, 4> d_pattern(scratch.d_pattern.data(), {batch, heads, n, n});
    const tensor_view<T, 4> d_scores(scratch.d_scores.data(), {batch, heads, n, n});
    T* d_q = scratch.d_q.data();  // (rows, n_heads * d_head)
    T* d_k = scratch.d_k.data();  // (rows, n_heads * d_head): per query head, summed into groups below
    T* d_v = scratch.d_v.data();  // (rows, n_heads * d_head)
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
                                                          &d_scores(s, h, i, 0), visible(i), n);
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
    T* d_k_grouped = scratch.d_k_grouped.data();  // (rows, n_kv_heads * d_head)
    T* d_v_grouped = scratch.d_v_grouped.data();  // (rows, n_kv_heads * d_head)
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
        const T* cos = rope_cos;  // (pos, rotary_dim / 2)
        const T* sin = rope_sin;  // (pos, rotary_dim / 2)
        kernels::generic::rotate_heads(c.rope, d_head, c.rotary_dim(), n, d_q, rows, heads, cos, sin, T{-1});
        kernels::generic::rotate_heads(c.rope, d_head, c.rotary_dim(), n, d_k_grouped, rows, kv_heads, cos, sin, T{-1});
    }
    observe_gradient<site_kind::attn_q>(hooks, layer, ctx,
                                        [&] { return heads_view(d_q, batch, n, heads, d_head); });
    observe_gradient<site_kind::attn_k>(hooks, layer, ctx,
                                        [&] { return heads_view(d_k_grouped, batch, n, kv_heads, d_head); });
    observe_gradient<site_kind::attn_v>(hooks, layer, ctx,
                                        [&] { return heads_view(d_v_grouped, batch, n, kv_heads, d_head); });
    const_row_map<T> in1(input1, rows, d);
    const_row_map<T> dq(d_q, rows, q_width), dk(d_k_grouped, rows, kv_width), dv(d_v_grouped, rows, kv_width);
    if (gw != nullptr) {
        multiply(row_map<T>(gw->w_q.data(), q_width, d), dq.transpose(), in1, true);
        multiply(row_map<T>(gw->w_k.data(), kv_width, d), dk.transpose(), in1, true);
        multiply(row_map<T>(gw->w_v.data(), kv_width, d), dv.transpose(), in1, true);
        if (c.linear_biases) {
            add_column_sums(gw->b_q.data(), d_q, rows, q_width);
            add_column_sums(gw->b_k.data(), d_k_grouped, rows, kv_width);
            add_column_sums(gw->b_v.data(), d_v_grouped, rows, kv_width);
        }
    }
    row_map<T> d_in1(c.has_norm() ? d_input : d_branch, rows, d);
    multiply(d_in1, dq, const_row_map<T>(w.w_q.data(), q_width, d), false);
    multiply(d_in1, dk, const_row_map<T>(w.w_k.data(), kv_width, d), true);
    multiply(d_in1, dv, const_row_map<T>(w.w_v.data(), kv_width, d), true);
}

}  // namespace detail
MECHLENS_END_NAMESPACE
