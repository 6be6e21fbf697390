#pragma once
/// @file
/// A transcoder's parameters: an SAE that reads one activation (e.g. an MLP's input) and reconstructs another (the
/// MLP's output), with an optional affine skip connection:
///   output = acts W_dec + b_dec + x W_skip         (rows, d_in)
/// where acts are the SAE's latents of x. A transcoder never subtracts b_dec from its input
/// (apply_b_dec_to_input = false). The splice and file formats built on this struct live elsewhere
/// (sae/transcoder.hpp); the trainer (sae/training.hpp) produces it.

#include <stdexcept>
#include <string>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/sae/definition.hpp"
#include "mechlens/tensor/errors.hpp"

MECHLENS_BEGIN_NAMESPACE

/// A transcoder's parameters in SAELens's layout (row-major), in float or double.
template <class T>
struct basic_transcoder_weights {
    basic_sae_weights<T> sae;  ///< Encoder, decoder and biases; the decoder writes the target's space.
    std::vector<T> w_skip;     ///< (d_in, d_in) row-major: output += x W_skip; empty without a skip connection.
};

/// Float transcoder parameters.
using transcoder_weights = basic_transcoder_weights<float>;

/// Throws shape_error (starting with `who`) when a transcoder's weights disagree with their sizes or its options,
/// std::invalid_argument when the options subtract b_dec from the input or normalize it.
template <class T>
void validate_transcoder(const basic_transcoder_weights<T>& w, const sae_options& options, const std::string& who) {
    validate_sae(w.sae, options, who);
    if (options.apply_b_dec_to_input || options.normalize_activations == sae_normalization::constant_norm_rescale)
        throw std::invalid_argument(who +
                                    ": a transcoder reads its input as it is (b_dec is its output bias): use "
                                    "apply_b_dec_to_input = false and no constant_norm_rescale "
                                    "(transcoder_options())");
    const auto square = static_cast<std::size_t>(w.sae.d_in * w.sae.d_in);
    if (!w.w_skip.empty() && w.w_skip.size() != square)
        throw shape_error(who + ": W_skip has " + std::to_string(w.w_skip.size()) + " values, expected 0 or " +
                          std::to_string(square) + " (d_in, d_in)");
}

MECHLENS_END_NAMESPACE
