#pragma once
/// @file
/// Hugging Face model folders: `config.json` (a PretrainedConfig) and `model.safetensors`, or shards listed by
/// `model.safetensors.index.json` (`weight_map`: tensor name -> shard file), tensors in F32, F16 or BF16. Three
/// architectures: GPT2LMHeadModel, LlamaForCausalLM and GPTNeoXForCausalLM. The config becomes a model_config; each
/// Hugging Face tensor is one row of the name table below, rearranged into the parameter table's
/// (out_features, in_features) layout (GPT-2's Conv1D stores (in, out); fused q|k|v tensors are split).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "mechlens/io/json.hpp"
#include "mechlens/io/safetensors.hpp"
#include "mechlens/model/parameters.hpp"
#include "mechlens/model/weights.hpp"
#include "mechlens/tensor/errors.hpp"

MECHLENS_BEGIN_NAMESPACE

/// The Hugging Face model classes mechlens reads.
enum class hf_architecture : std::uint8_t {
    gpt2,      ///< GPT2LMHeadModel (model_type "gpt2").
    llama,     ///< LlamaForCausalLM (model_type "llama").
    gpt_neox,  ///< GPTNeoXForCausalLM (model_type "gpt_neox").
};

/// How a Hugging Face tensor is laid out relative to its parameter-table row.
enum class hf_layout : std::uint8_t {
    same,        ///< Identical row-major data: nn.Linear (out, in), embeddings, norms, biases.
    conv1d,      ///< GPT-2's Conv1D weight (in, out): transposed.
    conv1d_qkv,  ///< GPT-2's c_attn: weight (d_model, 3 * d_model), bias (3 * d_model), q|k|v along the out axis.
    neox_qkv,    ///< GPT-NeoX's query_key_value: (3 * d_model, d_model) rows and bias, q, k, v blocks per head.
};

/// One row of the name table: a Hugging Face tensor name (block rows after the block prefix) for a parameter.
struct hf_name {
    hf_architecture architecture;  ///< The model class.
    parameter_id id;               ///< The parameter-table row.
    std::string_view name;         ///< Hugging Face's name; empty: not stored (the row stays zero).
    hf_layout layout;              ///< How to rearrange it.
    int part;                      ///< Which of q, k, v (0, 1, 2) a fused tensor contributes; 0 otherwise.
};

