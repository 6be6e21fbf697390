#pragma once
/// @file
/// The training-checkpoint file format (what save_checkpoint writes: a `.safetensors` file with one F32 tensor per
/// parameter_layout entry and every model_config field in `__metadata__`), and a reader of the model in it that
/// needs none of the training stack: load_model opens checkpoints through load_checkpoint_model, and
/// train/checkpoint.hpp adds the optimizer state on top of the same checks.

#include <charconv>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "mechlens/io/byte_reader.hpp"
#include "mechlens/io/safetensors.hpp"
#include "mechlens/model/config.hpp"
#include "mechlens/model/parameters.hpp"
#include "mechlens/model/weights.hpp"

MECHLENS_BEGIN_NAMESPACE

namespace detail {

/// Prefix of the metadata keys the checkpoint format reserves.
inline constexpr std::string_view checkpoint_prefix = "mechlens.";
/// Metadata key marking a checkpoint, and its value.
inline constexpr const char* checkpoint_format_key = "mechlens.format";
inline constexpr const char* checkpoint_format_value = "checkpoint";  ///< The value of checkpoint_format_key.
/// Name of the tensor of first moments, shape (size).
inline constexpr const char* checkpoint_m = "optimizer.adamw.m";
inline constexpr const char* checkpoint_v = "optimizer.adamw.v";           ///< (size) second moments
inline constexpr const char* checkpoint_step = "mechlens.optimizer.step";  ///< decimal step counter

/// Shortest text that reads back as the same float.
inline std::string float_text(float x) {
    char buffer[64];
    const auto result = std::to_chars(buffer, buffer + sizeof buffer, x);
    return std::string(buffer, result.ptr);
}

/// The text of every enum value, in declaration order.
inline constexpr std::string_view rope_names[] = {"adjacent_pairs", "split_halves"};
inline constexpr std::string_view norm_names[] = {"rms", "none", "layer"};            ///< norm_kind
inline constexpr std::string_view position_names[] = {"rotary", "learned"};          ///< positional_kind
inline constexpr std::string_view mlp_names[] = {"gated_silu", "plain_gelu", "none", "plain_relu",
                                                 "plain_gelu_erf"};                   ///< mlp_kind
inline constexpr std::string_view attention_names[] = {"causal", "bidirectional"};   ///< attention_dir

/// Every model_config field as "mechlens.config.<field>" metadata.
inline std::map<std::string, std::string> config_metadata(const model_config& c) {
    const std::string p = "mechlens.config.";
    return {
        {p + "d_model", std::to_string(c.d_model)},
        {p + "n_layers", std::to_string(c.n_layers)},
        {p + "n_heads", std::to_string(c.n_heads)},
        {p + "n_kv_heads", std::to_string(c.n_kv_heads)},
        {p + "d_mlp", std::to_string(c.d_mlp)},
        {p + "d_vocab", std::to_string(c.d_vocab)},
        {p + "n_ctx", std::to_string(c.n_ctx)},
        {p + "rope_theta", float_text(c.rope_theta)},
        {p + "norm_eps", float_text(c.norm_eps)},
        {p + "tied_unembed", c.tied_unembed ? "true" : "false"},
        {p + "rope", std::string(rope_names[static_cast<std::size_t>(c.rope)])},
        {p + "norm", std::string(norm_names[static_cast<std::size_t>(c.norm)])},
        {p + "positions", std::string(position_names[static_cast<std::size_t>(c.positions)])},
        {p + "mlp", std::string(mlp_names[static_cast<std::size_t>(c.mlp)])},
        {p + "linear_biases", c.linear_biases ? "true" : "false"},
        {p + "attention", std::string(attention_names[static_cast<std::size_t>(c.attention)])},
        {p + "d_vocab_out", std::to_string(c.d_vocab_out)},
        {p + "d_head_size", std::to_string(c.d_head_size)},
        {p + "parallel_attn_mlp", c.parallel_attn_mlp ? "true" : "false"},
        {p + "rotary_dim_size", std::to_string(c.rotary_dim_size)},
    };
}

/// Reads model_config back from checkpoint metadata; format_error naming `where` for a missing or bad field.
class config_reader {
public:
    /// A reader over `metadata`; errors name `where`.
    config_reader(const std::map<std::string, std::string>& metadata, std::string where)
        : metadata_(metadata), where_(std::move(where)) {}

