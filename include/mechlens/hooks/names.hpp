#pragma once
/// @file
/// Hook names: parse TransformerLens names into sites, list and glob-match the sites of a model, and suggest the
/// closest valid names when a name is wrong.

#include <algorithm>
#include <cstddef>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mechlens/hooks/site.hpp"
#include "mechlens/model/config.hpp"

MECHLENS_BEGIN_NAMESPACE

/// Thrown for a hook name (or pattern) that names no site of the model; the message ends with the closest valid
/// names ("did you mean ...?"), which suggestions() also returns.
class unknown_hook_error : public std::invalid_argument {
public:
    /// Builds the error from a complete message and the suggested names it mentions.
    unknown_hook_error(const std::string& message, std::vector<std::string> suggestions)
        : std::invalid_argument(message), suggestions_(std::move(suggestions)) {}
    /// The closest valid names, best first (at most three; empty when nothing is close).
    [[nodiscard]] const std::vector<std::string>& suggestions() const noexcept { return suggestions_; }

private:
    std::vector<std::string> suggestions_;
};

namespace detail {

/// Orders sites as the forward pass fires them: the sites before the blocks (`hook_embed`, `hook_pos_embed`),
/// block 0 (in site_kind order), block 1, ..., then those after the blocks (the final norm and the unembedding).
/// Extension sites follow their host.
inline bool forward_order_less(const site& a, const site& b) noexcept {
    const site_scope scope_a = site_traits_of(a.kind).scope, scope_b = site_traits_of(b.kind).scope;
    if (scope_a != scope_b) return scope_a < scope_b;
    if (a.layer != b.layer) return a.layer < b.layer;
    if (a.kind != b.kind) return a.kind < b.kind;
    return a.extension < b.extension;  // a host before the sites spliced below it
}

/// Levenshtein distance (insertions, deletions and substitutions cost 1).
inline std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diagonal = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const std::size_t above = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0u : 1u)});
            diagonal = above;
        }
    }
    return row[b.size()];
}

/// True when `text` matches the glob `pattern`: `*` is any run of characters (dots included), `?` one character.
inline bool glob_match(std::string_view pattern, std::string_view text) noexcept {
    // Greedy matching with one backtrack point: linear-time for a single `*`, never exponential.
    std::size_t p = 0, t = 0, star = std::string_view::npos, resume = 0;
    while (t < text.size()) {
        if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == text[t])) {
            ++p, ++t;
        } else if (p < pattern.size() && pattern[p] == '*') {
            star = p++;
            resume = t;
        } else if (star != std::string_view::npos) {
            p = star + 1;
            t = ++resume;
        } else {
            return false;
        }
    }
    while (p < pattern.size() && pattern[p] == '*') ++p;
    return p == pattern.size();
}

/// The layer number in a name that starts `blocks.N.`, or -1; used only to rank suggestions.
inline index_t layer_hint(std::string_view name) noexcept {
    constexpr std::string_view prefix = "blocks.";
    if (name.substr(0, prefix.size()) != prefix) return -1;
    index_t layer = 0;
    std::size_t i = prefix.size();
    for (; i < name.size() && name[i] >= '0' && name[i] <= '9' && i < prefix.size() + 9; ++i)
        layer = layer * 10 + (name[i] - '0');
    return i > prefix.size() ? layer : -1;
}

/// Up to `count` of `candidates` closest to `name` by edit distance; ties go to the nearest layer number, then to
/// the earlier candidate. Candidates farther than about half the name's length are not worth suggesting.
inline std::vector<std::string> closest_names(std::string_view name, const std::vector<std::string>& candidates,
                                              std::size_t count = 3) {
    struct ranked {
        std::size_t distance;
        index_t layer_gap;
        std::size_t order;
    };
    const index_t hint = layer_hint(name);
    const std::size_t limit = std::max<std::size_t>(3, name.size() / 2);
    std::vector<ranked> ranks;
    for (std::size_t i = 0; i < candidates.size(); ++i) {
        const std::size_t d = edit_distance(name, candidates[i]);
        if (d > limit) continue;
        const index_t layer = layer_hint(candidates[i]);
        const index_t gap = hint >= 0 && layer >= 0 ? (hint > layer ? hint - layer : layer - hint) : 0;
        ranks.push_back({d, gap, i});
    }
    std::sort(ranks.begin(), ranks.end(), [](const ranked& a, const ranked& b) {
        if (a.distance != b.distance) return a.distance < b.distance;
        if (a.layer_gap != b.layer_gap) return a.layer_gap < b.layer_gap;
        return a.order < b.order;
    });
    std::vector<std::string> out;
    for (std::size_t i = 0; i < ranks.size() && i < count; ++i) out.push_back(candidates[ranks[i].order]);
    return out;
}

