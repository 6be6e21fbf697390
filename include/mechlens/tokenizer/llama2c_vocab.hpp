#pragma once
/// @file
/// Reader of llama2.c tokenizer files (`tokenizer.bin`, `tok512.bin`) into a `mechlens::vocabulary`.
///
/// Layout (little-endian): int32 max_token_length, then per entry float32 score, int32 length and that many
/// bytes of piece text (no terminator). The entry count is not stored: entries run to the end of the file.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <ios>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tokenizer/byte_piece.hpp"
#include "mechlens/tokenizer/vocabulary.hpp"

MECHLENS_BEGIN_NAMESPACE

namespace detail::tok {

/// Whole contents of a file; throws format_error naming the file when it cannot be read.
inline std::string read_whole_file(const std::filesystem::path& path, const char* what) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) throw format_error(std::string("mechlens: cannot open ") + what + " '" + path.string() + "'");
    const std::streamoff size = in.tellg();
    if (size < 0) throw format_error(std::string("mechlens: cannot size ") + what + " '" + path.string() + "'");
    std::string bytes(static_cast<std::size_t>(size), '\0');
    in.seekg(0);
    if (size > 0 && !in.read(bytes.data(), static_cast<std::streamsize>(size))) {
        throw format_error(std::string("mechlens: error reading ") + what + " '" + path.string() + "'");
    }
    return bytes;
}

/// The little-endian 32-bit word at `offset`; the caller has checked that four bytes remain.
inline std::uint32_t load_le_u32(std::string_view bytes, std::size_t offset) noexcept {
    std::uint32_t value = 0;
    for (std::size_t i = 0; i < 4; ++i) {
        value |= static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[offset + i])) << (8 * i);
    }
    return value;
}

/// Reinterprets the bits of a 32-bit word as a two's-complement int32.
inline std::int32_t as_int32(std::uint32_t bits) noexcept {
    std::int32_t value = 0;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}

/// Reinterprets the bits of a 32-bit word as an IEEE float32.
inline float as_float32(std::uint32_t bits) noexcept {
    static_assert(sizeof(float) == 4 && std::numeric_limits<float>::is_iec559, "float must be IEEE binary32");
    float value = 0.0F;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}

}  // namespace detail::tok

/// Reads a llama2.c tokenizer file into a vocabulary, taking entries until the end of the file.
///
/// llama2.c fixes ids 0, 1, 2 as `<unk>`, BOS and EOS, so they are marked unknown/control; pieces spelled
/// `<0xXX>` are marked as byte pieces; the rest are normal. Throws format_error, naming the file, when the file
/// is missing, empty, truncated inside an entry, has a negative length or a piece longer than the header's
/// max_token_length (which llama2.c relies on to size its buffers), or has fewer than three entries.
inline vocabulary read_llama2c_vocabulary(const std::filesystem::path& path);

/// Parses the bytes of a llama2.c tokenizer file (errors name `name`); read_llama2c_vocabulary without the file.
inline vocabulary parse_llama2c_vocabulary(std::string_view bytes, const std::string& name) {
    const auto fail = [&](const std::string& problem) {
        return format_error("mechlens: llama2.c tokenizer '" + name + "': " + problem);
    };
    if (bytes.empty()) throw fail("empty file");
    if (bytes.size() < 4) throw fail("file of " + std::to_string(bytes.size()) + " bytes is too short for the header");
    const std::int32_t max_token_length = detail::tok::as_int32(detail::tok::load_le_u32(bytes, 0));
    if (max_token_length < 0) throw fail("negative max_token_length " + std::to_string(max_token_length));

    vocabulary vocab;
    std::size_t offset = 4;
    while (offset < bytes.size()) {
        const std::size_t entry = vocab.pieces.size();
        const std::string where = "entry " + std::to_string(entry) + " at byte offset " + std::to_string(offset);
        if (entry >= static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max())) {
            throw fail("more entries than int32 token ids can address");
        }
        const std::size_t left = bytes.size() - offset;
        if (left < 8) throw fail(where + " is truncated: " + std::to_string(left) + " bytes left, need 8 for score and length");
        const float score = detail::tok::as_float32(detail::tok::load_le_u32(bytes, offset));
        const std::int32_t length = detail::tok::as_int32(detail::tok::load_le_u32(bytes, offset + 4));
        offset += 8;
        if (length < 0) throw fail(where + " has negative piece length " + std::to_string(length));
        if (length > max_token_length) {
            throw fail(where + " has piece length " + std::to_string(length) + " above max_token_length " +
                       std::to_string(max_token_length));
        }
        const auto piece_length = static_cast<std::size_t>(length);
        if (piece_length > bytes.size() - offset) {
            throw fail(where + " is truncated: piece length " + std::to_string(length) + " but only " +
                       std::to_string(bytes.size() - offset) + " bytes left");
        }
        vocab.pieces.emplace_back(bytes.substr(offset, piece_length));
        vocab.scores.push_back(score);
        offset += piece_length;
    }
    if (vocab.pieces.size() < 3) {
        throw fail("only " + std::to_string(vocab.pieces.size()) +
                   " entries; a llama2.c tokenizer starts with <unk>, <s> and </s>");
    }

    vocab.kinds.assign(vocab.pieces.size(), token_kind::normal);
    for (std::size_t id = 0; id < vocab.pieces.size(); ++id) {
        if (detail::tok::parse_byte_piece(vocab.pieces[id])) vocab.kinds[id] = token_kind::byte;
    }
    vocab.kinds[0] = token_kind::unknown;
    vocab.kinds[1] = token_kind::control;
    vocab.kinds[2] = token_kind::control;
    vocab.unknown_id = 0;
    vocab.bos_id = 1;
    vocab.eos_id = 2;
    return vocab;
}

inline vocabulary read_llama2c_vocabulary(const std::filesystem::path& path) {
    return parse_llama2c_vocabulary(detail::tok::read_whole_file(path, "llama2.c tokenizer"), path.string());
}

MECHLENS_END_NAMESPACE
