#pragma once
/// @file
/// TransformerLens models: a directory holding `config.json` (HookedTransformerConfig fields, as `cfg.to_dict()`
/// writes them) and a state dict in TransformerLens's layout (`embed.W_E`, `blocks.0.attn.W_Q` (n_heads, d_model,
/// d_head), `blocks.0.mlp.W_in` (d_model, d_mlp), `unembed.W_U` (d_model, d_vocab_out), ...) as `.safetensors` or as
/// the `.pt` file `torch.save` wrote. The config becomes a model_config; each TransformerLens tensor is one row of
/// the table below, rearranged into the parameter table's (out_features, in_features) layout.

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "mechlens/io/json.hpp"
#include "mechlens/io/safetensors.hpp"
#include "mechlens/io/torch_state_dict.hpp"
#include "mechlens/model/parameters.hpp"
#include "mechlens/model/weights.hpp"
#include "mechlens/tensor/errors.hpp"

MECHLENS_BEGIN_NAMESPACE

/// How a TransformerLens tensor is laid out relative to its parameter-table row.
enum class transformerlens_layout : std::uint8_t {
    same,               ///< Identical row-major data: embeddings, norms, b_O, b_in, b_out, b_U.
    heads_in_out,       ///< W_Q/W_K/W_V (heads, d_model, d_head) -> (heads * d_head, d_model).
    heads_out_in,       ///< W_O (heads, d_head, d_model) -> (d_model, heads * d_head).
    heads_flat,         ///< b_Q/b_K/b_V (heads, d_head) -> (heads * d_head).
    transposed,         ///< W_in, W_gate (d_model, d_mlp), W_out (d_mlp, d_model), W_U (d_model, vocab): (in, out).
};

/// One row of the name table: a TransformerLens state-dict name (block rows after `blocks.L.`) for a parameter.
struct transformerlens_name {
    parameter_id id;                ///< The parameter-table row.
    std::string_view name;          ///< TransformerLens's name.
    transformerlens_layout layout;  ///< How to rearrange it.
};

/// TransformerLens's names of mechlens's parameters.
inline constexpr transformerlens_name transformerlens_names[] = {
    {parameter_id::token_embedding, "embed.W_E", transformerlens_layout::same},
    {parameter_id::pos_embedding, "pos_embed.W_pos", transformerlens_layout::same},
    {parameter_id::attn_norm, "ln1.w", transformerlens_layout::same},
    {parameter_id::attn_norm_bias, "ln1.b", transformerlens_layout::same},
    {parameter_id::w_q, "attn.W_Q", transformerlens_layout::heads_in_out},
    {parameter_id::b_q, "attn.b_Q", transformerlens_layout::heads_flat},
    {parameter_id::w_k, "attn.W_K", transformerlens_layout::heads_in_out},
    {parameter_id::b_k, "attn.b_K", transformerlens_layout::heads_flat},
    {parameter_id::w_v, "attn.W_V", transformerlens_layout::heads_in_out},
    {parameter_id::b_v, "attn.b_V", transformerlens_layout::heads_flat},
    {parameter_id::w_o, "attn.W_O", transformerlens_layout::heads_out_in},
    {parameter_id::b_o, "attn.b_O", transformerlens_layout::same},
    {parameter_id::mlp_norm, "ln2.w", transformerlens_layout::same},
    {parameter_id::mlp_norm_bias, "ln2.b", transformerlens_layout::same},
    {parameter_id::w_gate, "mlp.W_gate", transformerlens_layout::transposed},
    {parameter_id::w_up, "mlp.W_in", transformerlens_layout::transposed},
    {parameter_id::b_up, "mlp.b_in", transformerlens_layout::same},
    {parameter_id::w_down, "mlp.W_out", transformerlens_layout::transposed},
    {parameter_id::b_down, "mlp.b_out", transformerlens_layout::same},
    {parameter_id::final_norm, "ln_final.w", transformerlens_layout::same},
    {parameter_id::final_norm_bias, "ln_final.b", transformerlens_layout::same},
    {parameter_id::unembed, "unembed.W_U", transformerlens_layout::transposed},
    {parameter_id::unembed_bias, "unembed.b_U", transformerlens_layout::same},
};

namespace detail {

/// What the state dict holds besides the parameters (buffers TransformerLens registers, never weights).
inline bool tl_ignored_tensor(std::string_view name) {
    for (std::string_view suffix : {".mask", ".IGNORE", ".rotary_sin", ".rotary_cos"})
        if (name.size() >= suffix.size() && name.substr(name.size() - suffix.size()) == suffix) return true;
    return false;
}

}  // namespace detail