/// Hugging Face's names of mechlens's parameters, per architecture. Block rows follow the block prefix
/// (`h.L.`, `model.layers.L.`, `gpt_neox.layers.L.`); GPT-2's names may also carry a `transformer.` prefix.
inline constexpr hf_name hf_names[] = {
    {hf_architecture::gpt2, parameter_id::token_embedding, "wte.weight", hf_layout::same, 0},
    {hf_architecture::gpt2, parameter_id::pos_embedding, "wpe.weight", hf_layout::same, 0},
    {hf_architecture::gpt2, parameter_id::attn_norm, "ln_1.weight", hf_layout::same, 0},
    {hf_architecture::gpt2, parameter_id::attn_norm_bias, "ln_1.bias", hf_layout::same, 0},
    {hf_architecture::gpt2, parameter_id::w_q, "attn.c_attn.weight", hf_layout::conv1d_qkv, 0},
    {hf_architecture::gpt2, parameter_id::b_q, "attn.c_attn.bias", hf_layout::conv1d_qkv, 0},
    {hf_architecture::gpt2, parameter_id::w_k, "attn.c_attn.weight", hf_layout::conv1d_qkv, 1},
    {hf_architecture::gpt2, parameter_id::b_k, "attn.c_attn.bias", hf_layout::conv1d_qkv, 1},
    {hf_architecture::gpt2, parameter_id::w_v, "attn.c_attn.weight", hf_layout::conv1d_qkv, 2},
    {hf_architecture::gpt2, parameter_id::b_v, "attn.c_attn.bias", hf_layout::conv1d_qkv, 2},
    {hf_architecture::gpt2, parameter_id::w_o, "attn.c_proj.weight", hf_layout::conv1d, 0},
    {hf_architecture::gpt2, parameter_id::b_o, "attn.c_proj.bias", hf_layout::same, 0},
    {hf_architecture::gpt2, parameter_id::mlp_norm, "ln_2.weight", hf_layout::same, 0},
    {hf_architecture::gpt2, parameter_id::mlp_norm_bias, "ln_2.bias", hf_layout::same, 0},
    {hf_architecture::gpt2, parameter_id::w_up, "mlp.c_fc.weight", hf_layout::conv1d, 0},
    {hf_architecture::gpt2, parameter_id::b_up, "mlp.c_fc.bias", hf_layout::same, 0},
    {hf_architecture::gpt2, parameter_id::w_down, "mlp.c_proj.weight", hf_layout::conv1d, 0},
    {hf_architecture::gpt2, parameter_id::b_down, "mlp.c_proj.bias", hf_layout::same, 0},
    {hf_architecture::gpt2, parameter_id::final_norm, "ln_f.weight", hf_layout::same, 0},
    {hf_architecture::gpt2, parameter_id::final_norm_bias, "ln_f.bias", hf_layout::same, 0},
    {hf_architecture::gpt2, parameter_id::unembed, "lm_head.weight", hf_layout::same, 0},
    {hf_architecture::gpt2, parameter_id::unembed_bias, "", hf_layout::same, 0},

    {hf_architecture::llama, parameter_id::token_embedding, "model.embed_tokens.weight", hf_layout::same, 0},
    {hf_architecture::llama, parameter_id::attn_norm, "input_layernorm.weight", hf_layout::same, 0},
    {hf_architecture::llama, parameter_id::w_q, "self_attn.q_proj.weight", hf_layout::same, 0},
    {hf_architecture::llama, parameter_id::w_k, "self_attn.k_proj.weight", hf_layout::same, 0},
    {hf_architecture::llama, parameter_id::w_v, "self_attn.v_proj.weight", hf_layout::same, 0},
    {hf_architecture::llama, parameter_id::w_o, "self_attn.o_proj.weight", hf_layout::same, 0},
    {hf_architecture::llama, parameter_id::mlp_norm, "post_attention_layernorm.weight", hf_layout::same, 0},
    {hf_architecture::llama, parameter_id::w_gate, "mlp.gate_proj.weight", hf_layout::same, 0},
    {hf_architecture::llama, parameter_id::w_up, "mlp.up_proj.weight", hf_layout::same, 0},
    {hf_architecture::llama, parameter_id::w_down, "mlp.down_proj.weight", hf_layout::same, 0},
    {hf_architecture::llama, parameter_id::final_norm, "model.norm.weight", hf_layout::same, 0},
    {hf_architecture::llama, parameter_id::unembed, "lm_head.weight", hf_layout::same, 0},

    {hf_architecture::gpt_neox, parameter_id::token_embedding, "gpt_neox.embed_in.weight", hf_layout::same, 0},
    {hf_architecture::gpt_neox, parameter_id::attn_norm, "input_layernorm.weight", hf_layout::same, 0},
    {hf_architecture::gpt_neox, parameter_id::attn_norm_bias, "input_layernorm.bias", hf_layout::same, 0},
    {hf_architecture::gpt_neox, parameter_id::w_q, "attention.query_key_value.weight", hf_layout::neox_qkv, 0},
    {hf_architecture::gpt_neox, parameter_id::b_q, "attention.query_key_value.bias", hf_layout::neox_qkv, 0},
    {hf_architecture::gpt_neox, parameter_id::w_k, "attention.query_key_value.weight", hf_layout::neox_qkv, 1},
    {hf_architecture::gpt_neox, parameter_id::b_k, "attention.query_key_value.bias", hf_layout::neox_qkv, 1},
    {hf_architecture::gpt_neox, parameter_id::w_v, "attention.query_key_value.weight", hf_layout::neox_qkv, 2},
    {hf_architecture::gpt_neox, parameter_id::b_v, "attention.query_key_value.bias", hf_layout::neox_qkv, 2},
    {hf_architecture::gpt_neox, parameter_id::w_o, "attention.dense.weight", hf_layout::same, 0},
    {hf_architecture::gpt_neox, parameter_id::b_o, "attention.dense.bias", hf_layout::same, 0},
    {hf_architecture::gpt_neox, parameter_id::mlp_norm, "post_attention_layernorm.weight", hf_layout::same, 0},
    {hf_architecture::gpt_neox, parameter_id::mlp_norm_bias, "post_attention_layernorm.bias", hf_layout::same, 0},
    {hf_architecture::gpt_neox, parameter_id::w_up, "mlp.dense_h_to_4h.weight", hf_layout::same, 0},
    {hf_architecture::gpt_neox, parameter_id::b_up, "mlp.dense_h_to_4h.bias", hf_layout::same, 0},
    {hf_architecture::gpt_neox, parameter_id::w_down, "mlp.dense_4h_to_h.weight", hf_layout::same, 0},
    {hf_architecture::gpt_neox, parameter_id::b_down, "mlp.dense_4h_to_h.bias", hf_layout::same, 0},
    {hf_architecture::gpt_neox, parameter_id::final_norm, "gpt_neox.final_layer_norm.weight", hf_layout::same, 0},
    {hf_architecture::gpt_neox, parameter_id::final_norm_bias, "gpt_neox.final_layer_norm.bias", hf_layout::same, 0},
    {hf_architecture::gpt_neox, parameter_id::unembed, "embed_out.weight", hf_layout::same, 0},
    {hf_architecture::gpt_neox, parameter_id::unembed_bias, "", hf_layout::same, 0},
};

