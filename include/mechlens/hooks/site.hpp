#pragma once
/// @file
/// Hook sites: every named activation of the forward pass, as a typed (kind, layer) value. What each kind is (name,
/// rank, axes, which configs have it) is one row of the site-traits table (site_traits.hpp): LLaMA has no
/// hook_pos_embed, GPT-2-style learned positions no rot_q/rot_k, attention-only blocks no ln2/mlp sites and no
/// hook_resid_mid.

#include <string>
#include <string_view>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/hooks/site_traits.hpp"

MECHLENS_BEGIN_NAMESPACE

/// One hook site: a kind plus the block it belongs to (-1 for global sites).
struct site {
    site_kind kind = site_kind::embed;  ///< Which activation.
    index_t layer = -1;                 ///< Block index, or -1 for global sites.
    friend constexpr bool operator==(const site&, const site&) = default;  ///< Same kind and layer.
};

/// The TransformerLens name of a site, e.g. `blocks.3.attn.hook_pattern`.
inline std::string to_string(const site& s) {
    if (!is_block_site(s.kind)) return std::string(site_suffix(s.kind));
    return "blocks." + std::to_string(s.layer) + "." + std::string(site_suffix(s.kind));
}

/// Where in the sequence a forward call is: lets hooks see absolute positions during KV-cache decoding.
struct hook_context {
    index_t start_position = 0;  ///< Absolute position of the first query row in this call.
};

MECHLENS_END_NAMESPACE
