#pragma once
/// @file
/// Decoding GGUF's quantised tensor blocks (ggml's layouts) to float: F16, BF16, the legacy 32-element blocks Q4_0,
/// Q4_1, Q5_0, Q5_1 and Q8_0, and the 256-element k-quants Q4_K, Q5_K and Q6_K (so `Q8_0` and `Q4_K_M` files
/// open). Every element is computed with the float operations of llama.cpp's reference decoders, in their order and
/// never fused, so the values equal those of llama.cpp's own Python package bit for bit
/// (tests/reference/ggml_quants_reference.py makes the fixture that checks it). And encoding to Q8_0
/// (quantize_q8_0), bit for bit as llama.cpp's reference quantiser, which `llama-quantize` uses for that type.
///
/// Block layouts (little-endian; "half" is an IEEE binary16 scale):
///   Q4_0  half d, 16 bytes of nibbles          x = d * (q - 8)           element j < 16: low nibble of byte j,
///   Q4_1  half d, half m, 16 bytes             x = d * q + m             element j >= 16: high nibble of byte j-16
///   Q5_0  half d, u32 high bits, 16 bytes      x = d * (q - 16)          bit j of the u32 is bit 4 of element j
///   Q5_1  half d, half m, u32, 16 bytes        x = d * q + m
///   Q8_0  half d, 32 int8                      x = d * q
///   Q4_K  half d, half dmin, 12 bytes of 6-bit scales and minimums, 128 bytes of nibbles: 8 sub-blocks of 32,
///         x = (d * scale_s) * q - dmin * min_s; byte group g (32 bytes) holds sub-block 2g (low) and 2g+1 (high)
///   Q5_K  as Q4_K with 32 bytes of high bits before the nibbles: bit s of byte l is bit 4 of element l of s
///   Q6_K  128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 int8 scales, half d: x = (d * scale_e/16) * (q - 32)

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <array>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "mechlens/io/gguf.hpp"
#include "mechlens/io/loader_storage.hpp"
#include "mechlens/kernels/encoded_matmul.hpp"
#include "mechlens/tensor/tensor.hpp"

MECHLENS_BEGIN_NAMESPACE

/// True when dequantize_ggml decodes tensors of type `t` (F32 included, copied).
[[nodiscard]] constexpr bool ggml_type_decodable(ggml_type t) noexcept {
    switch (t) {
        case ggml_type::f32:
        case ggml_type::f16:
        case ggml_type::bf16:
        case ggml_type::q4_0:
        case ggml_type::q4_1:
        case ggml_type::q5_0:
        case ggml_type::q5_1:
        case ggml_type::q8_0:
        case ggml_type::q4_k:
        case ggml_type::q5_k:
        case ggml_type::q6_k: return true;
    }
    return false;
}

