#pragma once
/// @file
/// SAELens folders: `cfg.json` (the SAE's inference configuration) and `sae_weights.safetensors` (W_enc (d_in,
/// d_sae), W_dec (d_sae, d_in), b_enc (d_sae), b_dec (d_in), and threshold (d_sae) for jumprelu). We read what
/// SAELens 6 writes (and the older layout: hook_name at the top level, hook_point, activation_fn_str "topk" with
/// activation_fn_kwargs.k, a boolean normalize_activations) and write what SAELens 6 loads with
/// SAE.load_from_disk. batchtopk is a training form: SAELens saves it as jumprelu with one global threshold
/// (batchtopk_as_jumprelu). Not supported (a one-line format_error): normalize_activations "layer_norm",
/// reshape_activations "hook_z", a finetuning scaling factor other than ones, other architectures.

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/io/byte_reader.hpp"
#include "mechlens/io/json.hpp"
#include "mechlens/io/safetensors.hpp"
#include "mechlens/sae/definition.hpp"
#include "mechlens/tensor/errors.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Where an SAE belongs: SAELens's metadata fields that matter for attaching it.
struct saelens_metadata {
    std::string hook_name;                       ///< The host site, e.g. "blocks.2.hook_resid_post".
    std::optional<std::int64_t> hook_head_index; ///< A head of a per-head site, when the SAE reads one head.
    std::string model_name;                      ///< The model it was trained on (informative).
    std::string dtype = "float32";               ///< SAELens's dtype field (weights are read as float).
};

/// An SAE as stored in a SAELens folder: its parameters, how it computes, and where it belongs.
struct saelens_sae {
    sae_weights weights;        ///< The parameters (d_in and d_sae from cfg.json).
    sae_options options;        ///< Architecture and options (error_term is not stored: true on reading).
    saelens_metadata metadata;  ///< hook_name and friends.
    /// Training settings written into cfg.json as SAELens's training configuration names them (name, JSON text,
    /// e.g. {"jumprelu_sparsity_loss_mode", "\"tanh\""}); SAELens and the reader ignore them on loading.
    std::vector<std::pair<std::string, std::string>> training_config = {};
};

/// The configuration in a parsed `cfg.json` (weights left empty, d_in and d_sae set); throws format_error naming
/// the document and the field for a missing or mistyped field, an unknown architecture or an unsupported option.
inline saelens_sae read_saelens_config(const json_value& cfg) {
    if (!cfg.is_object()) cfg.fail("expected an object");
    saelens_sae out;
    auto positive = [](const json_value& v) {
        const std::int64_t value = v.as_int64();
        if (value <= 0 || value > (std::int64_t{1} << 31)) v.fail("must be a positive integer below 2^31");
        return static_cast<index_t>(value);
    };
    out.weights.d_in = positive(cfg.at("d_in"));
    out.weights.d_sae = positive(cfg.at("d_sae"));

    // The architecture, or its pre-6.0 spelling through activation_fn_str / activation_fn.
    std::string architecture = "standard";
    const json_value* fn = cfg.find("activation_fn_str");
    if (fn == nullptr) fn = cfg.find("activation_fn");
    if (const json_value* a = cfg.find("architecture")) {
        architecture = a->as_string();
    } else if (fn != nullptr && fn->is_string() && fn->as_string() == "topk") {
        architecture = "topk";
    }
    const auto parsed = parse_sae_architecture(architecture);
    if (!parsed) {
        std::string problem = "unknown architecture \"";
        problem += architecture.substr(0, 40);
        problem += "\" (expected standard, topk, jumprelu or batchtopk)";
        (cfg.find("architecture") ? *cfg.find("architecture") : cfg).fail(problem);
    }
    sae_options& o = out.options;
    o.architecture = *parsed;
    if (const json_value* v = cfg.find("apply_b_dec_to_input")) o.apply_b_dec_to_input = v->as_bool();
    if (const json_value* v = cfg.find("normalize_activations"); v != nullptr && !v->is_null()) {
        if (v->is_bool()) {
            o.normalize_activations = v->as_bool() ? sae_normalization::expected_average_only_in : sae_normalization::none;
        } else {
            const auto n = parse_sae_normalization(v->as_string());
            if (!n) {
                std::string problem = "normalize_activations \"";
                problem += v->as_string().substr(0, 40);
                problem += "\" is not supported (none, expected_average_only_in or constant_norm_rescale)";
                v->fail(problem);
            }
            o.normalize_activations = *n;
        }
    }
    if (const json_value* v = cfg.find("reshape_activations"); v != nullptr && v->as_string() != "none")
        v->fail("reshape_activations \"" + v->as_string().substr(0, 40) + "\" is not supported (only none)");
    if (o.architecture == sae_architecture::topk || o.architecture == sae_architecture::batchtopk) {
        const json_value* k = cfg.find("k");
        if (k == nullptr)
            if (const json_value* kw = cfg.find("activation_fn_kwargs"); kw != nullptr && kw->is_object())
                k = kw->find("k");
        if (k == nullptr) cfg.fail("missing key \"k\" for architecture " + architecture);
        if (o.architecture == sae_architecture::topk) {
            const std::int64_t value = k->as_int64();
            if (value <= 0 || value > out.weights.d_sae) k->fail("k must be in [1, d_sae]");
            o.k = static_cast<double>(value);
        } else {
            o.k = k->as_double();
            if (!(o.k > 0.0) || o.k > static_cast<double>(out.weights.d_sae)) k->fail("k must be in (0, d_sae]");
        }
        if (const json_value* v = cfg.find("rescale_acts_by_decoder_norm")) o.rescale_acts_by_decoder_norm = v->as_bool();
    }
    // Metadata: SAELens 6 nests it; older files keep hook_name (or hook_point) at the top level.
    const json_value* meta = cfg.find("metadata");
    if (meta != nullptr && !meta->is_null() && !meta->is_object()) meta->fail("expected an object");
    auto field = [&](const char* key) -> const json_value* {
        if (meta != nullptr && meta->is_object())
            if (const json_value* v = meta->find(key); v != nullptr && !v->is_null()) return v;
        if (const json_value* v = cfg.find(key); v != nullptr && !v->is_null()) return v;
        return nullptr;
    };
    const json_value* hook = field("hook_name");
    if (hook == nullptr) hook = field("hook_point");
    if (hook != nullptr) out.metadata.hook_name = hook->as_string();
    const json_value* head = field("hook_head_index");
    if (head == nullptr) head = field("hook_point_head_index");
    if (head != nullptr) out.metadata.hook_head_index = head->as_int64();
    if (const json_value* v = field("model_name")) out.metadata.model_name = v->as_string();
    if (const json_value* v = cfg.find("dtype")) out.metadata.dtype = v->as_string();
    return out;
}

