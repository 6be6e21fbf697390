// Intervention policies (patch, ablate, steer, compose, dynamic hooks) on the real stories260K.
#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "test_support.hpp"

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_hooks_interventions {

using mechlens::index_t;
using mechlens::kind_set;
using mechlens::site;
using mechlens::site_kind;

namespace {

/// Copies every wanted site into an activation_cache and remembers the order in which sites fired.
template <kind_set Kinds = kind_set::all()>
struct recorder {
    mechlens::activation_cache cache;
    std::vector<site> order;

    static constexpr bool wants(site_kind kind) { return Kinds.contains(kind); }
    template <std::size_t R>
    void on_activation(const site& s, mechlens::tensor_view<float, R> view, const mechlens::hook_context&) {
        mechlens::cached_activation a;
        a.shape.assign(view.shape().begin(), view.shape().end());
        a.values.resize(static_cast<std::size_t>(view.size()));
        mechlens::copy(mechlens::tensor_view<const float, R>(view),
                       mechlens::tensor_view<float, R>(a.values.data(), view.shape()));
        cache.put(s, std::move(a));
        order.push_back(s);
    }
};
static_assert(mechlens::hook_policy<recorder<>>);

/// Adds delta = alpha * v (rounded to float first, so no fused multiply-add can creep in) to hook_resid_post of one
/// layer by hand: the reference for steer_hooks.
struct manual_steer {
    index_t layer;
    std::vector<float> delta;
    static constexpr bool wants(site_kind kind) { return kind == site_kind::resid_post; }
    template <std::size_t R>
    void on_activation(const site& s, mechlens::tensor_view<float, R> view, const mechlens::hook_context&) {
        if constexpr (R == 3) {
            if (s.layer != layer) return;
            for (index_t b = 0; b < view.extent(0); ++b)
                for (index_t p = 0; p < view.extent(1); ++p)
                    for (index_t i = 0; i < view.extent(2); ++i) view(b, p, i) += delta[static_cast<std::size_t>(i)];
        }
    }
};
static_assert(mechlens::hook_policy<manual_steer>);

const std::filesystem::path stories_bin = mechlens_test::model_file("stories260K/stories260K.bin");
const std::vector<std::int32_t> prompt_a{1, 403, 407, 261, 378, 90, 17};
const std::vector<std::int32_t> prompt_b{1, 20, 30, 40, 50, 60, 70};
const std::vector<std::int32_t> prompt_c{1, 499, 3, 258, 7, 300, 12};

mechlens::tensor_view<const std::int32_t, 2> as_batch(const std::vector<std::int32_t>& ids, index_t batch = 1) {
    return mechlens::tensor_view<const std::int32_t, 2>(ids.data(), {batch, static_cast<index_t>(ids.size()) / batch});
}

template <std::size_t R>
bool same_bits(const mechlens::tensor<float, R>& a, const mechlens::tensor<float, R>& b) {
    return a.shape() == b.shape() &&
           std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(float)) == 0;
}
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}
template <std::size_t R>
double max_difference(const mechlens::tensor<float, R>& a, const mechlens::tensor<float, R>& b) {
    REQUIRE(a.shape() == b.shape());
    double worst = 0.0;
    for (index_t i = 0; i < a.size(); ++i)
        worst = std::max(worst, std::fabs(static_cast<double>(a.data()[i]) - static_cast<double>(b.data()[i])));
    return worst;
}
const std::vector<float>& values(const mechlens::activation_cache& cache, const site& s) { return cache.at(s).values; }

}  // namespace

