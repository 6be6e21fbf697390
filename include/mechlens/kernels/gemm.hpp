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
#include <array>
#include <cstddef>
#include <type_traits>
#include <utility>

#include "mechlens/kernels/simd.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

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

/// True when float_batch is an AVX-512 batch: 32 vector registers for the tile, and the sums of four accumulators
/// are reduced together (horizontal_sums_of_four).
inline constexpr bool gemm_avx512 =
#if XSIMD_WITH_AVX512F
    std::is_base_of_v<xsimd::avx512f, float_batch::arch_type>;
#else
    false;
#endif

/// Rows of x per register tile: 6 x 4 accumulators + 6 x loads + 1 w load fit AVX-512's 32 vector registers,
/// 3 x 4 + 3 + 1 the 16 of AVX2.
inline constexpr index_t gemm_tile_rows = gemm_avx512 ? 6 : 3;
/// Outputs (rows of w) per register tile.
inline constexpr index_t gemm_tile_outputs = 4;
/// Outputs per tile when x has a single row (matrix-vector products, i.e. decoding).
inline constexpr index_t gemv_tile_outputs = 8;
/// Outputs (rows of w) per block of a product: about 256 KiB of w, which stays in L2 while every row of x passes
/// it, and a multiple of both tile widths.
inline constexpr index_t gemm_block_outputs(index_t depth) noexcept {
    const index_t fitting = 65536 / std::max<index_t>(depth, 1);
    return std::max<index_t>(gemv_tile_outputs, fitting / gemv_tile_outputs * gemv_tile_outputs);
}

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

#if XSIMD_WITH_AVX512F
/// xsimd::hadd of each of a, b, c and d, bit for bit, in lanes 0-3: the same tree as xsimd 8.1's AVX-512 hadd
/// (lane i + lane i+8, then i + i+4, then adjacent pairs twice), computed for four accumulators at once with
/// 128-bit-lane shuffles instead of four separate extract-and-hadd chains.
inline __m128 horizontal_sums_of_four(__m512 a, __m512 b, __m512 c, __m512 d) noexcept {
    constexpr int low_halves = _MM_SHUFFLE(1, 0, 1, 0), high_halves = _MM_SHUFFLE(3, 2, 3, 2);
    // [a's lanes 0-7 + 8-15 | b's]
    const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, high_halves), _mm512_shuffle_f32x4(a, b, low_halves));
    const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, high_halves), _mm512_shuffle_f32x4(c, d, low_halves));
    // [a's 0-3 + 4-7 | b's | c's | d's]
    const __m512 quarters = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)),
                                          _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
    // In each 128-bit lane: element 0 = t0 + t1 and element 2 = t2 + t3, then element 0 = (t0 + t1) + (t2 + t3).
    const __m512 pairs = _mm512_add_ps(quarters, _mm512_permute_ps(quarters, _MM_SHUFFLE(2, 3, 0, 1)));
    const __m512 sums = _mm512_add_ps(pairs, _mm512_permute_ps(pairs, _MM_SHUFFLE(1, 0, 3, 2)));
    const __m512i firsts = _mm512_setr_epi32(0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12);
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(firsts, sums));
}
#endif

/// y[j] = xsimd::hadd(acc[j]) (or y[j] += it) for j < RN; on AVX-512 four at a time through
/// horizontal_sums_of_four, which gives the same bits.
template <index_t RN>
MECHLENS_TILE_INLINE inline void store_sums(const float_batch (&acc)[static_cast<std::size_t>(RN)], float* y,
                                            bool accumulate) noexcept {
    constexpr index_t grouped = gemm_avx512 ? RN / 4 * 4 : 0;
#if XSIMD_WITH_AVX512F
    if constexpr (grouped > 0) {
        unrolled<grouped / 4>([&](auto g) MECHLENS_TILE_INLINE {
            constexpr auto j = static_cast<std::size_t>(4 * g);
            __m128 sums = horizontal_sums_of_four(acc[j], acc[j + 1], acc[j + 2], acc[j + 3]);
            if (accumulate) sums = _mm_add_ps(_mm_loadu_ps(y + j), sums);
            _mm_storeu_ps(y + j, sums);
        });
    }
#endif
    unrolled<RN - grouped>([&](auto rest) MECHLENS_TILE_INLINE {
        constexpr auto j = static_cast<std::size_t>(grouped + rest);
        const float sum = xsimd::hadd(acc[j]);
        y[j] = accumulate ? y[j] + sum : sum;
    });
}

/// `v`, which the compiler must now keep in a register: without this GCC folds each use of a loaded row of x into
/// its multiply-add as a memory operand, reloading it RN times per step (28 loads per 24 multiply-adds in the 6 x 4
/// tile, which then waits on the load ports instead of the FMA pipes).
MECHLENS_TILE_INLINE inline float_batch in_register(float_batch v) noexcept {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__aarch64__))
    auto raw = v.data;
#if defined(__x86_64__)
    __asm__("" : "+v"(raw));
#else
    __asm__("" : "+w"(raw));
#endif
    return raw;
#else
    return v;
#endif
}

/// The register tile: y[r0 + i][o0 + j] for i < RM, j < RN. Each element is the lane-wise fused multiply-add chain
/// over depth in steps of simd_width (the tail zero-padded), then xsimd::hadd's tree: the order every tile shape
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
        unrolled<RM>([&](auto i) MECHLENS_TILE_INLINE { xv[i] = in_register(load_x(x[i])); });
        unrolled<RN>([&](auto j) MECHLENS_TILE_INLINE {
            const float_batch wv = load_w(w[j]);
            unrolled<RM>([&](auto i) MECHLENS_TILE_INLINE { acc[i][j] = fused_multiply_add(xv[i], wv, acc[i][j]); });
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
        store_sums<RN>(acc[i], op.y + (r0 + i) * op.y_stride + o0, op.accumulate);
    });
}

