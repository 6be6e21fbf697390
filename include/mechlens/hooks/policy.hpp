#pragma once
/// @file
/// The hook policy concept and the empty `no_hooks` policy.

#include <concepts>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <type_traits>
#include <utility>

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
    /// Every kind that is not opt-in (site_computation::opt_in): all but `attn.hook_result`, whose (batch, pos, head,
    /// d_model) tensor costs extra work to produce.
    static constexpr kind_set all_but_result() noexcept {
        kind_set set;
        for (const site_traits& row : site_traits_table)
            if (row.computed != site_computation::opt_in) set = set | of({row.kind});
        return set;
    }
    /// Every kind, `attn.hook_result` included.
    static constexpr kind_set all() noexcept { return kind_set{(std::uint64_t{1} << site_kind_count) - 1}; }
    /// Set union.
    friend constexpr kind_set operator|(kind_set a, kind_set b) noexcept { return kind_set{a.bits | b.bits}; }
    /// Set difference: the kinds of `a` that are not in `b`.
    friend constexpr kind_set operator-(kind_set a, kind_set b) noexcept { return kind_set{a.bits & ~b.bits}; }
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

/// Calls fn(std::integral_constant<site_kind, Kind>{}), converting its result to Result.
template <site_kind Kind, class Result, class Fn>
Result call_with_kind(Fn& fn) {
    return fn(std::integral_constant<site_kind, Kind>{});
}
/// The entry of visit_kind's jump table for `Kind`: null when Kind is not in Kinds (so fn is never instantiated
/// for it).
template <kind_set Kinds, site_kind Kind, class Result, class Fn>
constexpr Result (*visit_entry() noexcept)(Fn&) {
    if constexpr (Kinds.contains(Kind))
        return &call_with_kind<Kind, Result, Fn>;
    else
        return nullptr;
}
/// The first kind of a non-empty set.
constexpr site_kind first_kind(kind_set kinds) noexcept {
    for (const site_traits& row : site_traits_table)
        if (kinds.contains(row.kind)) return row.kind;
    return site_kind::embed;
}
/// visit_kind's body: a jump table with one entry per site kind.
template <kind_set Kinds, class Fn, std::size_t... K>
decltype(auto) visit_kind_of(site_kind kind, Fn& fn, std::index_sequence<K...>) {
    using result = decltype(fn(std::integral_constant<site_kind, first_kind(Kinds)>{}));
    using entry = result (*)(Fn&);
    static constexpr entry table[] = {visit_entry<Kinds, static_cast<site_kind>(K), result, Fn>()...};
    const auto index = static_cast<std::size_t>(kind);
    if (index >= sizeof...(K) || table[index] == nullptr)
        throw std::logic_error("mechlens: visit_kind called with a kind outside its kind_set");
    return table[index](fn);
}
/// Calls fn(std::integral_constant<site_kind, K>{}) for the run-time kind `kind`, which must be in Kinds, so code
/// that needs a compile-time kind (a policy wanting exactly one kind) is instantiated once per kind of Kinds and
/// never for the others. Every call's result is converted to the type fn returns for the first kind of Kinds. Throws
/// std::logic_error for a kind outside Kinds.
template <kind_set Kinds, class Fn>
decltype(auto) visit_kind(site_kind kind, Fn&& fn) {
    static_assert(Kinds.bits != 0, "mechlens: visit_kind needs a non-empty kind_set");
    return visit_kind_of<Kinds>(kind, fn, std::make_index_sequence<site_kind_count>{});
}
}  // namespace detail

MECHLENS_END_NAMESPACE
