#pragma once
/// @file
/// The forward pass of a decoder-only transformer, with a hook site at every named activation: LLaMA (RMSNorm,
/// rotary, gated SiLU MLP) and the variants model_config allows (no norms, learned positions, a plain GELU MLP,
/// attention-only blocks). The variant branches are run-time tests of cheap config fields outside the inner loops.

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "mechlens/hooks/policy.hpp"
#include "mechlens/kernels/matmul.hpp"
#include "mechlens/kernels/vector_ops.hpp"
#include "mechlens/model/block.hpp"
#include "mechlens/model/kv_cache.hpp"
#include "mechlens/model/ops/attention.hpp"
#include "mechlens/model/ops/common.hpp"
#include "mechlens/model/ops/mlp.hpp"
#include "mechlens/model/ops/norm.hpp"
#include "mechlens/model/ops/residual.hpp"
#include "mechlens/model/transformer.hpp"
#include "mechlens/model/workspace.hpp"

MECHLENS_BEGIN_NAMESPACE

namespace detail {

/// Copies row row_of(r) of `table` (a weight of `weights`: an embedding) to row r of `out` for r < rows: decoded
/// from the table's blocks when it is a quantised matrix held as blocks, else copied from its floats.
template <class RowOf>
void copy_table_rows(const model_weights& weights, tensor_view<const float, 2> table, index_t rows, RowOf&& row_of,
                     tensor_view<float, 2> out) {
    const index_t width = table.extent(1);
    if (const auto blocks = encoded_blocks_of(weights, table)) {
        for (index_t r = 0; r < rows; ++r) kernels::decode_encoded_rows(*blocks, row_of(r), 1, &out(r, 0));
        return;
    }
    for (index_t r = 0; r < rows; ++r) {
        const float* row = &table(row_of(r), 0);
        for (index_t i = 0; i < width; ++i) out(r, i) = row[i];
    }
}

/// Fills the residual stream `x` with the token embeddings (firing `hook_embed`) and, with learned positions, adds
/// the position rows at each row's absolute position (firing `hook_pos_embed`): TransformerLens's order, so
/// `blocks.0.hook_resid_pre` is their sum and a hook's edits to either reach it.
template <class Policy>
void embed(Policy& policy, const hook_context& ctx, const transformer& model, tensor_view<const std::int32_t, 2> tokens,
           const forward_shape& s, tensor_view<float, 2> x, workspace& ws) {
    const model_config& c = model.config();
    const model_weights& w = model.stored_weights();
    copy_table_rows(w, w.token_embedding, s.rows(), [&](index_t r) { return tokens(r / s.positions, r % s.positions); },
                    x);
    fire<site_kind::embed>(policy, -1, ctx, [&] { return as_sequence(x, s); });
    if (c.rotary()) return;
    // Copied out, not added in place, so that hooks see (and may edit) the position rows on their own. Positions
    // are absolute: a KV-cache decode step at start 7 adds row 7; s.keys <= n_ctx keeps every row in the table.
    const auto positions = ws.block_out.matrix(s.rows(), c.d_model);  // (batch * pos, d_model)
    copy_table_rows(w, w.pos_embedding, s.rows(), [&](index_t r) { return s.start + r % s.positions; }, positions);
    fire<site_kind::pos_embed>(policy, -1, ctx, [&] { return as_sequence(positions, s); });
    for (index_t r = 0; r < s.rows(); ++r) kernels::add(&x(r, 0), &x(r, 0), &positions(r, 0), c.d_model);
}

/// One transformer block: the interpreter of decoder_block (model/block.hpp) for inference. The residual stream is
/// ws.residual; each norm step yields the sublayer input, each sublayer writes ws.block_out, each add folds it in.
template <class Policy>
void run_block(Policy& policy, index_t layer, const hook_context& ctx, const transformer& model,
               const forward_shape& s, kv_cache& cache, workspace& ws) {
    const model_config& c = model.config();
    const layer_weights& w = model.stored_weights().layers[static_cast<std::size_t>(layer)];
    const auto x = ws.residual.matrix(s.rows(), c.d_model);       // (batch * pos, d_model)
    const auto normed = ws.normed.matrix(s.rows(), c.d_model);    // (batch * pos, d_model)
    const auto branch = ws.block_out.matrix(s.rows(), c.d_model);  // (batch * pos, d_model)
    tensor_view<const float, 2> sublayer_in = x;                   // (batch * pos, d_model)
    fire<site_kind::resid_pre>(policy, layer, ctx, [&] { return as_sequence(x, s); });
    for_each_step<decoder_block>([&]<block_step Step>() {
        if (!step_runs(Step, c)) return;
        if constexpr (Step.op == block_op::norm)
            sublayer_in = norm_step<Step>(policy, layer, ctx, s, c, x, gain_view(w, Step.weight),
                                          gain_view(w, Step.bias), normed, ws.norm_scale);
        else if constexpr (Step.op == block_op::attention)
            attention_step(policy, layer, ctx, model, s, sublayer_in, cache, ws, branch);
        else if constexpr (Step.op == block_op::mlp)
            run_mlp(policy, layer, ctx, c, model.stored_weights(), w, s, sublayer_in, ws, branch);
        else
            residual_add_step<Step>(policy, layer, ctx, s, c, x, branch, ws.parallel_sum.matrix(s.rows(), c.d_model));
    });
}

/// Throws unless tokens, cache and logits fit the model and each other.
inline forward_shape check_forward_arguments(const transformer& model, tensor_view<const std::int32_t, 2> tokens,
                                             const kv_cache& cache, tensor_view<float, 3> logits) {
    const model_config& c = model.config();
    const forward_shape s{tokens.extent(0), tokens.extent(1), cache.length(), cache.length() + tokens.extent(1)};
    if (s.batch <= 0 || s.positions <= 0)
        throw shape_error("forward: tokens must be (batch, pos) with both positive, got " +
                          detail::format_extents(tokens.shape()));
    if (cache.layers() != c.n_layers || cache.batch() != s.batch)
        throw shape_error("forward: the kv_cache was made for batch " + std::to_string(cache.batch()) + " and " +
                          std::to_string(cache.layers()) + " layers; tokens have batch " + std::to_string(s.batch));
    if (s.keys > cache.capacity())
        throw shape_error("forward: " + std::to_string(s.keys) + " positions exceed the kv_cache capacity " +
                          std::to_string(cache.capacity()) + " (n_ctx = " + std::to_string(c.n_ctx) + ")");
    if (logits.extent(0) != s.batch || (logits.extent(1) != s.positions && logits.extent(1) != 1) ||
        logits.extent(2) != c.vocab_out())
        throw shape_error("forward: logits must be (batch, pos, d_vocab_out) or (batch, 1, d_vocab_out) = (" +
                          std::to_string(s.batch) + ", " + std::to_string(s.positions) + " or 1, " +
                          std::to_string(c.vocab_out()) + "), got " + detail::format_extents(logits.shape()));
    if (!logits.is_contiguous()) throw shape_error("forward: logits must be a contiguous view");
    check_token_ids(c, tokens, "forward");
    return s;
}

}  // namespace detail

