#pragma once
/// @file
/// Hook sites: every named activation of the forward pass, as a typed (kind, layer) value. Which kinds a model has
/// depends on its config (see has_site_kind in names.hpp): LLaMA has no hook_pos_embed, GPT-2-style learned
/// positions no rot_q/rot_k, attention-only blocks no ln2/mlp sites and no hook_resid_mid.

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "mechlens/detail/namespace.hpp"

MECHLENS_BEGIN_NAMESPACE

/// The kind of a hook site; names and shapes follow TransformerLens (batch axis kept).
enum class site_kind : std::uint8_t {
    embed,                ///< `hook_embed` (batch, pos, d_model): token embedding rows
    pos_embed,            ///< `hook_pos_embed` (batch, pos, d_model): learned position rows (learned positions only)
    resid_pre,            ///< `blocks.L.hook_resid_pre` (batch, pos, d_model)
    ln1_scale,            ///< `blocks.L.ln1.hook_scale` (batch, pos, 1), with norms only
    ln1_normalized,       ///< `blocks.L.ln1.hook_normalized` (batch, pos, d_model), before the gain
    attn_q,               ///< `blocks.L.attn.hook_q` (batch, pos, n_heads, d_head)
    attn_k,               ///< `blocks.L.attn.hook_k` (batch, pos, n_kv_heads, d_head)
    attn_v,               ///< `blocks.L.attn.hook_v` (batch, pos, n_kv_heads, d_head)
    attn_rot_q,           ///< `blocks.L.attn.hook_rot_q` (batch, pos, n_heads, d_head), rotary positions only
    attn_rot_k,           ///< `blocks.L.attn.hook_rot_k` (batch, pos, n_kv_heads, d_head), rotary positions only
    attn_scores,          ///< `blocks.L.attn.hook_attn_scores` (batch, head, query_pos, key_pos), masked = -inf
    attn_pattern,         ///< `blocks.L.attn.hook_pattern` (batch, head, query_pos, key_pos)
    attn_z,               ///< `blocks.L.attn.hook_z` (batch, pos, n_heads, d_head)
    attn_result,          ///< `blocks.L.attn.hook_result` (batch, pos, n_heads, d_model), computed only when wanted
    attn_out,             ///< `blocks.L.hook_attn_out` (batch, pos, d_model)
    resid_mid,            ///< `blocks.L.hook_resid_mid` (batch, pos, d_model), not in attention-only blocks
    ln2_scale,            ///< `blocks.L.ln2.hook_scale` (batch, pos, 1)
    ln2_normalized,       ///< `blocks.L.ln2.hook_normalized` (batch, pos, d_model), before the gain
    mlp_pre,              ///< `blocks.L.mlp.hook_pre` (batch, pos, d_mlp): gate (gated) or W_in (plain) pre-activation
    mlp_pre_linear,       ///< `blocks.L.mlp.hook_pre_linear` (batch, pos, d_mlp): up projection, gated MLP only
    mlp_post,             ///< `blocks.L.mlp.hook_post` (batch, pos, d_mlp)
    mlp_out,              ///< `blocks.L.hook_mlp_out` (batch, pos, d_model)
    resid_post,           ///< `blocks.L.hook_resid_post` (batch, pos, d_model)
    ln_final_scale,       ///< `ln_final.hook_scale` (batch, pos, 1)
    ln_final_normalized,  ///< `ln_final.hook_normalized` (batch, pos, d_model), before the gain
    unembed_out,          ///< `unembed.hook_out` (batch, pos, d_vocab): the logits
};

/// Number of site kinds.
inline constexpr std::size_t site_kind_count = static_cast<std::size_t>(site_kind::unembed_out) + 1;

/// True for sites that exist once per block (named `blocks.L.…`); false for global ones.
constexpr bool is_block_site(site_kind kind) noexcept {
    return kind != site_kind::embed && kind != site_kind::pos_embed && kind != site_kind::ln_final_scale &&
           kind != site_kind::ln_final_normalized && kind != site_kind::unembed_out;
}

/// The part of a hook name after `blocks.L.` (or the whole name for global sites).
constexpr std::string_view site_suffix(site_kind kind) noexcept {
    constexpr std::array<std::string_view, site_kind_count> names{
        "hook_embed",          "hook_pos_embed",
        "hook_resid_pre",      "ln1.hook_scale",      "ln1.hook_normalized",
        "attn.hook_q",         "attn.hook_k",         "attn.hook_v",        "attn.hook_rot_q",
        "attn.hook_rot_k",     "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z",
        "attn.hook_result",
        "hook_attn_out",       "hook_resid_mid",      "ln2.hook_scale",     "ln2.hook_normalized",
        "mlp.hook_pre",        "mlp.hook_pre_linear", "mlp.hook_post",      "hook_mlp_out",
        "hook_resid_post",     "ln_final.hook_scale", "ln_final.hook_normalized", "unembed.hook_out"};
    return names[static_cast<std::size_t>(kind)];
}

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
