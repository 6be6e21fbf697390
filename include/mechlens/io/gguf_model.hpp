#pragma once
/// @file
/// LLaMA models and sentencepiece-style vocabularies from GGUF files.

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>

#include "mechlens/io/gguf.hpp"
#include "mechlens/io/loader_storage.hpp"
#include "mechlens/model/config.hpp"
#include "mechlens/model/weights.hpp"
#include "mechlens/tokenizer/vocabulary.hpp"

MECHLENS_BEGIN_NAMESPACE
namespace detail {

/// A float metadata value that must be finite and representable as float (converting others would be UB).
inline float gguf_float(const gguf_file& g, std::string_view key, double fallback) {
    const double v = g.get_float(key, fallback);
    if (!std::isfinite(v) || std::fabs(v) > static_cast<double>(std::numeric_limits<float>::max()))
        g.fail("metadata key '" + std::string(key) + "' = " + std::to_string(v) + " is not a finite float");
    return static_cast<float>(v);
}

/// `piece` with every U+2581 (sentencepiece's visible space) turned into ' '.
inline std::string spaces_from_u2581(std::string_view piece) {
    static constexpr std::string_view mark = "\xE2\x96\x81";
    std::string out;
    out.reserve(piece.size());
    for (std::size_t at = 0; at < piece.size();) {
        if (piece.substr(at, mark.size()) == mark) {
            out += ' ';
            at += mark.size();
        } else {
            out += piece[at++];
        }
    }
    return out;
}

/// Builds weight views for the tensors of one GGUF file, checking each tensor's shape and type.
class gguf_weight_reader {
public:
    /// Views into `g`'s mapping, or converted buffers owned by `builder`.
    gguf_weight_reader(const gguf_file& g, weight_builder& builder) : g_(g), builder_(builder) {}

    /// The (rows, cols) matrix `name`, stored with ggml dims [cols, rows].
    tensor_view<const float, 2> matrix(const std::string& name, index_t rows, index_t cols) {
        const gguf_tensor_info& t = g_.tensor(name);
        if (t.dims.size() != 2 || t.dims[0] != static_cast<std::uint64_t>(cols) ||
            t.dims[1] != static_cast<std::uint64_t>(rows))
            g_.fail("tensor '" + name + "' has ggml dims " + dims_text(t) + ", expected [" + std::to_string(cols) +
                    ", " + std::to_string(rows) + "] for a (" + std::to_string(rows) + ", " + std::to_string(cols) +
                    ") matrix");
        return tensor_view<const float, 2>(floats(t), {rows, cols});
    }

    /// The vector `name` of length n.
    tensor_view<const float, 1> vector(const std::string& name, index_t n) {
        const gguf_tensor_info& t = g_.tensor(name);
        if (t.dims.size() != 1 || t.dims[0] != static_cast<std::uint64_t>(n))
            g_.fail("tensor '" + name + "' has ggml dims " + dims_text(t) + ", expected [" + std::to_string(n) + "]");
        return tensor_view<const float, 1>(floats(t), {n});
    }

private:
    static std::string dims_text(const gguf_tensor_info& t) {
        std::string s = "[";
        for (std::size_t i = 0; i < t.dims.size(); ++i) s += (i ? ", " : "") + std::to_string(t.dims[i]);
        return s + "]";
    }

    const float* floats(const gguf_tensor_info& t) {
        const auto count = static_cast<index_t>(t.n_elements);  // bounded by the file size, checked by gguf_file
        if (t.type == ggml_type::f32) return builder_.f32(g_.tensor_data(t), count);
        if (t.type == ggml_type::f16) return builder_.f16(g_.tensor_data(t), count);
        g_.fail("unsupported tensor type " + to_string(t.type) + " for " + t.name + " (only F32 and F16 load)");
    }

    const gguf_file& g_;
    weight_builder& builder_;
};

}  // namespace detail

