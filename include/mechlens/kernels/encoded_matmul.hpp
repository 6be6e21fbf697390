#pragma once
/// @file
/// Matrix-vector products straight from quantised weight blocks (GGUF's Q8_0, Q4_K and Q6_K), dequantised in
/// registers: the decode step of a quantised model reads a quarter to an eighth of the bytes of its float weights.
///
/// The blocks decode to exactly the floats the loader's dequantizer writes (ggml_quants.hpp: the same products in
/// the same order), and each output element is then reduced exactly as the dense tiled kernel reduces it (gemm.hpp:
/// lane-wise fused multiply-adds over depth in steps of simd_width, then the same horizontal sum). So y is bit for
/// bit what kernels::linear gives on the decoded matrix: whether a product ran on the blocks or on the floats never
/// shows in a result, a cache or a patching table. Activations stay float; nothing is quantised on the fly.

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "mechlens/kernels/gemm.hpp"
#include "mechlens/kernels/matmul.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/half.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE
namespace kernels {

/// Block layouts the products below read (GGUF / ggml names; see io/ggml_quants.hpp for each layout).
enum class block_format : std::uint8_t {
    q8_0,  ///< 32 int8 with one half scale: 34 bytes per 32 weights.
    q4_k,  ///< 256 4-bit weights with 8 six-bit sub-scales and minimums: 144 bytes.
    q6_k,  ///< 256 6-bit weights with 16 int8 sub-scales: 210 bytes.
};

/// A (rows, depth) weight matrix kept as its file's blocks, row after row, beside the floats it decodes to.
struct encoded_matrix {
    const float* decoded = nullptr;     ///< The decoded (rows, depth) floats the blocks stand for (row-major, dense).
    const std::byte* blocks = nullptr;  ///< First block of row 0; row r starts at blocks + r * row_bytes.
    block_format format = block_format::q8_0;  ///< Layout of the blocks.
    index_t rows = 0;                   ///< Output features (rows of w).
    index_t depth = 0;                  ///< Input features: a whole number of blocks per row.
    std::size_t row_bytes = 0;          ///< Bytes of one row's blocks.
};

/// Weights per block of `format`.
[[nodiscard]] constexpr index_t block_elements(block_format format) noexcept {
    return format == block_format::q8_0 ? 32 : 256;
}

/// Bytes per block of `format`.
[[nodiscard]] constexpr std::size_t block_bytes(block_format format) noexcept {
    switch (format) {
        case block_format::q8_0: return 34;
        case block_format::q4_k: return 144;
        case block_format::q6_k: return 210;
    }
    return 0;
}

namespace detail {

/// The int32 batch of float_batch's architecture (same lane count).
using int_batch = xsimd::batch<std::int32_t, float_batch::arch_type>;

/// simd_width consecutive bytes at `p`, each widened to an int32 lane: sign-extended when Signed, else zero-extended.
/// Reads exactly simd_width bytes.
/// (Arch is a parameter so that only its own branch is compiled.)
template <bool Signed, class Arch = float_batch::arch_type>
inline xsimd::batch<std::int32_t, Arch> load_bytes_widened(const std::byte* p) noexcept {
#if XSIMD_WITH_AVX512F
    if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>) {
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        return Signed ? _mm512_cvtepi8_epi32(bytes) : _mm512_cvtepu8_epi32(bytes);
    } else
#endif
#if XSIMD_WITH_AVX2
        if constexpr (std::is_base_of_v<xsimd::avx2, Arch>) {
        const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
        return Signed ? _mm256_cvtepi8_epi32(bytes) : _mm256_cvtepu8_epi32(bytes);
    } else
#endif
#if XSIMD_WITH_NEON64
        if constexpr (std::is_same_v<Arch, xsimd::neon64>) {
        std::uint32_t four = 0;
        std::memcpy(&four, p, sizeof four);
        const uint8x8_t bytes = vreinterpret_u8_u32(vdup_n_u32(four));
        if constexpr (Signed)
            return vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_u8(bytes))));
        else
            return vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(vmovl_u8(bytes))));
    } else
#endif
    {
        alignas(batch_alignment) std::array<std::int32_t, xsimd::batch<std::int32_t, Arch>::size> lanes;
        for (std::size_t i = 0; i < lanes.size(); ++i) {
            const auto byte = std::to_integer<std::uint8_t>(p[i]);
            lanes[i] = Signed ? static_cast<std::int32_t>(static_cast<std::int8_t>(byte)) : std::int32_t{byte};
        }
        return xsimd::batch<std::int32_t, Arch>::load_aligned(lanes.data());
    }
}

