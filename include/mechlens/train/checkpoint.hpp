#pragma once
/// @file
/// Training checkpoints as `.safetensors`: one F32 tensor per parameter_layout entry (named like it), every
/// model_config field in `__metadata__`, caller metadata beside it, and optionally the AdamW state to resume
/// training bit for bit.

#include <charconv>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "mechlens/io/byte_reader.hpp"
#include "mechlens/io/safetensors.hpp"
#include "mechlens/model/config.hpp"
#include "mechlens/model/parameters.hpp"
#include "mechlens/train/optimizer.hpp"

MECHLENS_BEGIN_NAMESPACE

/// What load_checkpoint returns.
struct checkpoint {
    model_parameters parameters;                   ///< The model, config included.
    std::map<std::string, std::string> metadata;   ///< The caller's metadata (the "mechlens." keys removed).
    std::optional<adamw_state> optimizer;          ///< The AdamW state, when the file holds one.
};

namespace detail {

/// Prefix of the metadata keys the checkpoint format reserves.
inline constexpr std::string_view checkpoint_prefix = "mechlens.";
/// Name of the tensor of first moments, shape (size).
inline constexpr const char* checkpoint_m = "optimizer.adamw.m";
inline constexpr const char* checkpoint_v = "optimizer.adamw.v";           ///< (size) second moments
inline constexpr const char* checkpoint_step = "mechlens.optimizer.step";  ///< decimal step counter

/// "(64, 512)" for error messages.
inline std::string shape_text(const std::vector<index_t>& shape) {
    std::string out = "(";
    for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
    return out + ")";
}

/// Shortest text that reads back as the same float.
inline std::string float_text(float x) {
    char buffer[64];
    const auto result = std::to_chars(buffer, buffer + sizeof buffer, x);
    return std::string(buffer, result.ptr);
}

/// The text of every enum value, in declaration order.
inline constexpr std::string_view rope_names[] = {"adjacent_pairs", "split_halves"};
inline constexpr std::string_view norm_names[] = {"rms", "none"};      ///< norm_kind
inline constexpr std::string_view position_names[] = {"rotary", "learned"};  ///< positional_kind
inline constexpr std::string_view mlp_names[] = {"gated_silu", "plain_gelu", "none"};  ///< mlp_kind

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
    };
}

/// Reads model_config back from checkpoint metadata; format_error naming `where` for a missing or bad field.
class config_reader {
public:
    /// A reader over `metadata`; errors name `where`.
    config_reader(const std::map<std::string, std::string>& metadata, std::string where)
        : metadata_(metadata), where_(std::move(where)) {}

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
        if (error != std::errc() || end != s.data() + s.size() || s.empty())
            bad(name, s, "an integer");
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
    const std::uint64_t d = u(c.d_model), q = mul(u(c.n_heads), u(c.d_head())),
                        kv = mul(u(c.n_kv_heads), u(c.d_head())), norm = c.has_norm() ? d : 0;
    std::uint64_t layer = add(add(mul(q, d), mul(mul(2, kv), d)), add(mul(d, q), norm));
    if (!c.attn_only())
        layer = add(layer, add(norm, mul(mul(c.mlp == mlp_kind::gated_silu ? 3 : 2, u(c.d_mlp)), d)));
    std::uint64_t needed = add(mul(u(c.d_vocab), d), mul(u(c.n_layers), layer));
    if (!c.rotary()) needed = add(needed, mul(u(c.n_ctx), d));
    needed = add(needed, norm);
    if (!c.tied_unembed) needed = add(needed, mul(u(c.d_vocab), d));
    if (needed > static_cast<std::uint64_t>(std::numeric_limits<index_t>::max()))
        format_fail(where, "checkpoint config implies " + std::to_string(needed) + " parameters, too many to index");
}

}  // namespace detail

/// Writes `parameters` to a `.safetensors` file: F32 tensors named by parameter_layout (rank 1 or 2, in layout
/// order), every config field as "mechlens.config.<field>" metadata, and `metadata` beside them; with `optimizer`,
/// also its moments ("optimizer.adamw.m"/"optimizer.adamw.v", shape (size)) and "mechlens.optimizer.step".
/// Throws std::invalid_argument for an empty parameter set, caller keys starting "mechlens." or an optimizer of
/// another size; format_error naming the file when writing fails.
inline void save_checkpoint(const std::filesystem::path& path, const model_parameters& parameters,
                            const std::map<std::string, std::string>& metadata = {},
                            const adamw* optimizer = nullptr) {
    if (parameters.size() == 0) throw std::invalid_argument("save_checkpoint: empty model_parameters");
    std::map<std::string, std::string> all = detail::config_metadata(parameters.config());
    for (const auto& [key, value] : metadata) {
        if (key.rfind(detail::checkpoint_prefix, 0) == 0)
            throw std::invalid_argument("save_checkpoint: metadata key '" + key + "' uses the reserved prefix mechlens.");
        all[key] = value;
    }
    all["mechlens.format"] = "checkpoint";
    std::vector<safetensors_tensor_ref> tensors;
    const float* base = parameters.flat().data();
    for (const parameter_entry& e : parameters.layout()) {
        std::vector<index_t> shape{e.shape[0]};
        if (e.rank == 2) shape.push_back(e.shape[1]);
        tensors.push_back({e.name, std::move(shape), base + e.offset});
    }
    if (optimizer) {
        if (optimizer->size() != parameters.size())
            throw std::invalid_argument("save_checkpoint: optimizer of size " + std::to_string(optimizer->size()) +
                                        " for " + std::to_string(parameters.size()) + " parameters");
        tensors.push_back({detail::checkpoint_m, {optimizer->size()}, optimizer->m().data()});
        tensors.push_back({detail::checkpoint_v, {optimizer->size()}, optimizer->v().data()});
        all[detail::checkpoint_step] = std::to_string(optimizer->steps());
    }
    write_safetensors(path, tensors, all);
}