TEST_CASE("interventions: patching every site of run A into run B yields A's logits", "[hooks][interventions]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    recorder<> run_a;
    const auto logits_a = mechlens::forward_logits(model, as_batch(prompt_a), run_a);
    const auto logits_b = mechlens::forward_logits(model, as_batch(prompt_b), recorder<>{});
    REQUIRE(run_a.cache.size() == 5 * 21 + 4);
    REQUIRE_FALSE(same_bits(logits_a, logits_b));

    mechlens::patch_hooks<kind_set::all()> everything(run_a.cache);
    everything.patch_all();
    CHECK(everything.targets().size() == run_a.cache.size());
    CHECK(same_bits(mechlens::forward_logits(model, as_batch(prompt_b), everything), logits_a));

    // Without patching the logits themselves: every block site and the embedding suffice, bit for bit.
    mechlens::patch_hooks<kind_set::all()> blocks(run_a.cache);
    for (const site& s : run_a.cache.sites())
        if (mechlens::is_block_site(s.kind) || s.kind == site_kind::embed) blocks.patch(s);
    CHECK(same_bits(mechlens::forward_logits(model, as_batch(prompt_b), blocks), logits_a));

    // One residual site at the bottom carries the whole run, with a policy that wants nothing else.
    mechlens::patch_hooks<kind_set::of({site_kind::resid_pre})> bottom(run_a.cache);
    bottom.patch(site{site_kind::resid_pre, 0});
    CHECK(same_bits(mechlens::forward_logits(model, as_batch(prompt_b), bottom),
                    mechlens::forward_logits(model, as_batch(prompt_a))));
}

TEST_CASE("interventions: patching chosen positions and heads touches only them", "[hooks][interventions]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    recorder<> run_a, run_b;
    (void)mechlens::forward_logits(model, as_batch(prompt_a), run_a);
    (void)mechlens::forward_logits(model, as_batch(prompt_b), run_b);

    const site resid{site_kind::resid_post, 2}, z{site_kind::attn_z, 1}, pattern{site_kind::attn_pattern, 3};
    // Patches one site per run; rows of the site (last axis) come from A where `from_a(row, shape)`, from B elsewhere.
    const auto patched_rows = [&](const site& s, const mechlens::selection& where, auto from_a) {
        mechlens::patch_hooks<kind_set::all()> patch(run_a.cache);
        patch.patch(s, where);
        recorder<> after;
        (void)mechlens::forward_logits(model, as_batch(prompt_b), mechlens::compose(patch, after));
        const auto& got = values(after.cache, s);
        const auto& a = values(run_a.cache, s);
        const auto& b = values(run_b.cache, s);
        const std::vector<index_t>& shape = after.cache.at(s).shape;
        const auto width = static_cast<std::size_t>(shape.back());
        index_t patched = 0;
        for (std::size_t r = 0; r < got.size() / width; ++r) {
            const auto first = static_cast<std::ptrdiff_t>(r * width),
                       last = first + static_cast<std::ptrdiff_t>(width);
            const bool expect_a = from_a(static_cast<index_t>(r), shape);
            const auto& expected = expect_a ? a : b;
            patched += expect_a ? 1 : 0;
            INFO(mechlens::to_string(s) << " row " << r);
            CHECK(same_bits(std::vector<float>(got.begin() + first, got.begin() + last),
                            std::vector<float>(expected.begin() + first, expected.begin() + last)));
        }
        return patched;
    };
    // resid_post is (1, pos, d_model): rows are positions; 40 is past the prompt and ignored.
    CHECK(patched_rows(resid, {.positions = {3, 5, 40}}, [](index_t r, const auto&) { return r == 3 || r == 5; }) == 2);
    // z is (1, pos, head, d_head): rows are (pos, head).
    CHECK(patched_rows(z, {.heads = {2}}, [](index_t r, const auto& shape) { return r % shape[2] == 2; }) == 7);
    // pattern is (1, head, query, key): rows are (head, query).
    CHECK(patched_rows(pattern, {.positions = {6}, .heads = {0, 7}}, [](index_t r, const auto& shape) {
              return r % shape[2] == 6 && (r / shape[2] == 0 || r / shape[2] == 7);
          }) == 2);

    SECTION("a source that cannot cover the site is a shape_error naming the site") {
        recorder<> short_run;
        (void)mechlens::forward_logits(model, as_batch({1, 403, 407}), short_run);
        mechlens::patch_hooks<> from_short(short_run.cache);
        from_short.patch(site{site_kind::resid_mid, 1});
        REQUIRE_THROWS_AS(mechlens::forward_logits(model, as_batch(prompt_b), from_short), mechlens::shape_error);
        REQUIRE_THROWS_WITH(mechlens::forward_logits(model, as_batch(prompt_b), from_short),
                            Catch::Matchers::Contains("blocks.1.hook_resid_mid"));
    }
    SECTION("bad targets are refused when added") {
        mechlens::patch_hooks<kind_set::of({site_kind::resid_pre})> narrow(run_a.cache);
        CHECK_THROWS_WITH(narrow.patch(resid), Catch::Matchers::Contains("kind_set"));
        mechlens::patch_hooks<> wide(run_a.cache);
        CHECK_THROWS_WITH(wide.patch(resid, {.heads = {1}}), Catch::Matchers::Contains("no head axis"));
        mechlens::activation_cache empty;
        mechlens::patch_hooks<> from_empty(empty);
        CHECK_THROWS_AS(from_empty.patch(resid), mechlens::unknown_hook_error);
        mechlens::patch_hooks<kind_set::all()> bad_head(run_a.cache);
        bad_head.patch(site{site_kind::attn_k, 0}, {.heads = {5}});  // stories260K has 4 key/value heads
        CHECK_THROWS_WITH(mechlens::forward_logits(model, as_batch(prompt_b), bad_head),
                          Catch::Matchers::Contains("blocks.0.attn.hook_k"));
    }
}