/// A Hugging Face config read into mechlens's terms.
struct hf_config {
    hf_architecture architecture = hf_architecture::llama;  ///< The model class.
    model_config config;                                    ///< The model's hyper-parameters.
    /// True when the output embedding is tied to the input one (lm_head absent, or stored and equal).
    bool tied = false;
};

namespace detail {

/// The block prefix of `architecture` for block `layer`.
inline std::string hf_block_prefix(hf_architecture architecture, index_t layer) {
    std::string prefix = architecture == hf_architecture::gpt2    ? "h."
                         : architecture == hf_architecture::llama ? "model.layers."
                                                                  : "gpt_neox.layers.";
    prefix += std::to_string(layer);
    prefix += '.';
    return prefix;
}

/// The plain-MLP kind of a Hugging Face activation name, or fails naming `where`.
inline mlp_kind hf_activation(const std::string& act, const std::string& key, const std::string& where) {
    if (act == "gelu_new" || act == "gelu_pytorch_tanh" || act == "gelu_fast") return mlp_kind::plain_gelu;
    if (act == "gelu") return mlp_kind::plain_gelu_erf;
    if (act == "relu") return mlp_kind::plain_relu;
    std::string what = key;
    what += " '";
    what += act.substr(0, 40);
    what += "' is not supported (gelu_new, gelu_pytorch_tanh, gelu_fast, gelu, relu)";
    format_fail(where, what);
}

/// Casts a config float field; fails naming `where` when it is not finite in float.
inline float hf_float(double value, std::string_view key, const std::string& where) {
    if (!std::isfinite(value) || std::abs(value) > 3.0e38)
        format_fail(where, std::string(key) + " is not a finite float");
    return static_cast<float>(value);
}

/// The model class a config names: the first of `architectures`, else `model_type`.
inline hf_architecture hf_architecture_of(const json_value& cfg, const std::string& where) {
    std::string name;
    if (const json_value* list = cfg.find("architectures"); list != nullptr && !list->is_null()) {
        if (list->items().empty()) format_fail(where, "architectures is an empty list");
        name = list->items().front().as_string();
    }
    const std::string type = json_text_or(cfg, "model_type", "");
    if (name == "GPT2LMHeadModel" || (name.empty() && type == "gpt2")) return hf_architecture::gpt2;
    if (name == "LlamaForCausalLM" || (name.empty() && type == "llama")) return hf_architecture::llama;
    if (name == "GPTNeoXForCausalLM" || (name.empty() && type == "gpt_neox")) return hf_architecture::gpt_neox;
    std::string what = "architecture '";
    what += (name.empty() ? type : name).substr(0, 60);
    what += "' is not supported (GPT2LMHeadModel, LlamaForCausalLM, GPTNeoXForCausalLM)";
    format_fail(where, what);
}

/// Fails naming `where` unless the optional field `key` is absent or null.
inline void hf_require_null(const json_value& cfg, std::string_view key, const std::string& where) {
    if (const json_value* v = cfg.find(key); v != nullptr && !v->is_null())
        format_fail(where, std::string(key) + " is set; mechlens supports only its absence (null)");
}

}  // namespace detail

