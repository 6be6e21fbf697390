#pragma once
/// @file
/// Reusable scratch memory for forward passes: grows to the largest shape seen, then allocates nothing.

#include "mechlens/model/config.hpp"
#include "mechlens/model/kv_cache.hpp"
#include "mechlens/tensor/tensor.hpp"

MECHLENS_BEGIN_NAMESPACE

namespace detail {
/// A flat float buffer that only ever grows, handing out dense views of its prefix.
class scratch_buffer {
public:
    /// Grows (never shrinks) to hold at least `count` floats.
    void reserve(index_t count) {
        if (count > storage_.size()) storage_ = tensor<float, 1>({count});
    }
    /// A dense (rows, cols) view of the prefix; reserve first.
    [[nodiscard]] tensor_view<float, 2> matrix(index_t rows, index_t cols) noexcept {
        return tensor_view<float, 2>(storage_.data(), {rows, cols});
    }
    /// A dense rank-4 view of the prefix; reserve first.
    [[nodiscard]] tensor_view<float, 4> block(const extents<4>& shape) noexcept {
        return tensor_view<float, 4>(storage_.data(), shape);
    }
    /// Start of the storage (null before the first reserve).
    [[nodiscard]] const float* data() const noexcept { return storage_.data(); }
    /// Floats currently held.
    [[nodiscard]] index_t capacity() const noexcept { return storage_.size(); }

private:
    tensor<float, 1> storage_;
};
}  // namespace detail

/// Scratch buffers of the forward pass. Keep one per thread and reuse it: after the first call at a given
/// (batch, positions, keys) shape, later calls of that size or smaller allocate nothing.
class workspace {
public:
    /// Grows every buffer to fit `batch` sequences of `positions` new tokens attending to `keys` positions.
    void reserve(const model_config& c, index_t batch, index_t positions, index_t keys) {
        const index_t rows = batch * positions;
        residual.reserve(rows * c.d_model);
        normed.reserve(rows * c.d_model);
        norm_scale.reserve(rows);
        queries.reserve(rows * c.n_heads * c.d_head());
        new_keys.reserve(rows * c.n_kv_heads * c.d_head());
        new_values.reserve(rows * c.n_kv_heads * c.d_head());
        scores.reserve(batch * c.n_heads * positions * keys);
        mixed.reserve(rows * c.n_heads * c.d_head());
        block_out.reserve(rows * c.d_model);
        parallel_sum.reserve(c.parallel_attn_mlp ? rows * c.d_model : 0);
        // Attention-only models may leave d_mlp at anything; only a gated MLP needs the second hidden buffer.
        const index_t d_mlp = c.attn_only() ? 0 : c.d_mlp;
        gate.reserve(rows * d_mlp);
        up.reserve(c.mlp == mlp_kind::gated_silu ? rows * d_mlp : 0);
    }

    detail::scratch_buffer residual;    ///< (batch * pos, d_model) the residual stream.
    detail::scratch_buffer normed;      ///< (batch * pos, d_model) norm output.
    detail::scratch_buffer norm_scale;  ///< (batch * pos, 1) norm scales (only when hooked).
    detail::scratch_buffer queries;     ///< (batch * pos, n_heads * d_head)
    detail::scratch_buffer new_keys;    ///< (batch * pos, n_kv_heads * d_head) before entering the cache.
    detail::scratch_buffer new_values;  ///< (batch * pos, n_kv_heads * d_head) before entering the cache.
    detail::scratch_buffer scores;      ///< (batch, n_heads, pos, keys) scores, then the pattern in place.
    detail::scratch_buffer mixed;       ///< (batch * pos, n_heads * d_head) attention output per head ("z").
    detail::scratch_buffer block_out;   ///< (batch * pos, d_model) position rows, then attention or MLP output.
    detail::scratch_buffer parallel_sum;  ///< (batch * pos, d_model) resid_pre + attn_out in a parallel block.
    detail::scratch_buffer gate;        ///< (batch * pos, d_mlp) MLP pre-activation (gate or W_in), then hidden state.
    detail::scratch_buffer up;          ///< (batch * pos, d_mlp) up projection of a gated MLP.
    detail::scratch_buffer head_result; ///< (batch * pos, n_heads, d_model) per-head outputs (only when hooked).
    kv_cache own_cache;                 ///< Cache used by forward calls that are not given one.
};

MECHLENS_END_NAMESPACE