TEST_CASE("interventions: zero-ablating a head changes nothing upstream of it", "[hooks][interventions]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    const index_t layer = 2, head = 5;
    recorder<> clean;
    const auto clean_logits = mechlens::forward_logits(model, as_batch(prompt_a), clean);

    for (site_kind kind : {site_kind::attn_z, site_kind::attn_result}) {
        const site target{kind, layer};
        INFO("ablating head " << head << " at " << mechlens::to_string(target));
        mechlens::ablate_hooks<kind_set::all()> ablate;
        ablate.zero(target, {.heads = {head}});
        recorder<> ablated;
        const auto logits = mechlens::forward_logits(model, as_batch(prompt_a), mechlens::compose(ablate, ablated));
        REQUIRE(ablated.order == clean.order);
        const auto at = std::find(clean.order.begin(), clean.order.end(), target);
        REQUIRE(at != clean.order.end());
        for (auto it = clean.order.begin(); it != at; ++it) {
            INFO("upstream site " << mechlens::to_string(*it));
            CHECK(same_bits(values(ablated.cache, *it), values(clean.cache, *it)));
        }
        // At the site itself only the chosen head is zero: (1, pos, head, width) rows are (pos, head).
        const auto& got = values(ablated.cache, target);
        const auto& was = values(clean.cache, target);
        const std::vector<index_t>& shape = clean.cache.at(target).shape;
        bool others_kept = true, zeroed = true;
        for (std::size_t i = 0; i < got.size(); ++i) {
            const auto h = static_cast<index_t>(i) / shape[3] % shape[2];
            if (h == head)
                zeroed = zeroed && got[i] == 0.0f;
            else
                others_kept = others_kept && got[i] == was[i];
        }
        CHECK(zeroed);
        CHECK(others_kept);
        CHECK_FALSE(same_bits(values(ablated.cache, site{site_kind::attn_out, layer}),
                              values(clean.cache, site{site_kind::attn_out, layer})));
        CHECK(max_difference(logits, clean_logits) > 1e-4);
    }
}