/// The hf_config of a Hugging Face config.json (`cfg`). Throws format_error naming `where` for a missing field or a
/// field of the wrong type, an architecture other than GPT2LMHeadModel, LlamaForCausalLM and GPTNeoXForCausalLM,
/// and options mechlens does not implement (rope_scaling, attention biases in LLaMA, GPT-2's inverse-layer-index
/// attention scaling or unscaled attention, ...).
inline hf_config read_hf_config(const json_value& cfg, const std::string& where) {
    auto fail = [&](const std::string& what) { detail::format_fail(where, what); };
    if (!cfg.is_object()) fail("config.json is not a JSON object");
    hf_config out;
    out.architecture = detail::hf_architecture_of(cfg, where);
    model_config& c = out.config;
    switch (out.architecture) {
        case hf_architecture::gpt2: {
            c.d_model = detail::json_integer(cfg, "n_embd");
            c.n_layers = detail::json_integer(cfg, "n_layer");
            c.n_heads = detail::json_integer(cfg, "n_head");
            c.d_vocab = detail::json_integer(cfg, "vocab_size");
            c.n_ctx = detail::json_integer_or(cfg, "n_positions", detail::json_integer_or(cfg, "n_ctx", 1024));
            // n_inner null means 4 * n_embd; the guard keeps the product from overflowing (validate bounds d_model).
            c.d_mlp = detail::json_integer_or(cfg, "n_inner",
                                            c.d_model > 0 && c.d_model <= (index_t{1} << 24) ? 4 * c.d_model : 0);
            c.mlp = detail::hf_activation(detail::json_text_or(cfg, "activation_function", "gelu_new"),
                                          "activation_function", where);
            c.norm_eps =
                detail::hf_float(detail::json_number_or(cfg, "layer_norm_epsilon", 1e-5), "layer_norm_epsilon", where);
            c.norm = norm_kind::layer;
            c.positions = positional_kind::learned;
            c.linear_biases = true;
            out.tied = detail::json_flag_or(cfg, "tie_word_embeddings", true);
            if (detail::json_flag_or(cfg, "scale_attn_by_inverse_layer_idx", false))
                fail("scale_attn_by_inverse_layer_idx true is not supported");
            if (!detail::json_flag_or(cfg, "scale_attn_weights", true))
                fail("scale_attn_weights false is not supported (mechlens scales scores by 1 / sqrt(d_head))");
            (void)detail::json_flag_or(cfg, "reorder_and_upcast_attn", false);  // precision only: accepted either way
            detail::hf_require_null(cfg, "add_cross_attention", where);
            break;
        }
        case hf_architecture::llama: {
            c.d_model = detail::json_integer(cfg, "hidden_size");
            c.n_layers = detail::json_integer(cfg, "num_hidden_layers");
            c.n_heads = detail::json_integer(cfg, "num_attention_heads");
            c.n_kv_heads = detail::json_integer_or(cfg, "num_key_value_heads", c.n_heads);
            c.d_mlp = detail::json_integer(cfg, "intermediate_size");
            c.d_vocab = detail::json_integer(cfg, "vocab_size");
            c.n_ctx = detail::json_integer(cfg, "max_position_embeddings");
            c.norm_eps = detail::hf_float(detail::json_number_or(cfg, "rms_norm_eps", 1e-6), "rms_norm_eps", where);
            c.rope_theta = detail::hf_float(detail::json_number_or(cfg, "rope_theta", 10000.0), "rope_theta", where);
            if (const index_t head = detail::json_integer_or(cfg, "head_dim", 0);
                head != 0 && (c.n_heads <= 0 || c.d_model % c.n_heads != 0 || head != c.d_model / c.n_heads))
                c.d_head_size = head;  // heads need not tile the residual stream (validate range-checks it)
            c.norm = norm_kind::rms;
            c.positions = positional_kind::rotary;
            c.rope = rope_layout::split_halves;  // Hugging Face's q/k rows are already in rotate_half order
            c.mlp = mlp_kind::gated_silu;
            out.tied = detail::json_flag_or(cfg, "tie_word_embeddings", false);
            if (const std::string act = detail::json_text_or(cfg, "hidden_act", "silu"); act != "silu")
                fail(std::string("hidden_act '") + act.substr(0, 40) + "' is not supported (silu)");
            detail::hf_require_null(cfg, "rope_scaling", where);
            if (detail::json_flag_or(cfg, "attention_bias", false)) fail("attention_bias true is not supported");
            if (detail::json_flag_or(cfg, "mlp_bias", false)) fail("mlp_bias true is not supported");
            break;
        }
        case hf_architecture::gpt_neox: {
            c.d_model = detail::json_integer(cfg, "hidden_size");
            c.n_layers = detail::json_integer(cfg, "num_hidden_layers");
            c.n_heads = detail::json_integer(cfg, "num_attention_heads");
            c.d_mlp = detail::json_integer(cfg, "intermediate_size");
            c.d_vocab = detail::json_integer(cfg, "vocab_size");
            c.n_ctx = detail::json_integer(cfg, "max_position_embeddings");
            c.norm_eps = detail::hf_float(detail::json_number_or(cfg, "layer_norm_eps", 1e-5), "layer_norm_eps", where);
            c.rope_theta = detail::hf_float(
                detail::json_number_or(cfg, "rotary_emb_base", detail::json_number_or(cfg, "rope_theta", 10000.0)),
                "rotary_emb_base", where);
            c.mlp = detail::hf_activation(detail::json_text_or(cfg, "hidden_act", "gelu"), "hidden_act", where);
            c.norm = norm_kind::layer;
            c.positions = positional_kind::rotary;
            c.rope = rope_layout::split_halves;
            c.linear_biases = true;
            c.parallel_attn_mlp = detail::json_flag_or(cfg, "use_parallel_residual", true);
            out.tied = detail::json_flag_or(cfg, "tie_word_embeddings", false);
            const double pct = detail::json_number_or(cfg, "rotary_pct", 0.25);
            if (!(pct > 0.0 && pct <= 1.0)) fail("rotary_pct must lie in (0, 1]");
            if (c.n_heads > 0 && c.d_model % c.n_heads == 0) {
                const index_t d_head = c.d_model / c.n_heads;
                const auto rotary = static_cast<index_t>(static_cast<double>(d_head) * pct);  // int() as HF does
                if (rotary < 2 || rotary % 2 != 0)
                    fail(std::string("rotary_pct ") + std::to_string(pct) + std::string(" gives ") +
                         std::to_string(rotary) + " rotary dims per head; an even number >= 2 is needed");
                if (rotary < d_head) c.rotary_dim_size = rotary;
            }
            detail::hf_require_null(cfg, "rope_scaling", where);
            if (!detail::json_flag_or(cfg, "attention_bias", true)) fail("attention_bias false is not supported");
            break;
        }
    }
    if (c.n_kv_heads == 0) c.n_kv_heads = c.n_heads;
    c.tied_unembed = out.tied;
    c.validate(where);
    return out;
}