namespace detail {

/// Little-endian half at `p`, as float.
inline float ggml_half_at(const std::byte* p) noexcept {
    const auto h = static_cast<std::uint16_t>(std::to_integer<unsigned>(p[0]) | std::to_integer<unsigned>(p[1]) << 8);
    return half_to_float(h);
}

/// Stores the half `h` at `p`, little-endian.
inline void store_half(std::byte* p, std::uint16_t h) noexcept {
    p[0] = static_cast<std::byte>(h & 0xffu);
    p[1] = static_cast<std::byte>(h >> 8);
}

/// Byte `i` of `p` as an unsigned value.
inline unsigned ggml_byte(const std::byte* p, std::size_t i) noexcept { return std::to_integer<unsigned>(p[i]); }

/// The 4-bit value of element j (0..31) of a 16-byte nibble array: low nibbles first, then high nibbles.
inline unsigned ggml_nibble(const std::byte* qs, unsigned j) noexcept {
    const unsigned byte = ggml_byte(qs, j % 16);
    return j < 16 ? (byte & 0x0Fu) : (byte >> 4);
}

/// Q4_0 / Q4_1 / Q5_0 / Q5_1: one 32-element block.
template <bool FiveBits, bool HasMinimum>
void decode_legacy_block(const std::byte* block, float* out) noexcept {
    const float d = ggml_half_at(block);
    const float m = HasMinimum ? ggml_half_at(block + 2) : 0.0f;
    const std::byte* after_scales = block + (HasMinimum ? 4 : 2);
    std::uint32_t high = 0;
    if constexpr (FiveBits)
        high = static_cast<std::uint32_t>(ggml_byte(after_scales, 0) | ggml_byte(after_scales, 1) << 8 |
                                          ggml_byte(after_scales, 2) << 16 | ggml_byte(after_scales, 3) << 24);
    const std::byte* qs = after_scales + (FiveBits ? 4 : 0);
    for (unsigned j = 0; j < 32; ++j) {
        unsigned q = ggml_nibble(qs, j);
        if constexpr (FiveBits) q |= ((high >> j) & 1u) << 4;
        if constexpr (HasMinimum) {
            out[j] = d * static_cast<float>(q) + m;
        } else {
            const int centred = static_cast<int>(q) - (FiveBits ? 16 : 8);
            out[j] = d * static_cast<float>(centred);
        }
    }
}

/// Q8_0: one 32-element block.
inline void decode_q8_0_block(const std::byte* block, float* out) noexcept {
    const float d = ggml_half_at(block);
    for (std::size_t j = 0; j < 32; ++j) {
        const auto q = static_cast<std::int8_t>(ggml_byte(block, 2 + j));
        out[j] = static_cast<float>(q) * d;
    }
}

/// Q4_K (FiveBits false) or Q5_K: one 256-element super-block.
template <bool FiveBits>
void decode_k4_block(const std::byte* block, float* out) noexcept {
    const float d = ggml_half_at(block), dmin = ggml_half_at(block + 2);
    const std::byte* scales = block + 4;
    const std::byte* high = block + 16;
    const std::byte* qs = block + (FiveBits ? 48 : 16);
    const std::array<std::uint8_t, 16> six_bit = kernels::detail::k_quant_unpacked_scales(scales);
    for (unsigned s = 0; s < 8; ++s) {
        const float sub_scale = d * static_cast<float>(six_bit[s]);
        const float sub_minimum = dmin * static_cast<float>(six_bit[8 + s]);
        for (unsigned l = 0; l < 32; ++l) {
            const unsigned byte = ggml_byte(qs, 32 * (s / 2) + l);
            unsigned q = s % 2 == 0 ? (byte & 0x0Fu) : (byte >> 4);
            if constexpr (FiveBits) q |= ((ggml_byte(high, l) >> s) & 1u) << 4;
            out[32 * s + l] = sub_scale * static_cast<float>(q) - sub_minimum;
        }
    }
}

/// Q6_K: one 256-element super-block.
inline void decode_q6_k_block(const std::byte* block, float* out) noexcept {
    const std::byte* low = block;
    const std::byte* high = block + 128;
    const std::byte* scales = block + 192;
    const float d = ggml_half_at(block + 208);
    for (unsigned e = 0; e < 256; ++e) {
        const unsigned half = e / 128, within = e % 128;
        const unsigned low_byte = ggml_byte(low, 64 * half + within % 64);
        const unsigned low_bits = within < 64 ? (low_byte & 0x0Fu) : (low_byte >> 4);
        const unsigned high_bits = (ggml_byte(high, 32 * half + e % 32) >> (2 * (within / 32))) & 3u;
        const int q = static_cast<int>(low_bits | high_bits << 4) - 32;
        const auto scale = static_cast<std::int8_t>(ggml_byte(scales, e / 16));
        out[e] = d * static_cast<float>(scale) * static_cast<float>(q);
    }
}

}  // namespace detail

