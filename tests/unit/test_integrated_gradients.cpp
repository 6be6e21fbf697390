// Integrated gradients, saliency and gradient x input: quadrature rules, completeness on stories260K, a PyTorch
// float64 reference, the exact linear case on a tiny model, chunked steps, and the errors.
#include <mechlens/mechlens.hpp>

#include "test_support.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_integrated_gradients {

namespace fs = std::filesystem;
using mechlens::index_t;
using mechlens::integration_rule;
using mechlens::site;
using mechlens::site_kind;

namespace {

const fs::path stories_bin = mechlens_test::model_file("stories260K/stories260K.bin");
const fs::path ig_fixtures = mechlens_test::fixtures_dir() / "integrated_gradients";

/// max |a - b| / max |b| (the relative error the reference fixtures are compared with).
double relative_error(const std::vector<double>& a, const std::vector<double>& b) {
    REQUIRE(a.size() == b.size());
    double diff = 0.0, scale = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        diff = std::max(diff, std::abs(a[i] - b[i]));
        scale = std::max(scale, std::abs(b[i]));
    }
    return scale > 0.0 ? diff / scale : diff;
}

std::vector<double> as_doubles(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

std::vector<double> as_doubles(const mechlens::tensor<double, 2>& t) {
    return std::vector<double>(t.data(), t.data() + t.size());
}

std::vector<std::int32_t> int_npy(const fs::path& path) {
    const mechlens::npy_array a = mechlens::read_npy(path);
    std::vector<std::int32_t> out;
    for (float v : a.data) out.push_back(static_cast<std::int32_t>(v));
    return out;
}

/// The reference prompt, "Lily and Tom went to the park. Lily gave Tom a" (20 tokens), and its answer tokens.
struct stories_case {
    mechlens::loaded_model loaded;
    mechlens::model_parameters params;
    std::vector<std::int32_t> ids;
    mechlens::answer_metric metric;
    explicit stories_case(const fs::path& bin)
        : loaded(mechlens::load_model(bin)),
          params(loaded.config, loaded.weights),
          ids(int_npy(ig_fixtures / "tokens.npy")) {
        const std::vector<std::int32_t> answer = int_npy(ig_fixtures / "answer.npy");
        metric = mechlens::answer_metric::logit_difference({answer.at(0)}, {answer.at(1)});
    }
    [[nodiscard]] mechlens::tensor_view<const std::int32_t, 2> tokens() const {
        return {ids.data(), {1, static_cast<index_t>(ids.size())}};
    }
};

/// A tiny float model with random weights; without norms every site of the last block acts linearly on the logits.
mechlens::model_parameters tiny_model(const mechlens::model_config& c, std::uint64_t seed) {
    mechlens::model_parameters p(c);
    mechlens::random_generator rng(seed);
    for (float& v : p.flat()) v = static_cast<float>(0.8 * (rng.uniform() - 0.5));
    return p;
}

mechlens::model_config tiny_config() {
    mechlens::model_config c;
    c.d_model = 16;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.d_mlp = 24;
    c.d_vocab = 13;
    c.n_ctx = 8;
    c.norm = mechlens::norm_kind::none;
    return c;
}

/// |completeness error| for one configuration.
double completeness(const mechlens::model_parameters& params, mechlens::tensor_view<const std::int32_t, 2> tokens,
                    const mechlens::answer_metric& metric, const site& where, const mechlens::ig_baseline& baseline,
                    integration_rule rule, index_t steps) {
    mechlens::integrated_gradients_options options;
    options.rule = rule;
    options.steps = steps;
    options.batch_steps = 16;
    return std::abs(
        mechlens::integrated_gradients(params, tokens, metric, where, baseline, options).completeness_error);
}

}  // namespace

