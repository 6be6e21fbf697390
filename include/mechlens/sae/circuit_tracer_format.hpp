#pragma once
/// @file
/// circuit-tracer's per-layer transcoder files (`layer_L.safetensors`, as its SingleLayerTranscoder.to_safetensors
/// writes and load_transcoder reads) and the two hook names of its `config.yaml`. A file holds
///   W_enc (d_tc, d_model)   pre = x W_enc^T + b_enc (F.linear)   -> transcoder_weights::sae.w_enc (d_model, d_tc)
///   W_dec (d_tc, d_model)   acts W_dec + b_dec                    -> sae.w_dec as stored
///   b_enc (d_tc), b_dec (d_model)
///   activation_function.threshold (d_tc), optional: JumpReLU, pre * (pre > threshold); else ReLU
///   W_skip (d_model, d_model), optional: + x W_skip^T             -> w_skip (d_model, d_model) transposed
/// in F32, F16 or BF16. circuit-tracer's JumpReLU has no ReLU; mechlens's jumprelu is relu(pre) * (pre > threshold),
/// which agrees for thresholds >= 0, so a negative threshold is refused. Not read: top-k files (their `k` is an
/// integer tensor), Gemma Scope `.npz` files, cross-layer transcoders. Everything wrong with a file is a one-line
/// format_error naming it.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/hooks/site_traits.hpp"
#include "mechlens/io/byte_reader.hpp"
#include "mechlens/io/safetensors.hpp"
#include "mechlens/sae/definition.hpp"
#include "mechlens/sae/transcoder.hpp"
#include "mechlens/sae/transcoder_definition.hpp"
#include "mechlens/tensor/errors.hpp"

MECHLENS_BEGIN_NAMESPACE

/// One transcoder as stored by circuit-tracer: its weights (mechlens's layout) and options (standard or jumprelu).
struct circuit_tracer_transcoder {
    transcoder_weights weights;                  ///< Transposed into mechlens's layout where circuit-tracer's differs.
    sae_options options = transcoder_options();  ///< standard (ReLU) or jumprelu, with the error term.
};

/// The hooks of a circuit-tracer transcoder set (`config.yaml`): TransformerLens names within a block.
struct circuit_tracer_hooks {
    std::string feature_input_hook = "ln2.hook_normalized";  ///< Where the transcoders read (the MLP's input).
    std::string feature_output_hook = "hook_mlp_out";        ///< Where they write (the MLP's output).
};

namespace detail {

/// (rows, cols) row-major `in` transposed into (cols, rows).
inline std::vector<float> transposed(const std::vector<float>& in, index_t rows, index_t cols) {
    std::vector<float> out(in.size());
    for (index_t r = 0; r < rows; ++r)
        for (index_t c = 0; c < cols; ++c)
            out[static_cast<std::size_t>(c * rows + r)] = in[static_cast<std::size_t>(r * cols + c)];
    return out;
}

/// A shape as Python prints it: (3, 4) or (3,).
inline std::string python_shape(const std::vector<index_t>& shape) {
    std::string text = "(";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i > 0) text += ", ";
        text += std::to_string(shape[i]);
    }
    text += shape.size() == 1 ? ",)" : ")";
    return text;
}

