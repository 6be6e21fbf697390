// Path patching, checked on tiny attention-only models without norms where the answer is known by construction:
// the direct path equals a hand-computed linear effect, all paths together equal activation patching, and receivers
// that cannot see the sender get exactly nothing; then a smoke run on stories260K.
#include <mechlens/mechlens.hpp>

#include "test_support.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <vector>

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_path_patching {

using mechlens::index_t;
using mechlens::site;
using mechlens::site_kind;

namespace {

using token_list = std::vector<std::int32_t>;

// Two prompts of six tokens; the corrupt ones differ in a few tokens.
const token_list clean_ids{1, 7, 3, 19, 3, 7, 2, 5, 11, 5, 2, 9};
const token_list corrupt_ids{1, 7, 4, 19, 8, 7, 2, 6, 11, 5, 13, 9};
constexpr index_t prompts = 2, positions = 6;

mechlens::tensor_view<const std::int32_t, 2> as_batch(const token_list& ids) {
    return mechlens::tensor_view<const std::int32_t, 2>(ids.data(), {prompts, positions});
}

mechlens::answer_metric tiny_metric() { return mechlens::answer_metric::logit_difference({7, 9}, {3, 2}); }

// Three attention-only blocks without norms, 4 query heads sharing 2 key/value heads.
mechlens::model_config tiny_config(mechlens::positional_kind positions_kind) {
    mechlens::model_config c;
    c.d_model = 16;
    c.n_layers = 3;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.d_vocab = 23;
    c.n_ctx = 8;
    c.mlp = mechlens::mlp_kind::none;
    c.norm = mechlens::norm_kind::none;
    c.positions = positions_kind;
    c.tied_unembed = false;
    return c;
}

mechlens::activation_cache run_cache(const mechlens::transformer& model, const token_list& ids) {
    mechlens::caching_hooks<> hooks;
    (void)mechlens::forward_logits(model, as_batch(ids), hooks);
    return hooks.take();
}

double close_to(double a, double b) { return std::abs(a - b) / std::max(1.0, std::abs(b)); }

// The metric change of adding (z_corrupt - z_clean) of one head, through W_O, straight to the logits.
double direct_effect(const mechlens::transformer& model, const mechlens::activation_cache& clean,
                     const mechlens::activation_cache& corrupt, index_t layer, index_t head,
                     const mechlens::answer_metric& m) {
    const mechlens::model_config& c = model.config();
    const index_t d_head = c.d_head(), last = positions - 1;
    const auto zc = clean.at(site{site_kind::attn_z, layer}).view<4>();
    const auto zk = corrupt.at(site{site_kind::attn_z, layer}).view<4>();
    const auto& w_o = model.weights().layers[static_cast<std::size_t>(layer)].w_o;
    const auto& u = model.weights().unembed;
    double total = 0.0;
    for (index_t b = 0; b < prompts; ++b) {
        const auto i = static_cast<std::size_t>(b);
        for (index_t d = 0; d < c.d_model; ++d) {
            double out = 0.0;
            for (index_t j = 0; j < d_head; ++j)
                out += (static_cast<double>(zk(b, last, head, j)) - static_cast<double>(zc(b, last, head, j))) *
                       static_cast<double>(w_o(d, head * d_head + j));
            total += out * (static_cast<double>(u(m.correct[i], d)) - static_cast<double>(u(m.wrong[i], d)));
        }
    }
    return total / static_cast<double>(prompts);
}

// Every later head's q, k and v inputs, plus the final residual stream.
std::vector<mechlens::patch_target> all_paths_after(const mechlens::model_config& c, index_t layer) {
    std::vector<mechlens::patch_target> receivers;
    for (index_t l = layer + 1; l < c.n_layers; ++l)
        for (site_kind kind : {site_kind::attn_q, site_kind::attn_k, site_kind::attn_v})
            receivers.push_back(mechlens::receiver_head_inputs(kind, l, {}));
    receivers.push_back(mechlens::receiver_final_residual(c));
    return receivers;
}

}  // namespace

TEST_CASE("path patching: the direct path equals the head's linear effect on the logits", "[path_patching]") {
    const mechlens::transformer model(
        mechlens::random_model(tiny_config(mechlens::positional_kind::learned), 11, 0.3f));
    const mechlens::model_config& c = model.config();
    const auto metric = tiny_metric();
    const auto clean = run_cache(model, clean_ids), corrupt = run_cache(model, corrupt_ids);
    mechlens::path_patcher patcher(model, as_batch(clean_ids), as_batch(corrupt_ids), metric);
    const std::vector<mechlens::patch_target> to_logits{mechlens::receiver_final_residual(c)};
    const auto table = patcher.sweep(to_logits);
    REQUIRE(table.patched.extent(0) == c.n_layers);
    REQUIRE(table.patched.extent(1) == c.n_heads);

    double worst = 0.0, largest = 0.0;
    for (index_t layer = 0; layer < c.n_layers; ++layer)
        for (index_t head = 0; head < c.n_heads; ++head) {
            const double expected = direct_effect(model, clean, corrupt, layer, head, metric);
            const auto r = patcher.run({{layer, head}}, to_logits);
            worst = std::max(worst, close_to(r.effect(), expected));
            largest = std::max(largest, std::abs(expected));
            CHECK(r.patched == table.patched(layer, head));  // the sweep runs the same computation
            CHECK(std::abs(r.normalized - r.effect() / (r.corrupt - r.clean)) <= 1e-12);
            CHECK(r.per_prompt.size() == static_cast<std::size_t>(prompts));
        }
    CHECK(worst <= 1e-5);
    CHECK(largest > 1e-2);  // the heads do move the metric, so the comparison means something
    WARN("direct path vs hand-computed effect: worst relative error " << worst << ", largest effect " << largest);
    CHECK(table.clean == patcher.clean_metric());
    CHECK(std::abs(table.corrupt - table.clean) > 1e-3);
}

TEST_CASE("path patching: every path out of a head together equals activation patching of its hook_z",
          "[path_patching]") {
    for (const auto kind : {mechlens::positional_kind::learned, mechlens::positional_kind::rotary}) {
        const mechlens::transformer model(mechlens::random_model(tiny_config(kind), 5, 0.3f));
        const mechlens::model_config& c = model.config();
        const auto metric = tiny_metric();
        const auto clean = run_cache(model, clean_ids), corrupt = run_cache(model, corrupt_ids);
        mechlens::path_patcher patcher(model, as_batch(clean_ids), as_batch(corrupt_ids), metric);
        mechlens::path_patching_options pinned;
        pinned.update = mechlens::receiver_update::overwrite;
        mechlens::path_patcher literal(model, as_batch(clean_ids), as_batch(corrupt_ids), metric, pinned);

        double worst = 0.0, indirect = 0.0, worst_literal = 0.0, worst_modes = 0.0;
        for (index_t layer = 0; layer + 1 < c.n_layers; ++layer)
            for (index_t head = 0; head < c.n_heads; ++head) {
                mechlens::patch_hooks<> patch(corrupt);
                patch.patch(site{site_kind::attn_z, layer}, {.heads = {head}});
                const auto logits = mechlens::forward_logits(model, as_batch(clean_ids), patch);
                const double activation_patched = metric.mean(logits.view(), positions);
                const auto receivers = all_paths_after(c, layer);
                const auto r = patcher.run({{layer, head}}, receivers);
                worst = std::max(worst, close_to(r.patched, activation_patched));
                const double direct = direct_effect(model, clean, corrupt, layer, head, metric);
                indirect = std::max(indirect, std::abs(activation_patched - r.clean - direct));
                // Overwriting pins the final residual to step 2's, where every later head was frozen: direct only.
                const auto pinned_result = literal.run({{layer, head}}, receivers);
                worst_literal = std::max(worst_literal, close_to(pinned_result.effect(), direct));
                // With receivers in one block only, both ways of writing them agree.
                const std::vector<mechlens::patch_target> one_block{
                    mechlens::receiver_head_inputs(site_kind::attn_q, layer + 1, {0, 3}),
                    mechlens::receiver_head_inputs(site_kind::attn_v, layer + 1, {1})};
                worst_modes = std::max(worst_modes, close_to(patcher.run({{layer, head}}, one_block).patched,
                                                             literal.run({{layer, head}}, one_block).patched));
            }
        CHECK(worst <= 1e-5);
        CHECK(indirect > 1e-3);  // paths through later heads matter, so the direct path alone would fail the check
        CHECK(worst_literal <= 1e-5);
        CHECK(worst_modes <= 1e-6);
        WARN("all paths vs activation patching: worst relative error " << worst << "; largest indirect part "
                                                                        << indirect);
    }
}

TEST_CASE("path patching: receivers that cannot see the sender get exactly nothing", "[path_patching]") {
    const auto config = tiny_config(mechlens::positional_kind::learned);
    const auto metric = tiny_metric();
    const std::vector<mechlens::patch_target> receivers{
        mechlens::receiver_head_inputs(site_kind::attn_q, 2, {1}),
        mechlens::receiver_head_inputs(site_kind::attn_k, 2, {0}),
        mechlens::receiver_head_inputs(site_kind::attn_v, 2, {0})};

    const mechlens::transformer intact(mechlens::random_model(config, 7, 0.3f));
    const auto seen = mechlens::path_patch(intact, as_batch(clean_ids), as_batch(corrupt_ids), {{0, 2}}, receivers,
                                           metric);
    CHECK(std::abs(seen.effect()) > 1e-4);  // with its weights, head 2.1 does hear head 0.2

    // The same model with head 2.1's query rows and key/value head 2.0's rows zeroed: those inputs are 0 whatever
    // the residual stream holds.
    mechlens::loaded_model loaded = mechlens::random_model(config, 7, 0.3f);
    mechlens::layer_weights& block = loaded.weights.layers[2];
    const index_t d_head = config.d_head(), d = config.d_model;
    auto zeroed = [&](mechlens::tensor_view<const float, 2> w, index_t first_row) {
        std::vector<float> copy(w.data(), w.data() + w.size());
        std::fill(copy.begin() + first_row * d, copy.begin() + (first_row + d_head) * d, 0.0f);
        return copy;
    };
    const std::vector<float> w_q = zeroed(block.w_q, 1 * d_head), w_k = zeroed(block.w_k, 0),
                             w_v = zeroed(block.w_v, 0);
    block.w_q = mechlens::tensor_view<const float, 2>(w_q.data(), block.w_q.shape());
    block.w_k = mechlens::tensor_view<const float, 2>(w_k.data(), block.w_k.shape());
    block.w_v = mechlens::tensor_view<const float, 2>(w_v.data(), block.w_v.shape());
    const mechlens::transformer deaf(std::move(loaded));
    for (const auto update : {mechlens::receiver_update::add_difference, mechlens::receiver_update::overwrite}) {
        mechlens::path_patching_options options;
        options.update = update;
        const auto r = mechlens::path_patch(deaf, as_batch(clean_ids), as_batch(corrupt_ids), {{0, 2}}, receivers,
                                            metric, options);
        CHECK(r.patched == r.clean);
        CHECK(r.normalized == 0.0);
    }

    // A head's own block is computed before its output: refused for one run, exactly zero in a sweep.
    CHECK_THROWS_WITH(mechlens::path_patch(intact, as_batch(clean_ids), as_batch(corrupt_ids), {{2, 0}}, receivers,
                                           metric),
                      Catch::Contains("must go forward"));
    mechlens::path_patcher patcher(intact, as_batch(clean_ids), as_batch(corrupt_ids), metric);
    const std::vector<mechlens::patch_target> block_1{mechlens::receiver_head_inputs(site_kind::attn_q, 1, {}),
                                                      mechlens::receiver_head_inputs(site_kind::attn_k, 1, {}),
                                                      mechlens::receiver_head_inputs(site_kind::attn_v, 1, {})};
    const auto table = patcher.sweep(block_1);
    for (index_t layer = 1; layer < config.n_layers; ++layer)
        for (index_t head = 0; head < config.n_heads; ++head) {
            CHECK(table.patched(layer, head) == table.clean);
            CHECK(table.normalized(layer, head) == 0.0);
        }
    double moved = 0.0;
    for (index_t head = 0; head < config.n_heads; ++head) {
        CHECK(table.patched(0, head) == patcher.run({{0, head}}, block_1).patched);
        moved = std::max(moved, std::abs(table.patched(0, head) - table.clean));
    }
    CHECK(moved > 1e-4);
    // hook_resid_mid/post of the sender's own block do come after it.
    const auto post = patcher.run({{2, 0}}, {mechlens::patch_target{site{site_kind::resid_post, 2}, {}}});
    CHECK(std::abs(post.effect()) > 1e-4);
}

TEST_CASE("path patching: bad inputs throw clear errors", "[path_patching]") {
    const mechlens::transformer model(
        mechlens::random_model(tiny_config(mechlens::positional_kind::learned), 3, 0.3f));
    const auto metric = tiny_metric();
    const auto clean = as_batch(clean_ids), corrupt = as_batch(corrupt_ids);
    const std::vector<mechlens::patch_target> to_logits{mechlens::receiver_final_residual(model.config())};
    const token_list shorter(10, 1);
    const mechlens::tensor_view<const std::int32_t, 2> short_batch(shorter.data(), {2, 5});
    CHECK_THROWS_AS(mechlens::path_patcher(model, clean, short_batch, metric), mechlens::shape_error);
    CHECK_THROWS_WITH(mechlens::path_patcher(model, clean, corrupt, mechlens::answer_metric::logit_of({7})),
                      Catch::Contains("answers for 1 prompts"));

    mechlens::path_patcher patcher(model, clean, corrupt, metric);
    CHECK_THROWS_WITH(patcher.run({}, to_logits), Catch::Contains("no sender"));
    CHECK_THROWS_WITH(patcher.run({{0, 0}}, {}), Catch::Contains("no receiver"));
    CHECK_THROWS_WITH(patcher.run({{0, 4}}, to_logits), Catch::Contains("sender head (0, 4)"));
    CHECK_THROWS_WITH(patcher.run({{3, 0}}, to_logits), Catch::Contains("outside the model"));
    CHECK_THROWS_WITH(patcher.run({{0, 0}}, {mechlens::receiver_head_inputs(site_kind::attn_k, 1, {2})}),
                      Catch::Contains("key/value heads"));
    CHECK_THROWS_WITH(patcher.run({{0, 0}}, {mechlens::receiver_head_inputs(site_kind::attn_q, 1, {4})}),
                      Catch::Contains("query heads"));
    CHECK_THROWS_WITH(patcher.run({{0, 0}}, {mechlens::patch_target{site{site_kind::attn_pattern, 1}, {}}}),
                      Catch::Contains("cannot be a receiver"));
    CHECK_THROWS_WITH(patcher.run({{0, 0}}, {mechlens::patch_target{site{site_kind::resid_mid, 1}, {}}}),
                      Catch::Contains("attention-only"));
    CHECK_THROWS_WITH(patcher.run({{0, 0}}, {mechlens::patch_target{site{site_kind::resid_post, 3}, {}}}),
                      Catch::Contains("outside the model"));
    CHECK_THROWS_WITH(patcher.run({{0, 0}}, {mechlens::receiver_final_residual(model.config(), {6})}),
                      Catch::Contains("outside the 6-token sequence"));
    CHECK_THROWS_AS(mechlens::receiver_head_inputs(site_kind::resid_pre, 1, {}), std::invalid_argument);
    mechlens::path_patching_options late;
    late.sender_positions = mechlens::index_set{9};
    CHECK_THROWS_WITH(mechlens::path_patcher(model, clean, corrupt, metric, late), Catch::Contains("sender position"));
}

TEST_CASE("path patching: a stories260K sweep runs and agrees with plain forwards", "[path_patching]") {
    const std::filesystem::path bin = mechlens_test::model_file("stories260K/stories260K.bin");
    MECHLENS_REQUIRE_FILE_OR_SKIP(bin);
    const mechlens::transformer model(mechlens::load_model(bin));
    const mechlens::model_config& c = model.config();
    // "Lily and Tom went to the park. Lily gave Tom a", and the same with two tokens changed.
    const token_list clean_tokens{1,   317, 269, 274, 287, 263, 377, 267, 265, 282,
                                  295, 433, 426, 317, 298, 412, 360, 274, 287, 261};
    token_list corrupt_tokens = clean_tokens;
    corrupt_tokens[5] = 412;
    corrupt_tokens[13] = 360;
    const auto n = static_cast<index_t>(clean_tokens.size());
    const mechlens::tensor_view<const std::int32_t, 2> clean(clean_tokens.data(), {1, n}),
        corrupt(corrupt_tokens.data(), {1, n});
    const auto metric = mechlens::answer_metric::logit_difference({370}, {262});

    mechlens::path_patcher patcher(model, clean, corrupt, metric);
    const double plain_clean = metric.mean(mechlens::forward_logits(model, clean).view(), n);
    const double plain_corrupt = metric.mean(mechlens::forward_logits(model, corrupt).view(), n);
    CHECK(std::abs(patcher.clean_metric() - plain_clean) <= 1e-5);
    CHECK(std::abs(patcher.corrupt_metric() - plain_corrupt) <= 1e-5);
    REQUIRE(std::abs(plain_corrupt - plain_clean) > 1e-3);

    const auto to_logits = patcher.sweep({mechlens::receiver_final_residual(c)});
    const auto to_last_block = patcher.sweep({mechlens::receiver_head_inputs(site_kind::attn_q, c.n_layers - 1, {}),
                                              mechlens::receiver_head_inputs(site_kind::attn_v, c.n_layers - 1, {})});
    bool finite = true;
    for (index_t layer = 0; layer < c.n_layers; ++layer)
        for (index_t head = 0; head < c.n_heads; ++head)
            finite = finite && std::isfinite(to_logits.patched(layer, head)) &&
                     std::isfinite(to_logits.normalized(layer, head)) &&
                     std::isfinite(to_last_block.normalized(layer, head));
    CHECK(finite);
    for (index_t head = 0; head < c.n_heads; ++head) CHECK(to_last_block.normalized(c.n_layers - 1, head) == 0.0);

    // A last-block head reaches the logits only directly and through its block's MLP, which step 2 recomputes: its
    // path to the final residual is all of its effect, i.e. activation patching of its hook_z.
    mechlens::caching_hooks<> corrupt_run;
    (void)mechlens::forward_logits(model, corrupt, corrupt_run);
    double worst = 0.0;
    for (index_t head = 0; head < c.n_heads; ++head) {
        mechlens::patch_hooks<> patch(corrupt_run.cache());
        patch.patch(site{site_kind::attn_z, c.n_layers - 1}, {.heads = {head}});
        const double activation_patched = metric.mean(mechlens::forward_logits(model, clean, patch).view(), n);
        worst = std::max(worst, std::abs(to_logits.patched(c.n_layers - 1, head) - activation_patched));
    }
    CHECK(worst <= 1e-4);
    WARN("stories260K: clean " << plain_clean << ", corrupt " << plain_corrupt
                               << "; last-block heads vs activation patching, worst difference " << worst);
}

}  // namespace test_path_patching
