#pragma once
/// @file
/// Readers of GPT-2 byte-level BPE vocabularies: `vocab.json` + `merges.txt` (OpenAI's and Hugging Face's slow
/// tokenizer files), Hugging Face `tokenizer.json`, and GGUF files whose `tokenizer.ggml.model` is "gpt2";
/// load_gpt2_tokenizer picks the reader from the path.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/io/gguf.hpp"
#include "mechlens/io/json.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tokenizer/gpt2_bpe.hpp"
#include "mechlens/tokenizer/llama2c_vocab.hpp"

MECHLENS_BEGIN_NAMESPACE

namespace detail::gpt2 {

/// Tokens from a JSON object of spelling -> id whose ids are exactly 0..n-1 (`vocab.json`, tokenizer.json's
/// model.vocab); errors name the offending entry's path.
inline std::vector<std::string> tokens_from_json_vocab(const json_value& vocab) {
    const std::vector<json_member>& entries = vocab.members();
    if (entries.empty()) vocab.fail("the vocabulary is empty");
    std::vector<std::string> tokens(entries.size());
    std::vector<bool> seen(entries.size(), false);
    for (const json_member& m : entries) {
        const std::int64_t id = m.value.as_int64();
        if (id < 0 || static_cast<std::uint64_t>(id) >= entries.size())
            m.value.fail("id " + std::to_string(id) + " is outside [0, " + std::to_string(entries.size()) +
                         "): the ids of a vocabulary of n tokens must be 0..n-1");
        const auto i = static_cast<std::size_t>(id);
        if (seen[i]) m.value.fail("id " + std::to_string(id) + " is given to two tokens");
        seen[i] = true;
        tokens[i] = m.key;
    }
    return tokens;
}

/// Splits the merge line "a b" at its one space; nullopt when it has no space or more than one.
inline std::optional<std::pair<std::string, std::string>> split_merge(std::string_view line) {
    const std::size_t space = line.find(' ');
    if (space == std::string_view::npos || space == 0 || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string_view::npos)
        return std::nullopt;
    return std::pair<std::string, std::string>(line.substr(0, space), line.substr(space + 1));
}

/// Whether a vocab.json token is special: spelled `<|...|>`, as `<|endoftext|>` is (vocab.json has no flag).
inline bool looks_special(std::string_view token) noexcept {
    return token.size() > 4 && token.substr(0, 2) == "<|" && token.substr(token.size() - 2) == "|>";
}

}  // namespace detail::gpt2

/// Parses the text of a `merges.txt`: an optional `#version` first line, then one "a b" rule per line, highest
/// priority first (blank lines and a trailing '\r' ignored). Errors name `where` and the line.
inline std::vector<std::pair<std::string, std::string>> parse_gpt2_merges(std::string_view text,
                                                                         const std::string& where) {
    std::vector<std::pair<std::string, std::string>> merges;
    std::size_t pos = 0;
    std::size_t line_number = 0;
    while (pos < text.size()) {
        std::size_t end = text.find('\n', pos);
        if (end == std::string_view::npos) end = text.size();
        std::string_view line = text.substr(pos, end - pos);
        pos = end + 1;
        ++line_number;
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.empty() || (line_number == 1 && line.substr(0, 8) == "#version")) continue;
        auto merge = detail::gpt2::split_merge(line);
        if (!merge)
            throw format_error(where + ": line " + std::to_string(line_number) +
                               " is not a merge of two tokens separated by one space");
        merges.push_back(std::move(*merge));
    }
    return merges;
}

/// Parses the text of a `vocab.json` (spelling -> id, ids 0..n-1) and of a `merges.txt` into a vocabulary;
/// tokens spelled `<|...|>` are special. Errors name `vocab_where` or `merges_where`.
inline gpt2_vocabulary parse_gpt2_vocab_merges(std::string_view vocab_json, const std::string& vocab_where,
                                               std::string_view merges_txt, const std::string& merges_where) {
    gpt2_vocabulary v;
    v.tokens = detail::gpt2::tokens_from_json_vocab(parse_json(vocab_json, vocab_where));
    v.merges = parse_gpt2_merges(merges_txt, merges_where);
    for (std::size_t i = 0; i < v.tokens.size(); ++i)
        if (detail::gpt2::looks_special(v.tokens[i])) v.special_ids.push_back(static_cast<std::int32_t>(i));
    v.vocab_source = vocab_where;
    v.merges_source = merges_where;
    return v;
}

/// Reads `vocab.json` and `merges.txt` (see parse_gpt2_vocab_merges); errors name the file at fault.
inline gpt2_vocabulary read_gpt2_vocab_merges(const std::filesystem::path& vocab_json,
                                              const std::filesystem::path& merges_txt) {
    return parse_gpt2_vocab_merges(detail::tok::read_whole_file(vocab_json, "vocab.json"), vocab_json.string(),
                                   detail::tok::read_whole_file(merges_txt, "merges.txt"), merges_txt.string());
}

