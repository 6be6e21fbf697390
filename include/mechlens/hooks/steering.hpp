#pragma once
/// @file
/// Activation steering: add alpha * v to chosen sites at chosen positions (and heads).

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mechlens/hooks/patching.hpp"
#include "mechlens/hooks/policy.hpp"
#include "mechlens/hooks/site.hpp"
#include "mechlens/tensor/errors.hpp"

MECHLENS_BEGIN_NAMESPACE

/// One steered site: where, which part, and the vector added to every selected row.
struct steering_target {
    site target;         ///< The site.
    selection selected;  ///< Positions and heads to steer (everything by default).
    std::vector<float>
        scaled;  ///< alpha * v rounded to float once; rows get x + scaled[i], never a fused multiply-add.
    bool preserve_norm = false;  ///< Rescale each steered row back to its norm before steering.
};

/// How steer_hooks::add treats a row's norm.
enum class steering_norm : std::uint8_t {
    free,      ///< x + alpha v: the norm changes.
    preserve,  ///< (x + alpha v) * ||x|| / ||x + alpha v||: only the direction changes (norms in double).
};

/// Adds alpha * v to every selected row of chosen sites; v has the size of the site's last axis (d_model for the
/// residual stream, d_head for hook_z, d_mlp for mlp.hook_post, ...). Positions are absolute (see `selection`), so
/// steering during `generate` touches the same positions as steering one full forward over the same tokens.
template <kind_set Kinds = kind_set::all_but_result()>
class steer_hooks {
public:
    /// The kinds this policy can steer.
    static constexpr kind_set kinds = Kinds;

    /// Adds alpha * v at `s` (selected positions and heads; everything by default), optionally rescaling each row
    /// back to its norm; the vector is copied.
    steer_hooks& add(const site& s, std::span<const float> v, float alpha = 1.0f, const selection& where = {},
                     steering_norm norm = steering_norm::free) {
        detail::check_target<Kinds>(s, where, "steer_hooks");
        if (v.empty())
            throw std::invalid_argument("steer_hooks: the steering vector for " + to_string(s) + " is empty");
        std::vector<float> scaled(v.size());
        for (std::size_t i = 0; i < v.size(); ++i) scaled[i] = alpha * v[i];
        targets_.push_back({s, where, std::move(scaled), norm == steering_norm::preserve});
        return *this;
    }
    /// Forgets every target.
    void clear() noexcept { targets_.clear(); }
    /// The steered sites, in the order they were added.
    [[nodiscard]] const std::vector<steering_target>& targets() const noexcept { return targets_; }

    /// True for kinds in Kinds.
    static constexpr bool wants(site_kind kind) noexcept { return Kinds.contains(kind); }
    /// Adds the scaled vector to the selected rows of `view` when `s` is a target; throws shape_error naming the
    /// site when the vector's size is not the site's last-axis size.
    template <std::size_t R>
    void on_activation(const site& s, tensor_view<float, R> view, const hook_context& ctx) {
        for (const steering_target& t : targets_) {
            if (!(t.target == s)) continue;
            const index_t width = view.extent(R - 1), stride = view.stride(R - 1);
            if (static_cast<index_t>(t.scaled.size()) != width)
                throw shape_error("steer_hooks: the steering vector for " + to_string(s) + " has " +
                                  std::to_string(t.scaled.size()) + " elements, but the site's last axis has " +
                                  std::to_string(width) + " (shape " + detail::format_extents(view.shape()) + ")");
            const float* add = t.scaled.data();
            detail::for_each_selected_row(view, s, ctx, t.selected, [&](const extents<R>&, float* row) {
                double before = 0.0, after = 0.0;
                if (t.preserve_norm)
                    for (index_t i = 0; i < width; ++i)
                        before += static_cast<double>(row[i * stride]) * static_cast<double>(row[i * stride]);
                for (index_t i = 0; i < width; ++i) row[i * stride] += add[i];
                if (!t.preserve_norm) return;
                for (index_t i = 0; i < width; ++i)
                    after += static_cast<double>(row[i * stride]) * static_cast<double>(row[i * stride]);
                if (after > 0.0) {
                    const double scale = std::sqrt(before / after);
                    for (index_t i = 0; i < width; ++i)
                        row[i * stride] = static_cast<float>(static_cast<double>(row[i * stride]) * scale);
                }
            });
        }
    }

    /// Adding a constant passes gradients through unchanged; only norm-preserving targets need a look.
    static constexpr bool wants_gradient(site_kind kind) noexcept { return Kinds.contains(kind); }
    /// Throws std::logic_error at a norm-preserving target: its rescaling is not the identity, and its backward
    /// pass is not implemented (rather than a silently wrong gradient).
    template <std::size_t R>
    void on_gradient(const site& s, tensor_view<float, R>, const hook_context&) const {
        for (const steering_target& t : targets_)
            if (t.preserve_norm && t.target == s)
                throw std::logic_error("steer_hooks: gradients through norm-preserving steering at " + to_string(s) +
                                       " are not implemented");
    }

private:
    std::vector<steering_target> targets_;
};
static_assert(hook_policy<steer_hooks<>>);
static_assert(hook_policy<steer_hooks<kind_set::of({site_kind::resid_post})>>);

MECHLENS_END_NAMESPACE