/// The half at `p` (little-endian) as a float: the hardware conversion where there is one (F16C on x86, AArch64),
/// which is exact like half_to_float's (a signalling NaN comes out quiet); a scale is read once per block, and the
/// bit-by-bit conversion there cost as much as the block's arithmetic.
inline float half_at(const std::byte* p) noexcept {
    const auto bits =
        static_cast<std::uint16_t>(std::to_integer<unsigned>(p[0]) | std::to_integer<unsigned>(p[1]) << 8);
#if defined(__F16C__)
    return _cvtsh_ss(bits);
#elif defined(__aarch64__)
    return static_cast<float>(std::bit_cast<__fp16>(bits));
#else
    return mechlens::detail::half_to_float(bits);
#endif
}

/// Asks for the cache line at `address` ahead of its use (no effect where the compiler has no prefetch builtin).
inline void prefetch(std::uintptr_t address) noexcept {
#if defined(__GNUC__)
    __builtin_prefetch(reinterpret_cast<const void*>(address), 0, 3);
#else
    (void)address;
#endif
}

/// Byte `i` of `p`.
inline unsigned byte_at(const std::byte* p, std::size_t i) noexcept { return std::to_integer<unsigned>(p[i]); }

/// The eight 6-bit scales of a Q4_K / Q5_K super-block's 12 packed bytes, then its eight 6-bit minimums, one per
/// byte: bytes 0-3 hold scales 0-3 in their low six bits and the top two bits of scales 4-7; bytes 4-7 the same for
/// the minimums; bytes 8-11 the low four bits of scales 4-7 (low nibble) and of minimums 4-7 (high nibble).
/// Shared with the loader's decoder (io/ggml_quants.hpp).
inline std::array<std::uint8_t, 16> k_quant_unpacked_scales(const std::byte* packed) noexcept {
    std::uint32_t word[3];  // little-endian, whatever the host
    for (std::size_t i = 0; i < 3; ++i)
        word[i] = byte_at(packed, 4 * i) | byte_at(packed, 4 * i + 1) << 8 | byte_at(packed, 4 * i + 2) << 16 |
                  byte_at(packed, 4 * i + 3) << 24;
    constexpr std::uint32_t low6 = 0x3F3F3F3Fu, low4 = 0x0F0F0F0Fu, top2 = 0x03030303u;
    const std::uint32_t out[4] = {
        word[0] & low6,                                          // scales 0-3
        (word[2] & low4) | ((word[0] >> 6) & top2) << 4,         // scales 4-7
        word[1] & low6,                                          // minimums 0-3
        ((word[2] >> 4) & low4) | ((word[1] >> 6) & top2) << 4,  // minimums 4-7
    };
    std::array<std::uint8_t, 16> bytes;
    if constexpr (std::endian::native == std::endian::little)
        std::memcpy(bytes.data(), out, sizeof out);
    else
        for (std::size_t i = 0; i < 16; ++i) bytes[i] = static_cast<std::uint8_t>(out[i / 4] >> (8 * (i % 4)));
    return bytes;
}

/// scale[s] = d * scale_s and minimum[s] = dmin * min_s for the eight sub-blocks of a Q4_K / Q5_K super-block
/// (the loader's dequantizer's products), eight lanes at a time on x86 (AVX2 and up).
inline void k_quant_scales_times(const std::byte* packed, float d, float dmin, float* scale, float* minimum) noexcept {
    const std::array<std::uint8_t, 16> six_bit = k_quant_unpacked_scales(packed);
#if defined(__AVX2__)
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(six_bit.data()));
    _mm256_storeu_ps(scale, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)), _mm256_set1_ps(d)));
    _mm256_storeu_ps(minimum, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8))),
                                            _mm256_set1_ps(dmin)));
#else
    for (std::size_t sub = 0; sub < 8; ++sub) {
        scale[sub] = d * static_cast<float>(six_bit[sub]);
        minimum[sub] = dmin * static_cast<float>(six_bit[8 + sub]);
    }
#endif
}