TEST_CASE("interventions: steering adds exactly alpha * v", "[hooks][interventions]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    const index_t d_model = model.config().d_model;
    const auto plain = mechlens::forward_logits(model, as_batch(prompt_a));

    using resid_steer = mechlens::steer_hooks<kind_set::of({site_kind::resid_post})>;
    resid_steer zero;
    const std::vector<float> zeros(static_cast<std::size_t>(d_model), 0.0f);
    for (index_t layer = 0; layer < model.config().n_layers; ++layer)
        zero.add(site{site_kind::resid_post, layer}, zeros, 3.0f);
    CHECK(same_bits(mechlens::forward_logits(model, as_batch(prompt_a), zero), plain));

    std::vector<float> v(static_cast<std::size_t>(d_model));
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = std::sin(0.37f * static_cast<float>(i)) - 0.1f;
    const float alpha = 2.5f;
    resid_steer steer;
    steer.add(site{site_kind::resid_post, 2}, v, alpha);
    const auto steered = mechlens::forward_logits(model, as_batch(prompt_a), steer);
    std::vector<float> delta(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) delta[i] = alpha * v[i];
    CHECK(same_bits(steered, mechlens::forward_logits(model, as_batch(prompt_a), manual_steer{2, delta})));
    CHECK(max_difference(steered, plain) > 1e-3);

    SECTION("chosen positions only, and the vector must fit the site") {
        resid_steer at_one;
        at_one.add(site{site_kind::resid_post, 2}, v, alpha, {.positions = {4}});
        const auto logits = mechlens::forward_logits(model, as_batch(prompt_a), at_one);
        for (index_t p = 0; p < 4; ++p)  // causal: positions before the steered one cannot notice
            for (index_t t = 0; t < 512; ++t) CHECK(logits(0, p, t) == plain(0, p, t));
        CHECK(std::fabs(logits(0, 4, 0) - plain(0, 4, 0)) > 0.0f);
        resid_steer wrong;
        wrong.add(site{site_kind::resid_post, 0}, std::vector<float>(7, 1.0f));
        CHECK_THROWS_WITH(mechlens::forward_logits(model, as_batch(prompt_a), wrong),
                          Catch::Matchers::Contains("blocks.0.hook_resid_post") && Catch::Matchers::Contains("7"));
    }
}

TEST_CASE("interventions: compose applies its parts in order and wants their union", "[hooks][interventions]") {
    using resid_patch = mechlens::patch_hooks<kind_set::of({site_kind::resid_mid})>;
    using resid_steer = mechlens::steer_hooks<kind_set::of({site_kind::mlp_out})>;
    static_assert(mechlens::hook_policy<mechlens::composed_hooks<resid_patch&, resid_steer>>);
    static_assert(mechlens::composed_hooks<resid_patch&, resid_steer>::wants(site_kind::resid_mid));
    static_assert(mechlens::composed_hooks<resid_patch&, resid_steer>::wants(site_kind::mlp_out));
    static_assert(!mechlens::composed_hooks<resid_patch&, resid_steer>::wants(site_kind::attn_result));

    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    recorder<> run_a;
    (void)mechlens::forward_logits(model, as_batch(prompt_a), run_a);
    const site s{site_kind::resid_mid, 1};
    const std::vector<float> ones(static_cast<std::size_t>(model.config().d_model), 1.0f);
    mechlens::patch_hooks<kind_set::all()> patch(run_a.cache);
    patch.patch(s);
    mechlens::steer_hooks<kind_set::all()> steer;
    steer.add(s, ones);

    recorder<> steer_then_patch, patch_then_steer;
    (void)mechlens::forward_logits(model, as_batch(prompt_b), mechlens::compose(steer, patch, steer_then_patch));
    (void)mechlens::forward_logits(model, as_batch(prompt_b), mechlens::compose(patch, steer, patch_then_steer));
    CHECK(same_bits(values(steer_then_patch.cache, s), values(run_a.cache, s)));
    std::vector<float> shifted = values(run_a.cache, s);
    for (float& x : shifted) x += 1.0f;
    CHECK(same_bits(values(patch_then_steer.cache, s), shifted));

    auto held = mechlens::compose(recorder<kind_set::of({site_kind::embed})>{}, patch);
    (void)mechlens::forward_logits(model, as_batch(prompt_b), held);
    CHECK(held.get<0>().cache.size() == 1);  // a temporary part is kept by value and can be read back
    CHECK(&held.get<1>() == &patch);         // an lvalue part is held by reference
}

