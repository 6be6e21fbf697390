#pragma once
/// @file
/// Score-driven BPE (sentencepiece / llama2.c style) with byte fallback, over any `mechlens::vocabulary`.
///
/// Encoding follows llama2.c's `encode`: optional BOS; for non-empty text a dummy-prefix " " token; one token per
/// UTF-8 code point (lead byte plus at most three continuation bytes), or one `<0xXX>` token per byte when the code
/// point is not a piece; then, repeatedly, the adjacent pair whose concatenated text is the highest-scoring piece
/// merges (the leftmost such pair on ties) until none does; optional EOS. Unlike run.c's rescan of every pair per
/// merge (quadratic), candidate pairs sit in a max-heap over a linked list of symbols, giving the same result.
///
/// Deliberate differences from run.c, none of which changes the output on real llama2.c or GGUF vocabularies:
/// only normal and user-defined pieces take part in lookups and merges, so control, unknown, unused and byte pieces
/// (and the BOS/EOS/unknown ids) never arise from text; a piece whose score is NaN never merges, while run.c also
/// ignores pieces scoring at most -1e10; an embedded NUL is a byte like any other rather than the end of the text.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/tokenizer/byte_piece.hpp"
#include "mechlens/tokenizer/llama2c_vocab.hpp"
#include "mechlens/tokenizer/vocabulary.hpp"

MECHLENS_BEGIN_NAMESPACE

namespace detail::tok {

/// Hash that accepts any string-like key, so lookups by string_view allocate nothing.
struct string_hash {
    using is_transparent = void;  ///< Enables heterogeneous lookup.
    /// Hashes the characters of `text`.
    std::size_t operator()(std::string_view text) const noexcept { return std::hash<std::string_view>{}(text); }
};

/// Piece text to id, searchable by string_view.
using piece_map = std::unordered_map<std::string, std::int32_t, string_hash, std::equal_to<>>;

/// True for a UTF-8 continuation byte (10xxxxxx).
constexpr bool is_continuation_byte(char c) noexcept {
    return (static_cast<unsigned char>(c) & 0xC0U) == 0x80U;
}

/// A candidate merge of the adjacent symbols at `left` and `right`, valid while both still hold the same tokens.
struct merge_candidate {
    float score;                ///< Score of the merged piece (never NaN).
    index_t left;               ///< Symbol position of the left half (its first byte's token index).
    index_t right;              ///< Symbol position of the right half.
    std::int32_t left_token;    ///< Token at `left` when the candidate was made.
    std::int32_t right_token;   ///< Token at `right` when the candidate was made.
    std::int32_t merged_token;  ///< Id of the concatenated piece.
};

/// Heap order: the top is the highest score, and among equal scores the leftmost pair.
struct merge_order {
    /// True when `a` should be popped after `b`.
    bool operator()(const merge_candidate& a, const merge_candidate& b) const noexcept {
        if (a.score != b.score) return a.score < b.score;
        return a.left > b.left;
    }
};

}  // namespace detail::tok

/// Score-driven BPE tokenizer with byte fallback, as in llama2.c's run.c and sentencepiece BPE models.
class bpe_tokenizer {
public:
    /// Takes the vocabulary and indexes it; throws std::invalid_argument when its arrays disagree in length
    /// (empty `kinds` means all normal), it is empty or too large for int32 ids, or a special id is out of range
    /// (-1 marks an absent special token).
    explicit bpe_tokenizer(vocabulary vocab) : vocab_(std::move(vocab)) {
        const std::size_t n = vocab_.pieces.size();
        if (n == 0) throw std::invalid_argument("mechlens: bpe_tokenizer needs a non-empty vocabulary");
        if (n > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max())) {
            throw std::invalid_argument("mechlens: vocabulary of " + std::to_string(n) + " pieces exceeds int32 ids");
        }
        if (vocab_.kinds.empty()) vocab_.kinds.assign(n, token_kind::normal);
        if (vocab_.scores.size() != n || vocab_.kinds.size() != n) {
            throw std::invalid_argument("mechlens: vocabulary has " + std::to_string(n) + " pieces but " +
                                        std::to_string(vocab_.scores.size()) + " scores and " +
                                        std::to_string(vocab_.kinds.size()) + " kinds");
        }
        check_special("bos_id", vocab_.bos_id);
        check_special("eos_id", vocab_.eos_id);
        check_special("unknown_id", vocab_.unknown_id);