/// Q8_0: w = q * d.
struct q8_0_blocks {
    static constexpr index_t elements = 32;  ///< Weights per block.
    static constexpr std::size_t bytes = 34;  ///< Bytes per block.
    static constexpr bool scales_from_memory = false;  ///< One scale per block: kept in a register.
    /// The block's scale.
    struct scales {
        float d;  ///< Block scale.
    };
    /// Reads the block's scale.
    static scales prepare(const std::byte* block) noexcept { return {half_at(block)}; }
    /// Weights [C * simd_width, (C + 1) * simd_width) of the block.
    template <index_t C>
    static float_batch chunk(const std::byte* block, const scales& s) noexcept {
        const int_batch q = load_bytes_widened<true>(block + 2 + C * simd_width);
        return xsimd::to_float(q) * float_batch(s.d);
    }
};

/// Q4_K: w = (d * scale_s) * q - dmin * min_s for sub-block s of 32.
struct q4_k_blocks {
    static constexpr index_t elements = 256;   ///< Weights per super-block.
    static constexpr std::size_t bytes = 144;  ///< Bytes per super-block.
    static constexpr bool scales_from_memory = true;  ///< Broadcast each sub-block's scale from memory.
    /// The eight sub-blocks' scales and minimums, multiplied out as the dequantizer does.
    struct scales {
        std::array<float, 8> scale;          ///< d * scale_s.
        std::array<float, 8> minus_minimum;  ///< -(dmin * min_s).
    };
    /// Unpacks the 6-bit scales and minimums.
    static scales prepare(const std::byte* block) noexcept {
        scales s;
        k_quant_scales_times(block + 4, half_at(block), -half_at(block + 2), s.scale.data(), s.minus_minimum.data());
        return s;
    }
    /// Weights [C * simd_width, (C + 1) * simd_width): sub-block s = e / 32 keeps its nibbles in byte group s / 2,
    /// low nibbles for even s, high for odd. Each weight is q * scale_s - minimum_s with an exact product (a 4-bit q
    /// times a half times a 6-bit integer fits in a float's 24 bits), so one fused multiply-add rounds it exactly as
    /// the dequantizer's multiply then subtract. With 16 lanes (AVX-512) the sub-block's sixteen possible weights
    /// are computed once as a table and each weight is looked up by its nibble (vpermps reads the low four bits of
    /// an index, so the low nibble needs no mask).
    template <index_t C>
    static float_batch chunk(const std::byte* block, const scales& s) noexcept {
        constexpr index_t first = C * simd_width, sub = first / 32;
        const int_batch packed = load_bytes_widened<false>(block + 16 + 32 * (sub / 2) + first % 32);
#if XSIMD_WITH_AVX512F
        if constexpr (std::is_base_of_v<xsimd::avx512f, float_batch::arch_type>) {
            const __m512 nibble_values = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            const float_batch table = fused_multiply_add(float_batch(nibble_values), float_batch(s.scale[sub]),
                                                         float_batch(s.minus_minimum[sub]));
            const __m512i index = sub % 2 == 0 ? packed.data : _mm512_srli_epi32(packed.data, 4);
            return _mm512_permutexvar_ps(index, table);
        } else
#endif
        {
            const int_batch q = sub % 2 == 0 ? (packed & int_batch(15)) : (packed >> 4);
            return fused_multiply_add(xsimd::to_float(q), float_batch(s.scale[sub]),
                                      float_batch(s.minus_minimum[sub]));
        }
    }
};

