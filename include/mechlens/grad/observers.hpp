#pragma once
/// @file
/// Gradient observers, the backward counterpart of hook policies: a policy that also declares `wants_gradient` is
/// handed d(metric)/d(activation) at each wanted site during the backward pass, as a mutable view (what it writes
/// is what flows further back, like a PyTorch tensor hook that returns a new gradient).

#include <concepts>
#include <cstddef>
#include <utility>
#include <vector>

#include "mechlens/hooks/activation_cache.hpp"
#include "mechlens/hooks/caching.hpp"
#include "mechlens/hooks/policy.hpp"

MECHLENS_BEGIN_NAMESPACE

/// A policy that observes gradients: `P::wants_gradient(kind)` at compile time, then `on_gradient(site, view, ctx)`
/// with the gradient at that site, shaped like the activation.
template <class P>
concept gradient_observer = requires(P& policy, const site& s, const hook_context& ctx, tensor_view<float, 3> v3,
                                     tensor_view<float, 4> v4) {
    { P::wants_gradient(site_kind::embed) } -> std::convertible_to<bool>;
    policy.on_gradient(s, v3, ctx);
    policy.on_gradient(s, v4, ctx);
};

namespace detail {
/// Copies a view of doubles into a same-shaped view of floats, rounding each element once.
template <class T, std::size_t Rank>
void round_into(const tensor_view<const T, Rank>& source, const tensor_view<float, Rank>& destination) {
    if constexpr (Rank == 1) {
        for (index_t i = 0; i < source.extent(0); ++i) destination(i) = static_cast<float>(source(i));
    } else {
        for (index_t i = 0; i < source.extent(0); ++i) round_into(source[i], destination[i]);
    }
}
/// Hands the gradient at a site to the policy when it wants it; `make_view` is only evaluated then.
template <site_kind Kind, class Policy, class MakeView>
inline void observe_gradient([[maybe_unused]] Policy& policy, [[maybe_unused]] index_t layer,
                             [[maybe_unused]] const hook_context& ctx, [[maybe_unused]] MakeView&& make_view) {
    if constexpr (wants_gradient_of<Policy>(Kind)) policy.on_gradient(site{Kind, layer}, make_view(), ctx);
}
}  // namespace detail

/// Caches gradients (not activations) into an activation_cache, filtered like caching_hooks: what
/// `mechlens grad` writes. Gradients of double passes are stored rounded to float.
template <kind_set Kinds = kind_set::all_but_result()>
class gradient_cache {
public:
    /// Caches the gradient at every site of the kinds in `Kinds`.
    gradient_cache() = default;
    /// Caches the gradients `filter` selects among the kinds in `Kinds`.
    explicit gradient_cache(cache_filter filter) : filter_(std::move(filter)) {}

    /// No forward-pass site: this policy only reads gradients.
    static constexpr bool wants(site_kind) noexcept { return false; }
    /// Never called.
    template <std::size_t Rank, class T>
    void on_activation(const site&, tensor_view<T, Rank>, const hook_context&) noexcept {}
    /// The kinds whose gradients are cached.
    static constexpr bool wants_gradient(site_kind kind) noexcept { return Kinds.contains(kind); }
    /// Copies the gradient (reads only).
    template <std::size_t Rank, class T>
    void on_gradient(const site& s, tensor_view<T, Rank> gradient, const hook_context& ctx) {
        if (!filter_.selects(s)) return;
        if constexpr (std::is_same_v<std::remove_const_t<T>, float>) {
            detail::cache_rows(cache_, s, tensor_view<const float, Rank>(gradient), ctx.start_position, filter_);
        } else {
            std::vector<float> rounded(static_cast<std::size_t>(gradient.size()));
            tensor_view<float, Rank> dense(rounded.data(), gradient.shape());
            detail::round_into(tensor_view<const T, Rank>(gradient), dense);
            detail::cache_rows(cache_, s, tensor_view<const float, Rank>(dense), ctx.start_position, filter_);
        }
    }

    /// The gradients cached so far, by site.
    [[nodiscard]] const activation_cache& cache() const noexcept { return cache_; }
    /// Moves the cache out.
    [[nodiscard]] activation_cache take() noexcept {
        activation_cache out = std::move(cache_);
        cache_.clear();
        return out;
    }

private:
    cache_filter filter_;
    activation_cache cache_;
};
static_assert(hook_policy<gradient_cache<>>);
static_assert(gradient_observer<gradient_cache<>>);

MECHLENS_END_NAMESPACE