/// The `weight_map` of a `model.safetensors.index.json` (`index`): tensor name -> shard file name. Throws
/// format_error naming `where` unless it is an object whose `weight_map` maps names to plain file names (no
/// directories: a shard lies beside the index).
inline std::map<std::string, std::string, std::less<>> read_hf_index(const json_value& index,
                                                                     const std::string& where) {
    if (!index.is_object()) detail::format_fail(where, "the index is not a JSON object");
    const json_value& map = index.at("weight_map");
    if (!map.is_object()) detail::format_fail(where, "weight_map is not an object");
    std::map<std::string, std::string, std::less<>> out;
    for (const json_member& m : map.members()) {
        const std::string& file = m.value.as_string();
        if (file.empty() || file == "." || file == ".." || file.find_first_of("/\\") != std::string::npos ||
            file.find('\0') != std::string::npos)
            detail::format_fail(where, std::string("weight_map names '") + file.substr(0, 100) + "' for tensor '" +
                                           m.key.substr(0, 100) + "', which is not a plain file name");
        out.emplace(m.key, file);
    }
    if (out.empty()) detail::format_fail(where, "weight_map is empty");
    return out;
}

/// A tensor found in a shard: its shape, values and the file it came from (all owned elsewhere).
struct hf_tensor_ref {
    const std::vector<index_t>* shape = nullptr;  ///< Extents.
    const std::vector<float>* values = nullptr;   ///< Row-major floats.
    const std::string* file = nullptr;            ///< The shard's path, for messages.
};