TEST_CASE("interventions: mean and resample ablation", "[hooks][interventions]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    std::vector<std::int32_t> three = prompt_a;
    three.insert(three.end(), prompt_b.begin(), prompt_b.end());
    three.insert(three.end(), prompt_c.begin(), prompt_c.end());
    recorder<> batch;
    (void)mechlens::forward_logits(model, as_batch(three, 3), batch);
    const site s{site_kind::resid_mid, 1};
    const mechlens::cached_activation& many = batch.cache.at(s);  // (3, 7, d_model)
    REQUIRE(many.shape == std::vector<index_t>{3, 7, model.config().d_model});

    const auto n = static_cast<std::size_t>(7 * model.config().d_model);
    std::vector<float> per_position(n), overall(static_cast<std::size_t>(model.config().d_model));
    for (std::size_t i = 0; i < n; ++i) {
        double sum = 0.0;
        for (std::size_t b = 0; b < 3; ++b) sum += static_cast<double>(many.values[b * n + i]);
        per_position[i] = static_cast<float>(sum / 3.0);
    }
    for (std::size_t i = 0; i < overall.size(); ++i) {
        double sum = 0.0;
        for (std::size_t row = 0; row < 21; ++row) sum += static_cast<double>(many.values[row * overall.size() + i]);
        overall[i] = static_cast<float>(sum / 21.0);
    }

    mechlens::ablate_hooks<kind_set::all()> mean;
    mean.mean(s, batch.cache);
    recorder<> after;
    (void)mechlens::forward_logits(model, as_batch(prompt_b), mechlens::compose(mean, after));
    CHECK(same_bits(values(after.cache, s), per_position));

    mechlens::ablate_hooks<kind_set::all()> flat;
    flat.mean(s, batch.cache, mechlens::mean_over::batch_and_positions, {.positions = {2, 3}});
    recorder<> after_flat, plain_b;
    (void)mechlens::forward_logits(model, as_batch(prompt_b), mechlens::compose(flat, after_flat));
    (void)mechlens::forward_logits(model, as_batch(prompt_b), plain_b);
    const auto& got = values(after_flat.cache, s);
    const auto& unablated = values(plain_b.cache, s);
    for (std::size_t p = 0; p < 7; ++p) {
        const auto first = static_cast<std::ptrdiff_t>(p * overall.size());
        const std::vector<float> row(got.begin() + first,
                                     got.begin() + first + static_cast<std::ptrdiff_t>(overall.size()));
        INFO("position " << p);
        if (p == 2 || p == 3)
            CHECK(same_bits(row, overall));
        else
            CHECK(same_bits(
                row, std::vector<float>(unablated.begin() + first,
                                        unablated.begin() + first + static_cast<std::ptrdiff_t>(overall.size()))));
    }
    CHECK_THROWS_AS(flat.mean(site{site_kind::attn_pattern, 0}, batch.cache, mechlens::mean_over::batch_and_positions),
                    std::invalid_argument);

    // Resampling from prompt C is patching from C.
    recorder<> run_c;
    (void)mechlens::forward_logits(model, as_batch(prompt_c), run_c);
    const site z{site_kind::attn_z, 3};
    mechlens::ablate_hooks<kind_set::all()> resample;
    resample.resample(z, run_c.cache, 0, {.heads = {1, 6}});
    mechlens::patch_hooks<kind_set::all()> patch(run_c.cache);
    patch.patch(z, {.heads = {1, 6}});
    const auto resampled = mechlens::forward_logits(model, as_batch(prompt_b), resample);
    CHECK(same_bits(resampled, mechlens::forward_logits(model, as_batch(prompt_b), patch)));
    CHECK_FALSE(same_bits(resampled, mechlens::forward_logits(model, as_batch(prompt_b), recorder<>{})));
    CHECK_THROWS_AS(resample.resample(z, batch.cache, 3), std::invalid_argument);
    // Prompt 2 of the batch cache is C: the same values as C alone up to batching's rounding.
    mechlens::ablate_hooks<kind_set::all()> from_batch;
    from_batch.resample(z, batch.cache, 2, {.heads = {1, 6}});
    CHECK(max_difference(mechlens::forward_logits(model, as_batch(prompt_b), from_batch), resampled) <= 1e-5);
}

