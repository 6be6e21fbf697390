#pragma once
/// @file
/// GPT-2's byte-level BPE tokenizer (GPT-2, GPT-J, Pythia/GPT-NeoX's family of vocabularies, ...).
///
/// Encoding: optionally cut out special tokens (`<|endoftext|>`) first, where they appear verbatim in the text;
/// split the rest with GPT-2's pre-tokenisation regex (gpt2_pretokenize.hpp); spell each piece's bytes as one
/// token each (the byte-to-unicode alphabet: every byte is a vocabulary entry); then merge adjacent tokens by the
/// rank of their merge rule, the lowest rank first and the leftmost pair among equal ranks, as Hugging Face's BPE
/// model and llama.cpp do. Decoding maps each token's characters back to bytes.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
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
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tokenizer/bpe.hpp"
#include "mechlens/tokenizer/gpt2_pretokenize.hpp"

MECHLENS_BEGIN_NAMESPACE

/// A byte-level BPE vocabulary as read from a file (vocab.json + merges.txt, tokenizer.json or GGUF).
struct gpt2_vocabulary {
    std::vector<std::string> tokens;                          ///< Spelling per id in the byte alphabet ("Ġthe").
    std::vector<std::pair<std::string, std::string>> merges;  ///< Merge rules, the highest priority (rank 0) first.
    std::vector<std::int32_t> special_ids;                    ///< Tokens matched verbatim in text (`<|endoftext|>`).
    std::string vocab_source = "GPT-2 vocabulary";            ///< Names the tokens' file in errors.
    std::string merges_source = "GPT-2 merges";               ///< Names the merges' file in errors.
};

namespace detail::gpt2 {

/// The token a merge makes and the merge's rank (lower merges first).
struct merge_rule {
    std::int32_t rank;    ///< Position in the merge list.
    std::int32_t result;  ///< Id of the merged token.
};

/// A candidate merge of adjacent symbols, valid while both still hold the tokens it was made from.
struct merge_candidate {
    std::int32_t rank;          ///< Rank of the rule.
    std::int32_t left;          ///< Symbol index of the left half.
    std::int32_t right;         ///< Symbol index of the right half.
    std::int32_t left_token;    ///< Token at `left` when the candidate was made.
    std::int32_t right_token;   ///< Token at `right` when the candidate was made.
    std::int32_t result;        ///< Id of the merged token.
};

/// Heap order: the top is the lowest rank, and among equal ranks the leftmost pair.
struct merge_order {
    /// True when `a` should be popped after `b`.
    bool operator()(const merge_candidate& a, const merge_candidate& b) const noexcept {
        if (a.rank != b.rank) return a.rank > b.rank;
        return a.left > b.left;
    }
};

/// Key of the pair (a, b) in the merge table.
constexpr std::uint64_t pair_key(std::int32_t a, std::int32_t b) noexcept {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
}

}  // namespace detail::gpt2