/// The tensors of a model folder by name.
using hf_tensor_map = std::map<std::string, hf_tensor_ref, std::less<>>;

namespace detail {

/// Copies Hugging Face tensor `t` (named `name`) into the parameter view `destination` of row `row`.
inline void hf_copy(const model_config& c, const hf_name& row, const std::string& name, const hf_tensor_ref& t,
                    tensor_view<float, 2> destination) {
    const std::vector<index_t>& shape = *t.shape;
    const std::vector<float>& v = *t.values;
    const index_t out = destination.extent(0), in = destination.extent(1);
    const bool vector = traits_of(row.id).rank == 1;
    auto expect = [&](std::vector<index_t> wanted) {
        if (shape != wanted) {
            std::string what = "tensor '" + name;
            what += "' has shape ";
            what += format_shape(shape);
            what += ", the config implies ";
            what += format_shape(wanted);
            format_fail(*t.file, what);
        }
    };
    auto at = [&](index_t i) { return v[static_cast<std::size_t>(i)]; };
    const auto part = static_cast<index_t>(row.part);
    switch (row.layout) {
        case hf_layout::same:
            expect(vector ? std::vector<index_t>{out} : std::vector<index_t>{out, in});
            std::copy(v.begin(), v.end(), destination.data());
            break;
        case hf_layout::conv1d:  // (in, out) -> (out, in)
            expect({in, out});
            for (index_t i = 0; i < in; ++i)
                for (index_t o = 0; o < out; ++o) destination(o, i) = at(i * out + o);
            break;
        case hf_layout::conv1d_qkv: {  // (d_model, 3 * d_model): columns [part * out, (part + 1) * out)
            if (vector) {
                expect({3 * out});
                for (index_t o = 0; o < out; ++o) destination(o, 0) = at(part * out + o);
            } else {
                expect({in, 3 * out});
                for (index_t i = 0; i < in; ++i)
                    for (index_t o = 0; o < out; ++o) destination(o, i) = at(i * 3 * out + part * out + o);
            }
            break;
        }
        case hf_layout::neox_qkv: {  // head h's rows: [h * 3 * d_head + part * d_head, ... + d_head)
            const index_t d_head = c.d_head(), heads = out / d_head;
            const index_t width = vector ? 1 : in;
            expect(vector ? std::vector<index_t>{3 * out} : std::vector<index_t>{3 * out, in});
            for (index_t h = 0; h < heads; ++h)
                for (index_t k = 0; k < d_head; ++k) {
                    const index_t source = (h * 3 * d_head + part * d_head + k) * width;
                    for (index_t i = 0; i < width; ++i) destination(h * d_head + k, i) = at(source + i);
                }
            break;
        }
    }
}

/// True for the buffers Hugging Face checkpoints may hold besides the weights (masks, rotary tables).
inline bool hf_ignored_tensor(std::string_view name) {
    for (std::string_view suffix :
         {".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq"})
        if (name.size() >= suffix.size() && name.substr(name.size() - suffix.size()) == suffix) return true;
    return false;
}

}  // namespace detail