/// Reads a SAELens folder (`dir/cfg.json`, `dir/sae_weights.safetensors`; F32, F16 or BF16 weights). Throws
/// format_error naming the file for a bad config, a missing, mistyped or extra tensor, or shapes that disagree
/// with cfg.json.
inline saelens_sae read_saelens_folder(const std::filesystem::path& dir) {
    saelens_sae out = read_saelens_config(read_json_file(dir / "cfg.json"));
    const std::filesystem::path weights_path = dir / "sae_weights.safetensors";
    const std::string where = weights_path.string();
    safetensors_file file = read_safetensors(weights_path, safetensors_dtypes::float_any);
    sae_weights& w = out.weights;
    const index_t d_in = w.d_in, d_sae = w.d_sae;
    const bool jump = out.options.architecture == sae_architecture::jumprelu;
    struct slot {
        const char* name;
        std::vector<index_t> shape;
        std::vector<float>* values;
        bool needed;
    };
    std::vector<slot> slots{{"W_enc", {d_in, d_sae}, &w.w_enc, true},
                            {"W_dec", {d_sae, d_in}, &w.w_dec, true},
                            {"b_enc", {d_sae}, &w.b_enc, true},
                            {"b_dec", {d_in}, &w.b_dec, true},
                            {"threshold", {d_sae}, &w.threshold, jump}};
    std::vector<bool> seen(slots.size(), false);
    auto shape_text = [](const std::vector<index_t>& shape) {
        std::string text = "(";
        for (std::size_t i = 0; i < shape.size(); ++i) {
            if (i > 0) text += ", ";
            text += std::to_string(shape[i]);
        }
        text += shape.size() == 1 ? ",)" : ")";
        return text;
    };
    for (safetensors_tensor& t : file.tensors) {
        if (t.name == "scaling_factor") {  // older files: harmless when all ones
            for (float v : t.values)
                if (v != 1.0f) detail::format_fail(where, "a scaling_factor other than ones is not supported");
            continue;
        }
        std::size_t s = 0;
        while (s < slots.size() && (t.name != slots[s].name || !slots[s].needed)) ++s;
        if (s == slots.size())
            detail::format_fail(where, "unexpected tensor '" + t.name.substr(0, 100) + "' for architecture " +
                                           std::string(to_string(out.options.architecture)));
        if (t.shape != slots[s].shape) {
            std::string problem = "tensor '";
            problem += slots[s].name;
            problem += "' has shape ";
            problem += shape_text(t.shape);
            problem += ", but cfg.json implies ";
            problem += shape_text(slots[s].shape);
            detail::format_fail(where, problem);
        }
        *slots[s].values = std::move(t.values);
        seen[s] = true;
    }
    for (std::size_t s = 0; s < slots.size(); ++s)
        if (slots[s].needed && !seen[s]) detail::format_fail(where, std::string("missing tensor '") + slots[s].name + "'");
    return out;
}

