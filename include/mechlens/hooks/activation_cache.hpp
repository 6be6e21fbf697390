#pragma once
/// @file
/// ActivationCache: stored activations by site or TransformerLens name, stacking across layers, and saving to
/// `.safetensors` and `.npy` files that numpy and Hugging Face's safetensors load unchanged.

#include <algorithm>
#include <cstddef>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mechlens/hooks/names.hpp"
#include "mechlens/hooks/site.hpp"
#include "mechlens/io/npy.hpp"
#include "mechlens/io/safetensors.hpp"
#include "mechlens/tensor/errors.hpp"
#include "mechlens/tensor/view.hpp"

MECHLENS_BEGIN_NAMESPACE

/// One stored activation: TransformerLens shape (batch axis kept) and row-major float values.
struct cached_activation {
    std::vector<index_t> shape;  ///< Extents, outermost first.
    std::vector<float> values;   ///< product(shape) floats in row-major order.
    /// Absolute sequence positions of the rows along the position axis (see position_axis); empty means
    /// 0, 1, ..., n-1. Set when a caching filter kept only some positions or the rows start later in the sequence.
    std::vector<index_t> positions;

    /// A read-only view; throws shape_error unless the activation has rank R.
    template <std::size_t R>
    [[nodiscard]] tensor_view<const float, R> view() const {
        return tensor_view<const float, R>(values.data(), checked_extents<R>());
    }
    /// A mutable view; throws shape_error unless the activation has rank R.
    template <std::size_t R>
    [[nodiscard]] tensor_view<float, R> view() {
        return tensor_view<float, R>(values.data(), checked_extents<R>());
    }
    /// Number of elements: the product of the extents.
    [[nodiscard]] index_t size() const noexcept { return static_cast<index_t>(values.size()); }
    /// The absolute position of row `i` of the position axis.
    [[nodiscard]] index_t position(index_t i) const noexcept {
        return positions.empty() ? i : positions[static_cast<std::size_t>(i)];
    }

private:
    template <std::size_t R>
    extents<R> checked_extents() const {
        if (shape.size() != R)
            throw shape_error("cached_activation: stored rank " + std::to_string(shape.size()) + ", requested view<" +
                              std::to_string(R) + ">");
        extents<R> e{};
        std::copy(shape.begin(), shape.end(), e.begin());
        if (detail::checked_element_count(e) != static_cast<index_t>(values.size()))
            throw shape_error("cached_activation: " + std::to_string(values.size()) + " values for shape " +
                              detail::format_extents(e));
        return e;
    }
};

namespace detail {
/// Orders std::map keys in forward order.
struct forward_order {
    bool operator()(const site& a, const site& b) const noexcept { return forward_order_less(a, b); }
};
/// Metadata key under which save_safetensors records the non-default positions of a tensor.
inline std::string positions_key(const std::string& name) { return "mechlens.positions." + name; }
}  // namespace detail

