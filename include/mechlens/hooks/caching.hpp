#pragma once
/// @file
/// The caching policy: copies the activations it is asked for into an activation_cache, filtered by site kind,
/// layer range, name glob, predicate and sequence position, and keeps appending during KV-cache generation.

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mechlens/hooks/activation_cache.hpp"
#include "mechlens/hooks/names.hpp"
#include "mechlens/hooks/policy.hpp"
#include "mechlens/model/config.hpp"
#include "mechlens/tensor/tensor.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Which sites and positions a caching_hooks keeps, decided at run time; every condition set must hold (AND).
/// The default keeps everything the policy's compile-time kind set lets through.
class cache_filter {
public:
    /// Keeps only sites whose kind is in `kinds`.
    cache_filter& kinds(kind_set kinds) {
        kinds_ = kinds;
        return *this;
    }
    /// Keeps only block sites of layers [begin, end); global sites (embed, ln_final, unembed) are then dropped.
    cache_filter& layers(index_t begin, index_t end) {
        if (begin < 0 || end < begin)
            throw std::invalid_argument("cache_filter::layers: [" + std::to_string(begin) + ", " +
                                        std::to_string(end) + ") is not a layer range");
        layers_ = {begin, end};
        return *this;
    }
    /// Keeps only the sites matched by comma-separated globs (see match_sites, which throws unknown_hook_error for a
    /// pattern matching nothing in a model with config `c`); replaces an earlier names() or sites().
    cache_filter& names(std::string_view patterns, const model_config& c) { return sites(match_sites(patterns, c)); }
    /// Keeps only the given sites; replaces an earlier names() or sites().
    cache_filter& sites(std::vector<site> chosen) {
        std::sort(chosen.begin(), chosen.end(), detail::forward_order_less);
        sites_ = std::move(chosen);
        return *this;
    }
    /// Keeps only sites for which `predicate` returns true.
    cache_filter& where(std::function<bool(const site&)> predicate) {
        predicate_ = std::move(predicate);
        return *this;
    }
    /// Keeps only rows at these absolute sequence positions (the query rows of patterns and scores).
    cache_filter& positions(std::vector<index_t> absolute) {
        for (index_t p : absolute)
            if (p < 0) throw std::invalid_argument("cache_filter::positions: negative position " + std::to_string(p));
        std::sort(absolute.begin(), absolute.end());
        absolute.erase(std::unique(absolute.begin(), absolute.end()), absolute.end());
        positions_ = std::move(absolute);
        return *this;
    }
    /// Keeps only rows at absolute positions [begin, end).
    cache_filter& position_range(index_t begin, index_t end) {
        if (begin < 0 || end < begin)
            throw std::invalid_argument("cache_filter::position_range: [" + std::to_string(begin) + ", " +
                                        std::to_string(end) + ") is not a position range");
        position_begin_ = begin;
        position_end_ = end;
        return *this;
    }

    /// True when site `s` passes the kind, layer, name and predicate conditions.
    [[nodiscard]] bool selects(const site& s) const {
        if (!kinds_.contains(s.kind)) return false;
        if (layers_ && (!is_block_site(s.kind) || s.layer < layers_->first || s.layer >= layers_->second))
            return false;
        if (sites_ && !std::binary_search(sites_->begin(), sites_->end(), s, detail::forward_order_less))
            return false;
        return !predicate_ || predicate_(s);
    }
    /// True when rows at absolute position `p` are kept.
    [[nodiscard]] bool keeps_position(index_t p) const {
        if (p < position_begin_ || p >= position_end_) return false;
        return !positions_ || std::binary_search(positions_->begin(), positions_->end(), p);
    }
    /// True when every position is kept.
    [[nodiscard]] bool keeps_all_positions() const noexcept {
        return !positions_ && position_begin_ == 0 && position_end_ == std::numeric_limits<index_t>::max();
    }

private:
    kind_set kinds_ = kind_set::all();
    std::optional<std::pair<index_t, index_t>> layers_;
    std::optional<std::vector<site>> sites_;  // sorted in forward order
    std::function<bool(const site&)> predicate_;
    std::optional<std::vector<index_t>> positions_;  // sorted, unique
    index_t position_begin_ = 0;
    index_t position_end_ = std::numeric_limits<index_t>::max();
};

