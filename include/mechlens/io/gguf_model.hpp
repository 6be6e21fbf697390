#pragma once
/// @file
/// LLaMA and GPT-2 models (llama.cpp's tensor names) and sentencepiece-style vocabularies from GGUF files.

#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "mechlens/io/ggml_quants.hpp"
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

/// The tensor `t` of `g` as a matrix of the blocks kernels::encoded_linear multiplies by (Q8_0, Q4_K or Q6_K, two
/// dims, whole blocks per row), else nothing. The blocks stay in the file's mapping; `decoded` is left null.
inline std::optional<kernels::encoded_matrix> gguf_encoded_matrix(const gguf_file& g, const gguf_tensor_info& t) {
    kernels::block_format format{};
    if (t.type == ggml_type::q8_0)
        format = kernels::block_format::q8_0;
    else if (t.type == ggml_type::q4_k)
        format = kernels::block_format::q4_k;
    else if (t.type == ggml_type::q6_k)
        format = kernels::block_format::q6_k;
    else
        return std::nullopt;
    if (t.dims.size() != 2 || t.dims[0] % static_cast<std::uint64_t>(kernels::block_elements(format)) != 0)
        return std::nullopt;
    kernels::encoded_matrix m;
    m.blocks = g.tensor_data(t);
    m.format = format;
    m.rows = static_cast<index_t>(t.dims[1]);  // t.n_elements, the product, is bounded by the file size
    m.depth = static_cast<index_t>(t.dims[0]);
    m.row_bytes = static_cast<std::size_t>(m.depth / kernels::block_elements(format)) * kernels::block_bytes(format);
    return m;
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

    /// Rows [first, first + rows) of the (total_rows, cols) matrix `name` (a part of a fused tensor, zero-copy).
    tensor_view<const float, 2> matrix_rows(const std::string& name, index_t total_rows, index_t cols, index_t first,
                                            index_t rows) {
        const tensor_view<const float, 2> whole = matrix(name, total_rows, cols);
        return tensor_view<const float, 2>(whole.data() + first * cols, {rows, cols});
    }

    /// Elements [first, first + n) of the vector `name` of length total (a part of a fused bias).
    tensor_view<const float, 1> vector_part(const std::string& name, index_t total, index_t first, index_t n) {
        const tensor_view<const float, 1> whole = vector(name, total);
        return tensor_view<const float, 1>(whole.data() + first, {n});
    }

    /// The matrices read so far whose blocks a kernel multiplies by directly (model_weights::encoded).
    [[nodiscard]] std::vector<kernels::encoded_matrix> take_encoded() { return std::move(encoded_); }

    /// n zeros owned by the builder (a weight the format does not store, such as GPT-2's unembedding bias).
    tensor_view<const float, 1> zeros(index_t n) { return tensor_view<const float, 1>(builder_.zeros(n), {n}); }

private:
    static std::string dims_text(const gguf_tensor_info& t) {
        std::string s = "[";
        for (std::size_t i = 0; i < t.dims.size(); ++i) s += (i ? ", " : "") + std::to_string(t.dims[i]);
        return s + "]";
    }

    const float* floats(const gguf_tensor_info& t) {
        // A fused tensor is read once per part: convert (or realign) it only once.
        if (const auto seen = converted_.find(t.name); seen != converted_.end()) return seen->second;
        const auto count = static_cast<index_t>(t.n_elements);  // bounded by the file size, checked by gguf_file
        const float* out = nullptr;
        if (t.type == ggml_type::f32)
            out = builder_.f32(g_.tensor_data(t), count);
        else if (t.type == ggml_type::f16)
            out = builder_.f16(g_.tensor_data(t), count);
        else if (std::optional<kernels::encoded_matrix> blocks = gguf_encoded_matrix(g_, t)) {
            builder_.on_demand(*blocks);  // the products read the blocks; the floats are decoded only when read
            out = blocks->decoded;
            encoded_.push_back(*blocks);
        } else if (ggml_type_decodable(t.type)) {
            float* decoded = builder_.decoded(count);
            dequantize_ggml(t.type, g_.tensor_data(t), t.n_elements, decoded);  // whole blocks: checked by gguf_file
            out = decoded;
        } else {
            g_.fail("unsupported tensor type " + to_string(t.type) + " for " + t.name +
                    " (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K load)");
        }
        converted_.emplace(t.name, out);
        return out;
    }

    const gguf_file& g_;
    weight_builder& builder_;
    std::vector<kernels::encoded_matrix> encoded_;
    std::map<std::string, const float*, std::less<>> converted_;
};

}  // namespace detail