/// The rows one piece of a forward pass covers: `batch` sequences of `positions` consecutive tokens from absolute
/// position `start`, which attend to the keys at [0, start + positions) in the cache. The residual stream of those
/// rows lives in the workspace, (batch * pos, d_model) in row-major order, between the calls below.
struct forward_span {
    index_t batch = 0;      ///< Sequences.
    index_t positions = 0;  ///< Consecutive positions per sequence.
    index_t start = 0;      ///< Absolute position of the first row.
    /// batch * positions.
    [[nodiscard]] index_t rows() const noexcept { return batch * positions; }
    /// Keys the last row attends to: start + positions.
    [[nodiscard]] index_t keys() const noexcept { return start + positions; }
};

namespace detail {
/// The internal shape of a span.
inline forward_shape shape_of(const forward_span& span) noexcept {
    return {span.batch, span.positions, span.start, span.keys()};
}
/// Throws unless the span is non-empty and fits the model's context and the cache.
inline void check_span(const model_config& c, const forward_span& span, const kv_cache* cache, const char* who) {
    if (span.batch <= 0 || span.positions <= 0 || span.start < 0 || span.keys() > c.n_ctx)
        throw shape_error(std::string(who) + ": span of batch " + std::to_string(span.batch) + ", " +
                          std::to_string(span.positions) + " positions from " + std::to_string(span.start) +
                          " does not fit n_ctx " + std::to_string(c.n_ctx));
    if (cache != nullptr && (cache->layers() != c.n_layers || cache->batch() < span.batch ||
                             cache->capacity() < span.keys()))
        throw shape_error(std::string(who) + ": the kv_cache (batch " + std::to_string(cache->batch()) +
                          ", capacity " + std::to_string(cache->capacity()) + ") cannot hold the span (batch " +
                          std::to_string(span.batch) + ", " + std::to_string(span.keys()) + " keys)");
}
}  // namespace detail

