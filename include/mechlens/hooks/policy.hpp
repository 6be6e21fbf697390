#pragma once
/// @file
/// The hook policy concept and the empty `no_hooks` policy.

#include <concepts>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "mechlens/hooks/site.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// A compile-time set of site kinds (usable as a template argument): what a configurable policy may want.
struct kind_set {
    std::uint64_t bits = 0;  ///< Bit k set when site_kind k is in the set.

    /// True when `kind` is in the set.
    constexpr bool contains(site_kind kind) const noexcept {
        return (bits >> static_cast<unsigned>(kind)) & 1u;
    }
    /// The set of the given kinds.
    static constexpr kind_set of(std::initializer_list<site_kind> kinds) noexcept {
        kind_set set;
        for (site_kind k : kinds) set.bits |= std::uint64_t{1} << static_cast<unsigned>(k);
        return set;
    }
    /// Every kind except `attn.hook_result`, whose (batch, pos, head, d_model) tensor costs extra work to produce.
    static constexpr kind_set all_but_result() noexcept {
        kind_set set{(std::uint64_t{1} << site_kind_count) - 1};
        set.bits &= ~(std::uint64_t{1} << static_cast<unsigned>(site_kind::attn_result));
        return set;
    }
    /// Every kind, `attn.hook_result` included.
    static constexpr kind_set all() noexcept { return kind_set{(std::uint64_t{1} << site_kind_count) - 1}; }
    /// Set union.
    friend constexpr kind_set operator|(kind_set a, kind_set b) noexcept { return kind_set{a.bits | b.bits}; }
    friend constexpr bool operator==(kind_set, kind_set) = default;  ///< Same kinds.
};

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
/// Defining MECHLENS_STRIP_HOOK_SITES compiles every site out entirely: the "hook-free" forward pass that the
/// zero-overhead test compares `no_hooks` against.
template <site_kind Kind, class Policy, class MakeView>
inline void fire([[maybe_unused]] Policy& policy, [[maybe_unused]] index_t layer,
                 [[maybe_unused]] const hook_context& ctx, [[maybe_unused]] MakeView&& make_view) {
#if !defined(MECHLENS_STRIP_HOOK_SITES)
    if constexpr (Policy::wants(Kind)) policy.on_activation(site{Kind, layer}, make_view(), ctx);
#endif
}
/// True when Policy declares `wants_gradient` (it observes gradients in the backward pass) and wants `kind`'s.
template <class Policy>
constexpr bool wants_gradient_of(site_kind kind) noexcept {
    if constexpr (requires { Policy::wants_gradient(kind); })
        return Policy::wants_gradient(kind);
    else
        return false;
}
/// True when the policy wants any of the given kinds (evaluated at compile time).
template <class Policy, site_kind... Kinds>
inline constexpr bool wants_any = (Policy::wants(Kinds) || ...);
}  // namespace detail

MECHLENS_END_NAMESPACE