/// Parses a Hugging Face `tokenizer.json` of a GPT-2-style BPE: model.vocab, model.merges (strings "a b" or
/// pairs ["a", "b"]) and added_tokens (id, content), all matched verbatim like `<|endoftext|>`. Rejects, with
/// a one-line format_error naming `where` and the JSON path, what would tokenize differently from GPT-2: another
/// model type, a normalizer, a pre-tokenizer other than ByteLevel with GPT-2's regex, add_prefix_space, or
/// subword prefixes and suffixes; an added token inside model.vocab must spell its entry, one after it extends it.
inline gpt2_vocabulary parse_hf_tokenizer_json(std::string_view text, const std::string& where) {
    const json_value root = parse_json(text, where);
    const json_value& model = root.at("model");
    if (const json_value* type = model.find("type"); type && type->as_string() != "BPE")
        type->fail("model type \"" + type->as_string().substr(0, 40) + "\" is not BPE");
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
        if (const json_value* v = model.find(key); v && !v->is_null() && !v->as_string().empty())
            v->fail("subword prefixes and suffixes are not GPT-2's BPE");
    if (const json_value* n = root.find("normalizer"); n && !n->is_null())
        n->fail("a normalizer is not supported (GPT-2 has none)");
    if (const json_value* pre = root.find("pre_tokenizer"); pre && !pre->is_null()) {
        if (pre->at("type").as_string() != "ByteLevel")
            pre->at("type").fail("pre-tokenizer \"" + pre->at("type").as_string().substr(0, 40) +
                                 "\" is not GPT-2's ByteLevel");
        if (const json_value* v = pre->find("add_prefix_space"); v && v->as_bool())
            v->fail("add_prefix_space is not supported");
        if (const json_value* v = pre->find("use_regex"); v && !v->as_bool())
            v->fail("a ByteLevel pre-tokenizer without GPT-2's regex is not supported");
    }
    gpt2_vocabulary v;
    v.tokens = detail::gpt2::tokens_from_json_vocab(model.at("vocab"));
    const json_value& merges = model.at("merges");
    v.merges.reserve(merges.items().size());
    for (const json_value& m : merges.items()) {
        if (m.is_string()) {
            auto merge = detail::gpt2::split_merge(m.as_string());
            if (!merge) m.fail("is not a merge of two tokens separated by one space");
            v.merges.push_back(std::move(*merge));
        } else if (m.is_array()) {
            if (m.items().size() != 2) m.fail("a merge pair needs exactly two tokens");
            v.merges.emplace_back(m.at(0).as_string(), m.at(1).as_string());
        } else {
            m.fail("a merge is a string \"a b\" or a pair [\"a\", \"b\"], found " + json_value::type_name(m.kind()));
        }
    }
    // Added tokens are matched verbatim before pre-tokenisation (Hugging Face does so whether or not they are
    // marked special); one outside model.vocab extends the vocabulary, which must then have no holes.
    if (const json_value* added = root.find("added_tokens")) {
        const std::size_t model_size = v.tokens.size();
        std::vector<bool> filled(model_size, true);
        for (const json_value& t : added->items()) {
            const json_value& id_value = t.at("id");
            const std::int64_t id = id_value.as_int64();
            const std::string& content = t.at("content").as_string();
            if (content.empty()) t.at("content").fail("an added token needs text");
            if (id < 0 || static_cast<std::uint64_t>(id) >= model_size + added->size())
                id_value.fail("added token id " + std::to_string(id) + " is outside the vocabulary of " +
                              std::to_string(model_size) + " plus " + std::to_string(added->size()) + " added tokens");
            const auto i = static_cast<std::size_t>(id);
            if (i < model_size) {
                if (v.tokens[i] != content)
                    t.at("content").fail("added token " + std::to_string(id) + " is spelled differently in model.vocab");
            } else {
                if (i >= v.tokens.size()) v.tokens.resize(i + 1), filled.resize(i + 1, false);
                if (filled[i]) id_value.fail("added token id " + std::to_string(id) + " is given twice");
                v.tokens[i] = content;
                filled[i] = true;
            }
            v.special_ids.push_back(static_cast<std::int32_t>(id));
        }
        for (std::size_t i = model_size; i < filled.size(); ++i)
            if (!filled[i]) added->fail("no token has id " + std::to_string(i) + " (ids must have no holes)");
    }
    v.vocab_source = where;
    v.merges_source = where;
    return v;
}