TEST_CASE("ig: quadrature rules on [0, 1]", "[ig]") {
    SECTION("Gauss-Legendre: weights sum to 1 and n nodes integrate polynomials of degree 2n - 1 exactly") {
        for (index_t n = 1; n <= 40; ++n) {
            INFO(n << " nodes");
            const mechlens::quadrature q = mechlens::integration_points(integration_rule::gauss_legendre, n);
            REQUIRE(q.alphas.size() == static_cast<std::size_t>(n));
            double sum = 0.0;
            for (std::size_t i = 0; i < q.alphas.size(); ++i) {
                sum += q.weights[i];
                CHECK(q.alphas[i] > 0.0);
                CHECK(q.alphas[i] < 1.0);
                CHECK(q.weights[i] > 0.0);
                if (i > 0) CHECK(q.alphas[i] > q.alphas[i - 1]);
            }
            CHECK(std::abs(sum - 1.0) <= 1e-14);
            auto integral = [&](int degree) {
                double s = 0.0;
                for (std::size_t i = 0; i < q.alphas.size(); ++i) s += q.weights[i] * std::pow(q.alphas[i], degree);
                return s;
            };
            for (int k = 0; k <= 2 * static_cast<int>(n) - 1; ++k)
                CHECK(std::abs(integral(k) - 1.0 / (k + 1)) <= 1e-13);
            if (n <= 6)
                CHECK(std::abs(integral(2 * static_cast<int>(n)) - 1.0 / (2 * static_cast<double>(n) + 1)) > 1e-9);
        }
    }
    SECTION("Riemann rules: the documented nodes; middle and trapezoid are exact for straight lines") {
        const auto left = mechlens::integration_points(integration_rule::riemann_left, 4);
        const auto right = mechlens::integration_points(integration_rule::riemann_right, 4);
        const auto middle = mechlens::integration_points(integration_rule::riemann_middle, 4);
        const auto trapezoid = mechlens::integration_points(integration_rule::riemann_trapezoid, 5);
        CHECK(left.alphas == std::vector<double>{0.0, 0.25, 0.5, 0.75});
        CHECK(right.alphas == std::vector<double>{0.25, 0.5, 0.75, 1.0});
        CHECK(middle.alphas == std::vector<double>{0.125, 0.375, 0.625, 0.875});
        CHECK(left.weights == std::vector<double>(4, 0.25));
        CHECK(trapezoid.alphas == std::vector<double>{0.0, 0.25, 0.5, 0.75, 1.0});
        CHECK(trapezoid.weights == std::vector<double>{0.125, 0.25, 0.25, 0.25, 0.125});
        for (const auto* q : {&middle, &trapezoid}) {
            double s = 0.0;
            for (std::size_t i = 0; i < q->alphas.size(); ++i) s += q->weights[i] * (3.0 * q->alphas[i] - 1.0);
            CHECK(std::abs(s - 0.5) <= 1e-15);
        }
    }
    SECTION("the nodes and weights numpy's leggauss gives") {
        const mechlens::npy_array expected = mechlens::read_npy(ig_fixtures / "bos_gl32" / "quadrature.npy");
        REQUIRE(expected.shape == std::vector<index_t>{2, 32});
        const auto q = mechlens::integration_points(integration_rule::gauss_legendre, 32);
        for (std::size_t i = 0; i < 32; ++i) {
            CHECK(std::abs(q.alphas[i] - static_cast<double>(expected.data[i])) <= 1e-7);
            CHECK(std::abs(q.weights[i] - static_cast<double>(expected.data[32 + i])) <= 1e-8);
        }
    }
    SECTION("bad step counts") {
        CHECK_THROWS_AS(mechlens::integration_points(integration_rule::gauss_legendre, 0), std::invalid_argument);
        CHECK_THROWS_AS(mechlens::integration_points(integration_rule::riemann_left, -3), std::invalid_argument);
        CHECK_THROWS_AS(mechlens::integration_points(integration_rule::riemann_trapezoid, 1), std::invalid_argument);
        CHECK(mechlens::integration_points(integration_rule::riemann_trapezoid, 2).weights ==
              std::vector<double>{0.5, 0.5});
    }
}

