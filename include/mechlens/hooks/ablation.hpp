#pragma once
/// @file
/// Ablation: knock out chosen sites, heads and positions by zeroing them, by replacing them with their mean over
/// many prompts, or by resampling them from another prompt.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mechlens/hooks/activation_cache.hpp"
#include "mechlens/hooks/patching.hpp"
#include "mechlens/hooks/policy.hpp"
#include "mechlens/hooks/site.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Which axes a mean ablation averages over.
enum class mean_over {
    batch,                ///< Over the prompts only: one mean per position, (1, pos, ...).
    batch_and_positions,  ///< Over prompts and positions: one mean for every position, (1, 1, ...).
};

namespace detail {

/// Throws shape_error unless `a` holds exactly the values its shape promises and has a batch axis.
inline void check_cached(const cached_activation& a, const site& s, const char* who) {
    bool valid = a.shape.size() >= 3;
    index_t count = 1;
    for (index_t e : a.shape) {
        if (e < 0 || (e != 0 && count > PTRDIFF_MAX / e))
            valid = false;
        else
            count *= e;
    }
    if (!valid || static_cast<std::size_t>(count) != a.values.size() || a.shape[0] < 1)
        throw shape_error(std::string(who) + ": the cached activation of " + to_string(s) + " has shape " +
                          format_shape(a.shape) + " and " + std::to_string(a.values.size()) +
                          " values; expected a batch of at least one prompt");
}

/// The mean of a cached activation over its batch axis (and its position axis): accumulated in double, in order.
inline cached_activation mean_activation(const cached_activation& a, const site& s, mean_over over) {
    check_cached(a, s, "ablate_hooks::mean");
    const bool positions = over == mean_over::batch_and_positions;
    if (positions && axes_of(s.kind).key >= 0)
        throw std::invalid_argument("ablate_hooks::mean: " + to_string(s) +
                                    " is causal per query row, so it cannot be averaged over positions");
    // Rows averaged together: the batch axis, and the position axis right after it for every site that allows it.
    const index_t groups = positions ? a.shape[0] * a.shape[1] : a.shape[0];
    if (groups <= 0)
        throw shape_error("ablate_hooks::mean: the cached activation of " + to_string(s) + " has no positions");
    const auto width = static_cast<index_t>(a.values.size()) / groups;
    cached_activation mean;
    mean.shape = a.shape;
    mean.positions = a.positions;
    mean.shape[0] = 1;
    if (positions) {
        mean.shape[1] = 1;
        mean.positions.clear();
    }
    std::vector<double> sum(static_cast<std::size_t>(width), 0.0);
    for (index_t g = 0; g < groups; ++g)
        for (index_t i = 0; i < width; ++i)
            sum[static_cast<std::size_t>(i)] += static_cast<double>(a.values[static_cast<std::size_t>(g * width + i)]);
    mean.values.resize(sum.size());
    for (std::size_t i = 0; i < sum.size(); ++i)
        mean.values[i] = static_cast<float>(sum[i] / static_cast<double>(groups));
    return mean;
}

/// Prompt `prompt` of a cached activation, batch axis kept: (1, ...).
inline cached_activation prompt_activation(const cached_activation& a, const site& s, index_t prompt) {
    check_cached(a, s, "ablate_hooks::resample");
    if (prompt < 0 || prompt >= a.shape[0])
        throw std::invalid_argument("ablate_hooks::resample: prompt " + std::to_string(prompt) + " is outside the " +
                                    std::to_string(a.shape[0]) + " prompts cached for " + to_string(s));
    const auto width = static_cast<index_t>(a.values.size()) / a.shape[0];
    cached_activation one;
    one.shape = a.shape;
    one.positions = a.positions;
    one.shape[0] = 1;
    one.values.assign(a.values.begin() + prompt * width, a.values.begin() + (prompt + 1) * width);
    return one;
}

}  // namespace detail