        mergeable_.assign(n, false);
        silent_.assign(n, false);
        byte_value_.assign(n, -1);
        all_pieces_.reserve(n);
        for (std::size_t i = 0; i < n; ++i) {
            const auto id = static_cast<std::int32_t>(i);
            const std::string& piece = vocab_.pieces[i];
            all_pieces_.try_emplace(piece, id);  // the first of duplicate pieces wins
            const token_kind kind = vocab_.kinds[i];
            const bool special = id == vocab_.bos_id || id == vocab_.eos_id || id == vocab_.unknown_id;
            silent_[i] = special || kind == token_kind::control || kind == token_kind::unknown;
            if (const auto byte = detail::tok::parse_byte_piece(piece)) byte_value_[i] = *byte;
            // Empty pieces never merge either, so every merge strictly lengthens a symbol and the loop ends.
            if (!special && !piece.empty() && (kind == token_kind::normal || kind == token_kind::user_defined)) {
                if (mergeable_pieces_.try_emplace(piece, id).second) {
                    mergeable_[i] = true;
                    max_piece_bytes_ = std::max(max_piece_bytes_, piece.size());
                }
            }
        }
        for (std::size_t b = 0; b < byte_ids_.size(); ++b) {
            const auto it = all_pieces_.find(detail::tok::byte_piece_text(static_cast<unsigned char>(b)));
            byte_ids_[b] = it != all_pieces_.end() ? it->second : vocab_.unknown_id;
        }
    }

    /// Reads a llama2.c tokenizer file (see read_llama2c_vocabulary) and builds the tokenizer.
    static bpe_tokenizer from_llama2c(const std::filesystem::path& path) {
        return bpe_tokenizer(read_llama2c_vocabulary(path));
    }

    /// Token ids of `text` (any bytes; invalid UTF-8 falls back to byte tokens), with optional BOS and EOS.
    /// Throws std::invalid_argument when BOS/EOS is asked for but absent, or a byte has neither a byte piece
    /// nor an unknown id to fall back to.
    std::vector<std::int32_t> encode(std::string_view text, bool add_bos = true, bool add_eos = false) const {
        std::vector<std::int32_t> out;
        if (add_bos) {
            if (vocab_.bos_id < 0) throw std::invalid_argument("mechlens: encode with BOS but the vocabulary has none");
            out.push_back(vocab_.bos_id);
        }
        if (!text.empty()) {
            std::vector<std::int32_t> symbols;  // (n_symbols) one token per code point or fallback byte
            symbols.reserve(text.size() + 1);
            push_code_point(" ", symbols);  // sentencepiece's dummy prefix: the first word looks like any other
            std::size_t start = 0;
            std::size_t length = 0;
            for (std::size_t i = 0; i < text.size(); ++i) {
                // Like run.c: a run of continuation bytes stays with its lead byte, capped at four bytes.
                if (length == 0) start = i;
                ++length;
                const bool continues = i + 1 < text.size() && detail::tok::is_continuation_byte(text[i + 1]);
                if (continues && length < 4) continue;
                push_code_point(text.substr(start, length), symbols);
                length = 0;
            }
            merge(symbols);
            for (const std::int32_t token : symbols) {
                if (token >= 0) out.push_back(token);
            }
        }
        if (add_eos) {
            if (vocab_.eos_id < 0) throw std::invalid_argument("mechlens: encode with EOS but the vocabulary has none");
            out.push_back(vocab_.eos_id);
        }
        return out;
    }

    /// Text of a whole token sequence: control and unknown tokens give nothing, `<0xXX>` pieces give their byte,
    /// and a piece right after BOS loses one leading space. Throws std::out_of_range on an id outside the vocabulary.
    std::string decode(std::span<const std::int32_t> tokens) const {
        std::string text;
        std::int32_t previous = -1;
        for (const std::int32_t token : tokens) {
            append_piece(previous, token, text);
            previous = token;
        }
        return text;
    }

    /// Text of `token` when it follows `previous` (-1 for none), as run.c prints while streaming; concatenating
    /// these over a sequence gives decode(). Throws std::out_of_range when `token` is outside the vocabulary.
    std::string decode_piece(std::int32_t previous, std::int32_t token) const {
        std::string text;
        append_piece(previous, token, text);
        return text;
    }

    /// Number of pieces.
    index_t size() const noexcept { return static_cast<index_t>(vocab_.pieces.size()); }
    /// The vocabulary this tokenizer was built from (kinds filled in when they were empty).
    const vocabulary& vocab() const noexcept { return vocab_; }
    /// Beginning-of-sequence id (-1 when absent).
    std::int32_t bos_id() const noexcept { return vocab_.bos_id; }
    /// End-of-sequence id (-1 when absent).
    std::int32_t eos_id() const noexcept { return vocab_.eos_id; }

    /// Id of the piece spelled exactly `piece` (any kind; the lowest id among duplicates), if there is one.
    std::optional<std::int32_t> find(std::string_view piece) const {
        const auto it = all_pieces_.find(piece);
        if (it == all_pieces_.end()) return std::nullopt;
        return it->second;
    }