TEST_CASE("ig: embedding integrated gradients equal a PyTorch float64 reference", "[ig][reference]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const stories_case s(stories_bin);
    struct reference_case {
        const char* id;
        mechlens::ig_baseline baseline;
        index_t steps;
    };
    const reference_case cases[] = {{"bos_gl32", mechlens::ig_baseline::repeated_token(1), 32},
                                    {"zeros_gl8", mechlens::ig_baseline::zeros(), 8}};
    for (const reference_case& c : cases) {
        INFO(c.id);
        const fs::path dir = ig_fixtures / c.id;
        mechlens::integrated_gradients_options options;
        options.steps = c.steps;
        const mechlens::integrated_gradients_result r =
            mechlens::embedding_integrated_gradients(s.params, s.tokens(), s.metric, c.baseline, options);
        const mechlens::npy_array values = mechlens::read_npy(dir / "metric.npy");
        const mechlens::npy_array per_position = mechlens::read_npy(dir / "per_position.npy");
        const mechlens::npy_array attributions = mechlens::read_npy(dir / "attributions.npy");
        REQUIRE(r.attributions.shape == attributions.shape);
        REQUIRE(r.per_position.extent(0) == per_position.shape.at(0));
        REQUIRE(r.per_position.extent(1) == per_position.shape.at(1));
        // Float passes against float64 autograd: the gradient fixtures agree to ~1e-5 of the largest entry; the
        // integral is a positive-weighted sum of such gradients times (x - baseline), so the same order holds.
        const double e_position = relative_error(as_doubles(r.per_position), as_doubles(per_position.data));
        const double e_element = relative_error(as_doubles(r.attributions.values), as_doubles(attributions.data));
        CHECK(e_position <= 1e-4);
        CHECK(e_element <= 1e-4);
        CHECK(std::abs(r.input_mean - static_cast<double>(values.data[0])) <= 1e-4);
        CHECK(std::abs(r.baseline_mean - static_cast<double>(values.data[1])) <= 1e-4);
        WARN(c.id << ": per-position relative error " << e_position << ", per-element " << e_element << "; F(x) "
                  << r.input_mean << ", F(baseline) " << r.baseline_mean << ", completeness error "
                  << r.completeness_error);
    }
}

TEST_CASE("ig: the completeness error shrinks as the steps grow on stories260K", "[ig][completeness]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const stories_case s(stories_bin);
    // All-BOS baseline: the site's activation on a prompt of BOS tokens; F changes by about 4.8 along the path.
    const std::vector<std::int32_t> bos(s.ids.size(), 1);
    const auto baseline = mechlens::ig_baseline::from_tokens({bos.data(), {1, static_cast<index_t>(bos.size())}});
    struct setting {
        site where;
        std::vector<index_t> steps;
        double small;  // what the largest Gauss-Legendre run must reach
    };
    // At the embeddings the path integrand oscillates sharply around alpha = 0.5 (|dF/dalpha| up to ~40): below
    // ~16 nodes no rule resolves it, so the steps run to 64 there. From blocks.3.hook_resid_pre on it is smooth.
    const setting settings[] = {{site{site_kind::embed, -1}, {4, 8, 16, 32, 64}, 1e-3},
                                {site{site_kind::resid_pre, 3}, {2, 4, 8, 16, 32}, 1e-4}};
    const integration_rule rules[] = {integration_rule::gauss_legendre, integration_rule::riemann_left,
                                      integration_rule::riemann_middle, integration_rule::riemann_trapezoid};
    for (const setting& where : settings) {
        const std::string name = mechlens::to_string(where.where);
        std::vector<std::vector<double>> errors;
        for (integration_rule rule : rules) {
            errors.emplace_back();
            std::ostringstream line;
            for (index_t n : where.steps) {
                errors.back().push_back(completeness(s.params, s.tokens(), s.metric, where.where, baseline, rule, n));
                line << ' ' << n << ": " << errors.back().back();
            }
            WARN(name << ", " << mechlens::to_string(rule) << ", |completeness error| at" << line.str());
        }
        for (std::size_t r = 0; r < errors.size(); ++r) {
            INFO(name << ", rule " << mechlens::to_string(rules[r]));
            const std::vector<double>& e = errors[r];
            // Shrinking: a wobble of 1.5x between neighbours is allowed while the oscillation is being resolved,
            // and 5e-5 of float rounding (|F| is about 4) once the integral is resolved.
            for (std::size_t i = 1; i < e.size(); ++i) CHECK(e[i] <= 1.5 * e[i - 1] + 5e-5);
            CHECK(e.back() <= 0.02 * e.front());
        }
        const std::size_t last = where.steps.size() - 1;
        for (std::size_t i = last - 1; i <= last; ++i) {  // Gauss-Legendre beats Riemann-left by far at many steps
            INFO(name << ", " << where.steps[i] << " steps");
            CHECK(errors[0][i] < 0.25 * errors[1][i]);
        }
        CHECK(errors[0][last] <= where.small);
    }
}