TEST_CASE("interventions: dynamic hooks give the same results as the static policies", "[hooks][interventions]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    recorder<> run_a;
    const auto logits_a = mechlens::forward_logits(model, as_batch(prompt_a), run_a);
    mechlens::basic_dynamic_hooks<kind_set::all()> hooks(model.config());  // every kind, like the static ones below

    // Nothing registered: exactly the forward pass of any policy that wants every kind and does nothing.
    CHECK(hooks.empty());
    const auto untouched = mechlens::forward_logits(model, as_batch(prompt_b), hooks);
    CHECK(same_bits(untouched, mechlens::forward_logits(model, as_batch(prompt_b), recorder<>{})));

    // Patch: a hand-written callback copying position 2 of blocks.1.hook_resid_mid from run A.
    const site mid{site_kind::resid_mid, 1};
    mechlens::patch_hooks<kind_set::all()> patch(run_a.cache);
    patch.patch(mid, {.positions = {2}});
    {
        auto guard = hooks.scoped("blocks.1.hook_resid_mid", [&](const site&, mechlens::activation_view view,
                                                                 const mechlens::hook_context& ctx) {
            const auto x = view.as<3>();  // (batch, pos, d_model)
            const auto& source = run_a.cache.at(mid).values;
            for (index_t p = 0; p < x.extent(1); ++p)
                if (ctx.start_position + p == 2)
                    for (index_t i = 0; i < x.extent(2); ++i)
                        x(0, p, i) = source[static_cast<std::size_t>((ctx.start_position + p) * x.extent(2) + i)];
        });
        CHECK(hooks.size() == 1);
        CHECK(same_bits(mechlens::forward_logits(model, as_batch(prompt_b), hooks),
                        mechlens::forward_logits(model, as_batch(prompt_b), patch)));
    }
    CHECK(hooks.empty());  // the guard removed it
    CHECK(same_bits(mechlens::forward_logits(model, as_batch(prompt_b), hooks), untouched));

    // Ablate: zero head 3 of blocks.2.attn.hook_z by hand.
    mechlens::ablate_hooks<kind_set::all()> ablate;
    ablate.zero(site{site_kind::attn_z, 2}, {.heads = {3}});
    const mechlens::hook_handle zeroing = hooks.add(
        "blocks.2.attn.hook_z", [](const site&, mechlens::activation_view view, const mechlens::hook_context&) {
            const auto z = view.as<4>();  // (batch, pos, head, d_head)
            for (index_t p = 0; p < z.extent(1); ++p)
                for (index_t i = 0; i < z.extent(3); ++i) z(0, p, 3, i) = 0.0f;
        });
    CHECK(same_bits(mechlens::forward_logits(model, as_batch(prompt_b), hooks),
                    mechlens::forward_logits(model, as_batch(prompt_b), ablate)));
    CHECK(hooks.remove(zeroing));
    CHECK_FALSE(hooks.remove(zeroing));

    // Steer: a static policy registered through as_callback at every layer by glob equals the static policy.
    mechlens::steer_hooks<kind_set::all()> steer;
    std::vector<float> v(static_cast<std::size_t>(model.config().d_model));
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = 0.05f * static_cast<float>(i % 7) - 0.1f;
    for (index_t layer = 0; layer < model.config().n_layers; ++layer)
        steer.add(site{site_kind::resid_pre, layer}, v, 1.5f);
    {
        auto guard = hooks.scoped("blocks.*.hook_resid_pre", mechlens::as_callback(steer));
        CHECK(same_bits(mechlens::forward_logits(model, as_batch(prompt_b), hooks),
                        mechlens::forward_logits(model, as_batch(prompt_b), steer)));
    }

    // Without attn.hook_result, dynamic hooks match the default static policies.
    mechlens::dynamic_hooks lean(model.config());  // the default kinds: all but attn.hook_result
    mechlens::steer_hooks<> steer_lean;
    steer_lean.add(site{site_kind::mlp_out, 4}, v, -2.0f);
    lean.add(site{site_kind::mlp_out, 4}, mechlens::as_callback(steer_lean));
    CHECK(same_bits(mechlens::forward_logits(model, as_batch(prompt_b), lean),
                    mechlens::forward_logits(model, as_batch(prompt_b), steer_lean)));
    CHECK_THROWS_AS(lean.add("blocks.0.attn.hook_result",
                             [](const site&, mechlens::activation_view, const mechlens::hook_context&) {}),
                    std::invalid_argument);
}

