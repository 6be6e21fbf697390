#pragma once
/// @file
/// Directional ablation: remove a direction r from everything a model writes into its residual stream.
///
/// At run time, `direction_ablation_hooks` projects x <- x - (x . r) r (r a unit vector) at every block input
/// (hook_resid_pre), attention output (hook_attn_out) and MLP output (hook_mlp_out) of the chosen layers; with
/// every layer chosen, no residual stream the model computes has a component along r. The same edit can be baked
/// into the weights (`orthogonalize_weights`): every matrix that writes the residual stream (token and learned
/// position embeddings, W_O, W_down) and its bias get W <- W - r r^T W, so the edited model computes the ablated
/// residual stream with no hook at all. A tied unembedding is untied first (the unembedding must not change).
/// The projection is linear, so its backward pass is the same projection: gradients through the policy are exact.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/hooks/patching.hpp"
#include "mechlens/hooks/policy.hpp"
#include "mechlens/hooks/site.hpp"
#include "mechlens/model/parameters.hpp"
#include "mechlens/tensor/errors.hpp"

MECHLENS_BEGIN_NAMESPACE

namespace detail {

/// `direction` scaled to unit length in double; throws std::invalid_argument (naming `who`) for a zero or non-finite
/// vector, shape_error when its size is not `width`.
inline std::vector<double> unit_direction(std::span<const float> direction, index_t width, const char* who) {
    if (static_cast<index_t>(direction.size()) != width)
        throw shape_error(std::string(who) + ": the direction has " + std::to_string(direction.size()) +
                          " values, the model's d_model is " + std::to_string(width));
    double norm = 0.0;
    for (float v : direction) norm += static_cast<double>(v) * static_cast<double>(v);
    norm = std::sqrt(norm);
    if (!(norm > 0.0) || !std::isfinite(norm))
        throw std::invalid_argument(std::string(who) + ": the direction must be a non-zero, finite vector");
    std::vector<double> unit(direction.size());
    for (std::size_t i = 0; i < unit.size(); ++i) unit[i] = static_cast<double>(direction[i]) / norm;
    return unit;
}

/// x <- x - (x . r) r on `width` floats `stride` apart, the dot product in double.
inline void project_out(float* x, index_t width, index_t stride, const std::vector<double>& r) {
    double along = 0.0;
    for (index_t i = 0; i < width; ++i) along += static_cast<double>(x[i * stride]) * r[static_cast<std::size_t>(i)];
    for (index_t i = 0; i < width; ++i)
        x[i * stride] = static_cast<float>(static_cast<double>(x[i * stride]) - along * r[static_cast<std::size_t>(i)]);
}

}  // namespace detail

/// The sites directional ablation edits: block inputs, attention outputs and MLP outputs.
inline constexpr kind_set direction_ablation_kinds =
    kind_set::of({site_kind::resid_pre, site_kind::attn_out, site_kind::mlp_out});

/// Removes the component along a unit direction from hook_resid_pre, hook_attn_out and hook_mlp_out of the chosen
/// layers (all by default), at every position, in the forward pass and (the same projection) in the backward pass.
class direction_ablation_hooks {
public:
    /// The kinds it edits.
    static constexpr kind_set kinds = direction_ablation_kinds;

    /// Ablates `direction` (d_model values, any non-zero length) at `layers` of a model with `n_layers` blocks
    /// (every layer when empty). Throws shape_error for a direction of another width, std::invalid_argument for a
    /// zero direction or a layer out of range.
    direction_ablation_hooks(std::span<const float> direction, index_t d_model, index_t n_layers,
                             const std::vector<index_t>& layers = {})
        : unit_(detail::unit_direction(direction, d_model, "direction_ablation_hooks")),
          chosen_(static_cast<std::size_t>(n_layers), layers.empty() ? 1 : 0) {
        for (index_t layer : layers) {
            if (layer < 0 || layer >= n_layers)
                throw std::invalid_argument("direction_ablation_hooks: layer " + std::to_string(layer) +
                                            " is out of range (the model has " + std::to_string(n_layers) + " blocks)");
            chosen_[static_cast<std::size_t>(layer)] = 1;
        }
    }