namespace detail {

/// A parameter row that a GGUF architecture stores as one part of a fused tensor: llama.cpp's gpt2 keeps Q, K and V
/// as the rows of one `attn_qkv.weight` (Q's rows first) and their biases as one `attn_qkv.bias`.
struct gguf_fused_row {
    parameter_id id;              ///< The row read from the fused tensor.
    std::string_view fused_name;  ///< The fused tensor's name (block rows are prefixed with `blk.L.`).
    int part;                     ///< Its place in the fused tensor: parts are stacked along the output axis.
};

/// llama.cpp's gpt2 fused tensors.
inline constexpr std::array<gguf_fused_row, 6> gguf_gpt2_fused{{
    {parameter_id::w_q, "attn_qkv.weight", 0},
    {parameter_id::w_k, "attn_qkv.weight", 1},
    {parameter_id::w_v, "attn_qkv.weight", 2},
    {parameter_id::b_q, "attn_qkv.bias", 0},
    {parameter_id::b_k, "attn_qkv.bias", 1},
    {parameter_id::b_v, "attn_qkv.bias", 2},
}};

/// What differs between the GGUF architectures load_gguf reads; everything else is the parameter table's.
struct gguf_architecture {
    std::string_view name;                  ///< general.architecture, also the prefix of its metadata keys.
    std::size_t block_tensors;              ///< Tensors per block in a complete file (bounds block_count early).
    std::span<const gguf_fused_row> fused;  ///< Rows stored as parts of fused tensors.
    model_config (*config)(const gguf_file&);  ///< The hyper-parameters and variant fields from the metadata.
};

/// The vocabulary size: the rows of token_embd.weight (the name the parameter table gives).
inline index_t gguf_vocab_rows(const gguf_file& g) {
    const std::string embedding_name(traits_of(parameter_id::token_embedding).gguf_name);
    const gguf_tensor_info& embedding = g.tensor(embedding_name);
    if (embedding.dims.size() != 2) g.fail("tensor '" + embedding_name + "' must have 2 dims");
    if (embedding.dims[1] > static_cast<std::uint64_t>(std::numeric_limits<std::int32_t>::max()))
        g.fail(embedding_name + " has too many rows");
    return static_cast<index_t>(embedding.dims[1]);
}

/// llama.* metadata: RMSNorm, rotary positions with adjacent pairs, gated SiLU MLP, no biases.
inline model_config gguf_llama_config(const gguf_file& g) {
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
    config.rope_theta = gguf_float(g, "llama.rope.freq_base", 10000.0);
    config.norm_eps = gguf_float(g, "llama.attention.layer_norm_rms_epsilon", 1e-5);
    config.rope = rope_layout::adjacent_pairs;
    config.d_vocab = gguf_vocab_rows(g);
    if (g.find("llama.vocab_size") && g.get_int("llama.vocab_size") != config.d_vocab)
        g.fail("llama.vocab_size = " + std::to_string(g.get_int("llama.vocab_size")) + " disagrees with the " +
               std::to_string(config.d_vocab) + " rows of token_embd.weight");
    return config;
}

/// gpt2.* metadata (llama.cpp's GPT-2): LayerNorm with biases, learned positions, a plain MLP with the tanh GELU,
/// biases on every linear layer; the unembedding has no bias in the file (zeros).
inline model_config gguf_gpt2_config(const gguf_file& g) {
    model_config config;
    config.d_model = g.get_int("gpt2.embedding_length");
    config.n_layers = g.get_int("gpt2.block_count");
    config.d_mlp = g.get_int("gpt2.feed_forward_length");
    config.n_heads = g.get_int("gpt2.attention.head_count");
    config.n_kv_heads = g.get_int("gpt2.attention.head_count_kv", config.n_heads);
    config.n_ctx = g.get_int("gpt2.context_length");
    config.norm_eps = gguf_float(g, "gpt2.attention.layer_norm_epsilon", 1e-5);
    config.norm = norm_kind::layer;
    config.positions = positional_kind::learned;
    config.mlp = mlp_kind::plain_gelu;
    config.linear_biases = true;
    config.d_vocab = gguf_vocab_rows(g);
    return config;
}

/// The GGUF architectures load_gguf reads.
inline constexpr std::array<gguf_architecture, 2> gguf_architectures{{
    {"llama", 9, {}, gguf_llama_config},
    {"gpt2", 12, gguf_gpt2_fused, gguf_gpt2_config},
}};

}  // namespace detail