/// The norm weights a TransformerLens config implies but its state dict leaves out (LNPre, RMSPre: no gain, no bias).
struct transformerlens_config {
    model_config config;       ///< The model's hyper-parameters.
    bool norm_weights = true;  ///< False for LNPre/RMSPre: gains are 1 and biases 0, absent from the state dict.
};

/// The model_config of a HookedTransformerConfig (the object `cfg.to_dict()` writes to config.json). Throws
/// format_error naming `where` for a field that is missing or has the wrong type, and for options mechlens does not
/// implement (local attention, other positional embeddings, other attention scales).
inline transformerlens_config read_transformerlens_config(const json_value& cfg, const std::string& where) {
    auto fail = [&](const std::string& what) { detail::format_fail(where, what); };
    if (!cfg.is_object()) fail("config.json is not a JSON object");
    transformerlens_config out;
    model_config& c = out.config;
    c.n_layers = detail::json_integer(cfg, "n_layers");
    c.d_model = detail::json_integer(cfg, "d_model");
    c.n_ctx = detail::json_integer(cfg, "n_ctx");
    c.n_heads = detail::json_integer(cfg, "n_heads");
    c.d_vocab = detail::json_integer(cfg, "d_vocab");
    const index_t d_head = detail::json_integer(cfg, "d_head");
    if (c.n_heads <= 0 || d_head <= 0) fail("n_heads and d_head must be positive");
    if (d_head * c.n_heads != c.d_model) c.d_head_size = d_head;  // heads need not tile the residual stream
    c.n_kv_heads = c.n_heads;
    if (const json_value* kv = cfg.find("n_key_value_heads"); kv != nullptr && !kv->is_null())
        c.n_kv_heads = static_cast<index_t>(kv->as_int64());
    if (const json_value* out_vocab = cfg.find("d_vocab_out"); out_vocab != nullptr && !out_vocab->is_null())
        if (const std::int64_t v = out_vocab->as_int64(); v > 0 && v != c.d_vocab) c.d_vocab_out = static_cast<index_t>(v);
    c.norm_eps = static_cast<float>(cfg.find("eps") != nullptr ? cfg.at("eps").as_double() : 1e-5);
    c.tied_unembed = false;

    const std::string norm = detail::json_text_or(cfg, "normalization_type", "none");
    if (norm == "LN" || norm == "LNPre")
        c.norm = norm_kind::layer;
    else if (norm == "RMS" || norm == "RMSPre")
        c.norm = norm_kind::rms;
    else if (norm == "none")
        c.norm = norm_kind::none;
    else
        fail("normalization_type '" + norm.substr(0, 40) + "' is not one of LN, LNPre, RMS, RMSPre or null");
    out.norm_weights = norm == "LN" || norm == "RMS";

    const bool gated = detail::json_flag_or(cfg, "gated_mlp", false);
    if (detail::json_flag_or(cfg, "attn_only", false)) {
        c.mlp = mlp_kind::none;
    } else {
        c.d_mlp = detail::json_integer(cfg, "d_mlp");
        const std::string act = detail::json_text_or(cfg, "act_fn", "");
        if (gated && act == "silu")
            c.mlp = mlp_kind::gated_silu;
        else if (!gated && act == "relu")
            c.mlp = mlp_kind::plain_relu;
        else if (!gated && act == "gelu")
            c.mlp = mlp_kind::plain_gelu_erf;
        else if (!gated && (act == "gelu_new" || act == "gelu_pytorch_tanh"))
            c.mlp = mlp_kind::plain_gelu;
        else
            fail(std::string("act_fn '") + act.substr(0, 40) + "'" + (gated ? " with gated_mlp" : "") +
                 " is not supported (relu, gelu, gelu_new; silu when gated)");
    }
    // TransformerLens gives every attention layer and every plain MLP its biases; a gated MLP's are zero (checked
    // when the weights are read).
    c.linear_biases = c.mlp != mlp_kind::gated_silu;

    const std::string positions = detail::json_text_or(cfg, "positional_embedding_type", "standard");
    if (positions == "standard") {
        c.positions = positional_kind::learned;
    } else if (positions == "rotary") {
        c.positions = positional_kind::rotary;
        if (const json_value* dim = cfg.find("rotary_dim"); dim != nullptr && !dim->is_null()) {
            const std::int64_t rotary = dim->as_int64();
            if (rotary <= 0 || rotary > d_head)
                fail("rotary_dim " + std::to_string(rotary) + " is outside [1, d_head = " + std::to_string(d_head) +
                     "]");
            if (rotary != d_head) c.rotary_dim_size = static_cast<index_t>(rotary);
        }
        c.rope = detail::json_flag_or(cfg, "rotary_adjacent_pairs", false) ? rope_layout::adjacent_pairs : rope_layout::split_halves;
        if (const json_value* base = cfg.find("rotary_base"); base != nullptr && !base->is_null())
            c.rope_theta = static_cast<float>(base->as_double());
    } else {
        fail("positional_embedding_type '" + positions.substr(0, 40) + "' is not supported (standard, rotary)");
    }
    const std::string direction = detail::json_text_or(cfg, "attention_dir", "causal");
    if (direction == "bidirectional")
        c.attention = attention_dir::bidirectional;
    else if (direction != "causal")
        fail("attention_dir '" + direction.substr(0, 40) + "' is not causal or bidirectional");
    c.parallel_attn_mlp = detail::json_flag_or(cfg, "parallel_attn_mlp", false);
    if (detail::json_flag_or(cfg, "use_local_attn", false)) fail("use_local_attn is not supported");
    if (const json_value* scale = cfg.find("use_attn_scale"); scale != nullptr && !scale->as_bool())
        fail("use_attn_scale false is not supported (mechlens scales scores by 1 / sqrt(d_head))");
    if (const json_value* scale = cfg.find("attn_scale"); scale != nullptr && !scale->is_null() &&
                                                                      std::abs(scale->as_double() -
                                                                               std::sqrt(static_cast<double>(d_head))) >
                                                                          1e-6 * std::sqrt(static_cast<double>(d_head)))
        fail("attn_scale " + scale->number_text() + " is not sqrt(d_head)");
    c.validate(where);
    return out;
}

