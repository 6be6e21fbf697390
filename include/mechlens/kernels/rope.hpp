#pragma once
/// @file
/// Rotary position embedding: cos/sin tables and the two pair layouts (adjacent as in llama2.c and GGUF, split
/// halves as in Hugging Face and GPT-NeoX), SIMD.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/kernels/simd.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/tensor.hpp"

MECHLENS_BEGIN_NAMESPACE
namespace kernels {

/// Precomputed rotation tables: row p holds the cos/sin of position p's angle for each of the d_head/2 pairs.
struct rope_tables {
    tensor<float, 2> cos;  ///< (n_ctx, d_head/2): cos(p * theta^(-2i/d_head)).
    tensor<float, 2> sin;  ///< (n_ctx, d_head/2): sin(p * theta^(-2i/d_head)).
};

/// Builds the tables for positions [0, n_ctx) of heads of size d_head, angles computed in double and stored as
/// float. Throws shape_error unless d_head is positive and even and n_ctx >= 0, std::invalid_argument unless theta
/// is positive and finite.
inline rope_tables make_rope_tables(index_t n_ctx, index_t d_head, float theta) {
    if (d_head <= 0 || d_head % 2 != 0 || n_ctx < 0)
        throw shape_error("make_rope_tables: need an even d_head > 0 and n_ctx >= 0, got d_head " +
                          std::to_string(d_head) + ", n_ctx " + std::to_string(n_ctx));
    if (!(theta > 0.0f) || !std::isfinite(theta))
        throw std::invalid_argument("make_rope_tables: theta must be positive and finite, got " +
                                    std::to_string(theta));
    const index_t half = d_head / 2;
    rope_tables tables{tensor<float, 2>({n_ctx, half}), tensor<float, 2>({n_ctx, half})};
    for (index_t i = 0; i < half; ++i) {
        const double frequency =
            std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / static_cast<double>(d_head));
        for (index_t p = 0; p < n_ctx; ++p) {
            const double angle = static_cast<double>(p) * frequency;
            tables.cos(p, i) = static_cast<float>(std::cos(angle));
            tables.sin(p, i) = static_cast<float>(std::sin(angle));
        }
    }
    return tables;
}

namespace detail {

/// Swizzle pattern that exchanges the two lanes of each adjacent pair.
struct swap_pairs {
    /// Source lane of lane i.
    static constexpr std::uint32_t get(std::size_t i, std::size_t) { return static_cast<std::uint32_t>(i ^ 1u); }
};
/// Swizzle pattern repeating each lane of the low half twice: (v0, v0, v1, v1, ...).
struct repeat_low_half {
    /// Source lane of lane i.
    static constexpr std::uint32_t get(std::size_t i, std::size_t) { return static_cast<std::uint32_t>(i / 2); }
};
/// Swizzle pattern repeating each lane of the high half twice.
struct repeat_high_half {
    /// Source lane of lane i.
    static constexpr std::uint32_t get(std::size_t i, std::size_t n) {
        return static_cast<std::uint32_t>(n / 2 + i / 2);
    }
};

/// Lane pattern (-1, +1, -1, +1, ...): the first member of each pair subtracts b sin, the second adds a sin.
inline float_batch alternating_signs() noexcept {
    alignas(batch_alignment) std::array<float, float_batch::size> signs;
    for (std::size_t i = 0; i < signs.size(); ++i) signs[i] = i % 2 == 0 ? -1.0f : 1.0f;
    return float_batch::load_aligned(signs.data());
}

/// Rotates the interleaved pairs in x0 (pairs [0, W/2)) and x1 (pairs [W/2, W)) by the angles in c/s.
/// Each output is partner * (+-sin) + own * cos with the own * cos product rounded first, the same order as
/// rope_split_halves so both layouts give identical numbers.
inline void rotate_adjacent(float_batch& x0, float_batch& x1, const float_batch& c, const float_batch& s) {
    using index_batch = xsimd::batch<std::uint32_t, float_batch::arch_type>;
    constexpr auto swap = xsimd::make_batch_constant<index_batch, swap_pairs>();
    constexpr auto low = xsimd::make_batch_constant<index_batch, repeat_low_half>();
    constexpr auto high = xsimd::make_batch_constant<index_batch, repeat_high_half>();
    const float_batch signs = alternating_signs();
    x0 = fused_multiply_add(xsimd::swizzle(x0, swap), xsimd::swizzle(s, low) * signs, x0 * xsimd::swizzle(c, low));
    x1 = fused_multiply_add(xsimd::swizzle(x1, swap), xsimd::swizzle(s, high) * signs, x1 * xsimd::swizzle(c, high));
}

}  // namespace detail

