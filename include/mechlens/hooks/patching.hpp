#pragma once
/// @file
/// Activation patching: overwrite chosen sites, positions and heads with activations from a source cache; also the
/// position/head selections that ablation and steering share.

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstddef>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mechlens/hooks/activation_cache.hpp"
#include "mechlens/hooks/policy.hpp"
#include "mechlens/hooks/site.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Indices along one axis: every index (the default, also `index_set{}`), or a chosen list, kept sorted and unique.
class index_set {
public:
    /// Every index.
    index_set() = default;
    /// Exactly these indices (an empty list selects nothing); throws std::invalid_argument on a negative index.
    index_set(std::initializer_list<index_t> indices) : index_set(std::vector<index_t>(indices)) {}
    /// Exactly these indices (an empty vector selects nothing); throws std::invalid_argument on a negative index.
    explicit index_set(std::vector<index_t> indices) : all_(false), indices_(std::move(indices)) {
        std::sort(indices_.begin(), indices_.end());
        indices_.erase(std::unique(indices_.begin(), indices_.end()), indices_.end());
        if (!indices_.empty() && indices_.front() < 0)
            throw std::invalid_argument("index_set: negative index " + std::to_string(indices_.front()));
    }
    /// Every index.
    static index_set all() { return index_set(); }
    /// No index at all.
    static index_set none() { return index_set(std::vector<index_t>{}); }

    /// True when every index is selected.
    [[nodiscard]] bool is_all() const noexcept { return all_; }
    /// The chosen indices, sorted (empty and meaningless when is_all()).
    [[nodiscard]] const std::vector<index_t>& indices() const noexcept { return indices_; }
    /// True when `i` is selected.
    [[nodiscard]] bool contains(index_t i) const noexcept {
        return all_ || std::binary_search(indices_.begin(), indices_.end(), i);
    }

private:
    bool all_ = true;
    std::vector<index_t> indices_;
};

/// Which part of a site's activation an intervention touches: positions are absolute (a decode step at
/// hook_context::start_position = 7 with one new row is position 7), heads index the site's head axis.
struct selection {
    // The `{}` initializers let `{.heads = {2}}` leave positions out without a -Wmissing-field-initializers warning.
    index_set positions{};  ///< Absolute positions (query positions for hook_attn_scores / hook_pattern).
    index_set heads{};  ///< Heads; only for sites with a head axis (q, k, v, rot_q, rot_k, z, result, scores, pattern).
};