/// Q6_K: w = (d * scale_e/16) * (q - 32), q's low four bits from a nibble and its high two from a 2-bit field.
struct q6_k_blocks {
    static constexpr index_t elements = 256;   ///< Weights per super-block.
    static constexpr std::size_t bytes = 210;  ///< Bytes per super-block.
#if defined(__AVX512BW__)
    /// Whether prepare() assembles the block's 256 values of q - 32 with 64-byte integer operations (AVX-512BW).
    static constexpr bool bytes_assembled = std::is_base_of_v<xsimd::avx512f, float_batch::arch_type>;
#else
    /// Whether prepare() assembles the block's 256 values of q - 32 with 64-byte integer operations (AVX-512BW).
    static constexpr bool bytes_assembled = false;
#endif
    /// Broadcast each sub-block's scale from memory (measured faster with bytes_assembled only).
    static constexpr bool scales_from_memory = bytes_assembled;
    /// The sixteen sub-blocks' scales times d and, with bytes_assembled, every q - 32 of the block.
    struct scales {
        alignas(64) std::array<float, 16> scale;  ///< d * scale_s.
#if defined(__AVX512BW__)
        alignas(64) std::array<std::int8_t, 256> centred;  ///< q - 32 for each weight (with bytes_assembled).
#endif
    };
    /// Reads the int8 scales and d; with bytes_assembled also puts together each q from its two fields, 64 weights
    /// per instruction: in half h (weights 128 h onwards), weight e takes the low (e < 64) or high nibble of low
    /// byte 64 h + e % 64 and bits 2 (e / 32) of high byte 128 + 32 h + e % 32.
    static scales prepare(const std::byte* block) noexcept {
        const float d = half_at(block + 208);
        scales s;
#if defined(__AVX512BW__)
        if constexpr (bytes_assembled) {
            const __m512 sub_scales = _mm512_cvtepi32_ps(
                _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 192))));
            _mm512_store_ps(s.scale.data(), _mm512_mul_ps(sub_scales, _mm512_set1_ps(d)));
            const __m512i low_nibble = _mm512_set1_epi8(0x0F), high_field = _mm512_set1_epi8(0x30);
            // Per 16-bit word: bytes 0-31 of the 64 take bits 0-1 (first 64 weights) or 4-5 (last 64) of their high
            // byte, bytes 32-63 bits 2-3 or 6-7; each shift brings those bits to positions 4-5 of the same byte.
            const __m512i first_shift = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
            const __m512i second_shift = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);
            for (std::size_t half = 0; half < 2; ++half) {
                const __m512i low = _mm512_loadu_si512(block + 64 * half);
                const __m512i high = _mm512_broadcast_i64x4(
                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 128 + 32 * half)));
                const __m512i first =
                    _mm512_or_si512(_mm512_and_si512(low, low_nibble),
                                    _mm512_and_si512(_mm512_sllv_epi16(high, first_shift), high_field));
                const __m512i second =
                    _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(low, 4), low_nibble),
                                    _mm512_and_si512(_mm512_srlv_epi16(high, second_shift), high_field));
                const __m512i centre = _mm512_set1_epi8(32);
                _mm512_store_si512(s.centred.data() + 128 * half, _mm512_sub_epi8(first, centre));
                _mm512_store_si512(s.centred.data() + 128 * half + 64, _mm512_sub_epi8(second, centre));
            }
            return s;
        }
#endif
        for (std::size_t sub = 0; sub < 16; ++sub)
            s.scale[sub] = d * static_cast<float>(static_cast<std::int8_t>(byte_at(block + 192, sub)));
        return s;
    }
    /// Weights [C * simd_width, (C + 1) * simd_width): in half h = e / 128, position p = e % 128 takes the low
    /// (p < 64) or high nibble of low byte 64 h + p % 64 and bits 2 (p / 32) of high byte 32 h + e % 32.
    template <index_t C>
    static float_batch chunk(const std::byte* block, const scales& s) noexcept {
        constexpr index_t first = C * simd_width, half = first / 128, within = first % 128;
#if defined(__AVX512BW__)
        if constexpr (bytes_assembled) {
            const auto* centred = reinterpret_cast<const __m128i*>(s.centred.data() + first);
            const __m512i q = _mm512_cvtepi8_epi32(_mm_load_si128(centred));
            return xsimd::to_float(int_batch(q)) * float_batch(s.scale[static_cast<std::size_t>(C)]);
        } else
#endif
        {
            const int_batch low_bytes = load_bytes_widened<false>(block + 64 * half + within % 64);
            const int_batch high_bytes = load_bytes_widened<false>(block + 128 + 32 * half + first % 32);
            const int_batch low = within < 64 ? (low_bytes & int_batch(15)) : (low_bytes >> 4);
            const int_batch high = (high_bytes >> static_cast<int>(2 * (within / 32))) & int_batch(3);
            const int_batch q = (low | (high << 4)) - int_batch(32);
            return xsimd::to_float(q) * float_batch(s.scale[static_cast<std::size_t>(first / 16)]);
        }
    }
};

/// Makes `p` opaque to the optimiser (same value): what it points to must then be read from memory.
template <class T>
MECHLENS_TILE_INLINE inline void opaque_pointer(T*& p) noexcept {
#if defined(__GNUC__)
    __asm__("" : "+r"(p));
#else
    (void)p;
#endif
}