namespace detail {

/// The tensors of a state dict by name: anything with `name`, `shape` and float `values`.
struct tl_tensor_ref {
    const std::vector<index_t>* shape = nullptr;
    const std::vector<float>* values = nullptr;
};

/// Copies TransformerLens tensor `t` (named `name`) into the parameter view `destination` of row `row`.
inline void tl_copy(const model_config& c, const transformerlens_name& row, const std::string& name,
                    const tl_tensor_ref& t, tensor_view<float, 2> destination, const std::string& where) {
    const std::vector<index_t>& shape = *t.shape;
    const std::vector<float>& v = *t.values;
    const index_t out = destination.extent(0), in = destination.extent(1);
    auto expect = [&](std::vector<index_t> wanted) {
        if (shape != wanted)
            format_fail(where, "tensor '" + name + "' has shape " + format_shape(shape) + ", the config implies " +
                                   format_shape(wanted));
    };
    const index_t d_head = c.d_head();
    switch (row.layout) {
        case transformerlens_layout::same:
            expect(in == 1 ? std::vector<index_t>{out} : std::vector<index_t>{out, in});
            for (index_t i = 0; i < out * in; ++i) destination.data()[i] = v[static_cast<std::size_t>(i)];
            break;
        case transformerlens_layout::heads_flat:
            expect({out / d_head, d_head});
            for (index_t i = 0; i < out; ++i) destination(i, 0) = v[static_cast<std::size_t>(i)];
            break;
        case transformerlens_layout::heads_in_out: {  // (heads, d_model, d_head) -> (heads * d_head, d_model)
            const index_t heads = out / d_head;
            expect({heads, in, d_head});
            for (index_t h = 0; h < heads; ++h)
                for (index_t i = 0; i < in; ++i)
                    for (index_t k = 0; k < d_head; ++k)
                        destination(h * d_head + k, i) = v[static_cast<std::size_t>((h * in + i) * d_head + k)];
            break;
        }
        case transformerlens_layout::heads_out_in: {  // (heads, d_head, d_model) -> (d_model, heads * d_head)
            const index_t heads = in / d_head;
            expect({heads, d_head, out});
            for (index_t h = 0; h < heads; ++h)
                for (index_t k = 0; k < d_head; ++k)
                    for (index_t o = 0; o < out; ++o)
                        destination(o, h * d_head + k) = v[static_cast<std::size_t>((h * d_head + k) * out + o)];
            break;
        }
        case transformerlens_layout::transposed:  // (in, out) -> (out, in)
            expect({in, out});
            for (index_t i = 0; i < in; ++i)
                for (index_t o = 0; o < out; ++o) destination(o, i) = v[static_cast<std::size_t>(i * out + o)];
            break;
    }
}

}  // namespace detail

