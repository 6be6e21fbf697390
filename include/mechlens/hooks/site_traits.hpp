#pragma once
/// @file
/// The site-traits table: one constexpr row per site_kind holding everything mechlens knows about a hook site (its
/// name suffix, where it fires, its rank and axes, its extents as functions of the config, which configs have it and
/// whether it costs extra work). Names, caches, patching, ablation, fire_site and the patching sweeps all read this
/// table; nothing else lists facts about site kinds.
///
/// Extension sites (an SAE's latents, `blocks.2.hook_resid_post.hook_sae_acts_post`) are not rows here: a site_kind
/// stays a closed enum, so hook policies answer `wants(kind)` at compile time. An extension site is a `site` whose
/// `extension` indexes a run-time suffix table (site.hpp); it has its host's kind, scope, rank and axes, and the width
/// its splice declares (hooks/splice.hpp). Only run-time policies (dynamic_hooks) see them.

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include "mechlens/detail/namespace.hpp"
#include "mechlens/model/config.hpp"

MECHLENS_BEGIN_NAMESPACE

/// The kind of a hook site; names and shapes follow TransformerLens (batch axis kept). site_traits_table has the
/// facts of each.
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
    resid_mid,            ///< `blocks.L.hook_resid_mid` (batch, pos, d_model), not in attention-only or parallel blocks
    ln2_scale,            ///< `blocks.L.ln2.hook_scale` (batch, pos, 1)
    ln2_normalized,       ///< `blocks.L.ln2.hook_normalized` (batch, pos, d_model), before the gain
    mlp_pre,              ///< `blocks.L.mlp.hook_pre` (batch, pos, d_mlp): gate (gated) or W_in (plain) pre-activation
    mlp_pre_linear,       ///< `blocks.L.mlp.hook_pre_linear` (batch, pos, d_mlp): up projection, gated MLP only
    mlp_post,             ///< `blocks.L.mlp.hook_post` (batch, pos, d_mlp)
    mlp_out,              ///< `blocks.L.hook_mlp_out` (batch, pos, d_model)
    resid_post,           ///< `blocks.L.hook_resid_post` (batch, pos, d_model)
    ln_final_scale,       ///< `ln_final.hook_scale` (batch, pos, 1)
    ln_final_normalized,  ///< `ln_final.hook_normalized` (batch, pos, d_model), before the gain
    unembed_out,          ///< `unembed.hook_out` (batch, pos, d_vocab_out): the logits
};

/// Number of site kinds.
inline constexpr std::size_t site_kind_count = static_cast<std::size_t>(site_kind::unembed_out) + 1;

/// Where a site fires: once before the blocks, once per block (named `blocks.L.…`), or once after them.
enum class site_scope : std::uint8_t {
    before_blocks,  ///< Global, fired before block 0 (the embeddings).
    block,          ///< Once per block.
    after_blocks,   ///< Global, fired after the last block (final norm, unembedding).
};

/// An extent of a site's activation as a function of the model config (and, for key axes, of the call).
enum class site_extent : std::uint8_t {
    one,         ///< 1: norm scales' last axis, and the head count of sites without a head axis.
    d_model,     ///< The residual stream width.
    d_head,      ///< The width of one head (d_model / n_heads unless the config says otherwise).
    d_mlp,       ///< The MLP hidden width.
    d_vocab,     ///< The number of logits: d_vocab_out (the vocabulary size unless the model is a classifier).
    n_heads,     ///< Query heads.
    n_kv_heads,  ///< Key/value heads.
    keys,        ///< Key positions seen by this call (start + new positions): attention scores and patterns.
};

/// A feature of a model config that a site kind may need; a set of them is a bit mask (combine with `|`).
enum class model_feature : std::uint8_t {
    none = 0,               ///< Needs nothing: every model has the site.
    learned_positions = 1,  ///< A learned position table (GPT-2 style).
    rotary_positions = 2,   ///< Rotary queries and keys (LLaMA style).
    mlp = 4,                ///< An MLP in every block (not attention-only).
    gated_mlp = 8,          ///< A gated MLP (silu(gate) * up).
    norms = 16,             ///< Normalisation layers.
    sequential_blocks = 32,  ///< The MLP reads the stream after attention (not GPT-NeoX's parallel blocks).
};

/// The union of two feature sets.
constexpr model_feature operator|(model_feature a, model_feature b) noexcept {
    return static_cast<model_feature>(static_cast<std::uint8_t>(static_cast<unsigned>(a) | static_cast<unsigned>(b)));
}