/// Operands of one product of a single row x (depth) with an encoded matrix: y (outputs).
struct encoded_operands {
    const float* x;             ///< The input row.
    const std::byte* blocks;    ///< Row 0's blocks.
    std::size_t row_bytes;      ///< Bytes per row of blocks.
    float* y;                   ///< The output row.
    index_t depth;              ///< Inputs: a whole number of blocks.
    bool accumulate;            ///< y += x w^T instead of y = x w^T.
};

/// How far ahead of a tile its rows' bytes are prefetched.
inline constexpr std::size_t encoded_prefetch_bytes = 8192;

/// y[o0 + j] for j < RN: each the lane-wise fused multiply-add chain over depth in steps of simd_width, with the
/// weights decoded block by block into registers, then gemm.hpp's horizontal sums; gemm_tile's order exactly.
template <class Blocks, index_t RN>
MECHLENS_TILE_FLATTEN inline void encoded_tile(const encoded_operands& op, index_t o0) noexcept {
    static_assert(Blocks::elements % simd_width == 0, "a block must hold whole SIMD chunks");
    constexpr auto outputs = static_cast<std::size_t>(RN);
    float_batch acc[outputs];
    const std::byte* row[outputs];
    unrolled<RN>([&](auto j) MECHLENS_TILE_INLINE {
        acc[j] = float_batch(0.0f);
        row[j] = op.blocks + static_cast<std::size_t>(o0 + j) * op.row_bytes;
    });
    const index_t blocks = op.depth / Blocks::elements;
    for (index_t b = 0; b < blocks; ++b) {
        typename Blocks::scales scales[outputs];
        unrolled<RN>([&](auto j) MECHLENS_TILE_INLINE {
            scales[j] = Blocks::prepare(row[j] + static_cast<std::size_t>(b) * Blocks::bytes);
        });
        {
            // The tile's rows are adjacent in memory but each is short (816 bytes for 768 Q8_0 weights), too short
            // for the hardware prefetcher to follow RN streams at once: this walks the bytes encoded_prefetch_bytes
            // ahead of the tile at the pace the tile consumes them (measured on Zen 5: 7.7 -> 31 G weights/s from
            // DRAM for Q8_0). Past the matrix's end it only asks for lines nobody reads; a prefetch never faults.
            // (Addresses as integers: a pointer past the end of the blocks would be undefined even unread.)
            const std::uintptr_t ahead = reinterpret_cast<std::uintptr_t>(row[0]) + encoded_prefetch_bytes +
                                         static_cast<std::size_t>(b) * outputs * Blocks::bytes;
            for (std::size_t line = 0; line < outputs * Blocks::bytes; line += 64) prefetch(ahead + line);
        }
        // The K-quants read their scales through a pointer the compiler cannot see through, so each is broadcast
        // from memory (a load) instead of moved out of the register prepare() filled lane by lane (shuffles, which
        // the table lookups already keep busy): Q4_K 8 %, Q6_K 18 % more weights per second on Zen 5 (AVX-512).
        const typename Blocks::scales* block_scales = scales;
        if constexpr (Blocks::scales_from_memory) opaque_pointer(block_scales);
        const float* x = op.x + b * Blocks::elements;
        unrolled<Blocks::elements / simd_width>([&](auto c) MECHLENS_TILE_INLINE {
            const float_batch xv = in_register(float_batch::load_unaligned(x + c * simd_width));
            unrolled<RN>([&](auto j) MECHLENS_TILE_INLINE {
                const float_batch wv = Blocks::template chunk<decltype(c)::value>(
                    row[j] + static_cast<std::size_t>(b) * Blocks::bytes, block_scales[j]);
                acc[j] = fused_multiply_add(xv, wv, acc[j]);
            });
        });
    }
    store_sums<RN>(acc, op.y + o0, op.accumulate);
}

/// Outputs per encoded tile; a remainder goes through single-output tiles.
inline constexpr index_t encoded_tile_outputs = 4;

/// Outputs [o_begin, o_end) of one encoded product.
template <class Blocks>
void encoded_range(const encoded_operands& op, index_t o_begin, index_t o_end) noexcept {
    index_t o = o_begin;
    for (; o + encoded_tile_outputs <= o_end; o += encoded_tile_outputs)
        encoded_tile<Blocks, encoded_tile_outputs>(op, o);
    for (; o < o_end; ++o) encoded_tile<Blocks, 1>(op, o);
}