    /// The unit direction, in double.
    [[nodiscard]] const std::vector<double>& direction() const noexcept { return unit_; }
    /// The sites it edits, in layer order (hook_resid_pre, hook_attn_out, hook_mlp_out of each chosen block).
    [[nodiscard]] std::vector<site> sites() const {
        std::vector<site> out;
        for (index_t layer = 0; layer < static_cast<index_t>(chosen_.size()); ++layer)
            if (edits(layer))
                for (site_kind kind : {site_kind::resid_pre, site_kind::attn_out, site_kind::mlp_out})
                    out.push_back(site{kind, layer});
        return out;
    }
    /// True when block `layer` is edited.
    [[nodiscard]] bool edits(index_t layer) const noexcept {
        return layer >= 0 && layer < static_cast<index_t>(chosen_.size()) && chosen_[static_cast<std::size_t>(layer)];
    }

    /// True for the three kinds it edits.
    static constexpr bool wants(site_kind kind) noexcept { return kinds.contains(kind); }
    /// Projects every row of `view` when `s` is one of its sites in a chosen layer.
    template <std::size_t R>
    void on_activation(const site& s, tensor_view<float, R> view, const hook_context& ctx) {
        project(s, view, ctx);
    }
    /// The backward pass of a projection is the projection: the same edit on the gradient.
    static constexpr bool wants_gradient(site_kind kind) noexcept { return kinds.contains(kind); }
    /// Projects the gradient at its sites, as on_activation projects the activation.
    template <std::size_t R>
    void on_gradient(const site& s, tensor_view<float, R> gradient, const hook_context& ctx) {
        project(s, gradient, ctx);
    }

private:
    template <std::size_t R>
    void project(const site& s, tensor_view<float, R> view, const hook_context& ctx) const {
        if (s.extension >= 0 || !kinds.contains(s.kind) || !edits(s.layer)) return;
        const index_t width = view.extent(R - 1), stride = view.stride(R - 1);
        if (width != static_cast<index_t>(unit_.size()))
            throw shape_error("direction_ablation_hooks: " + to_string(s) + " has width " + std::to_string(width) +
                              ", the direction " + std::to_string(unit_.size()));
        detail::for_each_selected_row(view, s, ctx, selection{}, [&](const extents<R>&, float* row) {
            detail::project_out(row, width, stride, unit_);
        });
    }

    std::vector<double> unit_;           // (d_model)
    std::vector<unsigned char> chosen_;  // (n_layers) 1 for edited blocks
};
static_assert(hook_policy<direction_ablation_hooks>);

/// A copy of `model` with `direction` (d_model values, any non-zero length) removed from every matrix and bias that
/// writes the residual stream (see the file comment); a tied unembedding comes back untied, equal to the original
/// embedding. Its logits equal those of `model` run with direction_ablation_hooks at every layer, up to rounding.
/// Throws as direction_ablation_hooks.
inline model_parameters orthogonalize_weights(const model_parameters& model, std::span<const float> direction) {
    const model_config& config = model.config();
    const std::vector<double> r = detail::unit_direction(direction, config.d_model, "orthogonalize_weights");
    model_config untied = config;
    untied.tied_unembed = false;
    model_parameters out(untied);
    for (const parameter_entry& e : model.layout()) {
        const std::span<const float> from =
            model.flat().subspan(static_cast<std::size_t>(e.offset), static_cast<std::size_t>(e.size()));
        const std::span<float> to = out.find(e.name);
        std::copy(from.begin(), from.end(), to.begin());
        if (e.id == parameter_id::token_embedding && config.tied_unembed) {
            const std::span<float> unembed = out.find("unembed");
            std::copy(from.begin(), from.end(), unembed.begin());
        }
    }
    for (const parameter_entry& e : out.layout()) {
        const std::span<float> values = out.find(e.name);
        const index_t d = config.d_model;
        switch (e.id) {
            case parameter_id::token_embedding:
            case parameter_id::pos_embedding:  // (rows, d_model): each row is written into the residual stream
                for (index_t row = 0; row < e.shape[0]; ++row) detail::project_out(values.data() + row * d, d, 1, r);
                break;
            case parameter_id::w_o:
            case parameter_id::w_down:  // (d_model, in): each column is written into the residual stream
                for (index_t column = 0; column < e.shape[1]; ++column)
                    detail::project_out(values.data() + column, d, e.shape[1], r);
                break;
            case parameter_id::b_o:
            case parameter_id::b_down:  // (d_model)
                detail::project_out(values.data(), d, 1, r);
                break;
            default:
                break;
        }
    }
    return out;
}

MECHLENS_END_NAMESPACE
