#pragma once
/// @file
/// The `<0xXX>` byte-fallback piece notation shared by sentencepiece, llama2.c and GGUF vocabularies.

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "mechlens/detail/namespace.hpp"

MECHLENS_BEGIN_NAMESPACE

namespace detail::tok {

/// Value of one hexadecimal digit, or -1 when `c` is not one (either case, as run.c's `%X` accepts).
constexpr int hex_digit_value(char c) noexcept {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/// The byte a piece of the exact form `<0xXX>` stands for, or nothing for any other piece.
constexpr std::optional<unsigned char> parse_byte_piece(std::string_view piece) noexcept {
    if (piece.size() != 6 || piece[0] != '<' || piece[1] != '0' || piece[2] != 'x' || piece[5] != '>') return {};
    const int high = hex_digit_value(piece[3]);
    const int low = hex_digit_value(piece[4]);
    if (high < 0 || low < 0) return {};
    return static_cast<unsigned char>(high * 16 + low);
}

/// The canonical (upper-case) piece text for `byte`, e.g. `<0x0A>`, as sentencepiece writes it.
inline std::string byte_piece_text(unsigned char byte) {
    constexpr std::string_view digits = "0123456789ABCDEF";
    std::string text = "<0x00>";
    text[3] = digits[static_cast<std::size_t>(byte >> 4)];
    text[4] = digits[static_cast<std::size_t>(byte & 0x0F)];
    return text;
}

}  // namespace detail::tok

MECHLENS_END_NAMESPACE