/// True when `have` contains every feature of `need`.
constexpr bool has_features(model_feature have, model_feature need) noexcept {
    return (static_cast<unsigned>(need) & ~static_cast<unsigned>(have)) == 0;
}

/// When the forward pass computes a site.
enum class site_computation : std::uint8_t {
    always,     ///< A view of a buffer the pass computes anyway.
    on_demand,  ///< Extra work done only when a policy wants the site (unfused norm steps, the -inf masking of
                ///< scores); in the default kind sets.
    opt_in,     ///< Computed only when wanted and left out of the default kind sets (kind_set::all_but_result), since
                ///< it costs a whole extra tensor: attn.hook_result (which the gradient pass does not compute either).
};

/// Where a site's position, head and key axes are; -1 when it has none.
struct site_axes {
    int position = 1;  ///< Axis of (query) positions.
    int head = -1;     ///< Axis of heads.
    int key = -1;      ///< Axis of key positions (always the last one when present).
};

/// Everything about one kind of hook site: one row of site_traits_table.
struct site_traits {
    site_kind kind;             ///< The row's kind (rows are in enum order).
    std::string_view suffix;    ///< The name after `blocks.L.`, or the whole name of a global site.
    site_scope scope;           ///< Before, in or after the blocks.
    std::size_t rank;           ///< Number of axes, batch included: 3, or 4 for sites with a head axis.
    site_axes axes;             ///< Position, head and key axes.
    site_extent heads;          ///< Extent of the head axis (`one` without one).
    site_extent width;          ///< Extent of the last axis.
    model_feature needs;        ///< What a config must have for its forward pass to fire the site.
    site_computation computed;  ///< Whether producing it costs extra work.
    float masked_fill = 0.0f;   ///< Value at masked (future) key positions of sites with a key axis.
};

namespace detail {
/// The shape of a residual-stream-like site: (batch, pos, width).
inline constexpr site_axes sequence_axes{1, -1, -1};
/// The shape of a per-head site: (batch, pos, head, width).
inline constexpr site_axes per_head_axes{1, 2, -1};
/// The shape of an attention score or pattern: (batch, head, query_pos, key_pos).
inline constexpr site_axes attention_axes{2, 1, 3};
}  // namespace detail

/// The site-traits table: row k describes site_kind k (checked below).
inline constexpr std::array<site_traits, site_kind_count> site_traits_table = [] {
    using enum site_kind;
    using enum site_extent;
    using enum model_feature;
    using enum site_computation;
    constexpr site_scope before = site_scope::before_blocks, block = site_scope::block;
    constexpr site_scope after = site_scope::after_blocks;
    constexpr site_axes seq = detail::sequence_axes, head = detail::per_head_axes, attn = detail::attention_axes;
    constexpr model_feature learned = learned_positions, rotary = rotary_positions, serial = sequential_blocks;
    constexpr float minus_inf = -std::numeric_limits<float>::infinity();  // masked_fill, after `computed`
    // clang-format off
    return std::array<site_traits, site_kind_count>{{
//   kind                 suffix                      scope   rank axes  heads       width    needs          computed
    {embed,               "hook_embed",               before, 3, seq,  one,        d_model, none,          always},
    {pos_embed,           "hook_pos_embed",           before, 3, seq,  one,        d_model, learned,       always},
    {resid_pre,           "hook_resid_pre",           block,  3, seq,  one,        d_model, none,          always},
    {ln1_scale,           "ln1.hook_scale",           block,  3, seq,  one,        one,     norms,         on_demand},
    {ln1_normalized,      "ln1.hook_normalized",      block,  3, seq,  one,        d_model, norms,         on_demand},
    {attn_q,              "attn.hook_q",              block,  4, head, n_heads,    d_head,  none,          always},
    {attn_k,              "attn.hook_k",              block,  4, head, n_kv_heads, d_head,  none,          always},
    {attn_v,              "attn.hook_v",              block,  4, head, n_kv_heads, d_head,  none,          always},
    {attn_rot_q,          "attn.hook_rot_q",          block,  4, head, n_heads,    d_head,  rotary,        always},
    {attn_rot_k,          "attn.hook_rot_k",          block,  4, head, n_kv_heads, d_head,  rotary,        always},
    {attn_scores,         "attn.hook_attn_scores",    block,  4, attn, n_heads,    keys,    none,          on_demand,
     minus_inf},
    {attn_pattern,        "attn.hook_pattern",        block,  4, attn, n_heads,    keys,    none,          always},
    {attn_z,              "attn.hook_z",              block,  4, head, n_heads,    d_head,  none,          always},
    {attn_result,         "attn.hook_result",         block,  4, head, n_heads,    d_model, none,          opt_in},
    {attn_out,            "hook_attn_out",            block,  3, seq,  one,        d_model, none,          always},
    {resid_mid,           "hook_resid_mid",           block,  3, seq,  one,        d_model, mlp|serial,    always},
    {ln2_scale,           "ln2.hook_scale",           block,  3, seq,  one,        one,     norms|mlp,     on_demand},
    {ln2_normalized,      "ln2.hook_normalized",      block,  3, seq,  one,        d_model, norms|mlp,     on_demand},
    {mlp_pre,             "mlp.hook_pre",             block,  3, seq,  one,        d_mlp,   mlp,           always},
    {mlp_pre_linear,      "mlp.hook_pre_linear",      block,  3, seq,  one,        d_mlp,   mlp|gated_mlp, always},
    {mlp_post,            "mlp.hook_post",            block,  3, seq,  one,        d_mlp,   mlp,           always},
    {mlp_out,             "hook_mlp_out",             block,  3, seq,  one,        d_model, mlp,           always},
    {resid_post,          "hook_resid_post",          block,  3, seq,  one,        d_model, none,          always},
    {ln_final_scale,      "ln_final.hook_scale",      after,  3, seq,  one,        one,     norms,         on_demand},
    {ln_final_normalized, "ln_final.hook_normalized", after,  3, seq,  one,        d_model, norms,         on_demand},
    {unembed_out,         "unembed.hook_out",         after,  3, seq,  one,        d_vocab, none,          always},
    }};
    // clang-format on
}();