/// Writes `parameters` and the state of `optimizer`; see the overload without it.
inline void save_checkpoint(const std::filesystem::path& path, const model_parameters& parameters,
                            const adamw& optimizer, const std::map<std::string, std::string>& metadata = {}) {
    save_checkpoint(path, parameters, metadata, &optimizer);
}

/// Reads a checkpoint written by save_checkpoint. Throws format_error naming the file when it is not a valid
/// safetensors file (truncated, malformed), when a config field is missing or invalid, or when a tensor is missing,
/// unexpected, or of another shape than the config implies.
inline checkpoint load_checkpoint(const std::filesystem::path& path);

/// Checks the contents of a parsed checkpoint file and builds the checkpoint (errors name `where`); the part of
/// load_checkpoint after read_safetensors.
inline checkpoint checkpoint_from_safetensors(safetensors_file file, const std::string& where) {
    const detail::config_reader r(file.metadata, where);
    if (const auto it = file.metadata.find("mechlens.format"); it == file.metadata.end() || it->second != "checkpoint")
        detail::format_fail(where, "not a mechlens checkpoint (metadata mechlens.format is not 'checkpoint')");
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
    c.rope = r.choice<rope_layout>("rope", detail::rope_names);
    c.norm = r.choice<norm_kind>("norm", detail::norm_names);
    c.positions = r.choice<positional_kind>("positions", detail::position_names);
    c.mlp = r.choice<mlp_kind>("mlp", detail::mlp_names);
    c.validate(where);
    detail::check_checkpoint_size(c, file, where);

    std::map<std::string, safetensors_tensor*> by_name;
    for (safetensors_tensor& t : file.tensors) by_name[t.name] = &t;
    // Every parameter tensor must be in the file with its shape before model_parameters allocates: a hostile
    // config then cannot ask for more memory than the file's own tensors occupy.
    for (const parameter_entry& e : parameter_layout(c)) {
        const auto it = by_name.find(e.name);
        if (it == by_name.end()) detail::format_fail(where, "checkpoint lacks tensor '" + e.name + "'");
        std::vector<index_t> expected{e.shape[0]};
        if (e.rank == 2) expected.push_back(e.shape[1]);
        if (it->second->shape != expected)
            detail::format_fail(where, "tensor '" + e.name + "' has shape " + detail::shape_text(it->second->shape) +
                                           ", the config implies " + detail::shape_text(expected));
    }

    checkpoint out{model_parameters(c), {}, std::nullopt};
    float* base = out.parameters.flat().data();
    for (const parameter_entry& e : out.parameters.layout()) {
        const auto it = by_name.find(e.name);
        std::memcpy(base + e.offset, it->second->values.data(), it->second->values.size() * sizeof(float));
        by_name.erase(it);
    }

    const auto m = by_name.find(detail::checkpoint_m), v = by_name.find(detail::checkpoint_v);
    const auto step = file.metadata.find(detail::checkpoint_step);
    const bool has_m = m != by_name.end(), has_v = v != by_name.end(), has_step = step != file.metadata.end();
    if (has_m || has_v || has_step) {
        if (!(has_m && has_v && has_step))
            detail::format_fail(where, "incomplete optimizer state (needs optimizer.adamw.m, optimizer.adamw.v and "
                                       "mechlens.optimizer.step)");
        const std::vector<index_t> expected{out.parameters.size()};
        for (const auto& it : {m, v})
            if (it->second->shape != expected)
                detail::format_fail(where, "tensor '" + it->first + "' has shape " +
                                               detail::shape_text(it->second->shape) + ", expected " +
                                               detail::shape_text(expected));
        adamw_state state;
        const std::string& s = step->second;
        const auto [end, error] = std::from_chars(s.data(), s.data() + s.size(), state.step);
        if (s.empty() || error != std::errc() || end != s.data() + s.size() || state.step < 0)
            detail::format_fail(where, "metadata mechlens.optimizer.step = '" + s.substr(0, 100) +
                                           "' is not a non-negative integer");
        state.m = std::move(m->second->values);
        state.v = std::move(v->second->values);
        out.optimizer = std::move(state);
        by_name.erase(detail::checkpoint_m);
        by_name.erase(detail::checkpoint_v);
    }
    if (!by_name.empty())
        detail::format_fail(where, "unexpected tensor '" + by_name.begin()->first.substr(0, 200) +
                                       "' (not in the parameter layout of this config)");
    for (auto& [key, value] : file.metadata)
        if (key.rfind(detail::checkpoint_prefix, 0) != 0) out.metadata[key] = std::move(value);
    return out;
}

inline checkpoint load_checkpoint(const std::filesystem::path& path) {
    // read_safetensors checks the container: bounds, dtype F32, exact tiling.
    return checkpoint_from_safetensors(read_safetensors(path), path.string());
}

MECHLENS_END_NAMESPACE
