#pragma once
/// @file
/// A standard (ReLU) sparse autoencoder as a splice, with SAELens's definitions and site names:
///   sae_in   = x - b_dec (with apply_b_dec_to_input, else x)        `hook_sae_input`      (batch, pos, d_in)
///   acts_pre = sae_in W_enc + b_enc                                  `hook_sae_acts_pre`   (batch, pos, d_sae)
///   acts     = relu(acts_pre)                                        `hook_sae_acts_post`  (batch, pos, d_sae)
///   recons   = acts W_dec + b_dec                                    `hook_sae_recons`     (batch, pos, d_in)
///   error    = x - recons of the same x without hooks (error term)   `hook_sae_error`      (batch, pos, d_in)
///   output   = recons + error (error term) or recons (replacement)   `hook_sae_output`     (batch, pos, d_in)
/// With the error term the model's output is unchanged while nothing intervenes on the SAE's sites, and interventions
/// on its latents reach the rest of the model through the reconstruction. As in SAELens, the error term is detached:
/// the backward pass sends the output's gradient to the input through the SAE only (the latents get exact
/// gradients; the error node's gradient is shown to hooks at `hook_sae_error` and goes no further).

#include <algorithm>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/hooks/splice.hpp"
#include "mechlens/kernels/matmul.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// A sparse autoencoder's parameters in SAELens's layout (row-major).
struct sae_weights {
    index_t d_in = 0;           ///< Width of the activation it reads.
    index_t d_sae = 0;          ///< Number of latents.
    std::vector<float> w_enc;   ///< (d_in, d_sae)
    std::vector<float> w_dec;   ///< (d_sae, d_in)
    std::vector<float> b_enc;   ///< (d_sae)
    std::vector<float> b_dec;   ///< (d_in)
};

/// How a sparse autoencoder is spliced in.
struct sae_options {
    bool error_term = true;            ///< Add the clean reconstruction error back (SAELens's use_error_term).
    bool apply_b_dec_to_input = true;  ///< Subtract b_dec from the input before encoding.
};

/// A standard ReLU sparse autoencoder spliced in at a hook site (see the file comment for its sites).
class sae_splice final : public splice {
public:
    /// Positions of the SAE's activations in sites() (error is absent without the error term).
    enum activation : std::size_t { input = 0, acts_pre = 1, acts_post = 2, recons = 3, error = 4 };

    /// Takes the weights; throws shape_error when their sizes disagree with d_in and d_sae.
    explicit sae_splice(sae_weights weights, sae_options options = {})
        : w_(std::move(weights)), options_(options) {
        const index_t d_in = w_.d_in, d_sae = w_.d_sae;
        auto require = [](const std::vector<float>& v, index_t size, const char* name) {
            if (static_cast<index_t>(v.size()) != size)
                throw shape_error(std::string("sae_splice: ") + name + " has " + std::to_string(v.size()) +
                                  " values, expected " + std::to_string(size));
        };
        if (d_in <= 0 || d_sae <= 0)
            throw shape_error("sae_splice: d_in and d_sae must be positive, got " + std::to_string(d_in) + " and " +
                              std::to_string(d_sae));
        require(w_.w_enc, d_in * d_sae, "W_enc (d_in, d_sae)");
        require(w_.w_dec, d_sae * d_in, "W_dec (d_sae, d_in)");
        require(w_.b_enc, d_sae, "b_enc (d_sae)");
        require(w_.b_dec, d_in, "b_dec (d_in)");
        // The forward products want each weight as (out, in): W_enc^T and W_dec^T; the backward ones use them as is.
        encoder_.resize(w_.w_enc.size());
        decoder_.resize(w_.w_dec.size());
        for (index_t i = 0; i < d_in; ++i)
            for (index_t j = 0; j < d_sae; ++j) {
                encoder_[static_cast<std::size_t>(j * d_in + i)] = w_.w_enc[static_cast<std::size_t>(i * d_sae + j)];
                decoder_[static_cast<std::size_t>(i * d_sae + j)] = w_.w_dec[static_cast<std::size_t>(j * d_in + i)];
            }
    }

    /// The weights.
    [[nodiscard]] const sae_weights& weights() const noexcept { return w_; }
    /// The options.
    [[nodiscard]] const sae_options& options() const noexcept { return options_; }
    /// The position of `hook_sae_output` in sites().
    [[nodiscard]] std::size_t output_index() const noexcept { return options_.error_term ? 5 : 4; }

    /// d_in.
    [[nodiscard]] index_t width() const noexcept override { return w_.d_in; }
    /// SAELens's sites, in firing order.
    [[nodiscard]] std::vector<splice_site> sites() const override {
        std::vector<splice_site> out{{"hook_sae_input", w_.d_in},
                                     {"hook_sae_acts_pre", w_.d_sae},
                                     {"hook_sae_acts_post", w_.d_sae},
                                     {"hook_sae_recons", w_.d_in}};
        if (options_.error_term) out.push_back({"hook_sae_error", w_.d_in});
        out.push_back({"hook_sae_output", w_.d_in});
        return out;
    }

