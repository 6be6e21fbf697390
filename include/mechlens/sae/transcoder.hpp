#pragma once
/// @file
/// A transcoder spliced in over an MLP, as circuit-tracer's replacement model does: attached at the MLP's output
/// `blocks.L.hook_mlp_out` (its host), it reads the MLP's input (its source, `blocks.L.ln2.hook_normalized`; see
/// mlp_input_site) and replaces the MLP's output. Its activations are extension sites below the host, with SAELens's
/// names:
///   x        = the source rows, as hooks leave them                  `hook_sae_input`      (batch, pos, d_in)
///   acts_pre = x W_enc + b_enc                                       `hook_sae_acts_pre`   (batch, pos, d_sae)
///   acts     = the architecture's activation of acts_pre             `hook_sae_acts_post`  (batch, pos, d_sae)
///   recons   = acts W_dec + b_dec + x W_skip                         `hook_sae_recons`     (batch, pos, d_in)
///   error    = mlp_out - recons of the same x without hooks          `hook_sae_error`      (batch, pos, d_in)
///   output   = recons + error (error term), or recons                `hook_sae_output`     (batch, pos, d_in)
/// With the error term the model's output is unchanged while nothing intervenes. The error term is detached: the
/// backward pass sends d(output) through the transcoder to the MLP's input only, so the real MLP gets no gradient
/// from its output (with or without the error term) and the transcoder's input gradient joins the MLP input's.

#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/hooks/site_traits.hpp"
#include "mechlens/hooks/splice.hpp"
#include "mechlens/model/config.hpp"
#include "mechlens/sae/definition.hpp"
#include "mechlens/sae/forward.hpp"
#include "mechlens/sae/transcoder_definition.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// A transcoder's options: it reads x as it is (b_dec is its output bias, never subtracted from its input, and no
/// normalization), with the error term on.
constexpr sae_options transcoder_options(sae_architecture architecture = sae_architecture::standard,
                                         double k = 0) noexcept {
    sae_options options;
    options.apply_b_dec_to_input = false;
    options.architecture = architecture;
    options.k = k;
    return options;
}

/// The site that holds an MLP's input in a model with this config: `ln2.hook_normalized` (before the gain, as in
/// TransformerLens) with norms, else `hook_resid_mid`, or `hook_resid_pre` in parallel blocks. Throws
/// std::invalid_argument for attention-only models (no MLP to replace).
inline site_kind mlp_input_site(const model_config& c) {
    if (!has_site_kind(c, site_kind::mlp_out))
        throw std::invalid_argument("mlp_input_site: the model has no MLP to transcode (" +
                                    detail::missing_kind_reason(c, site_kind::mlp_out) + ")");
    if (has_site_kind(c, site_kind::ln2_normalized)) return site_kind::ln2_normalized;
    return has_site_kind(c, site_kind::resid_mid) ? site_kind::resid_mid : site_kind::resid_pre;
}

/// A transcoder spliced in at an MLP's output, reading the MLP's input (see the file comment for its sites).
class transcoder_splice final : public splice {
public:
    /// Positions of its activations in sites() (error is absent without the error term).
    enum activation : std::size_t { input = 0, acts_pre = 1, acts_post = 2, recons = 3, error = 4 };

    /// Takes the weights, the options (transcoder_options()) and the kind of the site it reads in the host's block
    /// (mlp_input_site(config)); throws as validate_transcoder.
    explicit transcoder_splice(transcoder_weights weights, sae_options options = transcoder_options(),
                               site_kind input_site = site_kind::ln2_normalized)
        : w_(std::move(weights)), options_(options), input_site_(input_site) {
        validate_transcoder(w_, options_, "transcoder_splice");
        norms_ = sae_decoder_norms(w_.sae);
    }

    /// The weights.
    [[nodiscard]] const transcoder_weights& weights() const noexcept { return w_; }
    /// The options.
    [[nodiscard]] const sae_options& options() const noexcept { return options_; }
    /// The position of `hook_sae_output` in sites().
    [[nodiscard]] std::size_t output_index() const noexcept { return options_.error_term ? 5 : 4; }