/// The text of `cfg.json` for `sae` (SAELens 6's inference layout).
inline std::string saelens_config_text(const saelens_sae& sae) {
    const sae_options& o = sae.options;
    std::string text = "{\"architecture\": ";
    text += detail::json_quote(to_string(o.architecture));
    text += ", \"d_in\": ";
    text += std::to_string(sae.weights.d_in);
    text += ", \"d_sae\": ";
    text += std::to_string(sae.weights.d_sae);
    text += ", \"dtype\": \"float32\", \"device\": \"cpu\", \"apply_b_dec_to_input\": ";
    text += o.apply_b_dec_to_input ? "true" : "false";
    text += ", \"normalize_activations\": ";
    text += detail::json_quote(to_string(o.normalize_activations));
    text += ", \"reshape_activations\": \"none\"";
    if (o.architecture == sae_architecture::topk) {
        text += ", \"k\": ";
        text += std::to_string(static_cast<std::int64_t>(o.k));
    } else if (o.architecture == sae_architecture::batchtopk) {
        char k[40];
        std::snprintf(k, sizeof k, "%.17g", o.k);
        text += ", \"k\": ";
        text += k;
    }
    if (o.architecture == sae_architecture::topk || o.architecture == sae_architecture::batchtopk) {
        text += ", \"rescale_acts_by_decoder_norm\": ";
        text += o.rescale_acts_by_decoder_norm ? "true" : "false";
    }
    for (const auto& [name, value] : sae.training_config) {
        text += ", ";
        text += detail::json_quote(name);
        text += ": ";
        text += value;
    }
    text += ", \"metadata\": {\"sae_lens_version\": \"6.0.0\", \"sae_lens_training_version\": \"6.0.0\", "
            "\"written_by\": \"mechlens\", \"hook_name\": ";
    text += detail::json_quote(sae.metadata.hook_name);
    text += ", \"hook_head_index\": ";
    text += sae.metadata.hook_head_index ? std::to_string(*sae.metadata.hook_head_index) : std::string("null");
    text += ", \"model_name\": ";
    text += sae.metadata.model_name.empty() ? std::string("null") : detail::json_quote(sae.metadata.model_name);
    text += "}}\n";
    return text;
}

/// Writes `sae` as a SAELens folder (creating `dir`); throws shape_error for inconsistent weights,
/// std::invalid_argument for batchtopk (convert it with batchtopk_as_jumprelu first, as SAELens does) and
/// format_error naming the file on I/O failure.
inline void write_saelens_folder(const std::filesystem::path& dir, const saelens_sae& sae) {
    validate_sae(sae.weights, sae.options, "write_saelens_folder");
    if (sae.options.architecture == sae_architecture::batchtopk)
        throw std::invalid_argument("write_saelens_folder: SAELens stores batchtopk SAEs as jumprelu; convert with "
                                    "batchtopk_as_jumprelu");
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) detail::format_fail(dir.string(), "cannot create the directory: " + ec.message());
    const sae_weights& w = sae.weights;
    std::vector<safetensors_tensor_ref> tensors{{"W_enc", {w.d_in, w.d_sae}, w.w_enc.data()},
                                                {"W_dec", {w.d_sae, w.d_in}, w.w_dec.data()},
                                                {"b_enc", {w.d_sae}, w.b_enc.data()},
                                                {"b_dec", {w.d_in}, w.b_dec.data()}};
    if (sae.options.architecture == sae_architecture::jumprelu)
        tensors.push_back({"threshold", {w.d_sae}, w.threshold.data()});
    write_safetensors(dir / "sae_weights.safetensors", tensors);
    const std::filesystem::path cfg = dir / "cfg.json";
    std::ofstream out(cfg, std::ios::binary | std::ios::trunc);
    const std::string text = saelens_config_text(sae);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    out.close();
    if (!out) detail::format_fail(cfg.string(), "write failed");
}

/// A batchtopk SAE as SAELens saves it for inference: jumprelu with every threshold equal to the global one.
inline saelens_sae batchtopk_as_jumprelu(saelens_sae sae, float global_threshold) {
    sae.options.architecture = sae_architecture::jumprelu;
    sae.options.k = 0;
    sae.options.rescale_acts_by_decoder_norm = false;
    sae.weights.threshold.assign(static_cast<std::size_t>(sae.weights.d_sae), global_threshold);
    return sae;
}

/// Folds expected_average_only_in's input scaling factor into the weights, as SAELens does after training
/// (W_enc * factor, W_dec / factor, b_dec / factor) so the SAE then reads unscaled activations
/// (normalize_activations becomes none). The factor SAELens estimates is sqrt(d_in) / mean ||x||.
inline void fold_activation_scaling_factor(saelens_sae& sae, float factor) {
    for (float& v : sae.weights.w_enc) v *= factor;
    for (float& v : sae.weights.w_dec) v /= factor;
    for (float& v : sae.weights.b_dec) v /= factor;
    sae.options.normalize_activations = sae_normalization::none;
}

MECHLENS_END_NAMESPACE