namespace detail {
/// True when row k of the table describes site_kind k, for every k: one row per kind, in enum order.
constexpr bool one_row_per_kind_in_order() noexcept {
    for (std::size_t k = 0; k < site_kind_count; ++k)
        if (static_cast<std::size_t>(site_traits_table[k].kind) != k) return false;
    return true;
}
/// True when every row's columns agree with each other (see the static_assert messages below).
constexpr bool rows_are_consistent() noexcept {
    for (const site_traits& row : site_traits_table) {
        const auto rank = static_cast<int>(row.rank);
        const bool has_head = row.axes.head >= 0, has_key = row.axes.key >= 0;
        if (row.suffix.empty() || row.suffix.find("hook_") == std::string_view::npos) return false;
        if (row.rank != 3 && row.rank != 4) return false;
        if (has_head != (row.rank == 4) || has_head != (row.heads != site_extent::one)) return false;
        if (row.axes.position < 1 || row.axes.position >= rank - 1 || row.axes.head >= rank - 1) return false;
        if (has_key != (row.width == site_extent::keys) || (has_key && row.axes.key != rank - 1)) return false;
        if (!has_key && row.masked_fill != 0.0f) return false;
        for (const site_traits& other : site_traits_table)
            if (&other != &row && other.suffix == row.suffix) return false;
    }
    return true;
}
}  // namespace detail

static_assert(detail::one_row_per_kind_in_order(),
              "mechlens: site_traits_table needs exactly one row per site_kind, in the enum's order");
static_assert(detail::rows_are_consistent(),
              "mechlens: a site_traits_table row contradicts itself (rank 4 iff a head axis; the key axis, if any, is "
              "last and has width `keys`; suffixes are unique and contain hook_)");

/// The row of site_traits_table for `kind`.
constexpr const site_traits& site_traits_of(site_kind kind) noexcept {
    return site_traits_table[static_cast<std::size_t>(kind)];
}

/// True for sites that exist once per block (named `blocks.L.…`); false for global ones.
constexpr bool is_block_site(site_kind kind) noexcept { return site_traits_of(kind).scope == site_scope::block; }

/// The part of a hook name after `blocks.L.` (or the whole name for global sites).
constexpr std::string_view site_suffix(site_kind kind) noexcept { return site_traits_of(kind).suffix; }

/// The rank of a site's activation: 4 for per-head sites and attention patterns, 3 for everything else.
constexpr std::size_t site_rank(site_kind kind) noexcept { return site_traits_of(kind).rank; }

/// The axis that runs over sequence positions: the query axis (2) of `hook_attn_scores`/`hook_pattern`, else 1.
constexpr std::size_t position_axis(site_kind kind) noexcept {
    return static_cast<std::size_t>(site_traits_of(kind).axes.position);
}