/// Builds a model from a Hugging Face config and its tensors by name. Every tensor the config implies must be present
/// with its Hugging Face shape; a tied lm_head may be absent or equal to the embedding; buffers (attention masks,
/// rotary tables) are skipped; any other tensor is an error. Throws format_error naming the file concerned.
inline loaded_model hf_model(const hf_config& hf, const hf_tensor_map& tensors, const std::string& where) {
    const model_config& c = hf.config;
    std::set<std::string, std::less<>> used;
    // GPT-2's names may carry a `transformer.` prefix (GPT2LMHeadModel) or not (GPT2Model).
    auto find = [&](const std::string& name) -> const hf_tensor_map::value_type* {
        if (const auto it = tensors.find(name); it != tensors.end()) return &*it;
        if (hf.architecture == hf_architecture::gpt2) {
            std::string prefixed = "transformer.";
            prefixed += name;
            if (const auto it = tensors.find(prefixed); it != tensors.end()) return &*it;
        }
        return nullptr;
    };
    auto params = std::make_shared<model_parameters>(c);
    for (const parameter_entry& e : params->layout()) {
        const hf_name* row = nullptr;
        for (const hf_name& candidate : hf_names)
            if (candidate.architecture == hf.architecture && candidate.id == e.id) row = &candidate;
        if (row == nullptr) detail::format_fail(where, "no Hugging Face name for parameter '" + e.name + "'");
        if (row->name.empty()) continue;  // not stored by this architecture: stays zero (GPT-2's unembedding bias)
        std::string name = e.layer >= 0 ? detail::hf_block_prefix(hf.architecture, e.layer) : std::string();
        name += row->name;
        const auto* found = find(name);
        if (found == nullptr) detail::format_fail(where, "the model lacks tensor '" + name + "'");
        used.insert(found->first);
        detail::hf_copy(c, *row, found->first, found->second, view_of(*params, e.id, e.layer));
    }
    if (hf.tied) {  // a stored lm_head must be the embedding itself
        for (const hf_name& row : hf_names) {
            if (row.architecture != hf.architecture || row.id != parameter_id::unembed) continue;
            const auto* head = find(std::string(row.name));
            if (head == nullptr) break;
            used.insert(head->first);
            const auto embedding = view_of(*params, parameter_id::token_embedding, -1);
            const std::vector<float>& values = *head->second.values;
            if (*head->second.shape != std::vector<index_t>{c.d_vocab, c.d_model} ||
                !std::equal(values.begin(), values.end(), embedding.data()))
                detail::format_fail(*head->second.file, "tensor '" + head->first +
                                                            "' differs from the input embedding, but the config ties "
                                                            "them (tie_word_embeddings)");
        }
    }
    for (const auto& [name, ref] : tensors) {
        if (used.count(name) != 0 || detail::hf_ignored_tensor(name)) continue;
        detail::format_fail(
            *ref.file, std::string("unexpected tensor '") + name.substr(0, 200) + "' (not a parameter of this config)");
    }
    loaded_model out{c, params->weights()};
    return out;
}