/// Loads a model from a parsed GGUF file (F32 tensors viewed in place; F16, BF16 and quantised ones decoded to
/// float, io/ggml_quants.hpp), of general.architecture
/// "llama" or "gpt2" (llama.cpp's tensor names and metadata keys; anything else is a format_error).
///
/// llama: reads llama.* hyper-parameters (head_count_kv defaults to head_count, rope.freq_base to 10000,
/// layer_norm_rms_epsilon to 1e-5); rotary pairs are adjacent, as in llama.cpp's normal rope.
/// gpt2: reads gpt2.* hyper-parameters (layer_norm_epsilon defaults to 1e-5); Q, K and V are the row blocks of the
/// fused blk.L.attn_qkv.weight and .bias (viewed in place, no copy); LayerNorm, learned positions, tanh GELU,
/// biases everywhere, and a zero unembedding bias unless the file has output.bias.
/// Both: the vocabulary size comes from token_embd.weight; a missing output.weight means the unembedding is tied to
/// the embedding.
inline loaded_model load_gguf(const gguf_file& g) {
    const std::string where = g.path().string();
    const std::string& arch = g.get_string("general.architecture");
    const detail::gguf_architecture* found = nullptr;
    std::string known;
    for (const detail::gguf_architecture& a : detail::gguf_architectures) {
        if (a.name == arch) found = &a;
        known.append(known.empty() ? "'" : ", '").append(a.name).append("'");
    }
    if (found == nullptr) g.fail("architecture '" + arch + "' is not supported (only " + known + ")");
    const detail::gguf_architecture& architecture = *found;

    model_config config = architecture.config(g);
    config.tied_unembed = g.find_tensor(std::string(traits_of(parameter_id::unembed).gguf_name)) == nullptr;
    config.validate(where);
    if (arch == "llama" && g.find("llama.rope.dimension_count") &&
        g.get_int("llama.rope.dimension_count") != config.d_head())
        g.fail("llama.rope.dimension_count = " + std::to_string(g.get_int("llama.rope.dimension_count")) +
               " differs from d_head " + std::to_string(config.d_head()) + " (partial rotary is not supported)");

    // Check the tensor count before sizing anything by block_count (up to 2^24).
    if (static_cast<std::uint64_t>(config.n_layers) > g.tensors().size() / architecture.block_tensors)
        g.fail(arch + ".block_count = " + std::to_string(config.n_layers) + " needs " +
               std::to_string(architecture.block_tensors * static_cast<std::uint64_t>(config.n_layers)) +
               " block tensors, but the file has " + std::to_string(g.tensors().size()) + " tensors");

    detail::weight_builder builder(g.file());
    detail::gguf_weight_reader read(g, builder);
    loaded_model out;
    out.config = config;
    model_weights& w = out.weights;
    w.layers.resize(static_cast<std::size_t>(config.n_layers));
    // Every weight the config implies, named and shaped by the parameter table (or a part of a fused tensor).
    for_each_view(w, [&](parameter_id id, index_t layer, auto& view) {
        const parameter_traits& row = traits_of(id);
        if (!parameter_stored(row, config)) return;
        const std::string prefix = layer < 0 ? std::string() : "blk." + std::to_string(layer) + ".";
        const extents<2> e = row.shape(config);
        constexpr bool is_vector = std::remove_cvref_t<decltype(view)>::rank == 1;
        for (const detail::gguf_fused_row& part : architecture.fused) {
            if (part.id != id) continue;
            // The part's first row is the sum of the earlier parts' rows; the fused tensor holds all of them.
            index_t first = 0, total = 0;
            for (const detail::gguf_fused_row& other : architecture.fused) {
                if (other.fused_name != part.fused_name) continue;
                const index_t rows = traits_of(other.id).shape(config)[0];
                if (other.part < part.part) first += rows;
                total += rows;
            }
            const std::string name = prefix + std::string(part.fused_name);
            if constexpr (is_vector)
                view = read.vector_part(name, total, first, e[0]);
            else
                view = read.matrix_rows(name, total, e[1], first, e[0]);
            return;
        }
        const std::string name = prefix + std::string(row.gguf_name);
        if constexpr (is_vector) {
            // GPT-2 files have biases everywhere but on the unembedding: an absent one is zero.
            if (id == parameter_id::unembed_bias && g.find_tensor(name) == nullptr)
                view = read.zeros(e[0]);
            else
                view = read.vector(name, e[0]);
        } else {
            view = read.matrix(name, e[0], e[1]);
        }
    });
    if (config.tied_unembed) w.unembed = w.token_embedding;
    w.storage = builder.finish();
    w.encoded = read.take_encoded();
    w.on_demand = builder.take_on_demand();
    try {
        validate_weights(out.config, out.weights);
    } catch (const shape_error& e) {
        g.fail(e.what());
    }
    return out;
}

/// Maps, parses and loads a GGUF model file (llama or gpt2); see load_gguf(const gguf_file&).
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