/// Activations by site, kept in forward order; what caching_hooks fills, and what patching reads.
class activation_cache {
public:
    /// Stores `a` for site `s`, replacing any earlier entry, and returns the stored entry; throws shape_error when
    /// the values do not fill the shape.
    cached_activation& put(const site& s, cached_activation a) {
        index_t count = 1;
        for (index_t e : a.shape) {
            if (e < 0) throw shape_error("activation_cache::put: negative extent for " + to_string(s));
            count *= e;
        }
        if (count != static_cast<index_t>(a.values.size()))
            throw shape_error("activation_cache::put: " + std::to_string(a.values.size()) + " values for " +
                              to_string(s) + " of shape " + detail::format_shape(a.shape));
        cached_activation& stored = entries_[s];
        stored = std::move(a);
        return stored;
    }
    /// True when site `s` is stored.
    [[nodiscard]] bool contains(const site& s) const { return entries_.count(s) != 0; }
    /// The activation of `s`; throws unknown_hook_error naming the site (and the closest cached names).
    [[nodiscard]] const cached_activation& at(const site& s) const {
        if (const cached_activation* found = find(s)) return *found;
        throw missing(to_string(s));
    }
    /// The activation of `s`, mutable; throws unknown_hook_error naming the site.
    [[nodiscard]] cached_activation& at(const site& s) {
        if (cached_activation* found = find(s)) return *found;
        throw missing(to_string(s));
    }
    /// The activation named `name` (TransformerLens spelling); throws unknown_hook_error when absent or malformed.
    [[nodiscard]] const cached_activation& operator[](std::string_view name) const {
        if (const auto s = parse_site(name))
            if (const cached_activation* found = find(*s)) return *found;
        throw missing(name);
    }
    /// Pointer to the activation of `s`, or null.
    [[nodiscard]] const cached_activation* find(const site& s) const {
        const auto it = entries_.find(s);
        return it == entries_.end() ? nullptr : &it->second;
    }
    /// Pointer to the activation of `s`, or null (mutable).
    [[nodiscard]] cached_activation* find(const site& s) {
        const auto it = entries_.find(s);
        return it == entries_.end() ? nullptr : &it->second;
    }
    /// Removes site `s`; returns whether it was stored.
    bool erase(const site& s) { return entries_.erase(s) != 0; }
    /// Removes everything.
    void clear() noexcept { entries_.clear(); }
    /// The stored sites, in forward order.
    [[nodiscard]] std::vector<site> sites() const {
        std::vector<site> out;
        out.reserve(entries_.size());
        for (const auto& entry : entries_) out.push_back(entry.first);
        return out;
    }
    /// Number of stored sites.
    [[nodiscard]] std::size_t size() const noexcept { return entries_.size(); }
    /// True when nothing is stored.
    [[nodiscard]] bool empty() const noexcept { return entries_.empty(); }
    /// The layers for which a block site of `kind` is stored, ascending.
    [[nodiscard]] std::vector<index_t> layers(site_kind kind) const {
        std::vector<index_t> out;
        for (const auto& entry : entries_)
            if (entry.first.kind == kind) out.push_back(entry.first.layer);
        return out;
    }

    /// One block site kind across layers with a leading layer axis, (layers, batch, ...), like TransformerLens's
    /// `cache.stack_activation`; row i is layers(kind)[i]. Throws std::invalid_argument for a global kind or when no
    /// layer is stored, shape_error when the layers' shapes differ.
    [[nodiscard]] cached_activation stack(site_kind kind) const {
        if (!is_block_site(kind))
            throw std::invalid_argument("activation_cache::stack: " + std::string(site_suffix(kind)) +
                                        " is not a per-block site");
        std::vector<const cached_activation*> parts;
        for (const auto& entry : entries_)
            if (entry.first.kind == kind) parts.push_back(&entry.second);
        if (parts.empty())
            throw std::invalid_argument("activation_cache::stack: no layer of " + std::string(site_suffix(kind)) +
                                        " is cached");
        cached_activation out;
        out.shape.push_back(static_cast<index_t>(parts.size()));
        out.shape.insert(out.shape.end(), parts.front()->shape.begin(), parts.front()->shape.end());
        out.positions = parts.front()->positions;
        out.values.reserve(parts.size() * parts.front()->values.size());
        for (const cached_activation* part : parts) {
            if (part->shape != parts.front()->shape || part->positions != parts.front()->positions)
                throw shape_error("activation_cache::stack: " + std::string(site_suffix(kind)) +
                                  " has different shapes or positions across layers: " +
                                  detail::format_shape(parts.front()->shape) + " and " +
                                  detail::format_shape(part->shape));
            out.values.insert(out.values.end(), part->values.begin(), part->values.end());
        }
        return out;
    }
    /// stack() by name suffix, e.g. "hook_resid_post" or "attn.hook_pattern"; throws unknown_hook_error when the
    /// suffix names no block site.
    [[nodiscard]] cached_activation stack(std::string_view suffix) const {
        const auto kind = site_kind_from_suffix(suffix);
        if (!kind || !is_block_site(*kind)) {
            std::vector<std::string> suffixes;
            for (std::size_t k = 0; k < site_kind_count; ++k)
                if (is_block_site(static_cast<site_kind>(k)))
                    suffixes.emplace_back(site_suffix(static_cast<site_kind>(k)));
            throw detail::make_unknown_hook_error("activation_cache::stack: " + detail::quote_name(suffix) +
                                                      " names no per-block site",
                                                  suffix, suffixes);
        }
        return stack(*kind);
    }