/// True when `directory`'s config.json names a Hugging Face model (`architectures` or `model_type`) rather than a
/// TransformerLens one.
inline bool is_huggingface_directory(const std::filesystem::path& directory) {
    const std::filesystem::path config = directory / "config.json";
    if (!std::filesystem::is_regular_file(config)) return false;
    const json_value cfg = read_json_file(config);
    return cfg.is_object() && (cfg.find("architectures") != nullptr || cfg.find("model_type") != nullptr) &&
           cfg.find("d_head") == nullptr;
}

/// Loads a Hugging Face model folder: config.json plus model.safetensors, or the shards that
/// model.safetensors.index.json lists (each must exist, and each tensor must be in the shard the index names). F16
/// and BF16 tensors are converted to float. Throws format_error naming the file concerned.
inline loaded_model load_huggingface(const std::filesystem::path& directory) {
    const std::filesystem::path config_path = directory / "config.json";
    const hf_config hf = read_hf_config(read_json_file(config_path), config_path.string());
    const std::filesystem::path index_path = directory / "model.safetensors.index.json";
    const std::filesystem::path single = directory / "model.safetensors";

    std::vector<std::string> paths;                         // the files read, in order
    std::vector<safetensors_file> files;                    // their tensors
    std::map<std::string, std::string, std::less<>> index;  // tensor -> shard path (sharded models only)
    if (std::filesystem::is_regular_file(index_path)) {
        const std::string where = index_path.string();
        std::set<std::string> shards;
        for (auto& [tensor, file] : read_hf_index(read_json_file(index_path), where)) {
            file = (directory / file).string();
            shards.insert(file);
            index.emplace(tensor, file);
        }
        for (const std::string& shard : shards)
            if (!std::filesystem::is_regular_file(shard))
                detail::format_fail(where, std::string("lists shard '") +
                                               std::filesystem::path(shard).filename().string() +
                                               "', which does not exist");
        paths.assign(shards.begin(), shards.end());
    } else if (std::filesystem::is_regular_file(single)) {
        paths.push_back(single.string());
    } else {
        detail::format_fail(directory.string(),
                            "a Hugging Face model folder needs model.safetensors or "
                            "model.safetensors.index.json beside config.json");
    }
    files.reserve(paths.size());
    for (const std::string& path : paths) files.push_back(read_safetensors(path, safetensors_dtypes::float_any));

    hf_tensor_map tensors;
    for (std::size_t f = 0; f < files.size(); ++f)
        for (const safetensors_tensor& t : files[f].tensors) {
            if (!index.empty()) {
                const auto listed = index.find(t.name);
                if (listed == index.end() || listed->second != paths[f])
                    detail::format_fail(paths[f], std::string("holds tensor '") + t.name.substr(0, 200) +
                                                      "', which model.safetensors.index.json does not assign to it");
            }
            if (!tensors.emplace(t.name, hf_tensor_ref{&t.shape, &t.values, &paths[f]}).second)
                detail::format_fail(paths[f], std::string("tensor '") + t.name.substr(0, 200) + "' appears twice");
        }
    for (const auto& [tensor, shard] : index)
        if (tensors.count(tensor) == 0)
            detail::format_fail(shard, std::string("lacks tensor '") + tensor.substr(0, 200) +
                                           "', which model.safetensors.index.json assigns to it");
    return hf_model(hf, tensors, paths.size() == 1 ? paths.front() : index_path.string());
}

MECHLENS_END_NAMESPACE