/// Loads a LLaMA-architecture model from a parsed GGUF file (F32 tensors viewed in place, F16 converted).
///
/// Reads llama.* hyper-parameters (head_count_kv defaults to head_count, rope.freq_base to 10000,
/// layer_norm_rms_epsilon to 1e-5; the vocabulary size comes from token_embd.weight); a missing output.weight means
/// the unembedding is tied to the embedding. Rotary pairs are adjacent, as in llama.cpp's normal rope.
inline loaded_model load_gguf(const gguf_file& g) {
    const std::string where = g.path().string();
    const std::string& arch = g.get_string("general.architecture");
    if (arch != "llama") g.fail("architecture '" + arch + "' is not supported (only 'llama')");
    if (g.get_int("llama.expert_count", 0) > 0) g.fail("mixture-of-experts models are not supported");
    if (const gguf_value* scaling = g.find("llama.rope.scaling.type"))
        if (scaling->as_string() == nullptr || *scaling->as_string() != "none")
            g.fail("rope scaling (llama.rope.scaling.type) is not supported");

    model_config config;
    config.d_model = g.get_int("llama.embedding_length");
    config.n_layers = g.get_int("llama.block_count");
    config.d_mlp = g.get_int("llama.feed_forward_length");
    config.n_heads = g.get_int("llama.attention.head_count");
    config.n_kv_heads = g.get_int("llama.attention.head_count_kv", config.n_heads);
    config.n_ctx = g.get_int("llama.context_length");
    config.rope_theta = detail::gguf_float(g, "llama.rope.freq_base", 10000.0);
    config.norm_eps = detail::gguf_float(g, "llama.attention.layer_norm_rms_epsilon", 1e-5);
    config.rope = rope_layout::adjacent_pairs;
    // The vocabulary size and whether the unembedding is tied come from the tensors the parameter table names.
    const std::string embedding_name(traits_of(parameter_id::token_embedding).gguf_name);
    const gguf_tensor_info& embedding = g.tensor(embedding_name);
    if (embedding.dims.size() != 2) g.fail("tensor '" + embedding_name + "' must have 2 dims");
    if (embedding.dims[1] > static_cast<std::uint64_t>(std::numeric_limits<std::int32_t>::max()))
        g.fail(embedding_name + " has too many rows");
    config.d_vocab = static_cast<index_t>(embedding.dims[1]);
    if (g.find("llama.vocab_size") && g.get_int("llama.vocab_size") != config.d_vocab)
        g.fail("llama.vocab_size = " + std::to_string(g.get_int("llama.vocab_size")) + " disagrees with the " +
               std::to_string(config.d_vocab) + " rows of " + embedding_name);
    config.tied_unembed = g.find_tensor(std::string(traits_of(parameter_id::unembed).gguf_name)) == nullptr;
    config.validate(where);
    if (g.find("llama.rope.dimension_count") && g.get_int("llama.rope.dimension_count") != config.d_head())
        g.fail("llama.rope.dimension_count = " + std::to_string(g.get_int("llama.rope.dimension_count")) +
               " differs from d_head " + std::to_string(config.d_head()) + " (partial rotary is not supported)");

    // Each block has nine tensors: check the count before sizing anything by block_count (up to 2^24).
    if (static_cast<std::uint64_t>(config.n_layers) > g.tensors().size() / 9)
        g.fail("llama.block_count = " + std::to_string(config.n_layers) + " needs " +
               std::to_string(9 * static_cast<std::uint64_t>(config.n_layers)) + " block tensors, but the file has " +
               std::to_string(g.tensors().size()) + " tensors");

    detail::weight_builder builder(g.file());
    detail::gguf_weight_reader read(g, builder);
    loaded_model out;
    out.config = config;
    model_weights& w = out.weights;
    w.layers.resize(static_cast<std::size_t>(config.n_layers));
    // Every weight the config implies, named and shaped by the parameter table.
    for_each_view(w, [&](parameter_id id, index_t layer, auto& view) {
        const parameter_traits& row = traits_of(id);
        if (!parameter_stored(row, config)) return;
        const std::string name =
            (layer < 0 ? std::string() : "blk." + std::to_string(layer) + ".") + std::string(row.gguf_name);
        const extents<2> e = row.shape(config);
        if constexpr (std::remove_cvref_t<decltype(view)>::rank == 1)
            view = read.vector(name, e[0]);
        else
            view = read.matrix(name, e[0], e[1]);
    });
    if (config.tied_unembed) w.unembed = w.token_embedding;
    w.storage = builder.finish();
    try {
        validate_weights(out.config, out.weights);
    } catch (const shape_error& e) {
        g.fail(e.what());
    }
    return out;
}

