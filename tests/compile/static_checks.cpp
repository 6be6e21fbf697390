// Compile-only tests: if this file builds, the checks pass. The first half of the zero-overhead proof (STYLE.md
// habit 1): no_hooks is an empty type that costs zero bytes where it is stored and wants no site, so every
// `if constexpr (Policy::wants(kind))` in the forward pass is discarded. The second half, that the code generated for
// the no_hooks forward pass equals the hook-stripped one, is the codegen test next to this file.
// Compiled against both include/ and the generated single header.

#include <mechlens/mechlens.hpp>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace {

using mechlens::hook_policy;
using mechlens::kind_set;
using mechlens::no_hooks;
using mechlens::site_kind;
using mechlens::site_kind_count;

// --- no_hooks is empty --------------------------------------------------------------------------------------------
static_assert(std::is_empty_v<no_hooks>, "no_hooks must have no data members");
static_assert(sizeof(no_hooks) == 1, "an empty class object is one byte on its own; members make it zero (below)");
static_assert(std::is_trivially_default_constructible_v<no_hooks> && std::is_trivially_copyable_v<no_hooks>,
              "constructing or copying no_hooks must compile to nothing");
static_assert(std::is_nothrow_default_constructible_v<no_hooks>);
static_assert(hook_policy<no_hooks>);
static_assert(hook_policy<no_hooks&> == false, "the concept is checked on the decayed type, as forward() does");

// --- ...and costs zero bytes where an engine or a composite policy stores it ----------------------------------------
struct engine_state {
    float* buffer;
    [[no_unique_address]] no_hooks hooks;
};
static_assert(sizeof(engine_state) == sizeof(float*), "a [[no_unique_address]] no_hooks member costs no bytes");

struct other_empty_policy {
    static constexpr bool wants(site_kind) noexcept { return false; }
    template <std::size_t Rank>
    void on_activation(const mechlens::site&, mechlens::tensor_view<float, Rank>, const mechlens::hook_context&) {}
};
static_assert(hook_policy<other_empty_policy>);
struct two_policies {
    [[no_unique_address]] no_hooks first;
    [[no_unique_address]] other_empty_policy second;
    std::int64_t payload;
};
static_assert(sizeof(two_policies) == sizeof(std::int64_t), "two distinct empty policies still cost no bytes");
struct only_policies {
    [[no_unique_address]] no_hooks first;
    [[no_unique_address]] other_empty_policy second;
};
static_assert(sizeof(only_policies) == 1, "a composite of empty policies is itself empty-sized");

// --- no_hooks wants nothing, for every kind, at compile time -------------------------------------------------------
constexpr bool no_hooks_wants_nothing() {
    for (std::size_t k = 0; k < site_kind_count; ++k)
        if (no_hooks::wants(static_cast<site_kind>(k))) return false;
    return true;
}
static_assert(no_hooks_wants_nothing(), "no_hooks::wants must be false for every site kind");
static_assert(noexcept(no_hooks::wants(site_kind::embed)));
static_assert(!mechlens::detail::wants_any<no_hooks, site_kind::ln1_scale, site_kind::ln1_normalized,
                                           site_kind::attn_scores, site_kind::attn_result>);

// --- the site catalogue is consistent ------------------------------------------------------------------------------
static_assert(site_kind_count == 26, "TransformerLens sites: 21 per block, 5 global (hook_pos_embed included)");
constexpr bool every_kind_has_a_name() {
    std::size_t block = 0;
    for (std::size_t k = 0; k < site_kind_count; ++k) {
        const auto kind = static_cast<site_kind>(k);
        const std::string_view name = mechlens::site_suffix(kind);
        if (name.empty() || name.find("hook_") == std::string_view::npos) return false;
        if (mechlens::is_block_site(kind)) ++block;
    }
    return block == 21;
}
static_assert(every_kind_has_a_name());
static_assert(site_kind_count <= 64, "kind_set stores one bit per kind in a uint64_t");

// --- which kinds a config has is a constant expression --------------------------------------------------------------
constexpr mechlens::model_config llama_config{};
constexpr mechlens::model_config attn_only_config{.norm = mechlens::norm_kind::none,
                                                  .positions = mechlens::positional_kind::learned,
                                                  .mlp = mechlens::mlp_kind::none};
static_assert(!mechlens::has_site_kind(llama_config, site_kind::pos_embed) &&
              mechlens::has_site_kind(llama_config, site_kind::attn_rot_q) &&
              mechlens::has_site_kind(llama_config, site_kind::mlp_pre_linear));
static_assert(mechlens::has_site_kind(attn_only_config, site_kind::pos_embed) &&
                  !mechlens::has_site_kind(attn_only_config, site_kind::attn_rot_k) &&
                  !mechlens::has_site_kind(attn_only_config, site_kind::resid_mid) &&
                  !mechlens::has_site_kind(attn_only_config, site_kind::ln_final_scale),
              "TransformerLens attn-only blocks have no resid_mid; normalization_type None has no ln sites");