/// The transcoder in a parsed circuit-tracer file (errors name `where`).
inline circuit_tracer_transcoder circuit_tracer_from_tensors(safetensors_file file, const std::string& where) {
    auto find = [&](std::string_view name) -> safetensors_tensor* {
        for (safetensors_tensor& t : file.tensors)
            if (t.name == name) return &t;
        return nullptr;
    };
    for (const safetensors_tensor& t : file.tensors)
        if (t.name != "W_enc" && t.name != "W_dec" && t.name != "b_enc" && t.name != "b_dec" && t.name != "W_skip" &&
            t.name != "activation_function.threshold")
            format_fail(where, "unexpected tensor '" + t.name.substr(0, 100) +
                                   "' (a circuit-tracer transcoder has W_enc, W_dec, b_enc, b_dec and optionally "
                                   "W_skip and activation_function.threshold)");
    auto need = [&](const char* name) -> safetensors_tensor& {
        safetensors_tensor* t = find(name);
        if (t == nullptr) format_fail(where, std::string("missing tensor '") + name + "'");
        return *t;
    };
    safetensors_tensor& b_enc = need("b_enc");
    safetensors_tensor& b_dec = need("b_dec");
    if (b_enc.shape.size() != 1 || b_enc.shape[0] <= 0 || b_dec.shape.size() != 1 || b_dec.shape[0] <= 0)
        format_fail(where, "b_enc and b_dec must be non-empty vectors, got " + python_shape(b_enc.shape) + " and " +
                               python_shape(b_dec.shape));
    const index_t d_tc = b_enc.shape[0], d_model = b_dec.shape[0];
    auto check = [&](const safetensors_tensor& t, const std::vector<index_t>& shape) {
        if (t.shape != shape)
            format_fail(where, "tensor '" + t.name + "' has shape " + python_shape(t.shape) +
                                   ", but b_enc and b_dec "
                                   "imply " +
                                   python_shape(shape) + " (d_tc " + std::to_string(d_tc) + ", d_model " +
                                   std::to_string(d_model) + ")");
    };
    circuit_tracer_transcoder out;
    sae_weights& w = out.weights.sae;
    w.d_in = d_model;
    w.d_sae = d_tc;
    safetensors_tensor& w_enc = need("W_enc");
    check(w_enc, {d_tc, d_model});
    w.w_enc = transposed(w_enc.values, d_tc, d_model);
    safetensors_tensor& w_dec = need("W_dec");
    check(w_dec, {d_tc, d_model});
    w.w_dec = std::move(w_dec.values);
    w.b_enc = std::move(b_enc.values);
    w.b_dec = std::move(b_dec.values);
    if (safetensors_tensor* threshold = find("activation_function.threshold")) {
        check(*threshold, {d_tc});
        for (float v : threshold->values)
            if (!(v >= 0.0f))
                format_fail(where, "activation_function.threshold has a negative or NaN entry (" + std::to_string(v) +
                                       "): circuit-tracer's JumpReLU pre * (pre > threshold) and mechlens's "
                                       "relu(pre) * (pre > threshold) agree only for thresholds >= 0");
        out.options.architecture = sae_architecture::jumprelu;
        w.threshold = std::move(threshold->values);
    }
    if (safetensors_tensor* skip = find("W_skip")) {
        check(*skip, {d_model, d_model});
        out.weights.w_skip = transposed(skip->values, d_model, d_model);
    }
    return out;
}

/// The value of a top-level `key: value` line of a YAML document, unquoted, or empty when absent.
inline std::string yaml_top_level_scalar(std::string_view text, std::string_view key) {
    std::size_t start = 0;
    while (start < text.size()) {
        std::size_t end = text.find('\n', start);
        if (end == std::string_view::npos) end = text.size();
        std::string_view line = text.substr(start, end - start);
        start = end + 1;
        if (line.size() <= key.size() || line.substr(0, key.size()) != key || line[key.size()] != ':') continue;
        std::string_view value = line.substr(key.size() + 1);
        if (const std::size_t hash = value.find(" #"); hash != std::string_view::npos) value = value.substr(0, hash);
        while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
        while (!value.empty() && (value.back() == ' ' || value.back() == '\t' || value.back() == '\r'))
            value.remove_suffix(1);
        if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') && value.back() == value.front())
            value = value.substr(1, value.size() - 2);
        return std::string(value);
    }
    return {};
}

}  // namespace detail

/// Parses the `size` bytes of a circuit-tracer transcoder file at `bytes` (errors name `where`).
inline circuit_tracer_transcoder parse_circuit_tracer_transcoder(const std::byte* bytes, std::size_t size,
                                                                 const std::string& where) {
    return detail::circuit_tracer_from_tensors(parse_safetensors(bytes, size, where, safetensors_dtypes::float_any),
                                               where);
}

/// Reads a circuit-tracer transcoder file (`layer_L.safetensors`); throws format_error naming it.
inline circuit_tracer_transcoder read_circuit_tracer_transcoder(const std::filesystem::path& path) {
    return detail::circuit_tracer_from_tensors(read_safetensors(path, safetensors_dtypes::float_any), path.string());
}

/// The file of layer `layer` in a circuit-tracer folder: `dir/layer_<layer>.safetensors`.
inline std::filesystem::path circuit_tracer_layer_file(const std::filesystem::path& dir, index_t layer) {
    return dir / ("layer_" + std::to_string(layer) + ".safetensors");
}

