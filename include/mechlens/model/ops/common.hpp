#pragma once
/// @file
/// What the ops of a block share: the shape of a forward call, views of its row-major buffers, the tape plumbing
/// of the gradient pass, and the parallel-loop switch.

#include "mechlens/grad/tape.hpp"
#include "mechlens/hooks/site.hpp"
#include "mechlens/kernels/matmul.hpp"
#include "mechlens/model/weights.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE
namespace detail {

#if defined(_OPENMP)
/// Splits the next loop over OpenMP threads when the local `worth_parallel` is true: small loops stay serial, since a
/// parallel region costs microseconds and, on a busy machine, can wait on a descheduled thread far longer.
#define MECHLENS_PARALLEL_FOR _Pragma("omp parallel for schedule(static) if(worth_parallel)")
#else
#define MECHLENS_PARALLEL_FOR
#endif

/// Shapes of one forward call, derived once and shared by the block functions.
struct forward_shape {
    index_t batch;      ///< Sequences.
    index_t positions;  ///< New positions per sequence in this call.
    index_t start;      ///< Absolute position of the first new token.
    index_t keys;       ///< Positions attended to: start + positions.
    [[nodiscard]] index_t rows() const noexcept { return batch * positions; }
};

/// y = x w^T (+ bias when the view is not empty): a linear layer whose bias the config may leave out.
inline void project(tensor_view<const float, 2> x, tensor_view<const float, 2> w, tensor_view<const float, 1> bias,
                    tensor_view<float, 2> y) {
    if (bias.size() > 0)
        kernels::linear(x, w, bias, y);
    else
        kernels::linear(x, w, y);
}

/// y = x w^T (+ bias when the view is not empty) for a weight of `weights`: from w's encoded blocks when `weights`
/// keeps them (a quantised file's matrices, whose floats need never be decoded; kernels::encoded_linear), else from
/// its floats. The same bits either way.
inline void project(const model_weights& weights, tensor_view<const float, 2> x, tensor_view<const float, 2> w,
                    tensor_view<const float, 1> bias, tensor_view<float, 2> y) {
    if (const auto blocks = encoded_blocks_of(weights, w)) {  // its extents are w's
        if (bias.size() > 0)
            kernels::encoded_linear(x, *blocks, bias, y);
        else
            kernels::encoded_linear(x, *blocks, y);
        return;
    }
    project(x, w, bias, y);
}

/// Views a (batch * pos, width) matrix as (batch, pos, width).
inline tensor_view<float, 3> as_sequence(tensor_view<float, 2> m, const forward_shape& s) {
    return tensor_view<float, 3>(m.data(), {s.batch, s.positions, m.extent(1)});
}

/// Views a (batch * pos, heads * d_head) matrix as (batch, pos, heads, d_head).
inline tensor_view<float, 4> as_heads(tensor_view<float, 2> m, const forward_shape& s, index_t heads) {
    return tensor_view<float, 4>(m.data(), {s.batch, s.positions, heads, m.extent(1) / heads});
}

}  // namespace detail
MECHLENS_END_NAMESPACE