    /// d_in: the MLP output's width (the same as its input's).
    [[nodiscard]] index_t width() const noexcept override { return w_.sae.d_in; }
    /// The MLP's input site in the host's block.
    [[nodiscard]] std::optional<splice_source> source() const override {
        return splice_source{input_site_, w_.sae.d_in};
    }
    /// SAELens's sites, in firing order.
    [[nodiscard]] std::vector<splice_site> sites() const override {
        const index_t d_in = w_.sae.d_in, d_sae = w_.sae.d_sae;
        std::vector<splice_site> out{{"hook_sae_input", d_in},
                                     {"hook_sae_acts_pre", d_sae},
                                     {"hook_sae_acts_post", d_sae},
                                     {"hook_sae_recons", d_in}};
        if (options_.error_term) out.push_back({"hook_sae_error", d_in});
        out.push_back({"hook_sae_output", d_in});
        return out;
    }

    /// Encodes the source rows, decodes (plus the skip) and, with the error term, adds the MLP output's clean error.
    void forward(tensor_view<const float, 2> mlp_out, tensor_view<float, 2> output, splice_hooks& hooks,
                 splice_tape& tape) const override {
        const index_t rows = mlp_out.extent(0), d_in = w_.sae.d_in;
        const tensor_view<const float, 2> source = tape.source_rows(rows, d_in);  // (rows, d_in) the MLP's input
        const auto x = tape.matrix(slot_x, rows, d_in);                           // (rows, d_in) as hooks leave it
        for (index_t r = 0; r < rows; ++r)
            for (index_t i = 0; i < d_in; ++i) x(r, i) = source(r, i);
        hooks.fire(input, x);
        const auto out = tape.matrix(slot_recons, rows, d_in);  // (rows, d_in)
        run(x, tape, 0, out, &hooks);
        if (options_.error_term) {
            const auto err = tape.matrix(slot_error, rows, d_in);  // (rows, d_in)
            bool hooked = false;
            for (std::size_t k = input; k <= recons; ++k) hooked = hooked || hooks.active(k);
            const auto clean = hooked ? tape.matrix(slot_clean_recons, rows, d_in) : out;  // (rows, d_in)
            if (hooked) run(source, tape, clean_offset, clean, nullptr);
            for (index_t r = 0; r < rows; ++r)
                for (index_t i = 0; i < d_in; ++i) err(r, i) = mlp_out(r, i) - clean(r, i);
            hooks.fire(error, err);
            for (index_t r = 0; r < rows; ++r)
                for (index_t i = 0; i < d_in; ++i) output(r, i) = out(r, i) + err(r, i);
        } else {
            for (index_t r = 0; r < rows; ++r)
                for (index_t i = 0; i < d_in; ++i) output(r, i) = out(r, i);
        }
        hooks.fire(output_index(), output);
    }