TEST_CASE("ig: a metric linear in the site gives gradient x (x - baseline) exactly", "[ig][linear]") {
    // No norms: from the last block's resid_post, hook_mlp_out or attn.hook_z the logits are a linear map, so the
    // gradient is the same at every alpha and any rule integrates it exactly.
    mechlens::model_config attention_only = tiny_config();
    attention_only.mlp = mechlens::mlp_kind::none;
    const mechlens::model_parameters params_mlp = tiny_model(tiny_config(), 7),
                                     params_attn = tiny_model(attention_only, 8);
    const std::vector<std::int32_t> ids{1, 5, 9, 2, 11, 5, 3, 12, 7, 1, 4, 6};
    const mechlens::tensor_view<const std::int32_t, 2> tokens(ids.data(), {2, 6});
    const std::vector<std::int32_t> other{2, 2, 2, 2, 2, 2};
    const auto metric = mechlens::answer_metric::logit_difference({3, 8}, {7, 0}, 4);
    double worst = 0.0, worst_completeness = 0.0;
    // With an MLP only what follows it is linear; attention-only, the last block's z, v and pattern are too.
    struct linear_site {
        const mechlens::model_parameters* params;
        site where;
    };
    const linear_site cases[] = {{&params_mlp, site{site_kind::resid_post, 1}},
                                 {&params_mlp, site{site_kind::mlp_out, 1}},
                                 {&params_attn, site{site_kind::attn_z, 1}},
                                 {&params_attn, site{site_kind::attn_v, 1}},
                                 {&params_attn, site{site_kind::attn_pattern, 1}}};
    for (const linear_site& lc : cases) {
        const mechlens::model_parameters& params = *lc.params;
        const site where = lc.where;
        mechlens::caching_hooks<> activations;
        mechlens::gradient_cache<> gradients;
        auto both = mechlens::compose(activations, gradients);
        (void)mechlens::forward_backward(params, tokens, metric.as_grad_metric(true),
                                         static_cast<mechlens::model_parameters*>(nullptr), both);
        const mechlens::cached_activation& x = activations.cache().at(where);
        const mechlens::cached_activation& g = gradients.cache().at(where);
        // An explicit baseline shared by both prompts (batch extent 1), and a token baseline.
        mechlens::cached_activation shared;
        shared.shape = x.shape;
        shared.shape[0] = 1;
        mechlens::random_generator rng(3);
        for (index_t i = 0; i < x.size() / 2; ++i) shared.values.push_back(static_cast<float>(rng.uniform() - 0.5));
        mechlens::caching_hooks<> other_cache;
        (void)mechlens::forward_backward(params, mechlens::tensor_view<const std::int32_t, 2>(other.data(), {1, 6}),
                                         metric.as_grad_metric(true), static_cast<mechlens::model_parameters*>(nullptr),
                                         other_cache);
        const std::vector<float>& other_x = other_cache.cache().at(where).values;
        struct base_case {
            mechlens::ig_baseline baseline;
            const std::vector<float>* values;  // one prompt's worth, shared by both prompts
        };
        const base_case bases[] = {{mechlens::ig_baseline::from_activation(shared), &shared.values},
                                   {mechlens::ig_baseline::from_tokens({other.data(), {1, 6}}), &other_x}};
        for (const base_case& b : bases)
            for (integration_rule rule :
                 {integration_rule::gauss_legendre, integration_rule::riemann_left, integration_rule::riemann_right,
                  integration_rule::riemann_middle, integration_rule::riemann_trapezoid})
                for (index_t steps : {2, 3, 7}) {
                    INFO(mechlens::to_string(where) << ", " << mechlens::to_string(rule) << ", " << steps);
                    mechlens::integrated_gradients_options options;
                    options.rule = rule;
                    options.steps = steps;
                    options.batch_steps = 2;
                    const auto r = mechlens::integrated_gradients(params, tokens, metric, where, b.baseline, options);
                    REQUIRE(r.attributions.shape == x.shape);
                    const std::size_t half = x.values.size() / 2;
                    double diff = 0.0, scale = 0.0;
                    for (std::size_t i = 0; i < x.values.size(); ++i) {
                        const double expected =
                            static_cast<double>(g.values[i]) *
                            (static_cast<double>(x.values[i]) - static_cast<double>((*b.values)[i % half]));
                        diff = std::max(diff, std::abs(static_cast<double>(r.attributions.values[i]) - expected));
                        scale = std::max(scale, std::abs(expected));
                    }
                    CHECK(scale > 1e-3);
                    CHECK(diff <= 1e-5 * scale);  // float passes of different batch sizes: rounding only
                    worst = std::max(worst, diff / scale);
                    for (double e : r.completeness_errors) {
                        CHECK(std::abs(e) <= 1e-5);
                        worst_completeness = std::max(worst_completeness, std::abs(e));
                    }
                    CHECK(r.input_values.size() == 2);
                    CHECK(r.input_values[0] != r.input_values[1]);
                }
    }
    WARN("linear case: worst relative difference from gradient x (x - baseline) "
         << worst << ", worst |completeness error| " << worst_completeness);
}