/// Writes `weights` as circuit-tracer writes a transcoder (F32); throws std::invalid_argument for an architecture
/// other than standard (ReLU) or jumprelu, or options a transcoder does not take, shape_error for inconsistent
/// weights, format_error naming the file on I/O failure.
inline void write_circuit_tracer_transcoder(const std::filesystem::path& path, const transcoder_weights& weights,
                                            const sae_options& options = transcoder_options()) {
    validate_transcoder(weights, options, "write_circuit_tracer_transcoder");
    if (options.architecture != sae_architecture::standard && options.architecture != sae_architecture::jumprelu)
        throw std::invalid_argument(
            "write_circuit_tracer_transcoder: circuit-tracer files hold ReLU or JumpReLU "
            "transcoders, not " +
            std::string(to_string(options.architecture)));
    const sae_weights& w = weights.sae;
    const std::vector<float> w_enc = detail::transposed(w.w_enc, w.d_in, w.d_sae);  // (d_tc, d_model)
    std::vector<safetensors_tensor_ref> tensors{{"W_enc", {w.d_sae, w.d_in}, w_enc.data()},
                                                {"W_dec", {w.d_sae, w.d_in}, w.w_dec.data()},
                                                {"b_enc", {w.d_sae}, w.b_enc.data()},
                                                {"b_dec", {w.d_in}, w.b_dec.data()}};
    if (options.architecture == sae_architecture::jumprelu)
        tensors.push_back({"activation_function.threshold", {w.d_sae}, w.threshold.data()});
    std::vector<float> skip;  // (d_model, d_model), circuit-tracer's orientation
    if (!weights.w_skip.empty()) {
        skip = detail::transposed(weights.w_skip, w.d_in, w.d_in);
        tensors.push_back({"W_skip", {w.d_in, w.d_in}, skip.data()});
    }
    write_safetensors(path, tensors);
}

/// The hook names of a circuit-tracer `config.yaml` (the top-level `feature_input_hook` and `feature_output_hook`;
/// the rest of the file is not read), with a `blocks.{layer}.` prefix removed. Throws format_error naming the file
/// when it cannot be read or lacks either key.
inline circuit_tracer_hooks read_circuit_tracer_config(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) detail::format_fail(path.string(), "cannot open");
    const std::streamoff size = in.tellg();
    if (size < 0 || size > (std::streamoff{1} << 24))
        detail::format_fail(path.string(), "cannot read (or over 16 MiB)");
    std::string text(static_cast<std::size_t>(size), '\0');
    in.seekg(0);
    if (size > 0 && !in.read(text.data(), static_cast<std::streamsize>(size)))
        detail::format_fail(path.string(), "cannot read");
    circuit_tracer_hooks out;
    auto field = [&](const char* key) {
        std::string value = detail::yaml_top_level_scalar(text, key);
        if (value.empty()) detail::format_fail(path.string(), std::string("missing top-level key '") + key + "'");
        constexpr std::string_view prefix = "blocks.{layer}.";
        if (value.rfind(prefix, 0) == 0) value.erase(0, prefix.size());
        if (value.empty())
            detail::format_fail(path.string(), std::string("top-level key '") + key + "' names no hook after '" +
                                                   std::string(prefix) + "'");
        return value;
    };
    out.feature_input_hook = field("feature_input_hook");
    out.feature_output_hook = field("feature_output_hook");
    return out;
}

/// The mechlens site kinds of circuit-tracer's hook names: the input `ln2.hook_normalized`, `hook_resid_mid` or
/// `hook_resid_pre`, the output `hook_mlp_out` or `mlp.hook_out`. Throws std::invalid_argument for other names
/// (circuit-tracer's `mlp.hook_in`, the MLP's input after the norm's gain, has no mechlens site).
struct circuit_tracer_sites {
    site_kind input;   ///< The transcoder's source.
    site_kind output;  ///< Its host.
};

/// See circuit_tracer_sites.
inline circuit_tracer_sites circuit_tracer_site_kinds(const circuit_tracer_hooks& hooks) {
    circuit_tracer_sites out{site_kind::ln2_normalized, site_kind::mlp_out};
    const std::string& in = hooks.feature_input_hook;
    if (in == "ln2.hook_normalized")
        out.input = site_kind::ln2_normalized;
    else if (in == "hook_resid_mid")
        out.input = site_kind::resid_mid;
    else if (in == "hook_resid_pre")
        out.input = site_kind::resid_pre;
    else
        throw std::invalid_argument("circuit-tracer feature_input_hook '" + in.substr(0, 80) +
                                    "' has no mechlens site (ln2.hook_normalized, hook_resid_mid or hook_resid_pre)");
    const std::string& o = hooks.feature_output_hook;
    if (o != "hook_mlp_out" && o != "mlp.hook_out")
        throw std::invalid_argument("circuit-tracer feature_output_hook '" + o.substr(0, 80) +
                                    "' is not the MLP's output (hook_mlp_out or mlp.hook_out)");
    return out;
}

MECHLENS_END_NAMESPACE