    /// d(output) -> d(MLP input) through the decoder, the kept latents, the encoder and the skip; d(mlp_out) is 0
    /// (the error term is detached, and without it the MLP's output is not used).
    void backward(splice_tape& tape, tensor_view<float, 2> d_output, tensor_view<float, 2> d_mlp_out,
                  splice_hooks& hooks) const override {
        const index_t rows = d_output.extent(0), d_in = w_.sae.d_in, d_sae = w_.sae.d_sae;
        hooks.fire(output_index(), d_output);
        if (options_.error_term && hooks.active(error)) {
            // Shown, then dropped: the error is detached.
            const auto d_error = tape.matrix(slot_d_error, rows, d_in);  // (rows, d_in)
            for (index_t r = 0; r < rows; ++r)
                for (index_t i = 0; i < d_in; ++i) d_error(r, i) = d_output(r, i);
            hooks.fire(error, d_error);
        }
        const auto d_recons = tape.matrix(slot_d_recons, rows, d_in);  // (rows, d_in)
        for (index_t r = 0; r < rows; ++r)
            for (index_t i = 0; i < d_in; ++i) d_recons(r, i) = d_output(r, i);
        hooks.fire(recons, d_recons);
        const auto d_acts = tape.matrix(slot_d_acts, rows, d_sae);  // (rows, d_sae)
        sae_decode_backward<float>(d_recons, w_.sae, options_, norms_, d_acts);
        hooks.fire(acts_post, d_acts);
        const auto d_pre = tape.matrix(slot_d_pre, rows, d_sae);  // (rows, d_sae)
        sae_activate_backward<float>(d_acts, kept_mask(tape, rows), options_, norms_, d_pre);
        hooks.fire(acts_pre, d_pre);
        const auto d_x = tape.source_gradient(rows, d_in);  // (rows, d_in): added at the source site
        sae_encode_backward<float>(d_pre, w_.sae, d_x);
        if (!w_.w_skip.empty())  // x W_skip: d(x) += d(recons) W_skip^T
            for (index_t r = 0; r < rows; ++r)
                for (index_t i = 0; i < d_in; ++i) {
                    const float* row = w_.w_skip.data() + detail::sae_at(i, 0, d_in);
                    float sum = 0.0f;
                    for (index_t o = 0; o < d_in; ++o) sum += d_recons(r, o) * row[o];
                    d_x(r, i) += sum;
                }
        hooks.fire(input, d_x);
        for (index_t r = 0; r < rows; ++r)
            for (index_t i = 0; i < d_in; ++i) d_mlp_out(r, i) = 0.0f;
    }

private:
    // Tape buffers: the forward pass's values (a second set at clean_offset for the clean error), then scratch.
    enum slot : std::size_t {
        slot_x = 0,
        slot_pre = 1,
        slot_acts = 2,
        slot_kept = 3,
        slot_recons = 4,
        clean_offset = 5,
        slot_clean_recons = 9,
        slot_error = 10,
        slot_d_error = 11,
        slot_d_recons = 12,
        slot_d_acts = 13,
        slot_d_pre = 14,
    };

    // The kept-latent mask is stored as floats (0 or 1) in the tape.
    sae_kept_mask kept_mask(splice_tape& tape, index_t rows) const {
        const index_t d_sae = w_.sae.d_sae;
        const auto stored = tape.stored(slot_kept, rows, d_sae);
        sae_kept_mask kept(static_cast<std::size_t>(rows * d_sae));
        for (index_t r = 0; r < rows; ++r)
            for (index_t j = 0; j < d_sae; ++j) kept[detail::sae_at(r, j, d_sae)] = stored(r, j) != 0.0f ? 1 : 0;
        return kept;
    }

    /// The transcoder of `x` into `out` (recons), keeping its values in the tape from slot `base` on and firing the
    /// sites after hook_sae_input when `hooks` is not null.
    void run(tensor_view<const float, 2> x, splice_tape& tape, std::size_t base, tensor_view<float, 2> out,
             splice_hooks* hooks) const {
        const index_t rows = x.extent(0), d_in = w_.sae.d_in, d_sae = w_.sae.d_sae;
        const auto pre = tape.matrix(base + slot_pre, rows, d_sae);  // (rows, d_sae)
        sae_encode<float>(x, w_.sae, pre);
        if (hooks != nullptr) hooks->fire(acts_pre, pre);
        const auto acts = tape.matrix(base + slot_acts, rows, d_sae);  // (rows, d_sae)
        sae_kept_mask kept;
        sae_activate<float>(pre, w_.sae, options_, norms_, acts, kept);
        const auto kept_values = tape.matrix(base + slot_kept, rows, d_sae);  // (rows, d_sae) 0 or 1
        for (index_t r = 0; r < rows; ++r)
            for (index_t j = 0; j < d_sae; ++j)
                kept_values(r, j) = kept[detail::sae_at(r, j, d_sae)] != 0 ? 1.0f : 0.0f;
        if (hooks != nullptr) hooks->fire(acts_post, acts);
        sae_decode<float>(acts, w_.sae, options_, norms_, out);
        if (!w_.w_skip.empty())
            for (index_t r = 0; r < rows; ++r)
                for (index_t i = 0; i < d_in; ++i) {
                    const float v = x(r, i);
                    const float* row = w_.w_skip.data() + detail::sae_at(i, 0, d_in);
                    for (index_t o = 0; o < d_in; ++o) out(r, o) += v * row[o];
                }
        if (hooks != nullptr) hooks->fire(recons, out);
    }

    transcoder_weights w_;
    sae_options options_;
    site_kind input_site_;
    std::vector<float> norms_;  // (d_sae) ||W_dec row||
};

MECHLENS_END_NAMESPACE