/// Rotates the pairs (2i, 2i+1) of head[0..d_head): (a, b) -> (a cos_i - b sin_i, a sin_i + b cos_i), where cos
/// and sin are the table rows of the head's position (llama2.c / GGUF layout). d_head must be even.
inline void rope_adjacent(float* head, const float* cos, const float* sin, index_t d_head) {
    const index_t half = d_head / 2;
    index_t p = 0;  // pair index
    for (; p + simd_width <= half; p += simd_width) {
        float* h = head + 2 * p;
        float_batch x0 = float_batch::load_unaligned(h), x1 = float_batch::load_unaligned(h + simd_width);
        detail::rotate_adjacent(x0, x1, float_batch::load_unaligned(cos + p), float_batch::load_unaligned(sin + p));
        x0.store_unaligned(h);
        x1.store_unaligned(h + simd_width);
    }
    if (p < half) {  // the remaining pairs through padded batches, so every pair sees the same arithmetic
        const index_t pairs = half - p, floats = 2 * pairs;
        const index_t first = std::min(floats, simd_width), second = floats - first;
        float* h = head + 2 * p;
        float_batch x0 = detail::load_partial(h, first, 0.0f), x1 = detail::load_partial(h + first, second, 0.0f);
        detail::rotate_adjacent(x0, x1, detail::load_partial(cos + p, pairs, 0.0f),
                                detail::load_partial(sin + p, pairs, 0.0f));
        detail::store_partial(h, x0, first);
        detail::store_partial(h + first, x1, second);
    }
}

/// Rotates the pairs (i, i + d_head/2) of head[0..d_head) by the angles of the table rows cos/sin (Hugging Face /
/// GPT-NeoX layout). d_head must be even.
inline void rope_split_halves(float* head, const float* cos, const float* sin, index_t d_head) {
    const index_t half = d_head / 2;
    auto rotate = [](float_batch& a, float_batch& b, const float_batch& c, const float_batch& s) {
        // fma of the negated partner, not xsimd::fnma: xsimd 8.1 has no NEON fnma and falls back to an unfused
        // multiply and subtract there; negation is exact, so this is the fused a*c - b*s on every architecture.
        const float_batch a_rot = fused_multiply_add(-b, s, a * c);
        b = fused_multiply_add(a, s, b * c);
        a = a_rot;
    };
    index_t i = 0;
    for (; i + simd_width <= half; i += simd_width) {
        float_batch a = float_batch::load_unaligned(head + i), b = float_batch::load_unaligned(head + half + i);
        rotate(a, b, float_batch::load_unaligned(cos + i), float_batch::load_unaligned(sin + i));
        a.store_unaligned(head + i);
        b.store_unaligned(head + half + i);
    }
    if (i < half) {
        const index_t rest = half - i;
        float_batch a = detail::load_partial(head + i, rest, 0.0f),
                    b = detail::load_partial(head + half + i, rest, 0.0f);
        rotate(a, b, detail::load_partial(cos + i, rest, 0.0f), detail::load_partial(sin + i, rest, 0.0f));
        detail::store_partial(head + i, a, rest);
        detail::store_partial(head + half + i, b, rest);
    }
}

}  // namespace kernels
MECHLENS_END_NAMESPACE