/// All `outputs` of one encoded product, split over OpenMP threads by outputs (each thread reads its own rows of
/// blocks) when the matrix is large enough to pay for a parallel region, as gemm_xwt splits a decode step.
template <class Blocks>
void encoded_product(const encoded_operands& op, index_t outputs) noexcept {
#if defined(_OPENMP)
    const bool worth_parallel = static_cast<double>(outputs) * static_cast<double>(op.depth) >= 1 << 17;
    const index_t threads = omp_get_max_threads();
    if (worth_parallel && threads > 1) {
        // Items of whole tiles, about four per thread.
        const index_t per_item =
            std::max<index_t>(encoded_tile_outputs, (outputs / (4 * threads)) / encoded_tile_outputs *
                                                        encoded_tile_outputs);
        const index_t items = (outputs + per_item - 1) / per_item;
#pragma omp parallel for schedule(static)
        for (index_t item = 0; item < items; ++item)
            encoded_range<Blocks>(op, item * per_item, std::min(outputs, (item + 1) * per_item));
        return;
    }
#endif
    encoded_range<Blocks>(op, 0, outputs);
}

/// Decodes the `depth` weights (whole blocks) of the row of blocks at `row` into `out`: the very floats
/// encoded_tile multiplies by (the same prepare() and chunk()), which are the loader's dequantizer's.
template <class Blocks>
MECHLENS_TILE_FLATTEN inline void decode_row(const std::byte* row, index_t depth, float* out) noexcept {
    for (index_t b = 0; b < depth / Blocks::elements; ++b) {
        const std::byte* block = row + static_cast<std::size_t>(b) * Blocks::bytes;
        const typename Blocks::scales scales = Blocks::prepare(block);
        float* decoded = out + b * Blocks::elements;
        unrolled<Blocks::elements / simd_width>([&](auto c) MECHLENS_TILE_INLINE {
            Blocks::template chunk<decltype(c)::value>(block, scales).store_unaligned(decoded + c * simd_width);
        });
    }
}

/// Decodes rows [first, first + count) of `m` into `out`, (count, m.depth) dense.
inline void decode_rows(const encoded_matrix& m, index_t first, index_t count, float* out) noexcept {
    const auto decode = [&](auto blocks) {
        using Blocks = decltype(blocks);
        for (index_t r = 0; r < count; ++r)
            decode_row<Blocks>(m.blocks + static_cast<std::size_t>(first + r) * m.row_bytes, m.depth,
                               out + r * m.depth);
    };
    switch (m.format) {
        case block_format::q8_0: decode(q8_0_blocks{}); break;
        case block_format::q4_k: decode(q4_k_blocks{}); break;
        case block_format::q6_k: decode(q6_k_blocks{}); break;
    }
}

/// y = x w^T (or +=) for x (rows, depth) with more than one row: the work items of gemm_xwt, each decoding its block
/// of outputs' rows of w into a buffer of its thread's (about 256 KiB, which stays in L2) and running gemm_block on
/// it. The buffer holds exactly the decoded floats and gemm_block reduces each element in its one fixed order, so
/// y is bit for bit gemm_xwt on the decoded matrix; decoding a block costs about one row of x's products with it.
inline void encoded_gemm(const float* x, index_t x_stride, const encoded_matrix& m, float* y, index_t y_stride,
                         index_t rows, bool accumulate) {
    for_each_gemm_item(rows, m.rows, m.depth, [&](index_t r_begin, index_t r_end, index_t o_begin, index_t o_end) {
        thread_local std::vector<float> panel;  // (outputs of the block, depth)
        panel.resize(static_cast<std::size_t>(gemm_block_outputs(m.depth) * m.depth));
        decode_rows(m, o_begin, o_end - o_begin, panel.data());
        const gemm_operands op{x, x_stride, panel.data(), m.depth, y + o_begin, y_stride, m.depth, accumulate};
        gemm_block(op, r_begin, r_end, 0, o_end - o_begin);
    });
}

}  // namespace detail

/// Throws shape_error unless `m` describes a usable encoded matrix: a known layout, depth a whole number of blocks
/// and row_bytes the bytes of those blocks.
inline void require_encoded_matrix(const encoded_matrix& m, const char* what) {
    if (m.blocks == nullptr || m.rows < 0 || m.depth < 0 || m.depth % block_elements(m.format) != 0 ||
        m.row_bytes != static_cast<std::size_t>(m.depth / block_elements(m.format)) * block_bytes(m.format))
        throw shape_error(std::string(what) + ": an encoded matrix needs whole blocks per row (depth " +
                          std::to_string(m.depth) + ", " + std::to_string(m.row_bytes) + " bytes per row)");
}