/// Decodes `count` elements of type `t` stored at `data` (whole blocks, ggml's layout) into `out`. Throws
/// std::invalid_argument for a type it cannot decode or a count that is not a whole number of blocks. `data` must
/// hold ggml_block_layout(t)'s bytes for that many blocks (the GGUF reader checks this against the file).
inline void dequantize_ggml(ggml_type t, const std::byte* data, std::uint64_t count, float* out) {
    const auto [per_block, bytes] = detail::ggml_block_layout(t);
    if (!ggml_type_decodable(t) || per_block == 0)
        throw std::invalid_argument("dequantize_ggml: tensor type " + to_string(t) + " is not decodable");
    if (count % per_block != 0)
        throw std::invalid_argument("dequantize_ggml: " + std::to_string(count) + " elements of " + to_string(t) +
                                    " are not whole blocks of " + std::to_string(per_block));
    const std::uint64_t blocks = count / per_block;
    for (std::uint64_t b = 0; b < blocks; ++b) {
        const std::byte* block = data + b * bytes;
        float* to = out + b * per_block;
        switch (t) {
            case ggml_type::f32: std::memcpy(to, block, sizeof(float)); break;
            case ggml_type::f16: *to = detail::ggml_half_at(block); break;
            case ggml_type::bf16: {
                const auto bits = static_cast<std::uint32_t>(detail::ggml_byte(block, 0) | detail::ggml_byte(block, 1)
                                                                                               << 8)
                                  << 16;
                std::memcpy(to, &bits, sizeof bits);
                break;
            }
            case ggml_type::q4_0: detail::decode_legacy_block<false, false>(block, to); break;
            case ggml_type::q4_1: detail::decode_legacy_block<false, true>(block, to); break;
            case ggml_type::q5_0: detail::decode_legacy_block<true, false>(block, to); break;
            case ggml_type::q5_1: detail::decode_legacy_block<true, true>(block, to); break;
            case ggml_type::q8_0: detail::decode_q8_0_block(block, to); break;
            case ggml_type::q4_k: detail::decode_k4_block<false>(block, to); break;
            case ggml_type::q5_k: detail::decode_k4_block<true>(block, to); break;
            case ggml_type::q6_k: detail::decode_q6_k_block(block, to); break;
        }
    }
}

/// Bytes of `count` elements of type `t` (whole blocks); 0 when the type's layout is unknown.
[[nodiscard]] inline std::uint64_t ggml_encoded_bytes(ggml_type t, std::uint64_t count) noexcept {
    const auto [per_block, bytes] = detail::ggml_block_layout(t);
    return per_block == 0 ? 0 : count / per_block * bytes;
}

/// Encodes `count` floats (whole blocks of 32) as Q8_0 blocks at `out` (34 bytes per 32 values), as llama.cpp's
/// reference quantiser does: per block d = max|x| / 127 in float, stored as a half (rounded to nearest even), and
/// q = round(x * (1 / d)) with halves away from zero, where 1/d is taken from the float d before it is rounded
/// (a block of zeros has d = 0 and q = 0). Throws std::invalid_argument for a count that is not whole blocks or a
/// value that is not finite (nothing is written then).
inline void quantize_q8_0(const float* values, std::uint64_t count, std::byte* out) {
    constexpr std::uint64_t block = 32;
    if (count % block != 0)
        throw std::invalid_argument("quantize_q8_0: " + std::to_string(count) + " values are not whole blocks of 32");
    for (std::uint64_t i = 0; i < count; ++i)
        if (!std::isfinite(values[i]))
            throw std::invalid_argument("quantize_q8_0: value " + std::to_string(i) + " is not finite");
    for (std::uint64_t b = 0; b < count / block; ++b) {
        const float* x = values + b * block;
        std::byte* to = out + b * 34;
        float amax = 0.0f;
        for (std::uint64_t j = 0; j < block; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127.0f;
        const float inverse = d != 0.0f ? 1.0f / d : 0.0f;
        detail::store_half(to, detail::float_to_half(d));
        for (std::uint64_t j = 0; j < block; ++j) {
            // |x * inverse| <= 127 up to one rounding. When d is so small that 1/d overflows (its half is zero, so the
            // block decodes to zeros whatever q is), the clamp and the NaN test keep the conversion defined.
            const float scaled = x[j] * inverse;
            const float q = std::isnan(scaled) ? 0.0f : std::clamp(std::round(scaled), -127.0f, 127.0f);
            to[2 + j] = static_cast<std::byte>(static_cast<std::uint8_t>(static_cast<std::int8_t>(q)));
        }
    }
}

MECHLENS_END_NAMESPACE