private:
    void check_special(const char* name, std::int32_t id) const {
        if (id < -1 || id >= static_cast<std::int32_t>(vocab_.pieces.size())) {
            throw std::invalid_argument(std::string("mechlens: vocabulary ") + name + " " + std::to_string(id) +
                                        " is outside [0, " + std::to_string(vocab_.pieces.size()) + ") and not -1");
        }
    }

    std::size_t piece_size(std::int32_t token) const noexcept {
        return vocab_.pieces[static_cast<std::size_t>(token)].size();
    }

    // The piece for one code point, or one byte-fallback token per byte when there is none.
    void push_code_point(std::string_view code_point, std::vector<std::int32_t>& symbols) const {
        if (const auto it = mergeable_pieces_.find(code_point); it != mergeable_pieces_.end()) {
            symbols.push_back(it->second);
            return;
        }
        for (const char c : code_point) {
            const std::int32_t id = byte_ids_[static_cast<unsigned char>(c)];
            if (id < 0) {
                throw std::invalid_argument("mechlens: text has byte " + std::to_string(static_cast<unsigned char>(c)) +
                                            " which the vocabulary can represent neither as a piece nor as unknown");
            }
            symbols.push_back(id);
        }
    }

    // Applies merges in place: merged-away symbols become -1. Positions are first-byte indices, so the heap's
    // "smallest position" is the leftmost pair of the current sequence, which is run.c's tie-break.
    void merge(std::vector<std::int32_t>& symbols) const {
        const auto n = static_cast<index_t>(symbols.size());
        std::vector<index_t> prev(static_cast<std::size_t>(n));  // (n_symbols) left neighbour, -1 at the start
        std::vector<index_t> next(static_cast<std::size_t>(n));  // (n_symbols) right neighbour, -1 at the end
        for (index_t i = 0; i < n; ++i) {
            prev[static_cast<std::size_t>(i)] = i - 1;
            next[static_cast<std::size_t>(i)] = i + 1 < n ? i + 1 : -1;
        }
        const auto at = [&](index_t i) -> std::int32_t& { return symbols[static_cast<std::size_t>(i)]; };
        std::vector<detail::tok::merge_candidate> heap;
        std::string joined;
        const auto consider = [&](index_t left, index_t right) {
            if (left < 0 || right < 0) return;
            const std::int32_t a = at(left);
            const std::int32_t b = at(right);
            if (!mergeable_[static_cast<std::size_t>(a)] || !mergeable_[static_cast<std::size_t>(b)]) return;
            if (piece_size(a) + piece_size(b) > max_piece_bytes_) return;
            joined.assign(vocab_.pieces[static_cast<std::size_t>(a)]);
            joined.append(vocab_.pieces[static_cast<std::size_t>(b)]);
            const auto it = mergeable_pieces_.find(std::string_view(joined));
            if (it == mergeable_pieces_.end()) return;
            const float score = vocab_.scores[static_cast<std::size_t>(it->second)];
            if (std::isnan(score)) return;
            heap.push_back({score, left, right, a, b, it->second});
            std::push_heap(heap.begin(), heap.end(), detail::tok::merge_order{});
        };
        for (index_t i = 0; i + 1 < n; ++i) consider(i, i + 1);
        while (!heap.empty()) {
            std::pop_heap(heap.begin(), heap.end(), detail::tok::merge_order{});
            const detail::tok::merge_candidate c = heap.back();
            heap.pop_back();
            // Stale when either half has merged since: a merged-away right half reads -1, a grown one a new id,
            // and a left half that absorbed something no longer has `right` as its neighbour.
            if (at(c.left) != c.left_token || at(c.right) != c.right_token ||
                next[static_cast<std::size_t>(c.left)] != c.right) {
                continue;
            }
            at(c.left) = c.merged_token;
            at(c.right) = -1;
            const index_t after = next[static_cast<std::size_t>(c.right)];
            next[static_cast<std::size_t>(c.left)] = after;
            if (after >= 0) prev[static_cast<std::size_t>(after)] = c.left;
            consider(prev[static_cast<std::size_t>(c.left)], c.left);
            consider(c.left, after);
        }
    }

    void append_piece(std::int32_t previous, std::int32_t token, std::string& text) const {
        if (token < 0 || token >= static_cast<std::int32_t>(vocab_.pieces.size())) {
            throw std::out_of_range("mechlens: token id " + std::to_string(token) + " is outside the vocabulary [0, " +
                                    std::to_string(vocab_.pieces.size()) + ")");
        }
        const auto id = static_cast<std::size_t>(token);
        if (silent_[id]) return;
        if (byte_value_[id] >= 0) {
            text.push_back(static_cast<char>(static_cast<unsigned char>(byte_value_[id])));
            return;
        }
        std::string_view piece = vocab_.pieces[id];
        // sentencepiece's dummy prefix: the first word after BOS carries a space the text never had.
        if (previous >= 0 && previous == vocab_.bos_id && !piece.empty() && piece.front() == ' ') piece.remove_prefix(1);
        text.append(piece);
    }

    vocabulary vocab_;                             ///< The pieces, scores, kinds and special ids.
    detail::tok::piece_map all_pieces_;            ///< Every piece to its lowest id, for find() and byte pieces.
    detail::tok::piece_map mergeable_pieces_;      ///< Normal and user-defined pieces: what text may become.
    std::vector<bool> mergeable_;                  ///< (vocab) id is the entry of mergeable_pieces_ for its text.
    std::vector<bool> silent_;                     ///< (vocab) id decodes to nothing (control, unknown, special).
    std::vector<std::int16_t> byte_value_;         ///< (vocab) byte a `<0xXX>` piece stands for, else -1.
    std::array<std::int32_t, 256> byte_ids_{};     ///< Fallback id per byte: its `<0xXX>` piece, else unknown.
    std::size_t max_piece_bytes_ = 0;              ///< Longest mergeable piece, to skip hopeless lookups.
};

MECHLENS_END_NAMESPACE