/// Builds an unknown_hook_error: `problem`, then "; did you mean A, B or C?" when something is close.
inline unknown_hook_error make_unknown_hook_error(const std::string& problem, std::string_view name,
                                                  const std::vector<std::string>& candidates) {
    std::vector<std::string> suggestions = closest_names(name, candidates);
    std::string message = problem;
    if (!suggestions.empty()) {
        message += "; did you mean ";
        for (std::size_t i = 0; i < suggestions.size(); ++i) {
            if (i > 0) message += i + 1 == suggestions.size() ? " or " : ", ";
            message += suggestions[i];
        }
        message += "?";
    }
    return unknown_hook_error(message, std::move(suggestions));
}

/// Quotes a user-supplied name for an error message, cut short so one bad argument cannot flood a log.
inline std::string quote_name(std::string_view name) {
    constexpr std::size_t longest = 200;
    std::string out = "'";
    out += name.substr(0, longest);
    out += name.size() > longest ? "...'" : "'";
    return out;
}

}  // namespace detail

/// The site kind whose name suffix (the part after `blocks.L.`, or the whole global name) is `suffix`, e.g.
/// "attn.hook_pattern" or "hook_embed"; nullopt when there is none.
constexpr std::optional<site_kind> site_kind_from_suffix(std::string_view suffix) noexcept {
    for (const site_traits& row : site_traits_table)
        if (row.suffix == suffix) return row.kind;
    return std::nullopt;
}

namespace detail {
/// Parses the name of one of the model's own sites (no extension suffix); nullopt when malformed.
constexpr std::optional<site> parse_model_site(std::string_view name) noexcept {
    constexpr std::string_view prefix = "blocks.";
    if (name.substr(0, prefix.size()) != prefix) {
        const auto kind = site_kind_from_suffix(name);
        if (!kind || is_block_site(*kind)) return std::nullopt;
        return site{*kind, -1};
    }
    std::size_t i = prefix.size();
    index_t layer = 0;
    const std::size_t digits_begin = i;
    for (; i < name.size() && name[i] >= '0' && name[i] <= '9'; ++i) {
        if (layer > (std::numeric_limits<index_t>::max() - 9) / 10) return std::nullopt;
        layer = layer * 10 + (name[i] - '0');
    }
    const std::size_t digits = i - digits_begin;
    if (digits == 0 || (digits > 1 && name[digits_begin] == '0')) return std::nullopt;
    if (i >= name.size() || name[i] != '.') return std::nullopt;
    const auto kind = site_kind_from_suffix(name.substr(i + 1));
    if (!kind || !is_block_site(*kind)) return std::nullopt;
    return site{*kind, layer};
}

/// True when `suffix` can name an extension site: `hook_` then lower-case letters, digits and underscores, at most
/// 64 characters in all.
constexpr bool valid_extension_suffix(std::string_view suffix) noexcept {
    constexpr std::string_view head = "hook_";
    if (suffix.size() <= head.size() || suffix.size() > 64 || suffix.substr(0, head.size()) != head) return false;
    for (const char ch : suffix)
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_')) return false;
    return true;
}

/// Splits `host.suffix` into the host site and the extension suffix; nullopt unless the host parses and the suffix
/// is valid.
inline std::optional<std::pair<site, std::string_view>> split_extension_name(std::string_view name) noexcept {
    const std::size_t dot = name.rfind('.');
    if (dot == std::string_view::npos) return std::nullopt;
    const std::string_view suffix = name.substr(dot + 1);
    if (!valid_extension_suffix(suffix)) return std::nullopt;
    const std::optional<site> host = parse_model_site(name.substr(0, dot));
    if (!host) return std::nullopt;
    return std::pair{*host, suffix};
}

/// parse_site that also accepts extension suffixes never seen in this process (interning them): for files that
/// name extension sites, such as a cache saved by another run.
inline std::optional<site> parse_site_interning(std::string_view name) {
    if (const std::optional<site> own = parse_model_site(name)) return own;
    const auto split = split_extension_name(name);
    if (!split) return std::nullopt;
    return extension_site(split->first, split->second);
}
}  // namespace detail

