#pragma once
/// @file
/// GPT-2's pre-tokenisation and byte-to-unicode mapping, written out by hand (no regex library).
///
/// GPT-2 splits text with the regex
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
/// and runs BPE inside each piece. At every position the first alternative that matches wins, and each
/// quantifier is greedy. The only backtracking is in `\s+(?!\S)`: a run of whitespace before a non-space gives
/// back its last character, which then joins the next piece through the optional leading space (` ?\p{L}+` takes
/// only U+0020, so another whitespace character stands alone: `\s+` matches it).
///
/// Input is bytes. Valid UTF-8 is read as code points; a byte that does not start a valid UTF-8 sequence counts
/// as one code point of class "other", so arbitrary bytes split deterministically and still round-trip.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/tokenizer/unicode_categories.hpp"

MECHLENS_BEGIN_NAMESPACE

namespace detail::gpt2 {

using unicode::code_point_class;

/// Class of code point `cp`: ASCII by a short test, the rest by binary search of the generated table.
inline code_point_class classify(std::uint32_t cp) noexcept {
    if (cp < 0x80) {
        if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return code_point_class::letter;
        if (cp >= '0' && cp <= '9') return code_point_class::number;
        if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return code_point_class::whitespace;
        return code_point_class::other;
    }
    const auto& table = unicode::code_point_ranges;
    const auto it = std::upper_bound(table.begin(), table.end(), cp,
                                     [](std::uint32_t c, const unicode::code_point_range& r) { return c < r.first; });
    if (it == table.begin()) return code_point_class::other;
    const unicode::code_point_range& r = *(it - 1);
    return cp <= r.last ? r.kind : code_point_class::other;
}

/// One decoded code point and how many bytes it took.
struct decoded_code_point {
    std::uint32_t cp;    ///< The code point; for an invalid byte, 0xFFFFFFFF (classified as other).
    std::size_t length;  ///< Bytes consumed: 1 to 4.
};

/// Decodes the code point at `text[pos]` (pos < text.size()); an invalid or truncated sequence consumes one byte.
inline decoded_code_point decode_utf8(std::string_view text, std::size_t pos) noexcept {
    constexpr std::uint32_t invalid = 0xFFFFFFFFU;
    const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[pos + i]); };
    const unsigned char c = byte(0);
    if (c < 0x80) return {c, 1};
    std::size_t n = 0;
    std::uint32_t cp = 0;
    if ((c & 0xE0U) == 0xC0U) n = 2, cp = c & 0x1FU;
    else if ((c & 0xF0U) == 0xE0U) n = 3, cp = c & 0x0FU;
    else if ((c & 0xF8U) == 0xF0U) n = 4, cp = c & 0x07U;
    else return {invalid, 1};
    if (text.size() - pos < n) return {invalid, 1};
    for (std::size_t i = 1; i < n; ++i) {
        if ((byte(i) & 0xC0U) != 0x80U) return {invalid, 1};
        cp = (cp << 6) | (byte(i) & 0x3FU);
    }
    constexpr std::uint32_t smallest[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < smallest[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return {invalid, 1};
    return {cp, n};
}

/// Class of the code point at `text[pos]` and its length in bytes.
struct classified {
    code_point_class kind;  ///< Its class (other for an invalid byte).
    std::size_t length;     ///< Bytes it takes.
};

/// Classifies the code point at `text[pos]`.
inline classified classify_at(std::string_view text, std::size_t pos) noexcept {
    const decoded_code_point d = decode_utf8(text, pos);
    return {d.cp == 0xFFFFFFFFU ? code_point_class::other : classify(d.cp), d.length};
}

/// Length in bytes of the piece GPT-2's regex matches at `text[pos]` (pos < text.size()); always at least 1.
inline std::size_t match_piece(std::string_view text, std::size_t pos) {
    const std::size_t n = text.size();
    // 's 't 're 've 'm 'll 'd, case-sensitive, tried first.
    if (text[pos] == '\'' && pos + 1 < n) {
        const char a = text[pos + 1];
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
        if (pos + 2 < n) {
            const char b = text[pos + 2];
            if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
        }
    }
    // A run of one class from `from`: returns its end.
    const auto run = [&](std::size_t from, auto&& member) {
        std::size_t end = from;
        while (end < n) {
            const classified c = classify_at(text, end);
            if (!member(c.kind)) break;
            end += c.length;
        }
        return end;
    };
    const auto is_letter = [](code_point_class k) { return k == code_point_class::letter; };
    const auto is_number = [](code_point_class k) { return k == code_point_class::number; };
    const auto is_other = [](code_point_class k) { return k == code_point_class::other; };

    // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional U+0020, then a run of one class.
    const std::size_t start = text[pos] == ' ' && pos + 1 < n ? pos + 1 : pos;
    const code_point_class first = classify_at(text, start).kind;
    if (start != pos || first != code_point_class::whitespace) {
        if (first == code_point_class::letter) return run(start, is_letter) - pos;
        if (first == code_point_class::number) return run(start, is_number) - pos;
        if (first == code_point_class::other) return run(start, is_other) - pos;
    }
    // `\s+(?!\S)` then `\s+`: the whole whitespace run when it ends the text; before a non-space, all but its last
    // code point when that leaves something; otherwise the single whitespace character.
    std::size_t end = pos;
    std::size_t last = pos;  // start of the run's last code point
    while (end < n) {
        const classified c = classify_at(text, end);
        if (c.kind != code_point_class::whitespace) break;
        last = end;
        end += c.length;
    }
    if (end == n || last == pos) return end - pos;
    return last - pos;
}

/// Splits `text` into GPT-2's pre-tokenisation pieces (views into `text`, concatenating back to it).
inline std::vector<std::string_view> pretokenize(std::string_view text) {
    std::vector<std::string_view> pieces;
    std::size_t pos = 0;
    while (pos < text.size()) {
        const std::size_t length = match_piece(text, pos);
        pieces.push_back(text.substr(pos, length));
        pos += length;
    }
    return pieces;
}

/// GPT-2's byte-to-unicode map: printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves, the
/// other 68 bytes for U+0100 onwards in byte order, so every byte is a visible character and a vocabulary entry.
inline constexpr std::array<std::uint32_t, 256> byte_to_code_point = [] {
    std::array<std::uint32_t, 256> table{};
    std::uint32_t next = 256;
    for (std::uint32_t b = 0; b < 256; ++b) {
        const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        table[b] = printable ? b : next++;
    }
    return table;
}();

/// Appends `cp` (at most U+10FFFF) as UTF-8.
inline void append_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0U | (cp >> 6));
        out += static_cast<char>(0x80U | (cp & 0x3FU));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0U | (cp >> 12));
        out += static_cast<char>(0x80U | ((cp >> 6) & 0x3FU));
        out += static_cast<char>(0x80U | (cp & 0x3FU));
    } else {
        out += static_cast<char>(0xF0U | (cp >> 18));
        out += static_cast<char>(0x80U | ((cp >> 12) & 0x3FU));
        out += static_cast<char>(0x80U | ((cp >> 6) & 0x3FU));
        out += static_cast<char>(0x80U | (cp & 0x3FU));
    }
}

/// The vocabulary spelling of one byte (e.g. 0x20 -> "Ġ", 'a' -> "a").
inline std::string byte_symbol(unsigned char byte) {
    std::string out;
    append_utf8(out, byte_to_code_point[byte]);
    return out;
}

/// The byte a code point stands for in a vocabulary spelling, or -1 when it stands for none.
inline int code_point_to_byte(std::uint32_t cp) noexcept {
    if (cp < 0x100) {
        const bool printable = (cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE);
        return printable ? static_cast<int>(cp) : -1;
    }
    if (cp < 0x100 + 68) return static_cast<int>(std::find(byte_to_code_point.begin(), byte_to_code_point.end(), cp) -
                                                 byte_to_code_point.begin());
    return -1;
}

}  // namespace detail::gpt2

MECHLENS_END_NAMESPACE