    /// True when field `name` is present (fields added after the first format are optional).
    [[nodiscard]] bool has(const std::string& name) const { return metadata_.count("mechlens.config." + name) != 0; }
    /// The text of field `name`.
    [[nodiscard]] const std::string& text(const std::string& name) const {
        const auto it = metadata_.find("mechlens.config." + name);
        if (it == metadata_.end()) format_fail(where_, "checkpoint metadata lacks mechlens.config." + name);
        return it->second;
    }
    /// Field `name` as a whole decimal number.
    [[nodiscard]] index_t integer(const std::string& name) const {
        const std::string& s = text(name);
        index_t value = 0;
        const auto [end, error] = std::from_chars(s.data(), s.data() + s.size(), value);
        if (error != std::errc() || end != s.data() + s.size() || s.empty()) bad(name, s, "an integer");
        return value;
    }
    /// Field `name` as a float.
    [[nodiscard]] float real(const std::string& name) const {
        const std::string& s = text(name);
        float value = 0.0f;
        const auto [end, error] = std::from_chars(s.data(), s.data() + s.size(), value);
        if (error != std::errc() || end != s.data() + s.size() || s.empty()) bad(name, s, "a number");
        return value;
    }
    /// Field `name` as the enum whose value texts are `names`.
    template <class Enum, std::size_t N>
    [[nodiscard]] Enum choice(const std::string& name, const std::string_view (&names)[N]) const {
        const std::string& s = text(name);
        for (std::size_t i = 0; i < N; ++i)
            if (s == names[i]) return static_cast<Enum>(i);
        std::string expected;
        for (std::size_t i = 0; i < N; ++i) expected += (i ? ", " : "") + std::string(names[i]);
        bad(name, s, "one of " + expected);
    }
    /// Field `name` as "true" or "false".
    [[nodiscard]] bool boolean(const std::string& name) const {
        const std::string& s = text(name);
        if (s == "true") return true;
        if (s == "false") return false;
        bad(name, s, "true or false");
    }

private:
    [[noreturn]] void bad(const std::string& name, const std::string& value, const std::string& expected) const {
        format_fail(where_, "checkpoint metadata mechlens.config." + name + " = '" + value.substr(0, 100) +
                                "' is not " + expected);
    }
    const std::map<std::string, std::string>& metadata_;
    std::string where_;
};

/// Throws format_error when the parameter layout of `c` could not come from `file`: more blocks than its tensors
/// allow (four or more each), or a parameter count that overflows index_t. Both are checked before
/// parameter_layout, whose sums are unchecked, and before anything is sized by the config.
inline void check_checkpoint_size(const model_config& c, const safetensors_file& file, const std::string& where) {
    const auto u = [](index_t v) { return static_cast<std::uint64_t>(v); };
    // Every block has at least four tensors (w_q, w_k, w_v, w_o).
    if (u(c.n_layers) > file.tensors.size() / 4)
        format_fail(where, "checkpoint config has " + std::to_string(c.n_layers) + " layers, but the file holds only " +
                               std::to_string(file.tensors.size()) + " tensors");
    const auto mul = [&](std::uint64_t a, std::uint64_t b) { return checked_mul(a, b, where, "checkpoint config"); };
    const auto add = [&](std::uint64_t a, std::uint64_t b) { return checked_add(a, b, where, "checkpoint config"); };
    // The float count of parameter_layout, in checked arithmetic.
    // validate() bounds every extent by 2^24, so one row's size fits; the sum over blocks is what may not.
    std::uint64_t needed = 0;
    for (const parameter_traits& row : parameter_table) {
        if (!parameter_stored(row, c)) continue;
        const std::uint64_t size = u(parameter_size(row, c));
        needed = add(needed, row.per_block ? mul(u(c.n_layers), size) : size);
    }
    if (needed > static_cast<std::uint64_t>(std::numeric_limits<index_t>::max()))
        format_fail(where, "checkpoint config implies " + std::to_string(needed) + " parameters, too many to index");
}

/// What check_checkpoint found in a file that holds a valid checkpoint.
struct checkpoint_summary {
    model_config config;                         ///< From the "mechlens.config.*" metadata, validated.
    std::optional<std::int64_t> optimizer_step;  ///< With optimizer state (tensors checkpoint_m, checkpoint_v).
};

/// Checks a parsed safetensors file against the checkpoint format, before anything is sized by its config: the
/// mechlens.format marker, every config field, every parameter tensor with the shape the config implies, a complete
/// optimizer state (both moments, shaped (size), and a step) or none of it, and no other tensor. Throws
/// format_error naming `where` at the first problem.
inline checkpoint_summary check_checkpoint(const safetensors_file& file, const std::string& where) {
    const auto marker = file.metadata.find(checkpoint_format_key);
    if (marker == file.metadata.end())
        format_fail(where,
                    "not a mechlens checkpoint: the safetensors metadata lacks mechlens.format = 'checkpoint' "
                    "(written by save_checkpoint and `mechlens train`)");
    if (marker->second != checkpoint_format_value)
        format_fail(where, "not a mechlens checkpoint: metadata mechlens.format is '" + marker->second.substr(0, 100) +
                               "', expected 'checkpoint'");
    const config_reader r(file.metadata, where);
    model_config c;
    c.d_model = r.integer("d_model");
    c.n_layers = r.integer("n_layers");
    c.n_heads = r.integer("n_heads");
    c.n_kv_heads = r.integer("n_kv_heads");
    c.d_mlp = r.integer("d_mlp");
    c.d_vocab = r.integer("d_vocab");
    c.n_ctx = r.integer("n_ctx");
    c.rope_theta = r.real("rope_theta");
    c.norm_eps = r.real("norm_eps");
    c.tied_unembed = r.boolean("tied_unembed");
    c.rope = r.choice<rope_layout>("rope", rope_names);
    c.norm = r.choice<norm_kind>("norm", norm_names);
    c.positions = r.choice<positional_kind>("positions", position_names);
    c.mlp = r.choice<mlp_kind>("mlp", mlp_names);
    if (r.has("linear_biases")) c.linear_biases = r.boolean("linear_biases");
    if (r.has("attention")) c.attention = r.choice<attention_dir>("attention", attention_names);
    if (r.has("d_vocab_out")) c.d_vocab_out = r.integer("d_vocab_out");
    if (r.has("d_head_size")) c.d_head_size = r.integer("d_head_size");
    if (r.has("parallel_attn_mlp")) c.parallel_attn_mlp = r.boolean("parallel_attn_mlp");
    if (r.has("rotary_dim_size")) c.rotary_dim_size = r.integer("rotary_dim_size");
    c.validate(where);
    check_checkpoint_size(c, file, where);

    std::map<std::string_view, const safetensors_tensor*> by_name;
    for (const safetensors_tensor& t : file.tensors) by_name[t.name] = &t;
    // Every parameter tensor must be in the file with its shape before model_parameters allocates: a hostile
    // config then cannot ask for more memory than the file's own tensors occupy.
    index_t parameters = 0;
    for (const parameter_entry& e : parameter_layout(c)) {
        const auto it = by_name.find(e.name);
        if (it == by_name.end()) format_fail(where, "checkpoint lacks tensor '" + e.name + "'");
        std::vector<index_t> expected{e.shape[0]};
        if (e.rank == 2) expected.push_back(e.shape[1]);
        if (it->second->shape != expected)
            format_fail(where, "tensor '" + e.name + "' has shape " + format_shape(it->second->shape) +
                                   ", the config implies " + format_shape(expected));
        parameters += e.size();
        by_name.erase(it);
    }

    checkpoint_summary out{c, std::nullopt};
    const auto m = by_name.find(checkpoint_m), v = by_name.find(checkpoint_v);
    const auto step = file.metadata.find(checkpoint_step);
    const bool has_m = m != by_name.end(), has_v = v != by_name.end(), has_step = step != file.metadata.end();
    if (has_m || has_v || has_step) {
        if (!(has_m && has_v && has_step))
            format_fail(where,
                        "incomplete optimizer state (needs optimizer.adamw.m, optimizer.adamw.v and "
                        "mechlens.optimizer.step)");
        const std::vector<index_t> expected{parameters};
        for (const auto& it : {m, v})
            if (it->second->shape != expected)
                format_fail(where, "tensor '" + std::string(it->first) + "' has shape " +
                                       format_shape(it->second->shape) + ", expected " + format_shape(expected));
        std::int64_t value = 0;
        const std::string& s = step->second;
        const auto [end, error] = std::from_chars(s.data(), s.data() + s.size(), value);
        if (s.empty() || error != std::errc() || end != s.data() + s.size() || value < 0)
            format_fail(where,
                        "metadata mechlens.optimizer.step = '" + s.substr(0, 100) + "' is not a non-negative integer");
        out.optimizer_step = value;
        by_name.erase(checkpoint_m);
        by_name.erase(checkpoint_v);
    }
    if (!by_name.empty())
        format_fail(where, "unexpected tensor '" + std::string(by_name.begin()->first.substr(0, 200)) +
                               "' (not in the parameter layout of this config)");
    return out;
}

/// The parameter tensors of a file that passed check_checkpoint with config `c`, copied into one buffer.
inline model_parameters checkpoint_parameters(const safetensors_file& file, const model_config& c) {
    std::map<std::string_view, const safetensors_tensor*> by_name;
    for (const safetensors_tensor& t : file.tensors) by_name[t.name] = &t;
    model_parameters out(c);
    float* base = out.flat().data();
    for (const parameter_entry& e : out.layout()) {
        const std::vector<float>& values = by_name.at(e.name)->values;
        std::memcpy(base + e.offset, values.data(), values.size() * sizeof(float));
    }
    return out;
}

}  // namespace detail

/// The model in a parsed mechlens checkpoint (see load_checkpoint_model); errors name `where`.
inline loaded_model checkpoint_model_from_safetensors(const safetensors_file& file, const std::string& where) {
    const detail::checkpoint_summary summary = detail::check_checkpoint(file, where);
    const model_parameters parameters = detail::checkpoint_parameters(file, summary.config);
    // The views share ownership of the parameter buffer (model_weights::storage) and outlive `parameters`.
    return loaded_model{summary.config, parameters.weights()};
}

/// Loads the model in a training checkpoint written by save_checkpoint (`mechlens train --out`): its config and a
/// copy of its parameters, which the returned weights view and keep alive. The file is checked as load_checkpoint
/// checks it; optimizer state and caller metadata are ignored. Throws format_error naming the file when it is not
/// valid safetensors, or is safetensors but not a mechlens checkpoint (no "mechlens.format" metadata), or when a
/// config field or tensor is missing, malformed, unexpected or of another shape than the config implies.
inline loaded_model load_checkpoint_model(const std::filesystem::path& path) {
    return checkpoint_model_from_safetensors(read_safetensors(path), path.string());
}

MECHLENS_END_NAMESPACE