TEST_CASE("interventions: dynamic hook names, globs, handles and guards", "[hooks][interventions]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    mechlens::dynamic_hooks hooks(model.config());
    const auto nothing = [](const site&, mechlens::activation_view, const mechlens::hook_context&) {};

    try {
        (void)hooks.add("blocks.0.attn.hook_patern", nothing);
        FAIL("an unknown name was accepted");
    } catch (const mechlens::unknown_hook_error& e) {
        CHECK_THAT(e.what(), Catch::Matchers::Contains("blocks.0.attn.hook_pattern"));
    }
    CHECK_THROWS_AS(hooks.add("blocks.9.hook_resid_post", nothing), mechlens::unknown_hook_error);
    CHECK_THROWS_AS(hooks.add(site{site_kind::resid_post, 5}, nothing), std::invalid_argument);
    CHECK_THROWS_AS(hooks.add("hook_embed", mechlens::hook_callback{}), std::invalid_argument);
    CHECK(hooks.empty());

    std::vector<std::string> seen;
    std::vector<index_t> rank_and_start;
    const auto handle =
        hooks.add("blocks.*.hook_resid_post, hook_embed",
                  [&](const site& s, mechlens::activation_view view, const mechlens::hook_context& ctx) {
                      seen.push_back(mechlens::to_string(s));
                      rank_and_start.push_back(static_cast<index_t>(view.rank) * 100 + ctx.start_position);
                  });
    (void)mechlens::forward_logits(model, as_batch(prompt_a), hooks);
    REQUIRE(seen.size() == 6);
    CHECK(seen.front() == "hook_embed");
    CHECK(seen.back() == "blocks.4.hook_resid_post");
    CHECK(std::all_of(rank_and_start.begin(), rank_and_start.end(), [](index_t x) { return x == 300; }));

    // A second handle to the same registry, a guard that outlives its registry, and removal from inside a callback.
    mechlens::dynamic_hooks alias = hooks;
    int calls = 0;
    mechlens::hook_handle self{};
    self = alias.add("blocks.0.hook_resid_pre",
                     [&](const site&, mechlens::activation_view, const mechlens::hook_context&) {
                         ++calls;
                         CHECK(hooks.remove(self));
                     });
    CHECK(hooks.size() == 2);
    (void)mechlens::forward_logits(model, as_batch(prompt_a), hooks);
    (void)mechlens::forward_logits(model, as_batch(prompt_a), hooks);
    CHECK(calls == 1);
    CHECK(hooks.remove(handle));
    CHECK(hooks.empty());

    mechlens::scoped_hooks outlives;
    {
        mechlens::dynamic_hooks temporary(model.config());
        outlives = temporary.scoped("ln_final.hook_scale", nothing);
        CHECK(temporary.size() == 1);
    }
    outlives.reset();  // the registry is gone: nothing to do, nothing to crash
    CHECK(outlives.handle().id == 0);

    mechlens::activation_view erased;
    CHECK(erased.size() == 0);
    CHECK_THROWS_AS(erased.as<3>(), mechlens::shape_error);
}

TEST_CASE("interventions: hooks during generation act at the same absolute positions", "[hooks][interventions]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    const std::vector<std::int32_t> prompt{1, 403, 407, 261, 378};
    std::vector<float> v(static_cast<std::size_t>(model.config().d_model));
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = std::cos(0.9f * static_cast<float>(i));
    mechlens::steer_hooks<kind_set::of({site_kind::resid_post})> steer;
    steer.add(site{site_kind::resid_post, 1}, v, 4.0f);

    mechlens::generation_options options;
    options.max_new_tokens = 12;
    options.stop_at_bos = options.stop_at_eos = false;
    recorder<kind_set::of({site_kind::unembed_out})> last;
    const auto generated = mechlens::generate(
        model, prompt, options, [](std::int32_t) {}, mechlens::compose(steer, last));
    const auto unsteered = mechlens::generate(model, prompt, options, [](std::int32_t) {});
    REQUIRE(generated.size() == 12);
    CHECK(generated != unsteered);

    std::vector<std::int32_t> sequence = prompt;
    sequence.insert(sequence.end(), generated.begin(), generated.end() - 1);  // what the last decode step had seen
    const auto full = mechlens::forward_logits(model, as_batch(sequence), steer);
    const mechlens::cached_activation& step = last.cache.at(site{site_kind::unembed_out, -1});  // (1, 1, d_vocab)
    REQUIRE(step.shape == std::vector<index_t>{1, 1, 512});
    double worst = 0.0;
    for (index_t t = 0; t < 512; ++t)
        worst = std::max(worst, std::fabs(static_cast<double>(step.values[static_cast<std::size_t>(t)]) -
                                          static_cast<double>(full(0, static_cast<index_t>(sequence.size()) - 1, t))));
    INFO("max abs difference at the last position: " << worst);
    CHECK(worst <= 1e-5);
}