namespace detail {

/// Copies the row at (outer index `outer`, position `row`) of a strided view into `out`: all elements after the
/// position axis, in row-major order.
template <std::size_t R>
void gather_row(const tensor_view<const float, R>& v, std::size_t axis, index_t outer, index_t row, float* out) {
    index_t offset = row * v.stride(axis);
    if (axis == 1) {
        offset += outer * v.stride(0);
    } else {
        offset += (outer / v.extent(1)) * v.stride(0) + (outer % v.extent(1)) * v.stride(1);
    }
    const float* base = v.data() + offset;
    if (axis + 2 == R) {  // one inner axis
        const index_t n = v.extent(R - 1), stride = v.stride(R - 1);
        if (stride == 1) {
            std::memcpy(out, base, static_cast<std::size_t>(n) * sizeof(float));
        } else {
            for (index_t j = 0; j < n; ++j) out[j] = base[j * stride];
        }
    } else {  // two inner axes: (batch, pos, head, d_head)
        const index_t n2 = v.extent(R - 2), n3 = v.extent(R - 1);
        for (index_t a = 0; a < n2; ++a) {
            const float* source = base + a * v.stride(R - 2);
            float* destination = out + a * n3;
            if (v.stride(R - 1) == 1) {
                std::memcpy(destination, source, static_cast<std::size_t>(n3) * sizeof(float));
            } else {
                for (index_t b = 0; b < n3; ++b) destination[b] = source[b * v.stride(R - 1)];
            }
        }
    }
}

/// Stores the kept rows of one firing of site `s` in `cache`: a new entry when the site is absent or this is a new
/// run (start 0, or not after the stored rows), else appended after the stored rows along the position axis. For
/// scores and patterns the key axis grows too; stored rows are padded with what a full forward has there (-inf
/// scores, 0 probabilities), so a cache built while decoding equals one full forward's.
template <std::size_t R>
void cache_rows(activation_cache& cache, const site& s, const tensor_view<const float, R>& v, index_t start,
                const cache_filter& filter) {
    const std::size_t axis = position_axis(s.kind);
    if (axis + 1 >= R) throw shape_error("caching_hooks: " + to_string(s) + " fired with an unexpected rank");
    const index_t rows = v.extent(axis);
    cached_activation* old = cache.find(s);
    if (start == 0 && filter.keeps_all_positions()) {
        // The common case (run_with_cache): the whole activation from position 0, stored in place. The entry's
        // buffers are reused when the policy runs again, and nothing is zero-filled first.
        cached_activation& entry = old != nullptr ? *old : cache.put(s, cached_activation{{0}, {}, {}});
        entry.positions.clear();
        entry.shape.assign(v.shape().begin(), v.shape().end());
        if (v.is_contiguous()) {
            entry.values.assign(v.data(), v.data() + v.size());
        } else {
            entry.values.resize(static_cast<std::size_t>(v.size()));
            copy(v, tensor_view<float, R>(entry.values.data(), v.shape()));
        }
        return;
    }
    std::vector<index_t> kept;  // indices into this firing's rows
    kept.reserve(static_cast<std::size_t>(rows));
    for (index_t i = 0; i < rows; ++i)
        if (filter.keeps_position(start + i)) kept.push_back(i);
    if (kept.empty()) return;

    index_t outer = 1, inner = 1;
    for (std::size_t a = 0; a < axis; ++a) outer *= v.extent(a);
    for (std::size_t a = axis + 1; a < R; ++a) inner *= v.extent(a);
    const bool keyed = site_traits_of(s.kind).axes.key >= 0;

    bool append = old != nullptr && start > 0 && old->shape.size() == R && old->shape[axis] > 0 &&
                  old->position(old->shape[axis] - 1) < start + kept.front();
    for (std::size_t a = 0; append && a < R; ++a) {
        if (a == axis) continue;
        append = keyed && a + 1 == R ? old->shape[a] <= v.extent(a) : old->shape[a] == v.extent(a);
    }
    const index_t old_rows = append ? old->shape[axis] : 0;
    const index_t old_inner = append ? static_cast<index_t>(old->values.size()) / std::max<index_t>(1, outer * old_rows) : 0;
    const index_t total_rows = old_rows + static_cast<index_t>(kept.size());
    const float pad = site_traits_of(s.kind).masked_fill;

    cached_activation next;
    if (old != nullptr && !append) {  // a new run over a stored site: reuse its buffers instead of reallocating
        next.values = std::move(old->values);
        next.positions = std::move(old->positions);
        next.positions.clear();
    }
    next.shape.assign(v.shape().begin(), v.shape().end());
    next.shape[axis] = total_rows;
    next.values.resize(static_cast<std::size_t>(outer * total_rows * inner));
    for (index_t o = 0; o < outer; ++o) {
        float* out = next.values.data() + o * total_rows * inner;
        for (index_t r = 0; r < old_rows; ++r, out += inner) {
            const float* source = old->values.data() + (o * old_rows + r) * old_inner;
            std::copy(source, source + old_inner, out);
            std::fill(out + old_inner, out + inner, pad);
        }
        for (index_t i : kept) {
            gather_row(v, axis, o, i, out);
            out += inner;
        }
    }
    bool identity = true;
    for (index_t r = 0; r < total_rows; ++r) {
        const index_t p = r < old_rows ? old->position(r) : start + kept[static_cast<std::size_t>(r - old_rows)];
        next.positions.push_back(p);
        identity = identity && p == r;
    }
    if (identity) next.positions.clear();
    cache.put(s, std::move(next));
}

}  // namespace detail

