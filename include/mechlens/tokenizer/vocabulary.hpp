#pragma once
/// @file
/// A tokenizer vocabulary as read from a file, before any algorithm is attached.

#include <cstdint>
#include <string>
#include <vector>

#include "mechlens/detail/namespace.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Kind of a vocabulary entry (GGUF `tokenizer.ggml.token_type` values).
enum class token_kind : std::int32_t {
    normal = 1,        ///< An ordinary piece.
    unknown = 2,       ///< `<unk>`.
    control = 3,       ///< `<s>`, `</s>` and other control tokens.
    user_defined = 4,  ///< Added by the user.
    unused = 5,        ///< Placeholder.
    byte = 6,          ///< A `<0xXX>` byte-fallback piece.
};

/// The pieces, merge scores and special ids of a score-driven BPE (sentencepiece-style) vocabulary.
struct vocabulary {
    std::vector<std::string> pieces;  ///< Piece text per id, spaces as ' ' (never U+2581).
    std::vector<float> scores;        ///< Merge priority per id: higher merges first.
    std::vector<token_kind> kinds;    ///< Kind per id (all normal when the file does not say).
    std::int32_t bos_id = 1;          ///< Beginning-of-sequence id.
    std::int32_t eos_id = 2;          ///< End-of-sequence id.
    std::int32_t unknown_id = 0;      ///< Id used for text no piece covers (when byte fallback is impossible).
};

MECHLENS_END_NAMESPACE
