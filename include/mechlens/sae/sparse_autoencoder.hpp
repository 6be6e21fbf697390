#pragma once
/// @file
/// A sparse autoencoder of any of SAELens's architectures (standard, topk, jumprelu, batchtopk; sae/definition.hpp)
/// as a splice, with SAELens's definitions and site names:
///   x        = the host activation, as hooks leave it                `hook_sae_input`      (batch, pos, d_in)
///   sae_in   = x * scale - b_dec (see sae/forward.hpp)
///   acts_pre = sae_in W_enc + b_enc                                  `hook_sae_acts_pre`   (batch, pos, d_sae)
///   acts     = the architecture's activation of acts_pre             `hook_sae_acts_post`  (batch, pos, d_sae)
///   recons   = acts W_dec + b_dec (before undoing the scale)         `hook_sae_recons`     (batch, pos, d_in)
///   error    = x - output of the same x without hooks (error term)   `hook_sae_error`      (batch, pos, d_in)
///   output   = recons / scale + error, or recons / scale             `hook_sae_output`     (batch, pos, d_in)
/// As in SAELens, `hook_sae_input` sees the input before normalization and b_dec, and `hook_sae_recons` the
/// reconstruction before the constant_norm_rescale scale is undone. With the error term the model's output is
/// unchanged while nothing intervenes on the SAE's sites, and interventions on its latents reach the rest of the
/// model through the reconstruction. The error term is detached: the backward pass sends the output's gradient to
/// the input through the SAE only (through the kept latents of topk, jumprelu and batchtopk; the error node's
/// gradient is shown to hooks at `hook_sae_error` and goes no further). batchtopk keeps the k * rows largest latents
/// of each call (its training form); SAELens saves a trained one as jumprelu, which is how it is meant to be used.

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/hooks/splice.hpp"
#include "mechlens/sae/definition.hpp"
#include "mechlens/sae/forward.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// A sparse autoencoder spliced in at a hook site (see the file comment for its sites).
class sae_splice final : public splice {
public:
    /// Positions of the SAE's activations in sites() (error is absent without the error term).
    enum activation : std::size_t { input = 0, acts_pre = 1, acts_post = 2, recons = 3, error = 4 };

    /// Takes the weights; throws shape_error when they disagree with d_in, d_sae and the architecture.
    explicit sae_splice(sae_weights weights, sae_options options = {})
        : w_(std::move(weights)), options_(options) {
        validate_sae(w_, options_, "sae_splice");
        norms_ = sae_decoder_norms(w_);
    }

    /// The weights.
    [[nodiscard]] const sae_weights& weights() const noexcept { return w_; }
    /// The options.
    [[nodiscard]] const sae_options& options() const noexcept { return options_; }
    /// The position of `hook_sae_output` in sites().
    [[nodiscard]] std::size_t output_index() const noexcept { return options_.error_term ? 5 : 4; }

    /// d_in.
    [[nodiscard]] index_t width() const noexcept override { return w_.d_in; }
    /// False for batchtopk, whose latents are chosen over the whole batch.
    [[nodiscard]] bool rows_independent() const noexcept override {
        return options_.architecture != sae_architecture::batchtopk;
    }
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
        const index_t rows = x.extent(0), d_in = w_.d_in;
        const auto hooked_x = tape.matrix(slot_x, rows, d_in);  // (rows, d_in) x as hooks leave it
        for (index_t r = 0; r < rows; ++r)
            for (index_t i = 0; i < d_in; ++i) hooked_x(r, i) = x(r, i);
        hooks.fire(input, hooked_x);
        const auto out = tape.matrix(slot_out, rows, d_in);  // (rows, d_in) recons / scale
        run(hooked_x, tape, 0, out, &hooks);
        if (options_.error_term) {
            const auto err = tape.matrix(slot_error, rows, d_in);  // (rows, d_in)
            bool hooked = false;
            for (std::size_t k = input; k <= recons; ++k) hooked = hooked || hooks.active(k);
            if (hooked) {  // the error of the same input without hooks
                const auto clean = tape.matrix(slot_clean_out, rows, d_in);  // (rows, d_in)
                run(x, tape, clean_offset, clean, nullptr);
                subtract(x, clean, err);
            } else {
                subtract(x, out, err);
            }
            hooks.fire(error, err);
            for (index_t r = 0; r < rows; ++r)
                for (index_t i = 0; i < d_in; ++i) output(r, i) = out(r, i) + err(r, i);
        } else {
            for (index_t r = 0; r < rows; ++r)
                for (index_t i = 0; i < d_in; ++i) output(r, i) = out(r, i);
        }
        hooks.fire(output_index(), output);
    }

    /// d(output) -> d(input) through the decoder, the kept latents, the encoder and the input scale (the error
    /// term is detached).
    void backward(splice_tape& tape, tensor_view<float, 2> d_output, tensor_view<float, 2> d_input,
                  splice_hooks& hooks) const override {
        const index_t rows = d_output.extent(0), d_in = w_.d_in, d_sae = w_.d_sae;
        hooks.fire(output_index(), d_output);
        if (options_.error_term && hooks.active(error)) {  // shown, then dropped: the error is detached
            const auto d_error = tape.matrix(slot_d_error, rows, d_in);  // (rows, d_in)
            for (index_t r = 0; r < rows; ++r)
                for (index_t i = 0; i < d_in; ++i) d_error(r, i) = d_output(r, i);
            hooks.fire(error, d_error);
        }
        const std::vector<float> scale = tape.buffers.at(slot_scale);  // (rows), copied: the tape may grow
        const auto d_recons = tape.matrix(slot_d_recons, rows, d_in);  // (rows, d_in)
        for (index_t r = 0; r < rows; ++r)
            for (index_t i = 0; i < d_in; ++i) d_recons(r, i) = d_output(r, i) / scale[static_cast<std::size_t>(r)];
        hooks.fire(recons, d_recons);
        const auto d_acts = tape.matrix(slot_d_acts, rows, d_sae);  // (rows, d_sae)
        sae_decode_backward<float>(d_recons, w_, options_, norms_, d_acts);
        hooks.fire(acts_post, d_acts);
        const auto d_pre = tape.matrix(slot_d_pre, rows, d_sae);  // (rows, d_sae)
        sae_activate_backward<float>(d_acts, kept_mask(tape, rows), options_, norms_, d_pre);
        hooks.fire(acts_pre, d_pre);
        const auto d_sae_in = tape.matrix(slot_d_sae_in, rows, d_in);  // (rows, d_in)
        sae_encode_backward<float>(d_pre, w_, d_sae_in);
        sae_scale_backward<float>(tape.stored(slot_x, rows, d_in), scale, options_, tape.stored(slot_recons, rows, d_in),
                                  d_output, d_sae_in, d_input);
        hooks.fire(input, d_input);
    }