/// Reads a Hugging Face `tokenizer.json` (see parse_hf_tokenizer_json).
inline gpt2_vocabulary read_hf_tokenizer_json(const std::filesystem::path& path) {
    return parse_hf_tokenizer_json(detail::tok::read_whole_file(path, "tokenizer.json"), path.string());
}

/// The GPT-2 vocabulary of a GGUF file: tokenizer.ggml.model must be "gpt2" and tokenizer.ggml.pre absent or
/// "gpt-2" (other pre-tokenizers use other regexes); tokens, merges ("a b"), and token_type control (3) and
/// user-defined (4) entries as special tokens.
inline gpt2_vocabulary load_gguf_gpt2_vocabulary(const gguf_file& g) {
    const std::string& model = g.get_string("tokenizer.ggml.model");
    if (model != "gpt2") g.fail("tokenizer.ggml.model is \"" + model.substr(0, 40) + "\", not \"gpt2\"");
    if (g.find("tokenizer.ggml.pre")) {
        const std::string& pre = g.get_string("tokenizer.ggml.pre");
        if (pre != "gpt-2")
            g.fail("tokenizer.ggml.pre is \"" + pre.substr(0, 40) + "\"; only GPT-2's pre-tokenizer (\"gpt-2\") is supported");
    }
    gpt2_vocabulary v;
    const auto& tokens = g.get_array("tokenizer.ggml.tokens", gguf_type::string);
    if (tokens.empty()) g.fail("tokenizer.ggml.tokens is empty");
    v.tokens.reserve(tokens.size());
    // get_array checked the element type; the null checks only keep -Wnull-dereference (and a later change) honest.
    for (const gguf_value& t : tokens) {
        const std::string* text = t.as_string();
        if (text == nullptr) g.fail("tokenizer.ggml.tokens holds a value that is not a string");
        v.tokens.push_back(*text);
    }
    const auto& merges = g.get_array("tokenizer.ggml.merges", gguf_type::string);
    v.merges.reserve(merges.size());
    for (std::size_t i = 0; i < merges.size(); ++i) {
        const std::string* text = merges[i].as_string();
        auto merge = text ? detail::gpt2::split_merge(*text) : std::nullopt;
        if (!merge)
            g.fail("tokenizer.ggml.merges[" + std::to_string(i) + "] is not two tokens separated by one space");
        v.merges.push_back(std::move(*merge));
    }
    if (g.find("tokenizer.ggml.token_type")) {
        const auto& types = g.get_array("tokenizer.ggml.token_type", gguf_type::int32);
        if (types.size() != tokens.size())
            g.fail("tokenizer.ggml.token_type has " + std::to_string(types.size()) + " entries for " +
                   std::to_string(tokens.size()) + " tokens");
        for (std::size_t i = 0; i < types.size(); ++i) {
            const auto kind = types[i].as_int();
            if (kind == static_cast<std::int64_t>(token_kind::control) ||
                kind == static_cast<std::int64_t>(token_kind::user_defined))
                v.special_ids.push_back(static_cast<std::int32_t>(i));
        }
    }
    v.vocab_source = g.path().string();
    v.merges_source = g.path().string();
    return v;
}

/// Maps and parses a GGUF file and returns its GPT-2 vocabulary (see the overload on a gguf_file).
inline gpt2_vocabulary load_gguf_gpt2_vocabulary(const std::filesystem::path& path) {
    return load_gguf_gpt2_vocabulary(gguf_file(path));
}

/// A GPT-2 tokenizer from `path`: a directory with `tokenizer.json` (preferred) or `vocab.json` + `merges.txt`,
/// a `.json` file (tokenizer.json), or a `.gguf` file. Throws format_error naming the path for anything else.
inline gpt2_tokenizer load_gpt2_tokenizer(const std::filesystem::path& path) {
    namespace fs = std::filesystem;
    if (fs::is_directory(path)) {
        if (fs::exists(path / "tokenizer.json")) return gpt2_tokenizer(read_hf_tokenizer_json(path / "tokenizer.json"));
        if (fs::exists(path / "vocab.json") && fs::exists(path / "merges.txt"))
            return gpt2_tokenizer(read_gpt2_vocab_merges(path / "vocab.json", path / "merges.txt"));
        throw format_error(path.string() + ": no tokenizer.json, and no vocab.json with merges.txt, in this directory");
    }
    if (path.extension() == ".json") return gpt2_tokenizer(read_hf_tokenizer_json(path));
    if (path.extension() == ".gguf") return gpt2_tokenizer(load_gguf_gpt2_vocabulary(path));
    if (!fs::exists(path)) throw format_error(path.string() + ": no such file or directory");
    throw format_error(path.string() + ": not a GPT-2 tokenizer (a directory, tokenizer.json or .gguf)");
}

MECHLENS_END_NAMESPACE