TEST_CASE("ig: chunked steps agree with one pass; saliency and gradient x input", "[ig]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const stories_case s(stories_bin);
    // Two prompts of the same length: the reference prompt and its reverse (after BOS), each with its own answer.
    std::vector<std::int32_t> ids = s.ids;
    std::vector<std::int32_t> reversed(s.ids.begin(), s.ids.end());
    std::reverse(reversed.begin() + 1, reversed.end());
    ids.insert(ids.end(), reversed.begin(), reversed.end());
    const index_t n = static_cast<index_t>(s.ids.size());
    const mechlens::tensor_view<const std::int32_t, 2> tokens(ids.data(), {2, n});
    const auto metric = mechlens::answer_metric::logit_difference({s.metric.correct[0], 300}, {s.metric.wrong[0], 262});
    const site where{site_kind::resid_pre, 3};

    SECTION("batch_steps 1, 3 and 0 (all) give the same attributions up to float rounding") {
        auto run = [&](index_t batch_steps, std::vector<index_t>* progress) {
            mechlens::integrated_gradients_options options;
            options.steps = 7;
            options.batch_steps = batch_steps;
            if (progress != nullptr)
                options.progress = [progress](index_t done, index_t total) {
                    CHECK(total == 7);
                    progress->push_back(done);
                };
            return mechlens::integrated_gradients(s.params, tokens, metric, where,
                                                  mechlens::ig_baseline::repeated_token(0), options);
        };
        std::vector<index_t> progress;
        const auto one = run(1, nullptr), three = run(3, &progress), all = run(0, nullptr);
        CHECK(progress == std::vector<index_t>{3, 6, 7});
        CHECK(relative_error(as_doubles(three.attributions.values), as_doubles(one.attributions.values)) <= 1e-5);
        CHECK(relative_error(as_doubles(all.attributions.values), as_doubles(one.attributions.values)) <= 1e-5);
        CHECK(relative_error(as_doubles(all.per_position), as_doubles(one.per_position)) <= 1e-5);
        CHECK(all.input_values == one.input_values);
        // Each prompt is attributed with its own metric: the two prompts' totals differ.
        REQUIRE(all.totals.size() == 2);
        CHECK(std::abs(all.totals[0] - all.totals[1]) > 1e-3);
        double mean_error = 0.0;
        for (double e : all.completeness_errors) mean_error += e / 2.0;
        CHECK(all.completeness_error == Approx(mean_error));
    }

    SECTION("saliency is |gradient| and gradient x input is gradient * x, per prompt") {
        mechlens::caching_hooks<> activations;
        mechlens::gradient_cache<> gradients;
        auto both = mechlens::compose(activations, gradients);
        (void)mechlens::forward_backward(s.params, tokens, metric.as_grad_metric(true),
                                         static_cast<mechlens::model_parameters*>(nullptr), both);
        const mechlens::cached_activation& g = gradients.cache().at(where);
        const mechlens::cached_activation& x = activations.cache().at(where);
        const auto sal = mechlens::saliency(s.params, tokens, metric, where);
        const auto gxi = mechlens::gradient_times_input(s.params, tokens, metric, where);
        REQUIRE(sal.values.shape == g.shape);
        REQUIRE(gxi.values.shape == g.shape);
        double saliency_diff = 0.0, product_diff = 0.0, scale = 0.0;
        for (std::size_t i = 0; i < g.values.size(); ++i) {
            saliency_diff =
                std::max(saliency_diff, static_cast<double>(std::abs(sal.values.values[i] - std::abs(g.values[i]))));
            product_diff =
                std::max(product_diff, std::abs(static_cast<double>(gxi.values.values[i]) -
                                                static_cast<double>(g.values[i]) * static_cast<double>(x.values[i])));
            scale = std::max(scale, static_cast<double>(std::abs(g.values[i] * x.values[i])));
        }
        CHECK(saliency_diff == 0.0);
        CHECK(product_diff <= 1e-6 * scale);
        CHECK(scale > 1e-3);
        // Per-position sums are sums over d_model.
        for (index_t b = 0; b < 2; ++b)
            for (index_t p = 0; p < n; ++p) {
                double sum = 0.0;
                for (index_t i = 0; i < g.shape[2]; ++i)
                    sum +=
                        static_cast<double>(gxi.values.values[static_cast<std::size_t>((b * n + p) * g.shape[2] + i)]);
                CHECK(std::abs(gxi.per_position(b, p) - sum) <= 1e-6 * (1.0 + std::abs(sum)));
            }
        // Gradient x input is integrated gradients with a zero baseline and the single node alpha = 1.
        mechlens::integrated_gradients_options options;
        options.rule = integration_rule::riemann_right;
        options.steps = 1;
        const auto ig =
            mechlens::integrated_gradients(s.params, tokens, metric, where, mechlens::ig_baseline::zeros(), options);
        CHECK(relative_error(as_doubles(ig.attributions.values), as_doubles(gxi.values.values)) <= 1e-6);
        CHECK(sal.input_values == gxi.input_values);
    }
}