namespace detail {

/// Throws std::invalid_argument unless a site and selection make sense for a policy wanting `Kinds`.
template <kind_set Kinds>
void check_target(const site& s, const selection& where, const char* who) {
    const std::string name = to_string(s);
    if (is_block_site(s.kind) ? s.layer < 0 : s.layer != -1)
        throw std::invalid_argument(std::string(who) + ": " + name + " has an invalid layer " +
                                    std::to_string(s.layer));
    if (!Kinds.contains(s.kind))
        throw std::invalid_argument(std::string(who) + ": " + name +
                                    " is not among the site kinds this policy was compiled to want; add its kind to "
                                    "the policy's kind_set template argument");
    if (!where.heads.is_all() && axes_of(s.kind).head < 0)
        throw std::invalid_argument(std::string(who) + ": " + name + " has no head axis, so heads cannot be chosen");
}

/// The rows to visit along one outer axis: [0, count) when `list` is null, else list[i] - offset.
struct axis_walk {
    const index_t* list = nullptr;  ///< Chosen indices, or null for the whole axis.
    index_t count = 0;              ///< Number of rows to visit.
    index_t offset = 0;             ///< Subtracted from list entries (absolute -> relative positions).
    /// Relative index of the i-th visited row.
    [[nodiscard]] index_t at(index_t i) const noexcept { return list ? list[i] - offset : i; }
};

/// Visits every row (last axis) of `view` inside the selection: fn(index, row) with index[last] == 0 and `row`
/// pointing at element 0 of that row; elements of a row are view.stride(R - 1) apart.
template <std::size_t R, class Fn>
void for_each_selected_row(tensor_view<float, R> view, const site& s, const hook_context& ctx, const selection& where,
                           Fn&& fn) {
    static_assert(R >= 3, "mechlens: hook sites are rank 3 or 4 (batch axis kept)");
    const site_axes axes = axes_of(s.kind);
    std::array<axis_walk, R - 1> walks{};
    for (std::size_t a = 0; a + 1 < R; ++a) walks[a] = {nullptr, view.extent(a), 0};
    if (!where.positions.is_all()) {
        // Only the chosen absolute positions that fall inside this call's rows [start, start + n).
        const auto axis = static_cast<std::size_t>(axes.position);
        const std::vector<index_t>& chosen = where.positions.indices();
        const index_t start = ctx.start_position;
        const auto first = std::lower_bound(chosen.begin(), chosen.end(), start);
        const auto last = std::lower_bound(first, chosen.end(), start + view.extent(axis));
        walks[axis] = {chosen.data() + (first - chosen.begin()), static_cast<index_t>(last - first), start};
    }
    if (!where.heads.is_all() && axes.head >= 0) {
        const auto axis = static_cast<std::size_t>(axes.head);
        const std::vector<index_t>& chosen = where.heads.indices();
        if (!chosen.empty() && chosen.back() >= view.extent(axis))
            throw shape_error(to_string(s) + ": head " + std::to_string(chosen.back()) +
                              " is out of range; the site has " + std::to_string(view.extent(axis)) + " heads");
        walks[axis] = {chosen.data(), static_cast<index_t>(chosen.size()), 0};
    }
    for (const axis_walk& w : walks)
        if (w.count == 0) return;
    std::array<index_t, R - 1> counter{};
    extents<R> index{};
    for (;;) {
        index_t offset = 0;
        for (std::size_t a = 0; a + 1 < R; ++a) {
            index[a] = walks[a].at(counter[a]);
            offset += index[a] * view.stride(a);
        }
        fn(index, view.data() + offset);
        std::size_t a = R - 1;  // odometer over the outer axes, innermost first
        for (;;) {
            if (a == 0) return;
            --a;
            if (++counter[a] < walks[a].count) break;
            counter[a] = 0;
        }
    }
}

/// Writes zeros into the selected part of `view`.
template <std::size_t R>
void zero_selected(tensor_view<float, R> view, const site& s, const hook_context& ctx, const selection& where) {
    const index_t width = view.extent(R - 1), stride = view.stride(R - 1);
    for_each_selected_row(view, s, ctx, where, [&](const extents<R>&, float* row) {
        for (index_t i = 0; i < width; ++i) row[i * stride] = 0.0f;
    });
}

/// Overwrites the selected rows of `view` with the matching rows of `source`, whose position axis holds absolute
/// positions (0, 1, ... or source.positions; a single row broadcast to every position when `broadcast_positions`)
/// and whose batch axis is either the view's or 1 (broadcast). Throws shape_error naming the site when `source` cannot
/// cover `view`.
template <std::size_t R>
void overwrite_from(tensor_view<float, R> view, const site& s, const hook_context& ctx, const selection& where,
                    const cached_activation& source, bool broadcast_positions, const char* who) {
    const site_axes axes = axes_of(s.kind);
    const auto pos_axis = static_cast<std::size_t>(axes.position);
    const index_t start = ctx.start_position;
    bool fits = source.shape.size() == R;
    index_t count = 1;
    for (index_t e : source.shape) {
        if (e < 0 || (e != 0 && count > PTRDIFF_MAX / e))
            fits = false;
        else
            count *= e;
    }
    fits = fits && static_cast<std::size_t>(count) == source.values.size();
    for (std::size_t a = 0; fits && a < R; ++a) {
        const index_t have = source.shape[a], need = view.extent(a);
        if (a == 0)
            fits = have == need || have == 1;
        else if (a == pos_axis)
            fits = broadcast_positions        ? have == 1
                   : source.positions.empty() ? have >= start + need
                                              : static_cast<std::size_t>(have) == source.positions.size();
        else if (static_cast<int>(a) == axes.key)
            fits = have >= need;
        else
            fits = have == need;
    }
    if (!fits)
        throw shape_error(std::string(who) + ": the source activation of " + to_string(s) + " has shape " +
                          format_shape(source.shape) + " (" + std::to_string(source.values.size()) +
                          " values), which cannot cover the site's shape " + detail::format_extents(view.shape()) +
                          " at absolute positions [" + std::to_string(start) + ", " +
                          std::to_string(start + view.extent(pos_axis)) + ")");
    std::array<index_t, R> source_strides{};
    index_t running = 1;
    for (std::size_t a = R; a-- > 0;) {
        source_strides[a] = running;
        running *= source.shape[a];
    }
    const bool broadcast_batch = source.shape[0] == 1;
    const index_t width = view.extent(R - 1), stride = view.stride(R - 1);
    // The source row holding absolute position p: p itself, or its index in source.positions when the cache kept
    // only some positions.
    auto source_row = [&](index_t p) -> index_t {
        if (broadcast_positions) return 0;
        if (source.positions.empty()) return p;
        const auto found = std::find(source.positions.begin(), source.positions.end(), p);
        if (found == source.positions.end())
            throw shape_error(std::string(who) + ": the source activation of " + to_string(s) +
                              " holds no row for absolute position " + std::to_string(p));
        return static_cast<index_t>(found - source.positions.begin());
    };
    for_each_selected_row(view, s, ctx, where, [&](const extents<R>& index, float* row) {
        index_t offset = 0;
        for (std::size_t a = 0; a + 1 < R; ++a) {
            index_t i = index[a];
            if (a == 0 && broadcast_batch) i = 0;
            if (a == pos_axis) i = source_row(i + start);
            offset += i * source_strides[a];
        }
        const float* from = source.values.data() + offset;
        for (index_t i = 0; i < width; ++i) row[i * stride] = from[i];
    });
}

}  // namespace detail

