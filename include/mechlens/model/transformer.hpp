#pragma once
/// @file
/// A ready-to-run transformer: config, weight views and precomputed rotary tables.

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "mechlens/kernels/rope.hpp"
#include "mechlens/model/config.hpp"
#include "mechlens/model/weights.hpp"

MECHLENS_BEGIN_NAMESPACE

/// A LLaMA-family model ready for forward passes; immutable, so one instance can serve many threads.
class transformer {
public:
    /// Takes a loader's result; validates config and weight shapes (throws format_error / shape_error).
    explicit transformer(loaded_model loaded)
        : config_(std::move(loaded.config)), weights_(std::move(loaded.weights)) {
        config_.validate();
        validate_weights(config_, weights_);
        if (config_.rotary()) rope_ = kernels::make_rope_tables(config_.n_ctx, config_.rotary_dim(), config_.rope_theta);
    }

    /// Hyper-parameters.
    [[nodiscard]] const model_config& config() const noexcept { return config_; }
    /// Weight views, every one readable: the first call decodes the floats of quantised matrices that the loader
    /// kept as blocks only (see decoded_on_demand; costs their float size in memory). Thread-safe.
    [[nodiscard]] const model_weights& weights() const {
        decode_all_floats(weights_);
        return weights_;
    }
    /// Weight views as stored, without decoding anything: the forward passes read these, multiplying quantised
    /// matrices by their blocks. A quantised matrix's float view may not be readable yet: read floats through
    /// weights(), or readable(stored_weights(), view) for one matrix.
    [[nodiscard]] const model_weights& stored_weights() const noexcept { return weights_; }
    /// Rotary cos/sin tables, (n_ctx, rotary_dim / 2) each; empty with learned positions.
    [[nodiscard]] const kernels::rope_tables& rope() const noexcept { return rope_; }

private:
    model_config config_;
    model_weights weights_;
    kernels::rope_tables rope_;
};

namespace detail {
/// Throws std::out_of_range (prefixed with `who`) naming the first token id of `tokens` (batch, pos) outside
/// [0, d_vocab): every pass that embeds tokens checks them here before reading the embedding table.
inline void check_token_ids(const model_config& c, tensor_view<const std::int32_t, 2> tokens, const char* who) {
    for (index_t b = 0; b < tokens.extent(0); ++b)
        for (index_t p = 0; p < tokens.extent(1); ++p)
            if (tokens(b, p) < 0 || tokens(b, p) >= c.d_vocab)
                throw std::out_of_range(std::string(who) + ": token id " + std::to_string(tokens(b, p)) + " at (" +
                                        std::to_string(b) + ", " + std::to_string(p) + ") is outside [0, " +
                                        std::to_string(c.d_vocab) + ")");
}
}  // namespace detail

MECHLENS_END_NAMESPACE
