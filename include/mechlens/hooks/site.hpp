#pragma once
/// @file
/// Hook sites: every named activation of the forward pass, as a typed (kind, layer) value. What each kind is (name,
/// rank, axes, which configs have it) is one row of the site-traits table (site_traits.hpp): LLaMA has no
/// hook_pos_embed, GPT-2-style learned positions no rot_q/rot_k, attention-only blocks no ln2/mlp sites and no
/// hook_resid_mid.

#include <cstdint>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/hooks/site_traits.hpp"

MECHLENS_BEGIN_NAMESPACE

namespace detail {
/// The process-wide list of extension-site suffixes (`hook_sae_acts_post`, ...): a site stores the index of its
/// suffix, so sites stay small values that name themselves. Suffixes are only ever added; the deque keeps every
/// stored string at its address, so views into it stay valid. Thread-safe.
class extension_suffix_table {
public:
    /// The index of `suffix`, added when new.
    std::int32_t intern(std::string_view suffix) {
        const std::lock_guard<std::mutex> lock(mutex_);
        for (std::size_t i = 0; i < suffixes_.size(); ++i)
            if (suffixes_[i] == suffix) return static_cast<std::int32_t>(i);
        if (suffixes_.size() >= max_suffixes)
            throw std::length_error("mechlens: more than 65536 distinct extension-site suffixes");
        suffixes_.emplace_back(suffix);
        return static_cast<std::int32_t>(suffixes_.size() - 1);
    }
    /// The index of `suffix`, or -1 when it was never interned.
    std::int32_t find(std::string_view suffix) const {
        const std::lock_guard<std::mutex> lock(mutex_);
        for (std::size_t i = 0; i < suffixes_.size(); ++i)
            if (suffixes_[i] == suffix) return static_cast<std::int32_t>(i);
        return -1;
    }
    /// The suffix with index `id` (which intern returned).
    std::string_view at(std::int32_t id) const {
        const std::lock_guard<std::mutex> lock(mutex_);
        return suffixes_.at(static_cast<std::size_t>(id));
    }

private:
    static constexpr std::size_t max_suffixes = 65536;
    mutable std::mutex mutex_;
    std::deque<std::string> suffixes_;
};
/// The one table of extension suffixes.
inline extension_suffix_table& extension_suffixes() {
    static extension_suffix_table table;
    return table;
}
}  // namespace detail

/// One hook site: a kind plus the block it belongs to (-1 for global sites), and for an extension site (an
/// activation inside a module spliced at that site, such as an SAE's latents) the index of its name suffix.
struct site {
    site_kind kind = site_kind::embed;  ///< Which activation (for an extension site: the host site's kind).
    index_t layer = -1;                 ///< Block index, or -1 for global sites.
    std::int32_t extension = -1;        ///< -1 for the model's own sites; else the extension suffix's index.
    friend constexpr bool operator==(const site&, const site&) = default;  ///< Same kind, layer and extension.
};

/// The extension site named `host` + "." + `suffix` (e.g. `blocks.2.hook_resid_post.hook_sae_acts_post`).
inline site extension_site(const site& host, std::string_view suffix) {
    return site{host.kind, host.layer, detail::extension_suffixes().intern(suffix)};
}

/// The host site an extension site is named below (the site itself for the model's own sites).
constexpr site host_of(const site& s) noexcept { return site{s.kind, s.layer, -1}; }

/// The TransformerLens name of a site, e.g. `blocks.3.attn.hook_pattern`; extension sites append their suffix as
/// SAELens does (`blocks.3.hook_resid_post.hook_sae_acts_post`).
inline std::string to_string(const site& s) {
    std::string name = is_block_site(s.kind) ? "blocks." + std::to_string(s.layer) + "." : std::string();
    name += site_suffix(s.kind);
    if (s.extension >= 0) {
        name += '.';
        name += detail::extension_suffixes().at(s.extension);
    }
    return name;
}

/// Where in the sequence a forward call is: lets hooks see absolute positions during KV-cache decoding.
struct hook_context {
    index_t start_position = 0;  ///< Absolute position of the first query row in this call.
};

MECHLENS_END_NAMESPACE