/// y = x w^T (or y += x w^T with `accumulate`) for x (rows, depth), w the encoded (outputs, depth) matrix `m`, y
/// (rows, outputs), bit for bit kernels::linear on m's decoded floats. One row (a decode step) is multiplied by the
/// blocks, decoded in registers; more rows (a prefill) by blocks of w decoded into a per-thread buffer that stays in
/// cache, so no float copy of the matrix is ever made. Rows of x and y may be strided but each must be dense.
/// Throws shape_error on mismatched shapes.
inline void encoded_linear(tensor_view<const float, 2> x, const encoded_matrix& m, tensor_view<float, 2> y,
                           bool accumulate = false) {
    require_encoded_matrix(m, "kernels::encoded_linear");
    if (x.extent(1) != m.depth || y.extent(0) != x.extent(0) || y.extent(1) != m.rows)
        throw shape_error("kernels::encoded_linear: need x (rows, " + std::to_string(m.depth) + ") and y (rows, " +
                          std::to_string(m.rows) + "); got x " + mechlens::detail::format_extents(x.shape()) +
                          ", y " + mechlens::detail::format_extents(y.shape()));
    const auto dense = [](index_t extent, index_t stride) { return extent <= 1 || stride == 1; };
    if (!dense(x.extent(1), x.stride(1)) || !dense(y.extent(1), y.stride(1)))
        throw shape_error("kernels::encoded_linear: the last axis of x and y must be dense (stride 1)");
    if (m.rows == 0 || x.extent(0) == 0) return;
    if (x.extent(0) > 1 && m.depth > 0) {
        detail::encoded_gemm(x.data(), x.stride(0), m, y.data(), y.stride(0), x.extent(0), accumulate);
        return;
    }
    for (index_t r = 0; r < x.extent(0); ++r) {
        float* y_row = y.data() + r * y.stride(0);
        if (m.depth == 0) {
            if (!accumulate) std::fill(y_row, y_row + m.rows, 0.0f);
            continue;
        }
        const detail::encoded_operands op{x.data() + r * x.stride(0), m.blocks, m.row_bytes, y_row, m.depth,
                                          accumulate};
        switch (m.format) {
            case block_format::q8_0: detail::encoded_product<detail::q8_0_blocks>(op, m.rows); break;
            case block_format::q4_k: detail::encoded_product<detail::q4_k_blocks>(op, m.rows); break;
            case block_format::q6_k: detail::encoded_product<detail::q6_k_blocks>(op, m.rows); break;
        }
    }
}

/// y = x w^T + bias for bias of shape (outputs) (GPT-2 style layers); otherwise as encoded_linear() above.
inline void encoded_linear(tensor_view<const float, 2> x, const encoded_matrix& m, tensor_view<const float, 1> bias,
                           tensor_view<float, 2> y) {
    detail::require_bias(bias, m.rows, "kernels::encoded_linear");
    encoded_linear(x, m, y);
    detail::add_bias_to_rows(bias, y);
}

/// Decodes rows [first, first + count) of the encoded matrix `m` into `out`, (count, m.depth) row-major and dense:
/// bit for bit the loader's dequantizer's floats (io/ggml_quants.hpp). Throws shape_error when the rows are not
/// m's or m is not a usable encoded matrix.
inline void decode_encoded_rows(const encoded_matrix& m, index_t first, index_t count, float* out) {
    require_encoded_matrix(m, "kernels::decode_encoded_rows");
    if (first < 0 || count < 0 || first + count > m.rows)
        throw shape_error("kernels::decode_encoded_rows: rows [" + std::to_string(first) + ", " +
                          std::to_string(first + count) + ") of a matrix of " + std::to_string(m.rows) + " rows");
    detail::decode_rows(m, first, count, out);
}

/// Rows [first, first + count) of `m` as an encoded matrix of their own (a part of a fused tensor, a user's slice).
[[nodiscard]] inline encoded_matrix encoded_rows(const encoded_matrix& m, index_t first, index_t count) noexcept {
    encoded_matrix part = m;
    part.decoded = m.decoded + first * m.depth;
    part.blocks = m.blocks + static_cast<std::size_t>(first) * m.row_bytes;
    part.rows = count;
    return part;
}

}  // namespace kernels
MECHLENS_END_NAMESPACE