/// Builds a model from a TransformerLens config and its state dict (`tensors`: anything iterable whose elements have
/// `name`, `shape` and float `values`, such as torch_state_dict::tensors or safetensors_file::tensors). Every
/// parameter the config implies must be present with its TransformerLens shape; buffers (`mask`, `IGNORE`, rotary
/// tables) are skipped; any other tensor is an error, as is a non-zero bias of a gated MLP. Throws format_error
/// naming `where`.
template <class Tensors>
loaded_model transformerlens_model(const transformerlens_config& tl, const Tensors& tensors, const std::string& where) {
    const model_config& c = tl.config;
    std::map<std::string, detail::tl_tensor_ref, std::less<>> by_name;
    for (const auto& t : tensors) {
        if (detail::tl_ignored_tensor(t.name)) continue;
        if (!by_name.emplace(t.name, detail::tl_tensor_ref{&t.shape, &t.values}).second)
            detail::format_fail(where, "tensor '" + t.name.substr(0, 200) + "' appears twice");
    }
    auto params = std::make_shared<model_parameters>(c);
    params->fill_norm_gains(1.0f);
    std::map<std::string, bool, std::less<>> used;
    for (const parameter_entry& e : params->layout()) {
        const transformerlens_name* row = nullptr;
        for (const transformerlens_name& candidate : transformerlens_names)
            if (candidate.id == e.id) row = &candidate;
        const bool norm_weight = e.id == parameter_id::attn_norm || e.id == parameter_id::attn_norm_bias ||
                                 e.id == parameter_id::mlp_norm || e.id == parameter_id::mlp_norm_bias ||
                                 e.id == parameter_id::final_norm || e.id == parameter_id::final_norm_bias;
        if (norm_weight && !tl.norm_weights) continue;  // LNPre / RMSPre: gain 1, bias 0
        const std::string name =
            (e.layer >= 0 ? "blocks." + std::to_string(e.layer) + "." : std::string()) + std::string(row->name);
        const auto found = by_name.find(name);
        if (found == by_name.end()) detail::format_fail(where, "the state dict lacks '" + name + "'");
        used[name] = true;
        detail::tl_copy(c, *row, name, found->second, view_of(*params, e.id, e.layer), where);
    }
    for (const auto& [name, ref] : by_name) {
        if (used.count(name) != 0) continue;
        // A gated MLP's TransformerLens biases exist but must be zero (mechlens's gated MLP has none).
        const bool gated_bias = c.mlp == mlp_kind::gated_silu &&
                                (name.find(".attn.b_") != std::string::npos || name.find(".mlp.b_") != std::string::npos ||
                                 name == "unembed.b_U");
        if (gated_bias) {
            if (std::any_of(ref.values->begin(), ref.values->end(), [](float x) { return x != 0.0f; }))
                detail::format_fail(where, "tensor '" + name + "' is a non-zero bias, which a gated model cannot hold");
            continue;
        }
        detail::format_fail(where, "unexpected tensor '" + name.substr(0, 200) +
                                       "' (not a TransformerLens parameter of this config)");
    }
    loaded_model out{c, params->weights()};
    return out;
}

/// True when `directory` holds a TransformerLens model: a config.json with HookedTransformerConfig fields.
inline bool is_transformerlens_directory(const std::filesystem::path& directory) {
    const std::filesystem::path config = directory / "config.json";
    if (!std::filesystem::is_regular_file(config)) return false;
    const json_value cfg = read_json_file(config);
    return cfg.is_object() && cfg.find("n_layers") != nullptr && cfg.find("d_model") != nullptr &&
           cfg.find("d_head") != nullptr;
}

/// Loads a TransformerLens model directory: config.json and exactly one state dict, `*.safetensors` or `*.pt` /
/// `*.pth` (torch.save's zip format, read by the restricted unpickler). Throws format_error naming the file.
inline loaded_model load_transformerlens(const std::filesystem::path& directory) {
    const std::filesystem::path config_path = directory / "config.json";
    const transformerlens_config tl = read_transformerlens_config(read_json_file(config_path), config_path.string());
    std::vector<std::filesystem::path> candidates;
    for (const auto& entry : std::filesystem::directory_iterator(directory)) {
        const std::string extension = entry.path().extension().string();
        if (entry.is_regular_file() && (extension == ".safetensors" || extension == ".pt" || extension == ".pth"))
            candidates.push_back(entry.path());
    }
    std::sort(candidates.begin(), candidates.end());
    if (candidates.size() != 1)
        detail::format_fail(directory.string(), "expected exactly one state dict (*.safetensors, *.pt or *.pth) beside "
                                                "config.json, found " + std::to_string(candidates.size()));
    const std::filesystem::path& weights = candidates.front();
    if (weights.extension() == ".safetensors")
        return transformerlens_model(tl, read_safetensors(weights, safetensors_dtypes::float_any).tensors,
                                     weights.string());
    return transformerlens_model(tl, read_torch_state_dict(weights).tensors, weights.string());
}

MECHLENS_END_NAMESPACE
