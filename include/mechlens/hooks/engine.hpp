#pragma once
/// @file
/// Hooks inside other engines: fire a mechlens hook site on any engine's own activation buffers.
///
/// An engine that is not mechlens (llama2.c-style loops, a ggml eval callback, a custom kernel library) adds one
/// `fire_site` call per activation it wants to expose, and every mechlens hook policy (caching, patching, ablation,
/// steering, your own) then works on that engine unchanged. The policy sees a mutable view of the engine's buffer:
/// whatever it writes is what the engine computes with next, which is how patching works.
///
/// Two flavours:
/// - `fire_site<site_kind::resid_post>(policy, layer, data, {1, 1, d_model}, position)`: the kind is a template
///   argument, so with a policy that does not want it (e.g. `no_hooks`) the call compiles to nothing at all;
/// - `fire_site(policy, site{...}, data, {1, 1, d_model}, position)`: the site is a run-time value (handy when an
///   engine maps names such as llama.cpp's `l_out-3` to sites while it runs); costs one bit test when unwanted.
///
/// Buffers are described by their TransformerLens shape (batch axis kept): rank 3 for residual-stream-like sites,
/// rank 4 for per-head sites (site_rank, from site_traits.hpp). A raw pointer plus a shape means a dense row-major
/// buffer; pass a `tensor_view` with strides for anything else (e.g. a per-head attention row inside a (heads,
/// n_ctx) buffer).
/// `start_position` is the absolute position of the buffer's first `pos` row, as in `hook_context`. Like every other
/// site, these calls compile out under `MECHLENS_STRIP_HOOK_SITES`.

#include <array>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "mechlens/hooks/policy.hpp"
#include "mechlens/hooks/site.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

namespace detail {

/// Throws unless `s` names a real site (block sites need a layer >= 0, global ones -1) of rank `Rank`, with data.
template <std::size_t Rank>
void check_engine_site(const site& s, const tensor_view<float, Rank>& view) {
    if (is_block_site(s.kind) ? s.layer < 0 : s.layer != -1)
        throw std::invalid_argument("mechlens::fire_site: " + std::string(site_suffix(s.kind)) +
                                    (is_block_site(s.kind) ? " is a block site and needs a layer >= 0, got "
                                                           : " is a global site and needs layer -1, got ") +
                                    std::to_string(s.layer));
    if (site_rank(s.kind) != Rank)
        throw shape_error("mechlens::fire_site: " + to_string(s) + " has rank " +
                          std::to_string(site_rank(s.kind)) + " in TransformerLens, got a rank-" +
                          std::to_string(Rank) + " buffer " + format_extents(view.shape()));
    if (view.data() == nullptr && view.size() != 0)
        throw std::invalid_argument("mechlens::fire_site: null data for " + to_string(s) + " of shape " +
                                    format_extents(view.shape()));
}

/// Checks the policy type once, with a readable message, for every fire_site overload.
template <class Policy>
constexpr void require_engine_policy() {
    static_assert(hook_policy<std::remove_cvref_t<Policy>>,
                  "mechlens::fire_site: the policy does not satisfy mechlens::hook_policy (it needs a static "
                  "constexpr wants(site_kind) and on_activation(const site&, tensor_view<float, R>, const "
                  "hook_context&) for R = 3 and 4)");
}

}  // namespace detail

/// Fires site `s` on a (possibly strided) view of an engine's buffer when the policy wants `s.kind`; the policy may
/// write through the view. Throws std::invalid_argument or shape_error (only when wanted) if `s` and the view's rank
/// do not fit together.
template <class Policy, std::size_t Rank>
void fire_site(Policy&& policy, const site& s, tensor_view<float, Rank> view, index_t start_position = 0) {
    detail::require_engine_policy<Policy>();
    static_assert(Rank == 3 || Rank == 4, "mechlens::fire_site: hook sites are rank 3 or rank 4 (batch axis kept)");
#if !defined(MECHLENS_STRIP_HOOK_SITES)
    using policy_type = std::remove_cvref_t<Policy>;
    if (!policy_type::wants(s.kind)) return;
    detail::check_engine_site(s, view);
    policy.on_activation(s, view, hook_context{start_position});
#else
    (void)policy, (void)s, (void)view, (void)start_position;
#endif
}