    /// Encodes, decodes and (with the error term) adds the clean error, firing every site.
    void forward(tensor_view<const float, 2> x, tensor_view<float, 2> output, splice_hooks& hooks,
                 splice_tape& tape) const override {
        const index_t rows = x.extent(0), d_in = w_.d_in, d_sae = w_.d_sae;
        const auto sae_in = tape.matrix(0, rows, d_in);      // (rows, d_in)
        const auto pre = tape.matrix(1, rows, d_sae);        // (rows, d_sae)
        const auto acts = tape.matrix(2, rows, d_sae);       // (rows, d_sae)
        const auto reconstruction = tape.matrix(3, rows, d_in);  // (rows, d_in)
        encode_decode(x, sae_in, pre, acts, reconstruction, &hooks);
        if (options_.error_term) {
            const auto err = tape.matrix(4, rows, d_in);  // (rows, d_in)
            bool hooked = false;
            for (std::size_t k = input; k <= recons; ++k) hooked = hooked || hooks.active(k);
            if (hooked) {  // the error of the same input without hooks
                const auto clean = tape.matrix(8, rows, d_in);  // (rows, d_in)
                encode_decode(x, tape.matrix(5, rows, d_in), tape.matrix(6, rows, d_sae), tape.matrix(7, rows, d_sae),
                              clean, nullptr);
                subtract(x, clean, err);
            } else {
                subtract(x, reconstruction, err);
            }
            hooks.fire(error, err);
            for (index_t r = 0; r < rows; ++r)
                for (index_t i = 0; i < d_in; ++i) output(r, i) = reconstruction(r, i) + err(r, i);
        } else {
            for (index_t r = 0; r < rows; ++r)
                for (index_t i = 0; i < d_in; ++i) output(r, i) = reconstruction(r, i);
        }
        hooks.fire(output_index(), output);
    }

    /// d(output) -> d(input) through the decoder, the ReLU and the encoder (the error term is detached).
    void backward(splice_tape& tape, tensor_view<float, 2> d_output, tensor_view<float, 2> d_input,
                  splice_hooks& hooks) const override {
        const index_t rows = d_output.extent(0), d_in = w_.d_in, d_sae = w_.d_sae;
        hooks.fire(output_index(), d_output);
        if (options_.error_term && hooks.active(error)) {  // shown, then dropped: the error is detached
            const auto d_error = tape.matrix(9, rows, d_in);  // (rows, d_in)
            for (index_t r = 0; r < rows; ++r)
                for (index_t i = 0; i < d_in; ++i) d_error(r, i) = d_output(r, i);
            hooks.fire(error, d_error);
        }
        hooks.fire(recons, d_output);  // d(recons) = d(output)
        const auto d_acts = tape.matrix(10, rows, d_sae);  // (rows, d_sae)
        kernels::linear(d_output, weight(w_.w_dec, d_sae, d_in), d_acts);
        hooks.fire(acts_post, d_acts);
        const auto pre = tape.stored(1, rows, d_sae);  // (rows, d_sae) as the ReLU saw it
        for (index_t r = 0; r < rows; ++r)
            for (index_t j = 0; j < d_sae; ++j)
                if (!(pre(r, j) > 0.0f)) d_acts(r, j) = 0.0f;
        hooks.fire(acts_pre, d_acts);
        kernels::linear(d_acts, weight(w_.w_enc, d_in, d_sae), d_input);  // d(sae_in) = d(x)
        hooks.fire(input, d_input);
    }

private:
    static tensor_view<const float, 2> weight(const std::vector<float>& w, index_t rows, index_t cols) {
        return tensor_view<const float, 2>(w.data(), {rows, cols});
    }
    static void subtract(tensor_view<const float, 2> a, tensor_view<const float, 2> b, tensor_view<float, 2> out) {
        for (index_t r = 0; r < out.extent(0); ++r)
            for (index_t i = 0; i < out.extent(1); ++i) out(r, i) = a(r, i) - b(r, i);
    }
    /// sae_in, acts_pre, acts and recons of `x`, firing their sites when `hooks` is not null.
    void encode_decode(tensor_view<const float, 2> x, tensor_view<float, 2> sae_in, tensor_view<float, 2> pre,
                       tensor_view<float, 2> acts, tensor_view<float, 2> reconstruction, splice_hooks* hooks) const {
        const index_t rows = x.extent(0), d_in = w_.d_in, d_sae = w_.d_sae;
        for (index_t r = 0; r < rows; ++r)
            for (index_t i = 0; i < d_in; ++i)
                sae_in(r, i) = options_.apply_b_dec_to_input ? x(r, i) - w_.b_dec[static_cast<std::size_t>(i)]
                                                             : x(r, i);
        if (hooks != nullptr) hooks->fire(input, sae_in);
        kernels::linear(sae_in, weight(encoder_, d_sae, d_in), tensor_view<const float, 1>(w_.b_enc.data(), {d_sae}),
                        pre);
        if (hooks != nullptr) hooks->fire(acts_pre, pre);
        for (index_t r = 0; r < rows; ++r)
            for (index_t j = 0; j < d_sae; ++j) acts(r, j) = std::max(pre(r, j), 0.0f);
        if (hooks != nullptr) hooks->fire(acts_post, acts);
        kernels::linear(acts, weight(decoder_, d_in, d_sae), tensor_view<const float, 1>(w_.b_dec.data(), {d_in}),
                        reconstruction);
        if (hooks != nullptr) hooks->fire(recons, reconstruction);
    }

    sae_weights w_;
    sae_options options_;
    std::vector<float> encoder_;  // (d_sae, d_in) = W_enc^T
    std::vector<float> decoder_;  // (d_in, d_sae) = W_dec^T
};

MECHLENS_END_NAMESPACE