/// Maps, parses and loads a LLaMA GGUF model file; see load_gguf(const gguf_file&).
inline loaded_model load_gguf(const std::filesystem::path& path) { return load_gguf(gguf_file(path)); }

/// The embedded tokenizer vocabulary: tokenizer.ggml.tokens (U+2581 turned into ' '), .scores (default 0),
/// .token_type (default normal) and the bos/eos/unknown ids when present; throws format_error on inconsistencies.
inline vocabulary load_gguf_vocabulary(const gguf_file& g) {
    const auto& tokens = g.get_array("tokenizer.ggml.tokens", gguf_type::string);
    if (tokens.empty()) g.fail("tokenizer.ggml.tokens is empty");
    if (tokens.size() > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()))
        g.fail("tokenizer.ggml.tokens has too many entries");
    const std::size_t n = tokens.size();
    vocabulary v;
    v.pieces.reserve(n);
    for (const gguf_value& t : tokens) {
        const std::string* piece = t.as_string();  // never null: get_array checked the element type
        v.pieces.push_back(piece ? detail::spaces_from_u2581(*piece) : std::string());
    }
    v.scores.assign(n, 0.0f);
    if (g.find("tokenizer.ggml.scores")) {
        const auto& scores = g.get_array("tokenizer.ggml.scores", gguf_type::float32);
        if (scores.size() != n)
            g.fail("tokenizer.ggml.scores has " + std::to_string(scores.size()) + " entries for " + std::to_string(n) +
                   " tokens");
        for (std::size_t i = 0; i < n; ++i) v.scores[i] = static_cast<float>(*scores[i].as_float());  // was float32
    }
    v.kinds.assign(n, token_kind::normal);
    if (g.find("tokenizer.ggml.token_type")) {
        const auto& types = g.get_array("tokenizer.ggml.token_type", gguf_type::int32);
        if (types.size() != n)
            g.fail("tokenizer.ggml.token_type has " + std::to_string(types.size()) + " entries for " +
                   std::to_string(n) + " tokens");
        for (std::size_t i = 0; i < n; ++i) {
            const std::int64_t k = *types[i].as_int();
            if (k < 0 || k > 6)
                g.fail("tokenizer.ggml.token_type[" + std::to_string(i) + "] = " + std::to_string(k) + " is unknown");
            // 0 is llama.cpp's "undefined"; treat it as an ordinary piece.
            v.kinds[i] = k == 0 ? token_kind::normal : static_cast<token_kind>(k);
        }
    }
    const auto special = [&](const char* key, std::int32_t& id) {
        if (!g.find(key)) return;
        const std::int64_t value = g.get_int(key);
        if (value < 0 || value >= static_cast<std::int64_t>(n))
            g.fail(std::string(key) + " = " + std::to_string(value) + " is not a token id (vocabulary of " +
                   std::to_string(n) + ")");
        id = static_cast<std::int32_t>(value);
    };
    special("tokenizer.ggml.bos_token_id", v.bos_id);
    special("tokenizer.ggml.eos_token_id", v.eos_id);
    special("tokenizer.ggml.unknown_token_id", v.unknown_id);
    return v;
}

/// Maps and parses `path` and returns its embedded tokenizer vocabulary.
inline vocabulary load_gguf_vocabulary(const std::filesystem::path& path) {
    return load_gguf_vocabulary(gguf_file(path));
}

MECHLENS_END_NAMESPACE
