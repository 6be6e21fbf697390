#pragma once
/// @file
/// Composition: several hook policies applied in order at every site, as one policy.

#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

#include "mechlens/hooks/policy.hpp"
#include "mechlens/hooks/site.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Several policies as one: at each site, every part that wants it runs in order and sees what earlier parts wrote.
/// A part given as an lvalue is held by reference (read it after the run); a temporary is held by value.
template <class... Policies>
class composed_hooks {
    static_assert((hook_policy<std::remove_cvref_t<Policies>> && ...),
                  "mechlens::compose: every part must satisfy mechlens::hook_policy");
    static_assert((!std::is_const_v<std::remove_reference_t<Policies>> && ...),
                  "mechlens::compose: a part cannot be const, since hooks may change state when they fire");

public:
    /// Builds the parts from the arguments (use mechlens::compose instead).
    template <class... Args>
    explicit composed_hooks(std::in_place_t, Args&&... parts) : parts_(std::forward<Args>(parts)...) {}

    /// The union of what the parts want.
    static constexpr bool wants(site_kind kind) noexcept { return (std::remove_cvref_t<Policies>::wants(kind) || ...); }
    /// Hands the activation to each part that wants its kind, in order (float passes, or double gradient passes
    /// whose parts all accept double views).
    template <std::size_t R, class T>
    void on_activation(const site& s, tensor_view<T, R> view, const hook_context& ctx) {
        std::apply([&](auto&... part) { (fire_part(part, s, view, ctx), ...); }, parts_);
    }
    /// The union of the gradients the parts observe (see grad/observers.hpp).
    static constexpr bool wants_gradient(site_kind kind) noexcept {
        return (detail::wants_gradient_of<std::remove_cvref_t<Policies>>(kind) || ...);
    }
    /// Hands a gradient to each part that observes its kind, in reverse order: the backward pass meets the last
    /// intervention first, so `compose(ablate, cache)` caches the gradient before the ablation cuts it.
    template <std::size_t R, class T>
    void on_gradient(const site& s, tensor_view<T, R> gradient, const hook_context& ctx) {
        reverse_gradient(s, gradient, ctx, std::make_index_sequence<sizeof...(Policies)>{});
    }
    /// Part I (a reference to the caller's policy when it was passed as an lvalue).
    template <std::size_t I>
    [[nodiscard]] decltype(auto) get() noexcept {
        return std::get<I>(parts_);
    }

private:
    template <class Part, std::size_t R, class T>
    static void fire_part(Part& part, const site& s, tensor_view<T, R> view, const hook_context& ctx) {
        if (Part::wants(s.kind)) part.on_activation(s, view, ctx);
    }

    template <std::size_t R, class T, std::size_t... I>
    void reverse_gradient(const site& s, tensor_view<T, R> gradient, const hook_context& ctx,
                          std::index_sequence<I...>) {
        (observe_part(std::get<sizeof...(I) - 1 - I>(parts_), s, gradient, ctx), ...);
    }
    template <class Part, std::size_t R, class T>
    static void observe_part(Part& part, const site& s, tensor_view<T, R> gradient, const hook_context& ctx) {
        using part_type = std::remove_cvref_t<Part>;
        if constexpr (requires { part_type::wants_gradient(s.kind); })
            if (part_type::wants_gradient(s.kind)) part.on_gradient(s, gradient, ctx);
    }

    std::tuple<Policies...> parts_;
};

/// A policy applying `parts` in order at every site; `wants` is the union of theirs.
template <class... Policies>
[[nodiscard]] composed_hooks<Policies...> compose(Policies&&... parts) {
    return composed_hooks<Policies...>(std::in_place, std::forward<Policies>(parts)...);
}

static_assert(hook_policy<composed_hooks<no_hooks, no_hooks&>>);
static_assert(!composed_hooks<no_hooks, no_hooks>::wants(site_kind::resid_pre));

MECHLENS_END_NAMESPACE