/// The features of a model config, as site kinds need them (from the fields, so usable in constant expressions).
constexpr model_feature features_of(const model_config& c) noexcept {
    model_feature have =
        c.positions == positional_kind::rotary ? model_feature::rotary_positions : model_feature::learned_positions;
    if (c.norm != norm_kind::none) have = have | model_feature::norms;
    if (c.mlp != mlp_kind::none) have = have | model_feature::mlp;
    if (c.mlp == mlp_kind::gated_silu) have = have | model_feature::gated_mlp;
    if (!c.parallel_attn_mlp) have = have | model_feature::sequential_blocks;
    return have;
}

/// True when a model with this config has sites of this kind, i.e. when its forward pass fires them: ln* sites need
/// norms; ln2, mlp sites and `hook_resid_mid` need an MLP (TransformerLens's attention-only blocks go straight from
/// attention to `hook_resid_post`), and `hook_resid_mid` sequential blocks (parallel ones never form it);
/// `mlp.hook_pre_linear` needs a gated MLP; rot_q/rot_k need rotary positions and
/// `hook_pos_embed` learned ones.
constexpr bool has_site_kind(const model_config& c, site_kind kind) noexcept {
    return has_features(features_of(c), site_traits_of(kind).needs);
}

/// The value of an extent in a model with config `c`; `keys` is the key count of the call (for site_extent::keys).
constexpr index_t extent_in(const model_config& c, site_extent extent, index_t keys = 0) noexcept {
    switch (extent) {
        case site_extent::one:
            return 1;
        case site_extent::d_model:
            return c.d_model;
        case site_extent::d_head:
            return c.d_head();
        case site_extent::d_mlp:
            return c.d_mlp;
        case site_extent::d_vocab:
            return c.vocab_out();
        case site_extent::n_heads:
            return c.n_heads;
        case site_extent::n_kv_heads:
            return c.n_kv_heads;
        case site_extent::keys:
            return keys;
    }
    return 0;
}

/// The extent of a site's last axis in a model with config `c` (`keys`: the call's key count, for scores/patterns).
constexpr index_t site_width(const model_config& c, site_kind kind, index_t keys = 0) noexcept {
    return extent_in(c, site_traits_of(kind).width, keys);
}

namespace detail {

/// What a config lacking a feature lacks, for error messages; checked in this order, so the first missing feature
/// a kind needs explains its absence (an attention-only model lacks ln2 sites for its blocks, not its norms).
struct feature_reason {
    model_feature feature;     ///< One feature.
    std::string_view missing;  ///< Why a model without it lacks the sites that need it.
};
/// The reasons, in the order they are checked.
inline constexpr std::array<feature_reason, 6> feature_reasons{{
    {model_feature::learned_positions, "the model uses rotary positions, not learned ones"},
    {model_feature::rotary_positions, "the model uses learned positions, not rotary"},
    {model_feature::mlp, "the model's blocks are attention-only"},
    {model_feature::gated_mlp, "the model's MLP is not gated"},
    {model_feature::norms, "the model has no normalisation layers"},
    {model_feature::sequential_blocks, "the model's attention and MLP both read hook_resid_pre (parallel blocks)"},
}};

/// True when every feature a row needs has a reason above, so no missing site goes unexplained.
constexpr bool every_need_has_a_reason() noexcept {
    unsigned explained = 0;
    for (const feature_reason& r : feature_reasons) explained |= static_cast<unsigned>(r.feature);
    for (const site_traits& row : site_traits_table)
        if ((static_cast<unsigned>(row.needs) & ~explained) != 0) return false;
    return true;
}
static_assert(every_need_has_a_reason(), "mechlens: a model_feature that rows need has no entry in feature_reasons");

/// Why a model with config `c` lacks sites of `kind` (for error messages); empty when it has them.
inline std::string missing_kind_reason(const model_config& c, site_kind kind) {
    const model_feature have = features_of(c), need = site_traits_of(kind).needs;
    for (const feature_reason& r : feature_reasons)
        if (has_features(need, r.feature) && !has_features(have, r.feature)) return std::string(r.missing);
    return {};
}

/// The axes of a site kind.
constexpr site_axes axes_of(site_kind kind) noexcept { return site_traits_of(kind).axes; }

/// The heads on a site's head axis: n_kv_heads for k, v and rot_k, n_heads for the other per-head sites. Sites
/// without a head axis answer n_heads too, as they always have (patching tables of such per-head grids are sized by
/// it before the grid is rejected).
constexpr index_t head_count(const model_config& c, site_kind kind) noexcept {
    const site_traits& row = site_traits_of(kind);
    return row.axes.head < 0 ? c.n_heads : extent_in(c, row.heads);
}

}  // namespace detail

MECHLENS_END_NAMESPACE