/// GPT-2's byte-level BPE tokenizer over a gpt2_vocabulary.
class gpt2_tokenizer {
public:
    /// Indexes `vocab`; throws format_error naming its source when it is empty or too large for int32 ids, spells
    /// a token twice, lacks the token of some byte, has a merge naming an unknown token (or whose result is not a
    /// token), or a special id out of range or with empty text.
    explicit gpt2_tokenizer(gpt2_vocabulary vocab) : vocab_(std::move(vocab)) {
        const std::size_t n = vocab_.tokens.size();
        const auto fail_vocab = [&](const std::string& problem) {
            throw format_error(vocab_.vocab_source + ": " + problem);
        };
        if (n == 0) fail_vocab("the vocabulary is empty");
        if (n > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()))
            fail_vocab("the vocabulary of " + std::to_string(n) + " tokens exceeds int32 ids");
        ids_.reserve(n);
        for (std::size_t i = 0; i < n; ++i) {
            if (!ids_.try_emplace(vocab_.tokens[i], static_cast<std::int32_t>(i)).second)
                fail_vocab("token " + quote(vocab_.tokens[i]) + " has two ids, " +
                           std::to_string(ids_.find(vocab_.tokens[i])->second) + " and " + std::to_string(i));
        }
        for (std::size_t b = 0; b < 256; ++b) {
            const std::string symbol = detail::gpt2::byte_symbol(static_cast<unsigned char>(b));
            const auto it = ids_.find(symbol);
            // A vocabulary may lack some bytes (test vocabularies such as tiny-random-gpt2's keep 1000 tokens):
            // encoding text that needs one is then an error, see encode_ordinary.
            byte_ids_[b] = it == ids_.end() ? -1 : it->second;
        }
        if (vocab_.merges.size() > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()))
            throw format_error(vocab_.merges_source + ": too many merges");
        merges_.reserve(vocab_.merges.size());
        std::string joined;
        for (std::size_t r = 0; r < vocab_.merges.size(); ++r) {
            const std::string& a = vocab_.merges[r].first;
            const std::string& b = vocab_.merges[r].second;
            const auto fail_merge = [&](const std::string& problem) {
                throw format_error(vocab_.merges_source + ": merge " + std::to_string(r) + " (" + quote(a) + " " +
                                   quote(b) + ") " + problem);
            };
            const auto left = ids_.find(a);
            if (left == ids_.end()) fail_merge("names the unknown token " + quote(a));
            const auto right = ids_.find(b);
            if (right == ids_.end()) fail_merge("names the unknown token " + quote(b));
            joined.assign(a).append(b);
            const auto result = ids_.find(joined);
            if (result == ids_.end()) fail_merge("makes " + quote(joined) + ", which is not a token");
            // A repeated rule keeps its first (highest-priority) rank, as in Hugging Face's BPE.
            merges_.try_emplace(detail::gpt2::pair_key(left->second, right->second),
                                detail::gpt2::merge_rule{static_cast<std::int32_t>(r), result->second});
        }
        special_.assign(n, false);
        for (const std::int32_t id : vocab_.special_ids) {
            if (id < 0 || static_cast<std::size_t>(id) >= n)
                fail_vocab("special token id " + std::to_string(id) + " is outside [0, " + std::to_string(n) + ")");
            if (vocab_.tokens[static_cast<std::size_t>(id)].empty())
                fail_vocab("special token " + std::to_string(id) + " is empty");
            if (!special_[static_cast<std::size_t>(id)]) specials_by_length_.push_back(id);
            special_[static_cast<std::size_t>(id)] = true;
        }
        // Longest first, so that of two special tokens starting at one position the longer wins.
        std::stable_sort(specials_by_length_.begin(), specials_by_length_.end(), [&](std::int32_t x, std::int32_t y) {
            return token_text(x).size() > token_text(y).size();
        });
        bytes_.resize(n);
        for (std::size_t i = 0; i < n; ++i) bytes_[i] = special_[i] ? vocab_.tokens[i] : spelling_to_bytes(vocab_.tokens[i]);
    }

    /// Token ids of `text` (any bytes). With `match_special`, special tokens written verbatim in the text become
    /// their ids; otherwise `<|endoftext|>` is ordinary text like any other.
    std::vector<std::int32_t> encode(std::string_view text, bool match_special = false) const {
        std::vector<std::int32_t> out;
        std::size_t pos = 0;
        while (pos < text.size()) {
            std::size_t next = text.size();
            std::int32_t found = -1;
            if (match_special) {
                for (const std::int32_t id : specials_by_length_) {
                    const std::size_t at = text.find(token_text(id), pos);
                    if (at < next) next = at, found = id;  // longest first, so a tie keeps the longer one
                }
            }
            encode_ordinary(text.substr(pos, next - pos), out);
            if (found < 0) break;
            out.push_back(found);
            pos = next + token_text(found).size();
        }
        return out;
    }

    /// The bytes of a token sequence (special tokens give their text). Throws std::out_of_range on a bad id.
    std::string decode(std::span<const std::int32_t> tokens) const {
        std::string out;
        for (const std::int32_t t : tokens) out += token_bytes(t);
        return out;
    }

    /// The bytes one token stands for. Throws std::out_of_range when `token` is outside the vocabulary.
    const std::string& token_bytes(std::int32_t token) const {
        check_id(token);
        return bytes_[static_cast<std::size_t>(token)];
    }
    /// A token's spelling in the vocabulary's byte alphabet ("Ġthe"). Throws std::out_of_range on a bad id.
    const std::string& token_text(std::int32_t token) const {
        check_id(token);
        return vocab_.tokens[static_cast<std::size_t>(token)];
    }
    /// Id of the token spelled `spelling` in the byte alphabet, if there is one.
    std::optional<std::int32_t> find(std::string_view spelling) const {
        const auto it = ids_.find(spelling);
        if (it == ids_.end()) return std::nullopt;
        return it->second;
    }
    /// True when `token` is a special token (matched verbatim by encode with match_special).
    bool is_special(std::int32_t token) const {
        check_id(token);
        return special_[static_cast<std::size_t>(token)];
    }
    /// Id of `<|endoftext|>`, or -1 when the vocabulary has none.
    std::int32_t end_of_text_id() const {
        const auto id = find("<|endoftext|>");
        return id ? *id : -1;
    }
    /// Number of tokens.
    index_t size() const noexcept { return static_cast<index_t>(vocab_.tokens.size()); }
    /// Number of merge rules in use (repeated rules count once).
    std::size_t merge_count() const noexcept { return merges_.size(); }
    /// The vocabulary this tokenizer was built from.
    const gpt2_vocabulary& vocab() const noexcept { return vocab_; }