/// The caching policy (TransformerLens's `run_with_cache`): copies every wanted activation into its own
/// activation_cache. `Kinds` decides at compile time which site kinds the forward pass hands it (default: all but
/// `attn.hook_result`, which costs an extra per-head projection and changes the rounding of `hook_attn_out`); a
/// cache_filter narrows that at run time. A site that fires again later in the sequence (KV-cache decoding) is
/// appended; one that fires again from position 0 starts over.
template <kind_set Kinds = kind_set::all_but_result()>
class caching_hooks {
public:
    /// Caches every site of the kinds in `Kinds`, at every position.
    caching_hooks() = default;
    /// Caches what `filter` selects among the kinds in `Kinds`.
    explicit caching_hooks(cache_filter filter) : filter_(std::move(filter)) {}

    /// The compile-time half of the filter.
    static constexpr bool wants(site_kind kind) noexcept { return Kinds.contains(kind); }

    /// Copies the selected rows of the activation into the cache (reads only; the forward pass is unchanged).
    template <std::size_t Rank>
    void on_activation(const site& s, tensor_view<float, Rank> activation, const hook_context& ctx) {
        if (!filter_.selects(s)) return;
        detail::cache_rows(cache_, s, tensor_view<const float, Rank>(activation), ctx.start_position, filter_);
    }

    /// The activations cached so far.
    [[nodiscard]] const activation_cache& cache() const noexcept { return cache_; }
    /// The activations cached so far (mutable, e.g. to clear or edit before patching).
    [[nodiscard]] activation_cache& cache() noexcept { return cache_; }
    /// Moves the cache out, leaving this policy empty.
    [[nodiscard]] activation_cache take() noexcept {
        activation_cache out = std::move(cache_);
        cache_.clear();
        return out;
    }
    /// The run-time filter.
    [[nodiscard]] const cache_filter& filter() const noexcept { return filter_; }

private:
    cache_filter filter_;
    activation_cache cache_;
};
static_assert(hook_policy<caching_hooks<>>);
static_assert(hook_policy<caching_hooks<kind_set::all()>>);

MECHLENS_END_NAMESPACE
