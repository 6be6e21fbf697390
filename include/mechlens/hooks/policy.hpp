#pragma once
/// @file
/// The hook policy concept and the empty `no_hooks` policy.

#include <concepts>

#include "mechlens/hooks/site.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// A hook policy answers "do you want this kind of site?" at compile time and is then handed each wanted activation
/// as a mutable view; whatever it writes is what the rest of the forward pass sees.
template <class P>
concept hook_policy = requires(P& policy, const site& s, const hook_context& ctx, tensor_view<float, 3> v3,
                               tensor_view<float, 4> v4) {
    { P::wants(site_kind::embed) } -> std::convertible_to<bool>;
    policy.on_activation(s, v3, ctx);
    policy.on_activation(s, v4, ctx);
};

/// The policy that wants nothing: the forward pass compiled with it is the plain forward pass.
struct no_hooks {
    /// Wants no site.
    static constexpr bool wants(site_kind) noexcept { return false; }
    /// Never called.
    template <std::size_t Rank>
    void on_activation(const site&, tensor_view<float, Rank>, const hook_context&) noexcept {}
};
static_assert(hook_policy<no_hooks>);
static_assert(sizeof(no_hooks) == 1 && std::is_empty_v<no_hooks>, "no_hooks must stay an empty type");

namespace detail {
/// Fires a site when the policy wants its kind; `make_view` is only evaluated then, so unwanted sites cost nothing.
template <site_kind Kind, class Policy, class MakeView>
inline void fire(Policy& policy, index_t layer, const hook_context& ctx, MakeView&& make_view) {
    if constexpr (Policy::wants(Kind)) policy.on_activation(site{Kind, layer}, make_view(), ctx);
}
/// True when the policy wants any of the given kinds (evaluated at compile time).
template <class Policy, site_kind... Kinds>
inline constexpr bool wants_any = (Policy::wants(Kinds) || ...);
}  // namespace detail

MECHLENS_END_NAMESPACE