/// Partial forward, step 1: the residual rows of `span` in `ws`, (batch * pos, d_model). Write them to resume a pass
/// from a given residual stream (a cached `hook_resid_pre`, a patched state); read them after run_blocks.
[[nodiscard]] inline tensor_view<float, 2> span_residual(const transformer& model, const forward_span& span,
                                                         workspace& ws) {
    detail::check_span(model.config(), span, nullptr, "span_residual");
    ws.reserve(model.config(), span.batch, span.positions, span.keys());
    return ws.residual.matrix(span.rows(), model.config().d_model);
}

/// Partial forward: embeds `tokens` (batch, pos), the tokens at the span's positions, into the span's residual rows,
/// firing hook_embed (and hook_pos_embed with learned positions).
template <class Policy = no_hooks>
void embed_span(const transformer& model, const forward_span& span, tensor_view<const std::int32_t, 2> tokens,
                workspace& ws, Policy&& policy = Policy{}) {
    const auto x = span_residual(model, span, ws);  // (batch * pos, d_model)
    if (tokens.extent(0) != span.batch || tokens.extent(1) != span.positions)
        throw shape_error("embed_span: tokens " + detail::format_extents(tokens.shape()) + " do not match the span (" +
                          std::to_string(span.batch) + ", " + std::to_string(span.positions) + ")");
    detail::check_token_ids(model.config(), tokens, "embed_span");
    detail::embed(policy, hook_context{span.start}, model, tokens, detail::shape_of(span), x, ws);
}

/// Partial forward: runs blocks [first, last) over the span's residual rows, reading earlier positions' keys and
/// values from `cache` and writing the span's own. Hooks see absolute positions from span.start.
template <class Policy = no_hooks>
void run_blocks(const transformer& model, const forward_span& span, index_t first, index_t last, kv_cache& cache,
                workspace& ws, Policy&& policy = Policy{}) {
    const model_config& c = model.config();
    if (first < 0 || last > c.n_layers || first > last)
        throw std::out_of_range("run_blocks: blocks [" + std::to_string(first) + ", " + std::to_string(last) +
                                ") are outside [0, " + std::to_string(c.n_layers) + ")");
    detail::check_span(c, span, &cache, "run_blocks");
    ws.reserve(c, span.batch, span.positions, span.keys());
    for (index_t layer = first; layer < last; ++layer)
        detail::run_block(policy, layer, hook_context{span.start}, model, detail::shape_of(span), cache, ws);
}