/// One patched site: where, and which positions/heads of it.
struct patch_target {
    site target;         ///< The site.
    selection selected;  ///< Positions and heads to overwrite (everything by default).
};

/// Overwrites activations with those of a source cache (e.g. a clean run), so the rest of the forward pass sees
/// the source's values there. The source's position axis is absolute: during KV-cache decoding row p of a site is
/// taken from the source's position start_position + p, so a cache of the full sequence patches every step. The
/// source batch must equal the run's or be 1 (broadcast). `Kinds` fixes at compile time which kinds can fire.
template <kind_set Kinds = kind_set::all_but_result()>
class patch_hooks {
public:
    /// The kinds this policy can patch.
    static constexpr kind_set kinds = Kinds;

    /// Patches from `source`, which must outlive this policy; nothing is patched until patch()/patch_all().
    explicit patch_hooks(const activation_cache& source) : source_(&source) {}
    /// Refuses a temporary cache: the policy keeps a reference to its source.
    explicit patch_hooks(activation_cache&&) = delete;

    /// Patches `s` (the chosen positions and heads; everything by default); throws if the source lacks `s`
    /// (unknown_hook_error), or if `s`'s kind is not in Kinds or heads are chosen on a site without heads.
    patch_hooks& patch(const site& s, const selection& where = {}) {
        detail::check_target<Kinds>(s, where, "patch_hooks");
        (void)source_->at(s);
        targets_.push_back({s, where});
        return *this;
    }
    /// Patches every site of the source whose kind is in Kinds, at the chosen positions (all by default).
    patch_hooks& patch_all(const index_set& positions = {}) {
        for (const site& s : source_->sites())
            if (Kinds.contains(s.kind)) targets_.push_back({s, selection{positions, {}}});
        return *this;
    }
    /// Forgets every target.
    void clear() noexcept { targets_.clear(); }
    /// The patched sites, in the order they were added.
    [[nodiscard]] const std::vector<patch_target>& targets() const noexcept { return targets_; }

    /// True for kinds in Kinds.
    static constexpr bool wants(site_kind kind) noexcept { return Kinds.contains(kind); }
    /// Overwrites the selected part of `view` when `s` is a target.
    template <std::size_t R>
    void on_activation(const site& s, tensor_view<float, R> view, const hook_context& ctx) {
        for (const patch_target& t : targets_)
            if (t.target == s) detail::overwrite_from(view, s, ctx, t.selected, source_->at(s), false, "patch_hooks");
    }

    /// Observes the gradient at every kind it can patch (see grad/observers.hpp).
    static constexpr bool wants_gradient(site_kind kind) noexcept { return Kinds.contains(kind); }
    /// Zeroes the gradient of what it overwrote: a patched value comes from another run, so nothing flows back.
    template <std::size_t R>
    void on_gradient(const site& s, tensor_view<float, R> gradient, const hook_context& ctx) {
        for (const patch_target& t : targets_)
            if (t.target == s) detail::zero_selected(gradient, s, ctx, t.selected);
    }

private:
    const activation_cache* source_;
    std::vector<patch_target> targets_;
};
static_assert(hook_policy<patch_hooks<>>);
static_assert(hook_policy<patch_hooks<kind_set::all()>>);

MECHLENS_END_NAMESPACE