/// Parses a TransformerLens hook name, e.g. "blocks.3.attn.hook_pattern" or "ln_final.hook_scale", or an extension
/// site's name below one (`blocks.3.hook_resid_post.hook_sae_acts_post`, for a suffix something has spliced in this
/// process); nullopt when the name is malformed. Only the canonical spelling parses (no leading zeros, no spaces),
/// so every name round-trips through to_string. Whether the layer exists in a given model is site_from_name's
/// business. A constant expression for the model's own names.
constexpr std::optional<site> parse_site(std::string_view name) {
    if (const std::optional<site> own = detail::parse_model_site(name)) return own;
    const auto split = detail::split_extension_name(name);
    if (!split) return std::nullopt;
    const std::int32_t id = detail::extension_suffixes().find(split->second);
    if (id < 0) return std::nullopt;
    return site{split->first.kind, split->first.layer, id};
}

/// Every site of a model with this config (only kinds it has, see has_site_kind), in the order the forward pass
/// fires them (`attn.hook_result` included).
inline std::vector<site> all_sites(const model_config& c) {
    std::vector<site> sites;
    sites.reserve(static_cast<std::size_t>(std::max<index_t>(c.n_layers, 0) + 1) * site_kind_count);
    auto add = [&](site_scope scope, index_t layer) {
        for (const site_traits& row : site_traits_table)
            if (row.scope == scope && has_site_kind(c, row.kind)) sites.push_back(site{row.kind, layer});
    };
    add(site_scope::before_blocks, -1);
    for (index_t layer = 0; layer < c.n_layers; ++layer) add(site_scope::block, layer);
    add(site_scope::after_blocks, -1);
    return sites;
}

/// The TransformerLens names of all_sites(c), in the same order.
inline std::vector<std::string> all_site_names(const model_config& c) {
    std::vector<std::string> names;
    for (const site& s : all_sites(c)) names.push_back(to_string(s));
    return names;
}

/// The site a hook name denotes in a model with this config; throws unknown_hook_error (with the closest valid
/// names) when the name is malformed, its layer is not below n_layers, or the model has no such site (e.g.
/// `blocks.0.ln1.hook_scale` without norms, see has_site_kind).
inline site site_from_name(std::string_view name, const model_config& c) {
    const std::optional<site> parsed = parse_site(name);
    if (parsed && parsed->extension < 0 && parsed->layer < c.n_layers && has_site_kind(c, parsed->kind))
        return *parsed;
    std::string problem = "unknown hook name " + detail::quote_name(name);
    if (parsed && parsed->extension >= 0)
        problem += " (an extension site: it exists only in hooks with a splice attached at its host)";
    else if (parsed && parsed->layer >= c.n_layers)
        problem += " (layer " + std::to_string(parsed->layer) + " is out of range: the model has " +
                   std::to_string(c.n_layers) + " blocks)";
    else if (parsed)
        problem += " (" + detail::missing_kind_reason(c, parsed->kind) + ")";
    throw detail::make_unknown_hook_error(problem, name, all_site_names(c));
}

namespace detail {
/// The sites of `sites` whose names match any of the comma-separated glob patterns, each once, in the order given;
/// throws unknown_hook_error for an empty pattern or one that matches nothing.
inline std::vector<site> match_in(std::string_view patterns, const std::vector<site>& sites) {
    std::vector<std::string> names;
    names.reserve(sites.size());
    for (const site& s : sites) names.push_back(to_string(s));
    std::vector<bool> selected(sites.size(), false);
    std::size_t begin = 0;
    while (begin <= patterns.size()) {
        const std::size_t comma = std::min(patterns.find(',', begin), patterns.size());
        std::string_view pattern = patterns.substr(begin, comma - begin);
        while (!pattern.empty() && pattern.front() == ' ') pattern.remove_prefix(1);
        while (!pattern.empty() && pattern.back() == ' ') pattern.remove_suffix(1);
        if (pattern.empty())
            throw unknown_hook_error("empty hook name pattern in " + detail::quote_name(patterns), {});
        bool any = false;
        for (std::size_t i = 0; i < names.size(); ++i)
            if (detail::glob_match(pattern, names[i])) selected[i] = any = true;
        if (!any)
            throw detail::make_unknown_hook_error(
                "hook name pattern " + detail::quote_name(pattern) + " matches no site of the model", pattern, names);
        begin = comma + 1;
    }
    std::vector<site> out;
    for (std::size_t i = 0; i < sites.size(); ++i)
        if (selected[i]) out.push_back(sites[i]);
    return out;
}
}  // namespace detail

/// The sites whose names match any of the comma-separated glob patterns (`*` any run of characters, `?` one; spaces
/// around commas ignored), each once, in forward order. Throws unknown_hook_error for an empty pattern or a pattern
/// that matches nothing, suggesting the closest valid names.
inline std::vector<site> match_sites(std::string_view patterns, const model_config& c) {
    return detail::match_in(patterns, all_sites(c));
}

MECHLENS_END_NAMESPACE