/// Partial forward: only the key/value half of block `layer` for the span's rows: its input norm, keys, values and
/// their rotation, written to `cache` (firing the sites on that path, up to attn.hook_rot_k). Later rows can then
/// attend to these positions without the rest of the block running for them.
template <class Policy = no_hooks>
void write_keys_values(const transformer& model, const forward_span& span, index_t layer, kv_cache& cache,
                       workspace& ws, Policy&& policy = Policy{}) {
    const model_config& c = model.config();
    if (layer < 0 || layer >= c.n_layers)
        throw std::out_of_range("write_keys_values: block " + std::to_string(layer) + " is outside [0, " +
                                std::to_string(c.n_layers) + ")");
    detail::check_span(c, span, &cache, "write_keys_values");
    ws.reserve(c, span.batch, span.positions, span.keys());
    const detail::forward_shape s = detail::shape_of(span);
    const hook_context ctx{span.start};
    const layer_weights& w = model.stored_weights().layers[static_cast<std::size_t>(layer)];
    const index_t rows = s.rows(), kv_width = c.n_kv_heads * c.d_head();
    const auto x = ws.residual.matrix(rows, c.d_model);               // (batch * pos, d_model)
    const auto normed = ws.normed.matrix(rows, c.d_model);            // (batch * pos, d_model)
    const auto new_keys = ws.new_keys.matrix(rows, kv_width);         // (batch * pos, n_kv_heads * d_head)
    const auto new_values = ws.new_values.matrix(rows, kv_width);     // (batch * pos, n_kv_heads * d_head)
    detail::fire<site_kind::resid_pre>(policy, layer, ctx, [&] { return detail::as_sequence(x, s); });
    const auto attn_in = detail::norm_step<decoder_block[0]>(  // (batch * pos, d_model)
        policy, layer, ctx, s, c, x, w.attn_norm, w.attn_norm_bias, normed, ws.norm_scale);
    detail::project(model.stored_weights(), attn_in, w.w_k, w.b_k, new_keys);
    detail::project(model.stored_weights(), attn_in, w.w_v, w.b_v, new_values);
    detail::fire<site_kind::attn_k>(policy, layer, ctx, [&] { return detail::as_heads(new_keys, s, c.n_kv_heads); });
    detail::fire<site_kind::attn_v>(policy, layer, ctx, [&] { return detail::as_heads(new_values, s, c.n_kv_heads); });
    if (c.rotary()) {
        detail::apply_rope(model, s, new_keys, c.n_kv_heads);
        detail::fire<site_kind::attn_rot_k>(policy, layer, ctx,
                                            [&] { return detail::as_heads(new_keys, s, c.n_kv_heads); });
    }
    detail::store_keys_values(c, s, layer, new_keys, new_values, cache);
}

/// Partial forward, the end: the final norm of `rows` (span.rows(), d_model), laid out as the span (batch, pos),
/// firing the ln_final sites at the span's positions. Returns the unembedding's input (rows, d_model): `rows` itself
/// without norms, else a view into `ws` valid until the next call that uses the workspace. `rows` must not alias the
/// workspace's norm output (use span_residual's rows or your own buffer).
template <class Policy = no_hooks>
tensor_view<const float, 2> final_norm_span(const transformer& model, const forward_span& span,
                                            tensor_view<const float, 2> rows, workspace& ws,
                                            Policy&& policy = Policy{}) {
    const model_config& c = model.config();
    if (rows.extent(0) != span.rows() || rows.extent(1) != c.d_model)
        throw shape_error("final_norm_span: rows " + detail::format_extents(rows.shape()) + " do not match the span (" +
                          std::to_string(span.rows()) + ", " + std::to_string(c.d_model) + ")");
    ws.reserve(c, span.batch, span.positions, span.keys());
    const auto normed = ws.normed.matrix(span.rows(), c.d_model);  // (batch * pos, d_model)
    const model_weights& w = model.stored_weights();
    return detail::norm_step<final_norm_step>(policy, -1, hook_context{span.start}, detail::shape_of(span), c, rows,
                                              w.final_norm, w.final_norm_bias, normed, ws.norm_scale);
}