TEST_CASE("interventions: patching during KV-cache decoding equals patching the full forward",
          "[hooks][interventions]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    recorder<> run_a;
    (void)mechlens::forward_logits(model, as_batch(prompt_a), run_a);
    mechlens::patch_hooks<kind_set::all()> patch(run_a.cache);
    patch.patch(site{site_kind::resid_mid, 1}, {.positions = {3}})
        .patch(site{site_kind::attn_pattern, 2}, {.positions = {4, 6}, .heads = {1}})
        .patch(site{site_kind::attn_scores, 0}, {.heads = {6}})
        .patch(site{site_kind::ln_final_normalized, -1}, {.positions = {5}});
    const auto full = mechlens::forward_logits(model, as_batch(prompt_b), patch);

    const auto n = static_cast<index_t>(prompt_b.size());
    for (index_t chunk : {index_t{1}, index_t{3}}) {
        INFO("chunk " << chunk);
        mechlens::kv_cache cache(model.config(), 1, n);
        mechlens::workspace ws;
        double worst = 0.0;
        for (index_t start = 0; start < n; start += chunk) {
            const index_t count = std::min(chunk, n - start);
            mechlens::tensor<float, 3> logits({1, count, 512});
            mechlens::forward(model, mechlens::tensor_view<const std::int32_t, 2>(prompt_b.data() + start, {1, count}),
                              cache, logits.view(), ws, patch);
            for (index_t p = 0; p < count; ++p)
                for (index_t t = 0; t < 512; ++t)
                    worst = std::max(worst, std::fabs(static_cast<double>(logits(0, p, t) - full(0, start + p, t))));
        }
        CHECK(worst <= 1e-5);
    }
}

TEST_CASE("interventions: patching from a cache that kept only some positions", "[hooks][interventions]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    mechlens::caching_hooks<> partial(mechlens::cache_filter().positions({2, 5}));
    mechlens::caching_hooks<> whole;
    (void)mechlens::forward_logits(model, as_batch(prompt_a), partial);
    (void)mechlens::forward_logits(model, as_batch(prompt_a), whole);
    const site mid{site_kind::resid_mid, 1}, pattern{site_kind::attn_pattern, 2};
    REQUIRE(partial.cache().at(mid).shape[1] == 2);

    mechlens::patch_hooks<> from_partial(partial.cache()), from_whole(whole.cache());
    from_partial.patch(mid, {.positions = {2, 5}}).patch(pattern, {.positions = {5}, .heads = {3}});
    from_whole.patch(mid, {.positions = {2, 5}}).patch(pattern, {.positions = {5}, .heads = {3}});
    const auto logits = mechlens::forward_logits(model, as_batch(prompt_b), from_partial);
    CHECK(same_bits(logits, mechlens::forward_logits(model, as_batch(prompt_b), from_whole)));
    CHECK_FALSE(same_bits(logits, mechlens::forward_logits(model, as_batch(prompt_b))));

    mechlens::patch_hooks<> too_much(partial.cache());
    too_much.patch(mid);
    CHECK_THROWS_WITH(mechlens::forward_logits(model, as_batch(prompt_b), too_much),
                      Catch::Matchers::Contains("blocks.1.hook_resid_mid") && Catch::Matchers::Contains("position 0"));
}

}  // namespace test_hooks_interventions