private:
    static std::string quote(std::string_view s) {
        std::string out(1, '\'');  // built by appending: GCC 12's -Wrestrict misfires on "x" + std::string&&
        out += s.substr(0, 80);
        out += '\'';
        return out;
    }

    void check_id(std::int32_t token) const {
        if (token < 0 || static_cast<std::size_t>(token) >= vocab_.tokens.size())
            throw std::out_of_range("mechlens: token id " + std::to_string(token) + " is outside the vocabulary [0, " +
                                    std::to_string(vocab_.tokens.size()) + ")");
    }

    // The bytes a spelling stands for: each character through the inverse byte map; a character that is no byte
    // (only in odd vocabularies) is kept as its UTF-8.
    static std::string spelling_to_bytes(std::string_view spelling) {
        std::string out;
        std::size_t pos = 0;
        while (pos < spelling.size()) {
            const detail::gpt2::decoded_code_point d = detail::gpt2::decode_utf8(spelling, pos);
            const int byte = d.cp == 0xFFFFFFFFU ? -1 : detail::gpt2::code_point_to_byte(d.cp);
            if (byte >= 0)
                out += static_cast<char>(static_cast<unsigned char>(byte));
            else
                out.append(spelling.substr(pos, d.length));
            pos += d.length;
        }
        return out;
    }

    void encode_ordinary(std::string_view text, std::vector<std::int32_t>& out) const {
        std::vector<std::int32_t> symbols;
        for (const std::string_view piece : detail::gpt2::pretokenize(text)) {
            symbols.clear();
            for (const char c : piece) {
                const std::int32_t id = byte_ids_[static_cast<unsigned char>(c)];
                if (id < 0) {
                    std::string message = "gpt2_tokenizer: the vocabulary has no token for byte ";
                    message += std::to_string(static_cast<unsigned char>(c));
                    message += ", which the text needs (a complete byte-level vocabulary has all 256)";
                    throw format_error(message);
                }
                symbols.push_back(id);
            }
            merge(symbols);
            for (const std::int32_t t : symbols)
                if (t >= 0) out.push_back(t);
        }
    }

    // Applies merges in place over a linked list of symbols; merged-away symbols become -1.
    void merge(std::vector<std::int32_t>& symbols) const {
        const auto n = static_cast<std::int32_t>(symbols.size());
        if (n < 2 || merges_.empty()) return;
        std::vector<std::int32_t> prev(static_cast<std::size_t>(n));  // (n_symbols) left neighbour, -1 at the start
        std::vector<std::int32_t> next(static_cast<std::size_t>(n));  // (n_symbols) right neighbour, -1 at the end
        for (std::int32_t i = 0; i < n; ++i) {
            prev[static_cast<std::size_t>(i)] = i - 1;
            next[static_cast<std::size_t>(i)] = i + 1 < n ? i + 1 : -1;
        }
        const auto at = [&](std::int32_t i) -> std::int32_t& { return symbols[static_cast<std::size_t>(i)]; };
        std::vector<detail::gpt2::merge_candidate> heap;
        const auto consider = [&](std::int32_t left, std::int32_t right) {
            if (left < 0 || right < 0) return;
            const auto it = merges_.find(detail::gpt2::pair_key(at(left), at(right)));
            if (it == merges_.end()) return;
            heap.push_back({it->second.rank, left, right, at(left), at(right), it->second.result});
            std::push_heap(heap.begin(), heap.end(), detail::gpt2::merge_order{});
        };
        for (std::int32_t i = 0; i + 1 < n; ++i) consider(i, i + 1);
        while (!heap.empty()) {
            std::pop_heap(heap.begin(), heap.end(), detail::gpt2::merge_order{});
            const detail::gpt2::merge_candidate c = heap.back();
            heap.pop_back();
            // Stale when either half has changed since, or the left half's neighbour is no longer `right`.
            if (at(c.left) != c.left_token || at(c.right) != c.right_token ||
                next[static_cast<std::size_t>(c.left)] != c.right)
                continue;
            at(c.left) = c.result;
            at(c.right) = -1;
            const std::int32_t after = next[static_cast<std::size_t>(c.right)];
            next[static_cast<std::size_t>(c.left)] = after;
            if (after >= 0) prev[static_cast<std::size_t>(after)] = c.left;
            consider(prev[static_cast<std::size_t>(c.left)], c.left);
            consider(c.left, after);
        }
    }

    gpt2_vocabulary vocab_;                                                 ///< What the tokenizer was built from.
    detail::tok::piece_map ids_;                                            ///< Spelling to id.
    std::unordered_map<std::uint64_t, detail::gpt2::merge_rule> merges_;    ///< (left, right) to rank and result.
    std::array<std::int32_t, 256> byte_ids_{};  ///< Token of each single byte, -1 when the vocabulary lacks it.
    std::vector<bool> special_;                                             ///< (vocab) special token.
    std::vector<std::int32_t> specials_by_length_;                          ///< Special ids, longest text first.
    std::vector<std::string> bytes_;                                        ///< (vocab) the bytes of each token.
};

MECHLENS_END_NAMESPACE