/// Runs the tile of the given (possibly partial) size; every combination up to the full tile is instantiated.
inline void gemm_edge_tile(const gemm_operands& op, index_t r0, index_t o0, index_t rows, index_t outputs) noexcept {
    using tile_fn = void (*)(const gemm_operands&, index_t, index_t) noexcept;
    constexpr auto row_count = static_cast<std::size_t>(gemm_tile_rows);
    constexpr auto output_count = static_cast<std::size_t>(gemm_tile_outputs);
    // Instantiations indexed by [rows - 1][outputs - 1].
    static constexpr auto table = []<std::size_t... I>(std::index_sequence<I...>) {
        return std::array<tile_fn, sizeof...(I)>{
            &gemm_tile<static_cast<index_t>(I / output_count + 1), static_cast<index_t>(I % output_count + 1)>...};
    }(std::make_index_sequence<row_count * output_count>{});
    table[static_cast<std::size_t>((rows - 1) * gemm_tile_outputs + (outputs - 1))](op, r0, o0);
}

/// Rows [r_begin, r_end) by outputs [o_begin, o_end); the unit of parallel work. Which tile computes an element
/// changes none of its bits, so any partition of the rows and outputs gives the same y.
inline void gemm_block(const gemm_operands& op, index_t r_begin, index_t r_end, index_t o_begin,
                       index_t o_end) noexcept {
    if (r_end - r_begin == 1) {
        index_t o = o_begin;
        for (; o + gemv_tile_outputs <= o_end; o += gemv_tile_outputs) gemm_tile<1, gemv_tile_outputs>(op, r_begin, o);
        for (; o < o_end; o += gemm_tile_outputs)
            gemm_edge_tile(op, r_begin, o, 1, std::min(gemm_tile_outputs, o_end - o));
        return;
    }
    for (index_t r = r_begin; r < r_end; r += gemm_tile_rows) {
        const index_t tile_rows = std::min(gemm_tile_rows, r_end - r);
        index_t o = o_begin;
        if (tile_rows == gemm_tile_rows)
            for (; o + gemm_tile_outputs <= o_end; o += gemm_tile_outputs)
                gemm_tile<gemm_tile_rows, gemm_tile_outputs>(op, r, o);
        for (; o < o_end; o += gemm_tile_outputs)
            gemm_edge_tile(op, r, o, tile_rows, std::min(gemm_tile_outputs, o_end - o));
    }
}

/// Splits the product of x (rows, depth) and w (outputs, depth) into work items and runs
/// `item(r_begin, r_end, o_begin, o_end)` for each: blocks of outputs sized to keep about 256 KiB of w in L2 (a
/// multiple of both tile widths), split into bands of rows when there are too few blocks to share, spread over
/// OpenMP threads when the product is large enough to pay for them. Every item is a whole block of outputs by a
/// band of rows, so an item may prepare its block of w once (encoded_matmul.hpp decodes it there).
template <class Item>
inline void for_each_gemm_item(index_t rows, index_t outputs, index_t depth, Item&& item) {
    if (rows <= 0 || outputs <= 0) return;
    const index_t block = gemm_block_outputs(depth);
    const index_t blocks = (outputs + block - 1) / block;
    const double work = static_cast<double>(rows) * static_cast<double>(outputs) * static_cast<double>(depth);
    // Worth a parallel region: about 50 microseconds of arithmetic (2^20 multiply-adds), or a weight matrix of 512 KiB
    // or more, whose reading from memory takes 30 microseconds or more even for the single row of a decode step
    // (then the threads split the outputs, the rows of w, and each reads its own part of w).
    [[maybe_unused]] const bool worth_parallel =
        work >= 1 << 20 || static_cast<double>(outputs) * static_cast<double>(depth) >= 1 << 17;
    index_t bands = 1;  // bands of rows per block of outputs
#if defined(_OPENMP)
    const index_t threads = omp_get_max_threads();
    if (threads > 1 && worth_parallel) {
        // At least 4 work items per thread when there are rows enough (16 tiles of rows per band at least).
        const index_t wanted = (4 * threads + blocks - 1) / blocks;
        bands = std::clamp<index_t>(wanted, 1, std::max<index_t>(1, rows / (16 * gemm_tile_rows)));
    }
#endif
    // Bands a whole number of row tiles tall (the last one shorter).
    const index_t band_rows = ((rows + bands - 1) / bands + gemm_tile_rows - 1) / gemm_tile_rows * gemm_tile_rows;
    bands = (rows + band_rows - 1) / band_rows;
    const index_t items = bands * blocks;
    const auto run_item = [&](index_t i) {
        const index_t band = i % bands, b = i / bands;
        item(band * band_rows, std::min(rows, (band + 1) * band_rows), b * block, std::min(outputs, (b + 1) * block));
    };
#if defined(_OPENMP)
    if (worth_parallel && items > 1) {
#pragma omp parallel for schedule(static)
        for (index_t i = 0; i < items; ++i) run_item(i);
        return;
    }
#endif
    for (index_t i = 0; i < items; ++i) run_item(i);
}

/// y = x w^T (or +=) for x (rows, depth), w (outputs, depth), in the work items of for_each_gemm_item. No shape
/// checks: callers validate.
inline void gemm_xwt(const gemm_operands& op, index_t rows, index_t outputs) noexcept {
    for_each_gemm_item(rows, outputs, op.depth, [&](index_t r_begin, index_t r_end, index_t o_begin, index_t o_end) {
        gemm_block(op, r_begin, r_end, o_begin, o_end);
    });
}

}  // namespace detail
}  // namespace kernels
MECHLENS_END_NAMESPACE