TEST_CASE("ig: bad input throws clear errors", "[ig][errors]") {
    const mechlens::model_config c = tiny_config();  // rotary positions, no norms
    const mechlens::model_parameters params = tiny_model(c, 5);
    const std::vector<std::int32_t> ids{1, 5, 9, 2, 11, 5, 3, 12, 7, 1, 4, 6};
    const mechlens::tensor_view<const std::int32_t, 2> tokens(ids.data(), {2, 6});
    const auto metric = mechlens::answer_metric::logit_difference({3, 8}, {7, 0});
    const auto zeros = mechlens::ig_baseline::zeros();
    using Catch::Matchers::Contains;
    auto run = [&](const site& where, const mechlens::ig_baseline& baseline = mechlens::ig_baseline::zeros(),
                   index_t steps = 4) {
        mechlens::integrated_gradients_options options;
        options.steps = steps;
        return mechlens::integrated_gradients(params, tokens, metric, where, baseline, options);
    };
    CHECK_THROWS_WITH(run(site{site_kind::pos_embed, -1}), Contains("rotary"));
    CHECK_THROWS_AS(run(site{site_kind::pos_embed, -1}), std::invalid_argument);
    CHECK_THROWS_WITH(run(site{site_kind::ln1_scale, 0}), Contains("no normalisation"));
    CHECK_THROWS_WITH(run(site{site_kind::attn_result, 0}), Contains("hook_z"));
    CHECK_THROWS_WITH(run(site{site_kind::attn_scores, 0}), Contains("-inf"));
    CHECK_THROWS_WITH(run(site{site_kind::resid_pre, 2}), Contains("2 layers"));
    CHECK_THROWS_WITH(run(site{site_kind::embed, 0}), Contains("global"));
    CHECK_THROWS_AS(run(site{site_kind::embed, -1}, zeros, 0), std::invalid_argument);
    CHECK_THROWS_AS(mechlens::saliency(params, tokens, metric, site{site_kind::pos_embed, -1}), std::invalid_argument);
    CHECK_THROWS_AS(mechlens::gradient_times_input(params, tokens, metric, site{site_kind::attn_z, 9}),
                    std::invalid_argument);

    mechlens::cached_activation wrong;
    wrong.shape = {2, 5, c.d_model};  // 5 positions, the prompts have 6
    wrong.values.assign(static_cast<std::size_t>(2 * 5 * c.d_model), 0.0f);
    CHECK_THROWS_AS(run(site{site_kind::embed, -1}, mechlens::ig_baseline::from_activation(wrong)),
                    mechlens::shape_error);
    wrong.shape = {2, 6, c.d_model};  // the right shape, too few values
    CHECK_THROWS_AS(run(site{site_kind::embed, -1}, mechlens::ig_baseline::from_activation(wrong)),
                    mechlens::shape_error);
    const std::vector<std::int32_t> short_ids{1, 2, 3};
    CHECK_THROWS_AS(run(site{site_kind::embed, -1}, mechlens::ig_baseline::from_tokens({short_ids.data(), {1, 3}})),
                    mechlens::shape_error);
    CHECK_THROWS_WITH(run(site{site_kind::embed, -1}, mechlens::ig_baseline::repeated_token(13)),
                      Contains("outside [0, 13)"));

    const auto three = mechlens::answer_metric::logit_difference({1, 2, 3}, {4, 5, 6});
    CHECK_THROWS_WITH(mechlens::integrated_gradients(params, tokens, three, site{site_kind::embed, -1}),
                      Contains("multiple"));
    mechlens::integrated_gradients_options negative;
    negative.batch_steps = -1;
    CHECK_THROWS_AS(mechlens::integrated_gradients(params, tokens, metric, site{site_kind::embed, -1}, zeros, negative),
                    std::invalid_argument);
    // And the valid neighbours of those calls work.
    CHECK_NOTHROW(run(site{site_kind::resid_pre, 1}));
    CHECK_NOTHROW(run(site{site_kind::attn_pattern, 0}, mechlens::ig_baseline::repeated_token(12)));
}

}  // namespace test_integrated_gradients
