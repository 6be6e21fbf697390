// Activation and attribution patching: the fast sweep (resumed at the patched layer and position, cells stacked on
// the batch axis) against one full forward per cell, on stories260K and on small models of every variant; and the
// gradient approximation against true patching.
#include <mechlens/mechlens.hpp>

#include "test_support.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <vector>

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_patching {

using mechlens::index_t;
using mechlens::patching_grid;
using mechlens::site;
using mechlens::site_kind;

namespace {

const std::filesystem::path stories_bin = mechlens_test::model_file("stories260K/stories260K.bin");

// "Once upon a time, there was a little girl named Sue. One day," and the same with "Mia": 21 tokens each, the
// names at positions 15-17 (' S' 'u' 'e' / ' M' 'i' 'a'); the model continues with the name's first token.
const std::vector<std::int32_t> sue{1,   403, 407, 261, 378, 432, 383, 286, 261, 376, 298,
                                    315, 421, 395, 301, 425, 411, 426, 385, 328, 432};
const std::vector<std::int32_t> mia{1,   403, 407, 261, 378, 432, 383, 286, 261, 376, 298,
                                    315, 421, 395, 392, 417, 412, 426, 385, 328, 432};
constexpr std::int32_t s_token = 301, m_token = 392;

mechlens::tensor<std::int32_t, 2> stack(const std::vector<std::vector<std::int32_t>>& rows) {
    mechlens::tensor<std::int32_t, 2> out({static_cast<index_t>(rows.size()), static_cast<index_t>(rows[0].size())});
    for (std::size_t b = 0; b < rows.size(); ++b)
        for (std::size_t p = 0; p < rows[b].size(); ++p)
            out(static_cast<index_t>(b), static_cast<index_t>(p)) = rows[b][p];
    return out;
}

// Largest |a - b| over two tables of the same shape (NaN when the shapes differ).
double max_difference(const mechlens::tensor<float, 3>& a, const mechlens::tensor<float, 3>& b) {
    if (a.shape() != b.shape()) return std::nan("");
    double worst = 0.0;
    for (index_t i = 0; i < a.size(); ++i)
        worst = std::max(worst, std::abs(static_cast<double>(a.data()[i]) - static_cast<double>(b.data()[i])));
    return worst;
}

}  // namespace

TEST_CASE("patching: the fast sweep equals one forward per cell on stories260K", "[patching]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    const auto clean = stack({sue, mia}), corrupt = stack({mia, sue});
    mechlens::activation_patcher patcher(model, clean.view(), corrupt.view(),
                                         mechlens::answer_metric::logit_difference({s_token, m_token},
                                                                                   {m_token, s_token}));
    CHECK(patcher.first_difference() == 14);
    CHECK(patcher.clean_metric() > 1.0);
    CHECK(patcher.corrupt_metric() < -1.0);

    const std::vector<patching_grid> grids{
        patching_grid::by_layer_position(site_kind::resid_pre),
        patching_grid::by_layer_position(site_kind::attn_out),
        patching_grid::by_layer_position(site_kind::mlp_out),
        patching_grid::by_layer_head(site_kind::attn_z),
        patching_grid::by_layer_head_position(site_kind::attn_z),
        patching_grid::by_layer_head(site_kind::attn_q),
        patching_grid::by_layer_head(site_kind::attn_k),
        patching_grid::by_layer_head(site_kind::attn_v),
        patching_grid::by_layer_head(site_kind::attn_pattern),
        patching_grid::by_layer_position(site_kind::ln_final_normalized),
        patching_grid::by_layer_position(site_kind::embed),
    };
    for (const patching_grid& grid : grids) {
        INFO(grid.describe());
        mechlens::patching_options options;
        options.max_batch_rows = 100;  // several batches per group, so the chunking is exercised too
        const mechlens::patching_table fast = patcher.sweep(grid, options);
        const mechlens::patching_table naive = patcher.sweep_naive(grid);
        REQUIRE(fast.values.shape() == naive.values.shape());
        CHECK(max_difference(fast.raw, naive.raw) == 0.0);  // bit for bit, see activation_patching.hpp
        CHECK(max_difference(fast.values, naive.values) == 0.0);
        CHECK(fast.forward_rows < naive.forward_rows);
    }

    // What the table means: the residual stream before block 0 at the name's positions carries everything.
    const auto resid = patcher.sweep(patching_grid::by_layer_position(site_kind::resid_pre));
    CHECK(resid.values.shape() == mechlens::extents<3>{5, 1, 21});
    for (index_t p = 0; p < 14; ++p) CHECK(resid.values(0, 0, p) == 0.0f);  // identical tokens: nothing to patch
    CHECK(resid.values(0, 0, 14) > 0.5f);  // the name's first token
    const double all_names = patcher.patched_metric(
        {{site{site_kind::resid_pre, 0}, {mechlens::index_set{14, 15, 16}, {}}}});
    CHECK(std::abs(all_names - patcher.clean_metric()) <= 1e-9 * std::abs(patcher.clean_metric()));
}

TEST_CASE("patching: fast and naive sweeps agree on every model variant", "[patching]") {
    for (int variant = 0; variant < 3; ++variant) {
        mechlens::model_config c;
        c.d_model = 16;
        c.n_layers = 3;
        c.n_heads = 4;
        c.n_kv_heads = 2;
        c.d_mlp = 24;
        c.d_vocab = 29;
        c.n_ctx = 12;
        if (variant == 1) {
            c.norm = mechlens::norm_kind::none;
            c.positions = mechlens::positional_kind::learned;
            c.mlp = mechlens::mlp_kind::plain_gelu;
            c.tied_unembed = false;
        } else if (variant == 2) {
            c.mlp = mechlens::mlp_kind::none;
            c.positions = mechlens::positional_kind::learned;
        }
        INFO("variant " << variant);
        const mechlens::transformer model(mechlens::random_model(c, 11 + static_cast<std::uint64_t>(variant), 0.4f));
        const auto clean = stack({{1, 5, 9, 3, 7, 2, 8, 4, 6, 10}, {1, 5, 9, 3, 7, 2, 8, 4, 6, 11}});
        const auto corrupt = stack({{1, 5, 9, 3, 12, 2, 8, 4, 6, 10}, {1, 5, 9, 3, 13, 2, 8, 4, 6, 11}});
        mechlens::activation_patcher patcher(model, clean.view(), corrupt.view(),
                                             mechlens::answer_metric::log_probability({4, 9}, -2));
        CHECK(patcher.first_difference() == 4);
        std::vector<patching_grid> grids{patching_grid::by_layer_position(site_kind::resid_pre),
                                         patching_grid::by_layer_position(site_kind::attn_out),
                                         patching_grid::by_layer_head_position(site_kind::attn_z),
                                         patching_grid::by_layer_head(site_kind::attn_pattern),
                                         patching_grid::by_layer_head(site_kind::attn_v),
                                         patching_grid::by_layer_position(site_kind::embed),
                                         patching_grid::by_layer_position(site_kind::resid_post)};
        if (!c.attn_only()) grids.push_back(patching_grid::by_layer_position(site_kind::mlp_post));
        if (variant != 0) grids.push_back(patching_grid::by_layer_position(site_kind::pos_embed));
        for (const patching_grid& grid : grids) {
            INFO(grid.describe());
            const auto fast = patcher.sweep(grid);
            const auto naive = patcher.sweep_naive(grid);
            CHECK(max_difference(fast.raw, naive.raw) == 0.0);
            // The answer is read at position 8: patching position 9 changes nothing, exactly.
            if (grid.per_position) CHECK(fast.raw(0, 0, 9) == static_cast<float>(patcher.corrupt_metric()));
        }
    }
}

TEST_CASE("patching: bad grids and inputs are refused with clear errors", "[patching]") {
    mechlens::model_config c;
    c.d_model = 16;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 4;
    c.d_mlp = 24;
    c.d_vocab = 29;
    c.n_ctx = 12;
    const mechlens::transformer model(mechlens::random_model(c, 3));
    const auto clean = stack({{1, 2, 3, 4}}), corrupt = stack({{1, 2, 5, 4}}), longer = stack({{1, 2, 3, 4, 5}});
    const auto metric = mechlens::answer_metric::logit_difference({3}, {5});
    CHECK_THROWS_AS(mechlens::activation_patcher(model, clean.view(), longer.view(), metric), mechlens::shape_error);
    CHECK_THROWS_AS(mechlens::activation_patcher(model, clean.view(), corrupt.view(),
                                                 mechlens::answer_metric::logit_difference({3, 4}, {5, 6})),
                    std::invalid_argument);
    CHECK_THROWS_AS(mechlens::activation_patcher(model, clean.view(), corrupt.view(),
                                                 mechlens::answer_metric::logit_difference({3}, {99})),
                    std::invalid_argument);
    mechlens::activation_patcher patcher(model, clean.view(), corrupt.view(), metric);
    CHECK_THROWS_AS(patcher.sweep(patching_grid::by_layer_head(site_kind::attn_result)), std::invalid_argument);
    CHECK_THROWS_AS(patcher.sweep(patching_grid::by_layer_head(site_kind::resid_pre)), std::invalid_argument);
    CHECK_THROWS_AS(patcher.sweep(patching_grid::by_layer_position(site_kind::pos_embed)), std::invalid_argument);
    CHECK_THROWS_AS(patcher.sweep(patching_grid::by_layer_position(site_kind::unembed_out)), std::invalid_argument);
}

TEST_CASE("attribution patching is exact where the metric is linear in the site", "[patching][attribution_patching]") {
    // No norms: the logits, and so a logit difference, are linear in whatever the last block adds after its last
    // nonlinearity: every head's output of an attention-only last block, the MLP output otherwise.
    for (const auto mlp : {mechlens::mlp_kind::none, mechlens::mlp_kind::plain_gelu}) {
        mechlens::model_config c;
        c.d_model = 16;
        c.n_layers = 2;
        c.n_heads = 4;
        c.n_kv_heads = 2;
        c.d_mlp = 24;
        c.d_vocab = 29;
        c.n_ctx = 12;
        c.norm = mechlens::norm_kind::none;
        c.mlp = mlp;
        const mechlens::transformer model(mechlens::random_model(c, 5, 0.4f));
        const auto clean = stack({{1, 5, 9, 3, 7, 2, 8}, {1, 6, 9, 3, 7, 2, 8}});
        const auto corrupt = stack({{1, 5, 9, 4, 7, 2, 8}, {1, 6, 9, 11, 7, 2, 8}});
        const auto metric = mechlens::answer_metric::logit_difference({4, 9}, {7, 3});
        mechlens::activation_patcher truth(model, clean.view(), corrupt.view(), metric);
        const mechlens::attribution_patcher estimate(model, clean.view(), corrupt.view(), metric);
        CHECK(estimate.clean_metric() == truth.clean_metric());
        CHECK(estimate.corrupt_metric() == truth.corrupt_metric());
        std::vector<patching_grid> grids{patching_grid::by_layer_position(site_kind::resid_post)};
        if (c.attn_only()) {
            grids.push_back(patching_grid::by_layer_position(site_kind::attn_out));
            grids.push_back(patching_grid::by_layer_head_position(site_kind::attn_z));
        } else {
            grids.push_back(patching_grid::by_layer_position(site_kind::mlp_out));
        }
        for (const patching_grid& grid : grids) {
            INFO(grid.describe());
            const auto exact = truth.sweep(grid), approximate = estimate.estimate(grid);
            REQUIRE(exact.raw.shape() == approximate.raw.shape());
            const index_t last = c.n_layers - 1;
            double worst = 0.0, largest = 0.0;
            for (index_t h = 0; h < exact.raw.extent(1); ++h)
                for (index_t p = 0; p < exact.raw.extent(2); ++p) {
                    const double change = static_cast<double>(exact.raw(last, h, p)) - truth.corrupt_metric();
                    worst = std::max(worst, std::abs(static_cast<double>(approximate.raw(last, h, p)) -
                                                     static_cast<double>(exact.raw(last, h, p))));
                    largest = std::max(largest, std::abs(change));
                }
            INFO("clean " << truth.clean_metric() << ", corrupt " << truth.corrupt_metric() << ", worst " << worst
                          << ", largest change " << largest);
            CHECK(largest > 1e-3);  // there is an effect to estimate
            CHECK(worst <= 1e-4 * largest);
        }
    }
}

TEST_CASE("attribution patching tracks true patching on stories260K", "[patching][attribution_patching]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    const auto clean = stack({sue, mia}), corrupt = stack({mia, sue});
    const auto metric = mechlens::answer_metric::logit_difference({s_token, m_token}, {m_token, s_token});
    mechlens::activation_patcher truth(model, clean.view(), corrupt.view(), metric);
    const mechlens::attribution_patcher estimate(model, clean.view(), corrupt.view(), metric);
    CHECK(std::abs(estimate.clean_metric() - truth.clean_metric()) == 0.0);
    for (const patching_grid& grid : {patching_grid::by_layer_position(site_kind::resid_pre),
                                      patching_grid::by_layer_position(site_kind::attn_out),
                                      patching_grid::by_layer_position(site_kind::mlp_out),
                                      patching_grid::by_layer_head(site_kind::attn_z),
                                      patching_grid::by_layer_head_position(site_kind::attn_z)}) {
        const double r = mechlens::pearson_correlation(truth.sweep(grid).values, estimate.estimate(grid).values);
        WARN(grid.describe() << ": correlation of attribution patching with activation patching " << r);
        CHECK(r > 0.5);
    }
    // The exact (linear) case inside a real model: the last block's attention output at the answer position.
    const auto exact = truth.sweep(patching_grid::by_layer_head_position(site_kind::attn_z));
    const auto approximate = estimate.estimate(patching_grid::by_layer_head_position(site_kind::attn_z));
    CHECK(mechlens::pearson_correlation(exact.values, approximate.values) > 0.5);
}

TEST_CASE("partial forward: resuming at any block from a cached residual gives the full pass's logits bit for bit",
          "[patching][partial]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    const mechlens::model_config& c = model.config();
    const std::vector<std::int32_t> ids{1, 403, 407, 261, 378, 5, 90, 17, 300, 2, 44, 45};
    const mechlens::tensor_view<const std::int32_t, 2> tokens(ids.data(), {2, 6});
    mechlens::caching_hooks<mechlens::kind_set::of({site_kind::resid_pre, site_kind::resid_post})> hooks;
    const mechlens::tensor<float, 3> expected = mechlens::forward_logits(model, tokens, hooks);
    const mechlens::activation_cache cache = hooks.take();

    const mechlens::forward_span span{2, 6, 0};
    for (index_t first = 0; first <= c.n_layers; ++first) {
        INFO("resuming at block " << first);
        mechlens::workspace ws;
        mechlens::kv_cache keys_values;
        keys_values.reset(c, 2, 6);
        const auto resid = (first < c.n_layers ? cache.at(site{site_kind::resid_pre, first})
                                               : cache.at(site{site_kind::resid_post, c.n_layers - 1}))
                               .view<3>();  // (batch, pos, d_model)
        const auto x = mechlens::span_residual(model, span, ws);  // (batch * pos, d_model)
        for (index_t b = 0; b < 2; ++b)
            for (index_t p = 0; p < 6; ++p)
                for (index_t i = 0; i < c.d_model; ++i) x(b * 6 + p, i) = resid(b, p, i);
        mechlens::run_blocks(model, span, first, c.n_layers, keys_values, ws);
        mechlens::tensor<float, 2> rows({12, c.d_model});
        for (index_t r = 0; r < 12; ++r)
            for (index_t i = 0; i < c.d_model; ++i) rows(r, i) = x(r, i);
        const auto unembed_in = mechlens::final_norm_span(model, span, rows.view(), ws);  // (batch * pos, d_model)
        mechlens::tensor<float, 2> logits({12, c.d_vocab});
        mechlens::kernels::linear(unembed_in, model.weights().unembed, logits.view());
        bool identical = true;
        for (index_t r = 0; r < 12; ++r)
            for (index_t v = 0; v < c.d_vocab; ++v) identical = identical && logits(r, v) == expected(r / 6, r % 6, v);
        CHECK(identical);
    }

    // From the tokens: embed_span then every block is the full pass too.
    mechlens::workspace ws;
    mechlens::kv_cache keys_values;
    keys_values.reset(c, 2, 6);
    mechlens::embed_span(model, span, tokens, ws);
    mechlens::run_blocks(model, span, 0, c.n_layers, keys_values, ws);
    const auto x = mechlens::span_residual(model, span, ws);
    const auto last = cache.at(site{site_kind::resid_post, c.n_layers - 1}).view<3>();
    bool identical = true;
    for (index_t r = 0; r < 12; ++r)
        for (index_t i = 0; i < c.d_model; ++i) identical = identical && x(r, i) == last(r / 6, r % 6, i);
    CHECK(identical);

    // Bad spans and block ranges are refused.
    CHECK_THROWS_AS(mechlens::run_blocks(model, span, 2, 1, keys_values, ws), std::out_of_range);
    CHECK_THROWS_AS(mechlens::run_blocks(model, span, 0, c.n_layers + 1, keys_values, ws), std::out_of_range);
    CHECK_THROWS_AS(mechlens::span_residual(model, mechlens::forward_span{1, c.n_ctx, 1}, ws), mechlens::shape_error);
    CHECK_THROWS_AS(mechlens::run_blocks(model, mechlens::forward_span{3, 6, 0}, 0, 1, keys_values, ws),
                    mechlens::shape_error);
    const std::vector<std::int32_t> bad{1, 2, 999};
    CHECK_THROWS_AS(mechlens::embed_span(model, mechlens::forward_span{1, 3, 0},
                                         mechlens::tensor_view<const std::int32_t, 2>(bad.data(), {1, 3}), ws),
                    std::out_of_range);
}

}  // namespace test_patching