/// Fires site `s` on a dense row-major buffer of TransformerLens shape `shape` (e.g. {1, 1, d_model} for one token).
template <class Policy, std::size_t Rank>
void fire_site(Policy&& policy, const site& s, float* data, const extents<Rank>& shape, index_t start_position = 0) {
    detail::require_engine_policy<Policy>();
    if (!std::remove_cvref_t<Policy>::wants(s.kind)) return;
    fire_site(std::forward<Policy>(policy), s, tensor_view<float, Rank>(data, shape), start_position);
}

/// As above, with the shape written as a braced list: `fire_site(policy, s, x, {1, 1, dim}, pos)`.
template <class Policy, std::size_t Rank>
void fire_site(Policy&& policy, const site& s, float* data, const index_t (&shape)[Rank], index_t start_position = 0) {
    extents<Rank> e{};
    for (std::size_t i = 0; i < Rank; ++i) e[i] = shape[i];
    fire_site(std::forward<Policy>(policy), s, data, e, start_position);
}

/// Fires the site (Kind, layer) on a view when the policy wants Kind; with a policy that does not, the call (view
/// construction included) compiles to nothing. The rank is checked at compile time.
template <site_kind Kind, class Policy, std::size_t Rank>
void fire_site(Policy&& policy, index_t layer, tensor_view<float, Rank> view, index_t start_position = 0) {
    detail::require_engine_policy<Policy>();
    static_assert(Rank == site_rank(Kind),
                  "mechlens::fire_site: wrong rank for this site kind (per-head sites are rank 4: batch, pos, head, "
                  "d_head or batch, head, query_pos, key_pos; the others rank 3: batch, pos, width)");
    if constexpr (std::remove_cvref_t<Policy>::wants(Kind)) {
        const hook_context ctx{start_position};
        detail::fire<Kind>(policy, layer, ctx, [&] {
            detail::check_engine_site(site{Kind, layer}, view);
            return view;
        });
    } else {
        (void)policy, (void)layer, (void)view, (void)start_position;
    }
}

/// Fires the site (Kind, layer) on a dense row-major buffer; compiles to nothing when the policy does not want Kind.
template <site_kind Kind, class Policy, std::size_t Rank>
void fire_site(Policy&& policy, index_t layer, float* data, const extents<Rank>& shape, index_t start_position = 0) {
    detail::require_engine_policy<Policy>();
    if constexpr (std::remove_cvref_t<Policy>::wants(Kind))
        fire_site<Kind>(std::forward<Policy>(policy), layer, tensor_view<float, Rank>(data, shape), start_position);
    else
        (void)policy, (void)layer, (void)data, (void)shape, (void)start_position;
}

/// As above, with the shape written as a braced list: `fire_site<site_kind::mlp_out>(policy, l, x, {1, 1, dim}, pos)`.
template <site_kind Kind, class Policy, std::size_t Rank>
void fire_site(Policy&& policy, index_t layer, float* data, const index_t (&shape)[Rank], index_t start_position = 0) {
    detail::require_engine_policy<Policy>();
    if constexpr (std::remove_cvref_t<Policy>::wants(Kind)) {
        extents<Rank> e{};
        for (std::size_t i = 0; i < Rank; ++i) e[i] = shape[i];
        fire_site<Kind>(std::forward<Policy>(policy), layer, data, e, start_position);
    } else {
        (void)policy, (void)layer, (void)data, (void)shape, (void)start_position;
    }
}

MECHLENS_END_NAMESPACE
