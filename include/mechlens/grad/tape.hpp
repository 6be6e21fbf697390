#pragma once
/// @file
/// What the taped forward pass keeps for the backward pass, and the Eigen plumbing both use: growable buffers,
/// row-major maps and a serial, order-stable GEMM. The ops in model/ops/ read and write these; grad/backward.hpp owns
/// them.

#include <cstddef>
#include <vector>

#include "mechlens/detail/third_party.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "mechlens/tensor/view.hpp"

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

/// What one norm keeps: (rows) scales and (rows, d_model) rows before and after the gain.
template <class T>
struct norm_tape {
    grad_buffer<T> scale, normalized, input;  ///< scale (rows); normalized and input (rows, d_model).
};

/// The activations one block keeps for its backward pass; each is (batch * pos, width) row-major unless noted.
template <class T>
struct block_tape {
    norm_tape<T> norms[2];                 ///< ln1 (attention half) and ln2 (MLP half).
    grad_buffer<T> q, k, v;                ///< (rows, heads * d_head): q and k after rotary embedding.
    grad_buffer<T> pattern;                ///< (batch, head, pos, pos)
    grad_buffer<T> z;                      ///< (rows, n_heads * d_head)
    grad_buffer<T> pre, pre_linear, post;  ///< (rows, d_mlp) MLP activations.
};

/// Scratch gradients of the backward pass, shared by every block.
template <class T>
struct backward_scratch {
    grad_buffer<T> d_q, d_k, d_v;                 ///< (rows, n_heads * d_head): per query head.
    grad_buffer<T> d_k_grouped, d_v_grouped;      ///< (rows, n_kv_heads * d_head): summed over each group.
    grad_buffer<T> d_z;                           ///< (rows, n_heads * d_head)
    grad_buffer<T> d_pattern, d_scores;           ///< (batch, head, pos, pos)
    grad_buffer<T> d_scale;                       ///< (rows)
    grad_buffer<T> d_mlp_a, d_mlp_b, d_mlp_post;  ///< (rows, d_mlp)
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

/// Adds `bias` (width) to every row of the (rows, width) matrix `m`.
template <class T>
void add_bias_rows(T* m, const T* bias, index_t rows, index_t width) {
    for (index_t r = 0; r < rows; ++r)
        for (index_t i = 0; i < width; ++i) m[r * width + i] += bias[i];
}
/// Adds the column sums of the (rows, width) matrix `m` into `out` (width): a bias's gradient.
template <class T>
void add_column_sums(T* out, const T* m, index_t rows, index_t width) {
    for (index_t r = 0; r < rows; ++r)
        for (index_t i = 0; i < width; ++i) out[i] += m[r * width + i];
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

/// The rows a taped pass covers: `batch` sequences of `positions` tokens from position 0.
struct taped_shape {
    index_t batch;      ///< Sequences.
    index_t positions;  ///< Tokens per sequence.
    /// batch * positions.
    [[nodiscard]] index_t rows() const noexcept { return batch * positions; }
};

}  // namespace detail
MECHLENS_END_NAMESPACE