// --- the site-traits table: one row per kind, and everything else reads it -----------------------------------------
constexpr bool table_rows_match_their_kinds() {
    for (std::size_t k = 0; k < site_kind_count; ++k) {
        const auto kind = static_cast<site_kind>(k);
        const mechlens::site_traits& row = mechlens::site_traits_of(kind);
        if (row.kind != kind || row.suffix != mechlens::site_suffix(kind) || row.rank != mechlens::site_rank(kind))
            return false;
        if (mechlens::site_kind_from_suffix(row.suffix) != kind) return false;
    }
    return mechlens::site_traits_table.size() == site_kind_count;
}
static_assert(table_rows_match_their_kinds());
static_assert(mechlens::position_axis(site_kind::attn_pattern) == 2 && mechlens::position_axis(site_kind::attn_z) == 1);
static_assert(mechlens::site_traits_of(site_kind::attn_scores).masked_fill < 0.0f &&
              mechlens::site_traits_of(site_kind::attn_pattern).masked_fill == 0.0f);
constexpr mechlens::model_config gqa_config{
    .d_model = 64, .n_layers = 2, .n_heads = 8, .n_kv_heads = 2, .d_mlp = 172, .d_vocab = 512, .n_ctx = 32};
static_assert(mechlens::site_width(gqa_config, site_kind::attn_k) == 8 &&
              mechlens::site_width(gqa_config, site_kind::mlp_post) == 172 &&
              mechlens::site_width(gqa_config, site_kind::ln1_scale) == 1 &&
              mechlens::site_width(gqa_config, site_kind::unembed_out) == 512 &&
              mechlens::site_width(gqa_config, site_kind::attn_result) == 64 &&
              mechlens::site_width(gqa_config, site_kind::attn_pattern, 7) == 7);
static_assert(mechlens::detail::head_count(gqa_config, site_kind::attn_rot_k) == 2 &&
              mechlens::detail::head_count(gqa_config, site_kind::attn_pattern) == 8);
static_assert(kind_set::all_but_result() == kind_set::all() - kind_set::of({site_kind::attn_result}),
              "attn.hook_result is the one opt-in row");

// --- kind_set: a structural type, usable as a template argument ----------------------------------------------------
template <kind_set Wanted>
struct only {
    static constexpr bool wants(site_kind kind) noexcept { return Wanted.contains(kind); }
    template <std::size_t Rank>
    void on_activation(const mechlens::site&, mechlens::tensor_view<float, Rank>, const mechlens::hook_context&) {}
};
using resid_only = only<kind_set::of({site_kind::resid_pre, site_kind::resid_post})>;
static_assert(hook_policy<resid_only>);
static_assert(std::is_empty_v<resid_only>);
static_assert(resid_only::wants(site_kind::resid_post) && !resid_only::wants(site_kind::mlp_out));
static_assert(only<kind_set{}>::wants(site_kind::embed) == false);

constexpr bool all_contains_everything() {
    for (std::size_t k = 0; k < site_kind_count; ++k)
        if (!kind_set::all().contains(static_cast<site_kind>(k))) return false;
    return true;
}
static_assert(all_contains_everything());
static_assert(!kind_set::all_but_result().contains(site_kind::attn_result));
static_assert((kind_set::all_but_result() | kind_set::of({site_kind::attn_result})) == kind_set::all());
static_assert(!mechlens::detail::wants_any<only<kind_set::all_but_result()>, site_kind::attn_result>,
              "attn.hook_result is opt-in: it costs an extra (batch, pos, head, d_model) tensor");

// --- things that are not policies are rejected by the concept (forward() turns this into a static_assert) ----------
struct missing_wants {
    template <std::size_t Rank>
    void on_activation(const mechlens::site&, mechlens::tensor_view<float, Rank>, const mechlens::hook_context&) {}
};
struct missing_on_activation {
    static constexpr bool wants(site_kind) { return true; }
};
struct rank3_only {
    static constexpr bool wants(site_kind) { return true; }
    void on_activation(const mechlens::site&, mechlens::tensor_view<float, 3>, const mechlens::hook_context&) {}
};
struct const_template_views {
    static constexpr bool wants(site_kind) { return true; }
    template <std::size_t Rank>
    void on_activation(const mechlens::site&, mechlens::tensor_view<const float, Rank>, const mechlens::hook_context&) {
    }
};
struct const_overloaded_views {
    static constexpr bool wants(site_kind) { return true; }
    void on_activation(const mechlens::site&, mechlens::tensor_view<const float, 3>, const mechlens::hook_context&) {}
    void on_activation(const mechlens::site&, mechlens::tensor_view<const float, 4>, const mechlens::hook_context&) {}
};
static_assert(!hook_policy<int>);
static_assert(!hook_policy<missing_wants>);
static_assert(!hook_policy<missing_on_activation>);
static_assert(!hook_policy<rank3_only>, "per-head sites are rank 4: a policy must take both ranks");
static_assert(!hook_policy<const_template_views>,
              "template deduction does not see the float -> const float conversion: take tensor_view<float, Rank>");
static_assert(hook_policy<const_overloaded_views>, "a read-only policy may take const views through overloads");

}  // namespace