    /// Writes every entry to one `.safetensors` file: F32 tensors named by hook name, shapes as stored, metadata
    /// {"format": "mechlens"} plus "mechlens.positions.<name>" ("3,7,8") for entries with explicit positions.
    void save_safetensors(const std::filesystem::path& path) const {
        std::vector<safetensors_tensor_ref> tensors;
        std::map<std::string, std::string> metadata{{"format", "mechlens"}};
        for (const auto& [s, a] : entries_) {
            const std::string name = to_string(s);
            tensors.push_back({name, a.shape, a.values.data()});
            if (!a.positions.empty()) {
                std::string list;
                for (index_t p : a.positions) {
                    if (!list.empty()) list += ',';
                    list += std::to_string(p);
                }
                metadata[detail::positions_key(name)] = list;
            }
        }
        write_safetensors(path, tensors, metadata);
    }

    /// Writes one `<hook name>.npy` (float32, C order) per entry into `directory`, creating it when needed.
    void save_npy(const std::filesystem::path& directory) const {
        std::filesystem::create_directories(directory);
        for (const auto& [s, a] : entries_) write_npy(directory / (to_string(s) + ".npy"), a.values.data(), a.shape);
    }

    /// Reads a cache written by save_safetensors (or any F32 safetensors file whose tensor names are hook names
    /// with the ranks of their sites); throws format_error naming the file otherwise.
    [[nodiscard]] static activation_cache load_safetensors(const std::filesystem::path& path) {
        safetensors_file file = read_safetensors(path);
        activation_cache out;
        for (safetensors_tensor& t : file.tensors) {
            const std::optional<site> s = detail::parse_site_interning(t.name);
            if (!s) detail::format_fail(path.string(), "tensor '" + t.name.substr(0, 200) + "' is not a hook name");
            const std::size_t axis = position_axis(s->kind);
            if (t.shape.size() != site_rank(s->kind))
                detail::format_fail(path.string(), "tensor '" + t.name + "' has rank " +
                                                       std::to_string(t.shape.size()) + ", expected " +
                                                       std::to_string(site_rank(s->kind)));
            cached_activation a{std::move(t.shape), std::move(t.values), {}};
            if (const auto it = file.metadata.find(detail::positions_key(t.name)); it != file.metadata.end())
                a.positions = parse_positions(it->second, path, t.name);
            if (!a.positions.empty() && static_cast<index_t>(a.positions.size()) != a.shape[axis])
                detail::format_fail(path.string(), "tensor '" + t.name + "' has " + std::to_string(a.shape[axis]) +
                                                       " positions but its metadata lists " +
                                                       std::to_string(a.positions.size()));
            out.entries_[*s] = std::move(a);
        }
        return out;
    }

private:
    static unknown_hook_error missing_error(std::string_view name, const std::vector<std::string>& cached) {
        return detail::make_unknown_hook_error("no activation cached for " + detail::quote_name(name), name, cached);
    }
    unknown_hook_error missing(std::string_view name) const {
        std::vector<std::string> cached;
        for (const auto& entry : entries_) cached.push_back(to_string(entry.first));
        return missing_error(name, cached);
    }
    static std::vector<index_t> parse_positions(const std::string& text, const std::filesystem::path& path,
                                                const std::string& name) {
        std::vector<index_t> out;
        std::size_t begin = 0;
        while (begin <= text.size()) {
            const std::size_t comma = std::min(text.find(',', begin), text.size());
            index_t value = 0;
            if (comma == begin) detail::format_fail(path.string(), "empty position in the metadata of '" + name + "'");
            for (std::size_t i = begin; i < comma; ++i) {
                if (text[i] < '0' || text[i] > '9' || value > (PTRDIFF_MAX - 9) / 10)
                    detail::format_fail(path.string(), "bad position list in the metadata of '" + name + "'");
                value = value * 10 + (text[i] - '0');
            }
            out.push_back(value);
            begin = comma + 1;
        }
        return out;
    }

    std::map<site, cached_activation, detail::forward_order> entries_;
};

MECHLENS_END_NAMESPACE