/// One ablated site: where, which part, and what replaces it (nothing: zeros).
struct ablation_target {
    site target;                                   ///< The site.
    selection selected;                            ///< Positions and heads to ablate (everything by default).
    std::optional<cached_activation> replacement;  ///< (1, pos | 1, ...) values written in; zeros when empty.
    bool broadcast_positions = false;              ///< The replacement has one position, used at every position.
};

/// Ablates chosen sites, heads and positions; owns every replacement value, so the caches it was built from may go.
/// Positions are absolute (see `selection`), so the same policy works in a full forward and in KV-cache decoding.
template <kind_set Kinds = kind_set::all_but_result()>
class ablate_hooks {
public:
    /// The kinds this policy can ablate.
    static constexpr kind_set kinds = Kinds;

    /// Zero ablation: writes 0 into the selected part of `s`.
    ablate_hooks& zero(const site& s, const selection& where = {}) {
        detail::check_target<Kinds>(s, where, "ablate_hooks::zero");
        targets_.push_back({s, where, std::nullopt, false});
        return *this;
    }
    /// Mean ablation: replaces the selected part of `s` by its mean over the prompts of `prompts` (a cache built by
    /// running a batch of prompts), per position by default (the run's positions must then exist in the cache), or
    /// also over positions (not allowed for hook_attn_scores / hook_pattern, whose rows are causal).
    ablate_hooks& mean(const site& s, const activation_cache& prompts, mean_over over = mean_over::batch,
                       const selection& where = {}) {
        detail::check_target<Kinds>(s, where, "ablate_hooks::mean");
        targets_.push_back(
            {s, where, detail::mean_activation(prompts.at(s), s, over), over == mean_over::batch_and_positions});
        return *this;
    }
    /// Resample ablation: replaces the selected part of `s` by prompt `prompt` of `other` (same shape apart from
    /// the batch), for every sequence of the run.
    ablate_hooks& resample(const site& s, const activation_cache& other, index_t prompt = 0,
                           const selection& where = {}) {
        detail::check_target<Kinds>(s, where, "ablate_hooks::resample");
        targets_.push_back({s, where, detail::prompt_activation(other.at(s), s, prompt), false});
        return *this;
    }
    /// Forgets every target.
    void clear() noexcept { targets_.clear(); }
    /// The ablated sites, in the order they were added.
    [[nodiscard]] const std::vector<ablation_target>& targets() const noexcept { return targets_; }

    /// True for kinds in Kinds.
    static constexpr bool wants(site_kind kind) noexcept { return Kinds.contains(kind); }
    /// Ablates the selected part of `view` when `s` is a target.
    template <std::size_t R>
    void on_activation(const site& s, tensor_view<float, R> view, const hook_context& ctx) {
        for (const ablation_target& t : targets_) {
            if (!(t.target == s)) continue;
            if (t.replacement) {
                detail::overwrite_from(view, s, ctx, t.selected, *t.replacement, t.broadcast_positions, "ablate_hooks");
            } else {
                const index_t width = view.extent(R - 1), stride = view.stride(R - 1);
                detail::for_each_selected_row(view, s, ctx, t.selected, [&](const extents<R>&, float* row) {
                    for (index_t i = 0; i < width; ++i) row[i * stride] = 0.0f;
                });
            }
        }
    }

    /// Observes the gradient at every kind it can ablate (see grad/observers.hpp).
    static constexpr bool wants_gradient(site_kind kind) noexcept { return Kinds.contains(kind); }
    /// Zeroes the gradient of what it replaced: an ablated value is a constant, so nothing flows back through it.
    template <std::size_t R>
    void on_gradient(const site& s, tensor_view<float, R> gradient, const hook_context& ctx) {
        for (const ablation_target& t : targets_)
            if (t.target == s) detail::zero_selected(gradient, s, ctx, t.selected);
    }

private:
    std::vector<ablation_target> targets_;
};
static_assert(hook_policy<ablate_hooks<>>);
static_assert(hook_policy<ablate_hooks<kind_set::all()>>);

MECHLENS_END_NAMESPACE
