// Attribution: the logit lens and direct logit attribution, checked against the model's own logits and against a
// direct computation from attn.hook_result.
#include <mechlens/mechlens.hpp>

#include "test_support.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <vector>

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_attribution {

using mechlens::index_t;
using mechlens::site;
using mechlens::site_kind;

namespace {

const std::filesystem::path stories_bin = mechlens_test::model_file("stories260K/stories260K.bin");

// "Lily and Tom went to the park. Lily gave Tom a" (prompt p1 of the reference fixtures).
const std::vector<std::int32_t> p1{1,   317, 269, 274, 287, 263, 377, 267, 265, 282,
                                   295, 433, 426, 317, 298, 412, 360, 274, 287, 261};

mechlens::tensor_view<const std::int32_t, 2> as_batch(const std::vector<std::int32_t>& ids) {
    return mechlens::tensor_view<const std::int32_t, 2>(ids.data(), {1, static_cast<index_t>(ids.size())});
}

}  // namespace

TEST_CASE("attribution: direct logit attribution sums to the model's logit difference", "[attribution][dla]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    const mechlens::model_config& c = model.config();
    mechlens::caching_hooks<mechlens::kind_set::all()> hooks;  // attn.hook_result too, for the check below
    const auto logits = mechlens::forward_logits(model, as_batch(p1), hooks);
    const index_t last = static_cast<index_t>(p1.size()) - 1;
    const std::int32_t a = 370, b = 262;  // the top two next tokens there
    const auto dla = mechlens::direct_logit_attribution(model, hooks.cache(), 0, last, a, b);
    REQUIRE(dla.components.size() == static_cast<std::size_t>(1 + c.n_layers * (c.n_heads + 1)));
    CHECK(dla.components[1] == "L0H0");
    CHECK(dla.components[static_cast<std::size_t>(c.n_heads + 1)] == "L0 mlp");
    const double expected = static_cast<double>(logits(0, last, a)) - static_cast<double>(logits(0, last, b));
    double sum = 0.0;
    for (double v : dla.values) sum += v;
    CHECK(std::abs(sum - dla.total) <= 1e-9 * std::max(1.0, std::abs(sum)));
    CHECK(std::abs(dla.total - expected) <= 1e-4);
    WARN("DLA total " << dla.total << ", model logit difference " << expected << ", error " << dla.total - expected);

    // Every head's value, computed independently from its attn.hook_result row, in double.
    const double scale =
        static_cast<double>(hooks.cache().at(site{site_kind::ln_final_scale, -1}).view<3>()(0, last, 0));
    double worst = 0.0;
    for (index_t layer = 0; layer < c.n_layers; ++layer) {
        const auto r = hooks.cache().at(site{site_kind::attn_result, layer}).view<4>();
        for (index_t h = 0; h < c.n_heads; ++h) {
            double direct = 0.0;
            for (index_t i = 0; i < c.d_model; ++i)
                direct += static_cast<double>(r(0, last, h, i)) / scale *
                          static_cast<double>(model.weights().final_norm(i)) *
                          (static_cast<double>(model.weights().unembed(a, i)) -
                           static_cast<double>(model.weights().unembed(b, i)));
            const double got = dla.values[static_cast<std::size_t>(1 + layer * (c.n_heads + 1) + h)];
            worst = std::max(worst, std::abs(got - direct));
        }
    }
    CHECK(worst <= 1e-5);
    WARN("worst per-head difference from the hook_result computation " << worst);

    CHECK_THROWS_WITH(mechlens::direct_logit_attribution(model, mechlens::activation_cache{}, 0, 0, a),
                      Catch::Contains("the cache has no hook_embed"));
    CHECK_THROWS_AS(mechlens::direct_logit_attribution(model, hooks.cache(), 0, last + 1, a), std::invalid_argument);
    CHECK_THROWS_AS(mechlens::direct_logit_attribution(model, hooks.cache(), 0, last, 512), std::invalid_argument);
}

TEST_CASE("attribution: DLA of a model without norms and with learned positions", "[attribution][dla]") {
    mechlens::model_config c;
    c.d_model = 16;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.d_vocab = 23;
    c.n_ctx = 8;
    c.mlp = mechlens::mlp_kind::none;
    c.norm = mechlens::norm_kind::none;
    c.positions = mechlens::positional_kind::learned;
    c.tied_unembed = false;
    const mechlens::transformer model(mechlens::random_model(c, 4, 0.3f));
    const std::vector<std::int32_t> ids{1, 7, 3, 19, 3, 7};
    mechlens::caching_hooks<> hooks;
    const auto logits = mechlens::forward_logits(model, as_batch(ids), hooks);
    const auto dla = mechlens::direct_logit_attribution(model, hooks.cache(), 0, 4, 7);
    CHECK(dla.components.size() == 2 + 2 * 4);
    CHECK(dla.components[1] == "pos_embed");
    CHECK(std::abs(dla.total - static_cast<double>(logits(0, 4, 7))) <= 1e-4);
}

TEST_CASE("attribution: the logit lens ends at the model's logits and ranks tokens", "[attribution][lens]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    const mechlens::model_config& c = model.config();
    mechlens::caching_hooks<> hooks(mechlens::cache_filter().names("blocks.*.hook_resid_post", c));
    const auto logits = mechlens::forward_logits(model, as_batch(p1), hooks);
    const auto lens = mechlens::logit_lens(model, hooks.cache());  // (layers, batch, pos, vocab)
    REQUIRE(lens.extent(0) == c.n_layers);
    double worst = 0.0;
    for (index_t p = 0; p < lens.extent(2); ++p)
        for (index_t v = 0; v < c.d_vocab; ++v)
            worst = std::max(worst, static_cast<double>(std::abs(lens(c.n_layers - 1, 0, p, v) - logits(0, p, v))));
    CHECK(worst <= 1e-4);

    const index_t last = static_cast<index_t>(p1.size()) - 1;
    const mechlens::tensor_view<const float, 1> row(&logits(0, last, 0), {c.d_vocab});
    const auto top = mechlens::top_tokens(row, 3);
    REQUIRE(top.size() == 3);
    CHECK(top[0].token == 370);  // the fixture's top-1 and top-2 there
    CHECK(top[1].token == 262);
    CHECK(top[0].rank == 0);
    CHECK(top[1].rank == 1);
    CHECK(top[0].probability > top[1].probability);
    double total = 0.0;
    for (index_t v = 0; v < c.d_vocab; ++v)
        total += static_cast<double>(mechlens::standing_of(row, static_cast<std::int32_t>(v)).probability);
    CHECK(std::abs(total - 1.0) <= 1e-5);
    // Early layers know less: the final top token is less likely after block 0 than at the end.
    const mechlens::tensor_view<const float, 1> early(&lens(0, 0, last, 0), {c.d_vocab});
    CHECK(mechlens::standing_of(early, 370).probability < top[0].probability);
    CHECK_THROWS_AS(mechlens::logit_lens(model, mechlens::activation_cache{}), std::invalid_argument);
}

}  // namespace test_attribution
