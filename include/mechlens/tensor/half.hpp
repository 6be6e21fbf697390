#pragma once
/// @file
/// IEEE binary16 ("half") to and from float, exactly as the hardware conversions round: what F16 tensors, GGUF
/// block scales and the quantised matrix kernels share.

#include <bit>
#include <cstdint>

#include "mechlens/detail/namespace.hpp"

MECHLENS_BEGIN_NAMESPACE
namespace detail {

/// IEEE binary16 bits to float, exactly (subnormals, infinities and NaN included).
inline float half_to_float(std::uint16_t h) noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t exponent = (h >> 10) & 0x1fu;
    const std::uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0) {
        // Zero or subnormal: mantissa * 2^-24, exact in float.
        const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
        return sign ? -magnitude : magnitude;
    }
    if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
    return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));  // rebias 15 -> 127
}

/// Float to IEEE binary16 bits, rounded to nearest with ties to even (as F16C's conversion and numpy's float16 cast
/// round): subnormal halves included, magnitudes from 65520 on become infinity, NaN stays a quiet NaN.
inline std::uint16_t float_to_half(float value) noexcept {
    const auto bits = std::bit_cast<std::uint32_t>(value);
    const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
    const std::uint32_t magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u)  // NaN: quiet, with the top of its payload
        return static_cast<std::uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
    if (magnitude >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65520, infinity included
    // Rounds `mantissa >> shift` to nearest, ties to the even result.
    auto round_shift = [](std::uint32_t mantissa, unsigned shift) {
        const std::uint32_t kept = mantissa >> shift;
        const std::uint32_t rest = mantissa & ((1u << shift) - 1u);
        const std::uint32_t halfway = 1u << (shift - 1u);
        return kept + ((rest > halfway || (rest == halfway && (kept & 1u) != 0)) ? 1u : 0u);
    };
    const std::uint32_t exponent = magnitude >> 23;  // biased by 127
    if (exponent < 113) {  // below 2^-14: a subnormal half (in units of 2^-24) or zero; a carry makes the smallest normal
        if (exponent < 102) return sign;  // below 2^-25: rounds to zero
        const std::uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
        return static_cast<std::uint16_t>(sign | round_shift(mantissa, 126u - exponent));
    }
    // Normal: rebias 127 -> 15 and round the mantissa to 10 bits; a carry moves into the exponent.
    const std::uint32_t rebased = magnitude - (112u << 23);
    return static_cast<std::uint16_t>(sign | round_shift(rebased, 13));
}

}  // namespace detail
MECHLENS_END_NAMESPACE