/// Runs `tokens` (batch, pos) through the model after the positions already in `cache`, appends their keys and
/// values to it, and writes logits (batch, pos, d_vocab_out) — or only the last position's when `logits` is
/// (batch, 1, d_vocab_out). `policy` sees every site it wants; positions in hooks start at cache.length().
template <class Policy = no_hooks>
void forward(const transformer& model, tensor_view<const std::int32_t, 2> tokens, kv_cache& cache,
             tensor_view<float, 3> logits, workspace& ws, Policy&& policy = Policy{}) {
    using policy_type = std::remove_cvref_t<Policy>;
    static_assert(hook_policy<policy_type>, "mechlens::forward: the policy does not satisfy mechlens::hook_policy");
    const model_config& c = model.config();
    const detail::forward_shape s = detail::check_forward_arguments(model, tokens, cache, logits);
    const hook_context ctx{s.start};
    ws.reserve(c, s.batch, s.positions, s.keys);
    policy_type& hooks = policy;

    const auto x = ws.residual.matrix(s.rows(), c.d_model);  // (batch * pos, d_model)
    detail::embed(hooks, ctx, model, tokens, s, x, ws);
    for (index_t layer = 0; layer < c.n_layers; ++layer) detail::run_block(hooks, layer, ctx, model, s, cache, ws);

    // Only the rows whose logits are asked for go through the final norm and the unembedding.
    const bool last_only = logits.extent(1) == 1 && s.positions > 1;
    const detail::forward_shape out_shape{s.batch, last_only ? 1 : s.positions, s.start, s.keys};
    auto final_rows = x;  // (batch * out_pos, d_model)
    if (last_only) {
        final_rows = ws.block_out.matrix(s.batch, c.d_model);
        for (index_t b = 0; b < s.batch; ++b)
            for (index_t i = 0; i < c.d_model; ++i) final_rows(b, i) = x(b * s.positions + s.positions - 1, i);
    }
    const hook_context final_ctx{last_only ? s.keys - 1 : s.start};
    const forward_span out_span{s.batch, out_shape.positions, final_ctx.start_position};
    const auto unembed_in = final_norm_span(model, out_span, final_rows, ws, hooks);  // (batch * out_pos, d_model)
    const auto logit_rows = logits.reshape(extents<2>{out_shape.rows(), c.vocab_out()});  // (batch * out_pos, vocab)
    const model_weights& w = model.stored_weights();
    detail::project(w, unembed_in, w.unembed, w.unembed_bias, logit_rows);
    detail::fire<site_kind::unembed_out>(hooks, -1, final_ctx, [&] { return logits; });
    cache.advance(s.positions);
}

/// Full forward pass over `tokens` (batch, pos) from position 0, using the workspace's own cache.
template <class Policy = no_hooks>
void forward(const transformer& model, tensor_view<const std::int32_t, 2> tokens, tensor_view<float, 3> logits,
             workspace& ws, Policy&& policy = Policy{}) {
    ws.own_cache.reset(model.config(), tokens.extent(0), std::max<index_t>(tokens.extent(1), 1));
    forward(model, tokens, ws.own_cache, logits, ws, std::forward<Policy>(policy));
}

/// Convenience: allocates and returns the logits (batch, pos, d_vocab_out) of a full forward pass.
template <class Policy = no_hooks>
tensor<float, 3> forward_logits(const transformer& model, tensor_view<const std::int32_t, 2> tokens,
                                Policy&& policy = Policy{}) {
    tensor<float, 3> logits({tokens.extent(0), tokens.extent(1), model.config().vocab_out()});
    workspace ws;
    forward(model, tokens, logits.view(), ws, std::forward<Policy>(policy));
    return logits;
}

MECHLENS_END_NAMESPACE
