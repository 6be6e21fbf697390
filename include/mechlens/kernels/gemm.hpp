#pragma once
/// @file
/// A batch-invariant matrix product y = x w^T: every output element is reduced in one fixed order, whatever the
/// number of rows, the tile it falls in or the thread that computes it.
///
/// Why: interpretability compares runs. With this kernel the logits of a prompt do not depend on what else is in
/// the batch, on whether it was decoded token by token through a KV cache or in one prefill, or on the thread
/// count, so patching several cells in one batched forward gives bit-for-bit the table of one forward per cell.
/// The design is the register-tiled dot-product GEMM (one SIMD accumulator per output element, RM x RN of them
/// live in registers) that suits weights stored (out, in) row-major, as llama2.c and GGUF store them.

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <utility>

#include "mechlens/kernels/simd.hpp"

#if defined(__GNUC__)
/// Forces inlining of the tile's small lambdas; without it GCC may keep the accumulators in memory.
#define MECHLENS_TILE_INLINE __attribute__((always_inline))
/// Inlines everything a tile calls, xsimd's horizontal add included: left to its heuristics, GCC 12 sometimes keeps
/// xsimd::hadd out of line depending on what else the translation unit holds (measured: 6 % of a patching sweep).
#define MECHLENS_TILE_FLATTEN __attribute__((flatten))
#else
#define MECHLENS_TILE_INLINE
#define MECHLENS_TILE_FLATTEN
#endif