private:
    // Tape buffers: the forward pass's values (a second set at clean_offset for the clean error), then scratch.
    enum slot : std::size_t {
        slot_x = 0, slot_scale = 1, slot_sae_in = 2, slot_pre = 3, slot_acts = 4, slot_recons = 5, slot_kept = 6,
        slot_out = 7, clean_offset = 8, slot_clean_out = 16, slot_error = 17, slot_d_error = 18, slot_d_recons = 19,
        slot_d_acts = 20, slot_d_pre = 21, slot_d_sae_in = 22,
    };

    static void subtract(tensor_view<const float, 2> a, tensor_view<const float, 2> b, tensor_view<float, 2> out) {
        for (index_t r = 0; r < out.extent(0); ++r)
            for (index_t i = 0; i < out.extent(1); ++i) out(r, i) = a(r, i) - b(r, i);
    }
    // The kept-latent mask is stored as floats (0 or 1) in the tape.
    sae_kept_mask kept_mask(splice_tape& tape, index_t rows) const {
        const auto stored = tape.stored(slot_kept, rows, w_.d_sae);
        sae_kept_mask kept(static_cast<std::size_t>(rows * w_.d_sae));
        for (index_t r = 0; r < rows; ++r)
            for (index_t j = 0; j < w_.d_sae; ++j) kept[detail::sae_at(r, j, w_.d_sae)] = stored(r, j) != 0.0f ? 1 : 0;
        return kept;
    }

    /// The forward pass of `x` into `out` (recons / scale), keeping its values in the tape from slot `base` on and
    /// firing the sites after hook_sae_input when `hooks` is not null.
    void run(tensor_view<const float, 2> x, splice_tape& tape, std::size_t base, tensor_view<float, 2> out,
             splice_hooks* hooks) const {
        const index_t rows = x.extent(0), d_in = w_.d_in, d_sae = w_.d_sae;
        if (tape.buffers.size() <= base + slot_kept) tape.buffers.resize(base + slot_kept + 1);
        std::vector<float>& scale = tape.buffers[base + slot_scale];  // (rows)
        sae_input_scale<float>(x, options_, scale);
        const auto sae_in = tape.matrix(base + slot_sae_in, rows, d_in);  // (rows, d_in)
        sae_prepare_input<float>(x, scale, w_, options_, sae_in);
        const auto pre = tape.matrix(base + slot_pre, rows, d_sae);  // (rows, d_sae)
        sae_encode<float>(sae_in, w_, pre);
        if (hooks != nullptr) hooks->fire(acts_pre, pre);
        const auto acts = tape.matrix(base + slot_acts, rows, d_sae);  // (rows, d_sae)
        sae_kept_mask kept;
        sae_activate<float>(pre, w_, options_, norms_, acts, kept);
        const auto kept_values = tape.matrix(base + slot_kept, rows, d_sae);  // (rows, d_sae) 0 or 1
        for (index_t r = 0; r < rows; ++r)
            for (index_t j = 0; j < d_sae; ++j) kept_values(r, j) = kept[detail::sae_at(r, j, d_sae)] != 0 ? 1.0f : 0.0f;
        if (hooks != nullptr) hooks->fire(acts_post, acts);
        const auto reconstruction = tape.matrix(base + slot_recons, rows, d_in);  // (rows, d_in)
        sae_decode<float>(acts, w_, options_, norms_, reconstruction);
        if (hooks != nullptr) hooks->fire(recons, reconstruction);
        sae_restore_scale<float>(reconstruction, scale, out);
    }

    sae_weights w_;
    sae_options options_;
    std::vector<float> norms_;  // (d_sae) ||W_dec row||
};

MECHLENS_END_NAMESPACE
