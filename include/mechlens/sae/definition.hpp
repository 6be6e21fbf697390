#pragma once
/// @file
/// What a sparse autoencoder is, as SAELens defines it: its architecture, the options that change its forward pass,
/// and its parameters. One struct per fact: the splice, the training loss and the SAELens folder reader all take
/// these.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// The activation function between encoder and decoder (SAELens's `architecture` field).
enum class sae_architecture : std::uint8_t {
    standard,   ///< acts = relu(pre).
    topk,       ///< Per row, the k largest pre-activations, ReLU'd; the rest zero.
    jumprelu,   ///< acts = relu(pre) * (pre > threshold), one threshold per latent.
    batchtopk,  ///< The k * rows largest ReLU'd pre-activations of the whole batch (training form; saved as jumprelu).
};

/// How the input is rescaled before encoding (SAELens's `normalize_activations`).
enum class sae_normalization : std::uint8_t {
    none,                      ///< Nothing.
    expected_average_only_in,  ///< Nothing inside the SAE: the data pipeline scales inputs by one constant factor.
    constant_norm_rescale,     ///< Each row scaled to norm sqrt(d_in) on the way in, scaled back on the way out.
};

/// SAELens's name of an architecture ("standard", "topk", "jumprelu", "batchtopk").
constexpr std::string_view to_string(sae_architecture a) noexcept {
    switch (a) {
        case sae_architecture::standard: return "standard";
        case sae_architecture::topk: return "topk";
        case sae_architecture::jumprelu: return "jumprelu";
        case sae_architecture::batchtopk: return "batchtopk";
    }
    return "standard";
}

/// SAELens's name of a normalization ("none", "expected_average_only_in", "constant_norm_rescale").
constexpr std::string_view to_string(sae_normalization n) noexcept {
    switch (n) {
        case sae_normalization::none: return "none";
        case sae_normalization::expected_average_only_in: return "expected_average_only_in";
        case sae_normalization::constant_norm_rescale: return "constant_norm_rescale";
    }
    return "none";
}

/// The architecture named `name`, or nullopt for a name SAELens does not use for these four.
constexpr std::optional<sae_architecture> parse_sae_architecture(std::string_view name) noexcept {
    for (sae_architecture a : {sae_architecture::standard, sae_architecture::topk, sae_architecture::jumprelu,
                               sae_architecture::batchtopk})
        if (to_string(a) == name) return a;
    return std::nullopt;
}

/// The normalization named `name`, or nullopt (SAELens's "layer_norm" is not supported).
constexpr std::optional<sae_normalization> parse_sae_normalization(std::string_view name) noexcept {
    for (sae_normalization n : {sae_normalization::none, sae_normalization::expected_average_only_in,
                                sae_normalization::constant_norm_rescale})
        if (to_string(n) == name) return n;
    return std::nullopt;
}

/// How a sparse autoencoder computes and how it is spliced in. The fields after error_term are SAELens's
/// inference configuration.
struct sae_options {
    bool error_term = true;            ///< Splice only: add the clean reconstruction error back (use_error_term).
    bool apply_b_dec_to_input = true;  ///< Subtract b_dec from the (normalized) input before encoding.
    sae_architecture architecture = sae_architecture::standard;  ///< The activation function.
    double k = 0;  ///< topk: latents kept per row (an integer); batchtopk: mean latents kept per row.
    sae_normalization normalize_activations = sae_normalization::none;  ///< Input rescaling.
    /// topk and batchtopk: rank latents by pre * ||W_dec row|| and decode acts / ||W_dec row|| (SAELens's
    /// rescale_acts_by_decoder_norm); the decoded value of a kept latent is still relu(pre).
    bool rescale_acts_by_decoder_norm = false;
};

/// A sparse autoencoder's parameters in SAELens's layout (row-major), in float or double.
template <class T>
struct basic_sae_weights {
    index_t d_in = 0;            ///< Width of the activation it reads.
    index_t d_sae = 0;           ///< Number of latents.
    std::vector<T> w_enc;        ///< (d_in, d_sae)
    std::vector<T> w_dec;        ///< (d_sae, d_in)
    std::vector<T> b_enc;        ///< (d_sae)
    std::vector<T> b_dec;        ///< (d_in)
    std::vector<T> threshold;    ///< (d_sae) for jumprelu, else empty.
};

/// Float parameters, as spliced into a model and stored in SAELens folders.
using sae_weights = basic_sae_weights<float>;

/// Throws shape_error (starting with `who`) when the sizes of `w` disagree with its d_in and d_sae or with the
/// architecture (jumprelu needs a threshold, the others none), or when options.k does not fit it.
template <class T>
void validate_sae(const basic_sae_weights<T>& w, const sae_options& options, const std::string& who) {
    if (w.d_in <= 0 || w.d_sae <= 0) {
        std::string message = who;
        message += ": d_in and d_sae must be positive, got ";
        message += std::to_string(w.d_in);
        message += " and ";
        message += std::to_string(w.d_sae);
        throw shape_error(message);
    }
    auto require = [&](const std::vector<T>& v, index_t size, const char* name) {
        if (static_cast<index_t>(v.size()) == size) return;
        std::string message = who;
        message += ": ";
        message += name;
        message += " has ";
        message += std::to_string(v.size());
        message += " values, expected ";
        message += std::to_string(size);
        throw shape_error(message);
    };
    require(w.w_enc, w.d_in * w.d_sae, "W_enc (d_in, d_sae)");
    require(w.w_dec, w.d_sae * w.d_in, "W_dec (d_sae, d_in)");
    require(w.b_enc, w.d_sae, "b_enc (d_sae)");
    require(w.b_dec, w.d_in, "b_dec (d_in)");
    require(w.threshold, options.architecture == sae_architecture::jumprelu ? w.d_sae : 0, "threshold (d_sae)");
    const bool top = options.architecture == sae_architecture::topk;
    if (top || options.architecture == sae_architecture::batchtopk) {
        const bool integral = !top || options.k == static_cast<double>(static_cast<index_t>(options.k));
        if (!(options.k > 0.0) || !(options.k <= static_cast<double>(w.d_sae)) || !integral) {
            std::string message = who;
            message += ": k = ";
            message += std::to_string(options.k);
            message += top ? " must be an integer in [1, d_sae]" : " must be in (0, d_sae]";
            throw shape_error(message);
        }
    }
}

MECHLENS_END_NAMESPACE