MECHLENS_BEGIN_NAMESPACE
namespace kernels {
namespace detail {

/// Rows of x per register tile.
inline constexpr index_t gemm_tile_rows = 3;
/// Outputs (rows of w) per register tile; 3 x 4 accumulators + 3 x loads + 1 w load fit 16 vector registers.
inline constexpr index_t gemm_tile_outputs = 4;
/// Outputs per tile when x has a single row (matrix-vector products, i.e. decoding).
inline constexpr index_t gemv_tile_outputs = 8;

/// Operands of one product: x (rows, depth) and w (outputs, depth) with dense rows, y (rows, outputs).
struct gemm_operands {
    const float* x;          ///< First element of x.
    index_t x_stride;        ///< Elements between rows of x.
    const float* w;          ///< First element of w.
    index_t w_stride;        ///< Elements between rows of w.
    float* y;                ///< First element of y.
    index_t y_stride;        ///< Elements between rows of y.
    index_t depth;           ///< Shared inner dimension.
    bool accumulate;         ///< y += x w^T instead of y = x w^T.
};

/// Calls f(integral_constant<index_t, I>) for I = 0 .. N-1, unrolled at compile time: the tile's accumulator arrays
/// are indexed by constants only, so the compiler keeps them in registers even at -O2.
template <index_t N, class F>
MECHLENS_TILE_INLINE inline void unrolled(F&& f) {
    [&]<std::size_t... I>(std::index_sequence<I...>) MECHLENS_TILE_INLINE {
        (f(std::integral_constant<index_t, static_cast<index_t>(I)>{}), ...);
    }(std::make_index_sequence<static_cast<std::size_t>(N)>{});
}

/// The register tile: y[r0 + i][o0 + j] for i < RM, j < RN. Each element is the lane-wise fused multiply-add chain
/// over depth in steps of simd_width (the tail zero-padded), then one horizontal add: the order every tile shape
/// shares.
template <index_t RM, index_t RN>
MECHLENS_TILE_FLATTEN inline void gemm_tile(const gemm_operands& op, index_t r0, index_t o0) noexcept {
    constexpr auto rows = static_cast<std::size_t>(RM), outputs = static_cast<std::size_t>(RN);
    float_batch acc[rows][outputs];
    const float* x[rows];
    const float* w[outputs];
    unrolled<RM>([&](auto i) MECHLENS_TILE_INLINE { x[i] = op.x + (r0 + i) * op.x_stride; });
    unrolled<RN>([&](auto j) MECHLENS_TILE_INLINE { w[j] = op.w + (o0 + j) * op.w_stride; });
    unrolled<RM>([&](auto i) MECHLENS_TILE_INLINE { unrolled<RN>([&](auto j) MECHLENS_TILE_INLINE { acc[i][j] = float_batch(0.0f); }); });
    const auto step = [&](auto&& load_x, auto&& load_w) MECHLENS_TILE_INLINE {
        float_batch xv[rows];
        unrolled<RM>([&](auto i) MECHLENS_TILE_INLINE { xv[i] = load_x(x[i]); });
        unrolled<RN>([&](auto j) MECHLENS_TILE_INLINE {
            const float_batch wv = load_w(w[j]);
            unrolled<RM>([&](auto i) MECHLENS_TILE_INLINE {
                acc[i][j] = fused_multiply_add(xv[i], wv, acc[i][j]);
            });
        });
    };
    index_t k = 0;
    for (; k + simd_width <= op.depth; k += simd_width) {
        const auto load = [k](const float* p) MECHLENS_TILE_INLINE { return float_batch::load_unaligned(p + k); };
        step(load, load);
    }
    if (k < op.depth) {
        const index_t tail = op.depth - k;
        const auto load = [k, tail](const float* p) MECHLENS_TILE_INLINE { return load_partial(p + k, tail, 0.0f); };
        step(load, load);
    }
    unrolled<RM>([&](auto i) MECHLENS_TILE_INLINE {
        float* y = op.y + (r0 + i) * op.y_stride + o0;
        unrolled<RN>([&](auto j) MECHLENS_TILE_INLINE {
            const float sum = xsimd::hadd(acc[i][j]);
            y[j] = op.accumulate ? y[j] + sum : sum;
        });
    });
}

/// Runs the tile of the given (possibly partial) size; every combination up to the full tile is instantiated.
inline void gemm_edge_tile(const gemm_operands& op, index_t r0, index_t o0, index_t rows, index_t outputs) noexcept {
    // Tables of instantiations indexed by [rows - 1][outputs - 1].
    using tile_fn = void (*)(const gemm_operands&, index_t, index_t) noexcept;
    static constexpr tile_fn table[3][4] = {
        {&gemm_tile<1, 1>, &gemm_tile<1, 2>, &gemm_tile<1, 3>, &gemm_tile<1, 4>},
        {&gemm_tile<2, 1>, &gemm_tile<2, 2>, &gemm_tile<2, 3>, &gemm_tile<2, 4>},
        {&gemm_tile<3, 1>, &gemm_tile<3, 2>, &gemm_tile<3, 3>, &gemm_tile<3, 4>},
    };
    table[rows - 1][outputs - 1](op, r0, o0);
}

/// Outputs [o_begin, o_end) for every row; the unit of parallel work.
inline void gemm_output_block(const gemm_operands& op, index_t rows, index_t o_begin, index_t o_end) noexcept {
    if (rows == 1) {
        index_t o = o_begin;
        for (; o + gemv_tile_outputs <= o_end; o += gemv_tile_outputs) gemm_tile<1, gemv_tile_outputs>(op, 0, o);
        for (; o < o_end; o += gemm_tile_outputs)
            gemm_edge_tile(op, 0, o, 1, std::min(gemm_tile_outputs, o_end - o));
        return;
    }
    for (index_t r = 0; r < rows; r += gemm_tile_rows) {
        const index_t tile_rows = std::min(gemm_tile_rows, rows - r);
        index_t o = o_begin;
        if (tile_rows == gemm_tile_rows)
            for (; o + gemm_tile_outputs <= o_end; o += gemm_tile_outputs)
                gemm_tile<gemm_tile_rows, gemm_tile_outputs>(op, r, o);
        for (; o < o_end; o += gemm_tile_outputs)
            gemm_edge_tile(op, r, o, tile_rows, std::min(gemm_tile_outputs, o_end - o));
    }
}

/// y = x w^T (or +=) for x (rows, depth), w (outputs, depth): blocks of outputs sized to stay in L2 are spread over
/// OpenMP threads when the product is large enough to pay for them. No shape checks: callers validate.
inline void gemm_xwt(const gemm_operands& op, index_t rows, index_t outputs) noexcept {
    if (rows <= 0 || outputs <= 0) return;
    // About 256 KiB of w per block, a multiple of both tile widths.
    const index_t lcm = gemv_tile_outputs;
    index_t block = std::max<index_t>(lcm, (65536 / std::max<index_t>(op.depth, 1)) / lcm * lcm);
    const index_t blocks = (outputs + block - 1) / block;
    const double work = static_cast<double>(rows) * static_cast<double>(outputs) * static_cast<double>(op.depth);
#if defined(_OPENMP)
    if (work >= 1 << 20 && blocks > 1) {  // about 50 microseconds of work: worth a parallel region
#pragma omp parallel for schedule(static)
        for (index_t b = 0; b < blocks; ++b)
            gemm_output_block(op, rows, b * block, std::min(outputs, (b + 1) * block));
        return;
    }
#endif
    (void)work;
    for (index_t b = 0; b < blocks; ++b) gemm_output_block(op, rows, b * block, std::min(outputs, (b + 1) * block));
}

}  // namespace detail
}  // namespace kernels
MECHLENS_END_NAMESPACE
