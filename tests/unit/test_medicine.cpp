// Model medicine's maths: logistic-regression probes (checked by the optimality conditions of the regularised loss,
// written here in long double, and by recovering a planted direction) and contrastive directions (checked against
// means and an independent power iteration on the differences' covariance).
#include <mechlens/mechlens.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "test_support.hpp"

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_medicine {

using mechlens::index_t;

namespace {

/// A standard normal draw (Box-Muller) from the library's generator.
double normal(mechlens::random_generator& rng) {
    const double u1 = 1.0 - rng.uniform(), u2 = rng.uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

/// Rows and labels drawn from a logistic model: x ~ N(0, I), P(y = 1 | x) = sigmoid(w . x + b).
struct labelled_rows {
    std::vector<float> rows;  // (n, d)
    std::vector<int> labels;  // (n)
    index_t n = 0, d = 0;
    [[nodiscard]] mechlens::tensor_view<const float, 2> view() const {
        return mechlens::tensor_view<const float, 2>(rows.data(), {n, d});
    }
};

labelled_rows logistic_data(index_t n, const std::vector<double>& w, double b, std::uint64_t seed) {
    mechlens::random_generator rng(seed);
    labelled_rows out;
    out.n = n;
    out.d = static_cast<index_t>(w.size());
    for (index_t r = 0; r < n; ++r) {
        double z = b;
        for (double wi : w) {
            const auto x = static_cast<float>(normal(rng));
            out.rows.push_back(x);
            z += wi * static_cast<double>(x);
        }
        out.labels.push_back(rng.uniform() < 1.0 / (1.0 + std::exp(-z)) ? 1 : 0);
    }
    return out;
}

/// The gradient of the regularised loss at (w, b) in long double, straight from its definition (bias last).
std::vector<long double> loss_gradient(const labelled_rows& data, const std::vector<double>& w, double b, double l2) {
    std::vector<long double> g(w.size() + 1, 0.0L);
    for (index_t r = 0; r < data.n; ++r) {
        auto z = static_cast<long double>(b);
        for (index_t i = 0; i < data.d; ++i)
            z += static_cast<long double>(w[static_cast<std::size_t>(i)]) *
                 static_cast<long double>(data.rows[static_cast<std::size_t>(r * data.d + i)]);
        const long double p = 1.0L / (1.0L + std::exp(-z));
        const long double residual = p - static_cast<long double>(data.labels[static_cast<std::size_t>(r)]);
        for (index_t i = 0; i < data.d; ++i)
            g[static_cast<std::size_t>(i)] +=
                residual * static_cast<long double>(data.rows[static_cast<std::size_t>(r * data.d + i)]);
        g.back() += residual;
    }
    for (std::size_t i = 0; i < g.size(); ++i) {
        g[i] /= static_cast<long double>(data.n);
        if (i < w.size()) g[i] += static_cast<long double>(l2) * static_cast<long double>(w[i]);
    }
    return g;
}

double cosine(const std::vector<double>& a, const std::vector<double>& b) {
    double ab = 0, aa = 0, bb = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        ab += a[i] * b[i];
        aa += a[i] * a[i];
        bb += b[i] * b[i];
    }
    return ab / std::sqrt(aa * bb);
}

}  // namespace

TEST_CASE("probe: Newton's method reaches the regularised loss's unique minimum", "[medicine][probe]") {
    const std::vector<double> planted{1.5, -2.0, 0.5, 0.0, 3.0, -0.7, 0.2, 1.1};
    const labelled_rows data = logistic_data(3000, planted, 0.4, 7);
    for (const double l2 : {1e-1, 1e-3, 1e-6}) {
        mechlens::probe_options options;
        options.l2 = l2;
        const mechlens::logistic_probe probe = mechlens::fit_logistic_probe(data.view(), data.labels, options);
        INFO("l2 " << l2 << ": " << probe.iterations << " Newton steps, loss " << probe.loss);
        CHECK(probe.converged);
        CHECK(probe.iterations <= 12);
        // Optimality, computed independently: every entry of the gradient vanishes.
        const std::vector<long double> g = loss_gradient(data, probe.weights, probe.bias, l2);
        long double worst = 0;
        for (long double gi : g) worst = std::max(worst, std::abs(gi));
        INFO("largest gradient entry (long double) " << static_cast<double>(worst));
        CHECK(worst <= 1.001e-10L);  // the fit's tolerance, 1e-10, plus rounding
        // The planted direction is found (weak regularisation), and shrinks as l2 grows.
        if (l2 <= 1e-3) CHECK(cosine(probe.weights, planted) > 0.99);
    }
    // Deterministic: the same rows give the same probe bit for bit.
    const auto a = mechlens::fit_logistic_probe(data.view(), data.labels);
    const auto b = mechlens::fit_logistic_probe(data.view(), data.labels);
    CHECK(a.weights == b.weights);
    CHECK(a.bias == b.bias);
}

TEST_CASE("probe: held-out accuracy on a split, separable data, and bad input", "[medicine][probe]") {
    const std::vector<double> planted{2.0, -1.0, 0.0, 0.5};
    const labelled_rows data = logistic_data(2000, planted, -0.3, 11);
    const mechlens::probe_split split = mechlens::probe_split::make(data.n, 0.25, 3);
    CHECK(split.held_out.size() == 500);
    CHECK(split.train.size() + split.held_out.size() == 2000);
    CHECK(std::is_sorted(split.train.begin(), split.train.end()));
    auto subset = [&](const std::vector<index_t>& rows, std::vector<float>& x, std::vector<int>& y) {
        for (index_t r : rows) {
            for (index_t i = 0; i < data.d; ++i) x.push_back(data.rows[static_cast<std::size_t>(r * data.d + i)]);
            y.push_back(data.labels[static_cast<std::size_t>(r)]);
        }
        return mechlens::tensor_view<const float, 2>(x.data(), {static_cast<index_t>(rows.size()), data.d});
    };
    std::vector<float> train_x, held_x;
    std::vector<int> train_y, held_y;
    const auto train = subset(split.train, train_x, train_y);
    const auto held = subset(split.held_out, held_x, held_y);
    const mechlens::logistic_probe probe = mechlens::fit_logistic_probe(train, train_y);
    const mechlens::probe_evaluation on_held = mechlens::evaluate_probe(probe, held, held_y);
    // The best possible accuracy is the planted model's own, measured on the same held-out rows.
    mechlens::logistic_probe truth;
    truth.weights = planted;
    truth.bias = -0.3;
    const mechlens::probe_evaluation bayes = mechlens::evaluate_probe(truth, held, held_y);
    INFO("held-out accuracy " << on_held.accuracy << " (planted model " << bayes.accuracy << "), log-loss "
                              << on_held.log_loss << " (" << bayes.log_loss << ")");
    CHECK(on_held.accuracy > bayes.accuracy - 0.02);
    CHECK(on_held.log_loss < bayes.log_loss + 0.02);

    // Linearly separable rows: without the penalty the weights would grow for ever; with it the fit converges and
    // classifies every row.
    std::vector<float> rows;
    std::vector<int> labels;
    for (int r = 0; r < 40; ++r) {
        const float t = static_cast<float>(r - 20) + 0.5f;
        rows.insert(rows.end(), {t, 0.25f * static_cast<float>(r % 3)});
        labels.push_back(t > 0 ? 1 : 0);
    }
    const mechlens::tensor_view<const float, 2> separable(rows.data(), {40, 2});
    mechlens::probe_options tiny;
    tiny.l2 = 1e-6;
    const mechlens::logistic_probe sharp = mechlens::fit_logistic_probe(separable, labels, tiny);
    CHECK(sharp.converged);
    CHECK(mechlens::evaluate_probe(sharp, separable, labels).accuracy == 1.0);

    // Bad input is an error that says what is wrong.
    std::vector<int> short_labels(labels.begin(), labels.end() - 1);
    CHECK_THROWS_WITH(mechlens::fit_logistic_probe(separable, short_labels), Catch::Contains("39 labels for 40 rows"));
    std::vector<int> three = labels;
    three[0] = 2;
    CHECK_THROWS_WITH(mechlens::fit_logistic_probe(separable, three), Catch::Contains("labels must be 0 or 1"));
    mechlens::probe_options none;
    none.l2 = 0.0;
    CHECK_THROWS_WITH(mechlens::fit_logistic_probe(separable, labels, none), Catch::Contains("l2 must be"));
    CHECK_THROWS_AS(mechlens::evaluate_probe(probe, separable, labels), mechlens::shape_error);
    CHECK_THROWS_AS(mechlens::probe_split::make(10, 1.0, 0), std::invalid_argument);
}

namespace {

/// The top eigenvector of the centred paired differences' covariance by power iteration in long double.
std::vector<double> power_iteration_direction(const std::vector<float>& pos, const std::vector<float>& neg, index_t n,
                                              index_t d) {
    std::vector<long double> mean(static_cast<std::size_t>(d), 0.0L), c(static_cast<std::size_t>(d * d), 0.0L);
    auto diff = [&](index_t r, index_t i) {
        const auto k = static_cast<std::size_t>(r * d + i);
        return static_cast<long double>(pos[k]) - static_cast<long double>(neg[k]);
    };
    for (index_t r = 0; r < n; ++r)
        for (index_t i = 0; i < d; ++i) mean[static_cast<std::size_t>(i)] += diff(r, i) / static_cast<long double>(n);
    for (index_t r = 0; r < n; ++r)
        for (index_t i = 0; i < d; ++i)
            for (index_t j = 0; j < d; ++j)
                c[static_cast<std::size_t>(i * d + j)] +=
                    (diff(r, i) - mean[static_cast<std::size_t>(i)]) * (diff(r, j) - mean[static_cast<std::size_t>(j)]);
    std::vector<long double> v(static_cast<std::size_t>(d), 1.0L), next(v.size());
    for (int iteration = 0; iteration < 5000; ++iteration) {
        long double norm = 0;
        for (index_t i = 0; i < d; ++i) {
            long double s = 0;
            for (index_t j = 0; j < d; ++j)
                s += c[static_cast<std::size_t>(i * d + j)] * v[static_cast<std::size_t>(j)];
            next[static_cast<std::size_t>(i)] = s;
            norm += s * s;
        }
        norm = std::sqrt(norm);
        for (std::size_t i = 0; i < v.size(); ++i) v[i] = next[i] / norm;
    }
    return std::vector<double>(v.begin(), v.end());
}

}  // namespace

TEST_CASE("contrastive directions: difference of means, and the first principal component of the differences",
          "[medicine][direction]") {
    // Pairs that differ along a planted axis by a varying amount, plus noise, around a shared mean shift.
    for (const index_t n : {6, 40}) {  // fewer rows than width (the n x n Gram path), and more
        const index_t d = 12;
        mechlens::random_generator rng(static_cast<std::uint64_t>(n));
        std::vector<double> axis(static_cast<std::size_t>(d));
        for (double& a : axis) a = normal(rng);
        std::vector<float> pos, neg;
        for (index_t r = 0; r < n; ++r) {
            const double amount = 1.0 + 3.0 * normal(rng);
            for (index_t i = 0; i < d; ++i) {
                const double base = normal(rng);
                neg.push_back(static_cast<float>(base));
                pos.push_back(
                    static_cast<float>(base + 0.5 + amount * axis[static_cast<std::size_t>(i)] + 0.1 * normal(rng)));
            }
        }
        const mechlens::tensor_view<const float, 2> p(pos.data(), {n, d}), q(neg.data(), {n, d});
        const auto mean = mechlens::find_contrastive_direction(p, q, mechlens::direction_method::mean_difference);
        for (index_t i = 0; i < d; ++i) {
            double expected = 0;
            for (index_t r = 0; r < n; ++r)
                expected += static_cast<double>(pos[static_cast<std::size_t>(r * d + i)]) -
                            static_cast<double>(neg[static_cast<std::size_t>(r * d + i)]);
            CHECK(mean.direction[static_cast<std::size_t>(i)] ==
                  Approx(expected / static_cast<double>(n)).epsilon(1e-12));
        }
        const auto pca = mechlens::find_contrastive_direction(p, q, mechlens::direction_method::pca);
        const std::vector<double> reference = power_iteration_direction(pos, neg, n, d);
        const double agreement = std::abs(cosine(pca.direction, reference));
        INFO(n << " pairs: |cos| with power iteration " << agreement << ", explained variance "
               << pca.explained_variance);
        CHECK(agreement > 1.0 - 1e-12);
        CHECK(cosine(pca.direction, pca.direction) == Approx(1.0));
        double along = 0;
        for (index_t i = 0; i < d; ++i)
            along += pca.direction[static_cast<std::size_t>(i)] * mean.direction[static_cast<std::size_t>(i)];
        CHECK(along >= 0.0);
        CHECK(std::abs(cosine(pca.direction, axis)) > 0.99);
        CHECK(pca.explained_variance > 0.9);
        CHECK(pca.explained_variance <= 1.0);
    }
    // Mismatched sets are errors.
    std::vector<float> a(12, 1.0f), b(8, 0.0f);
    const mechlens::tensor_view<const float, 2> three(a.data(), {3, 4}), two(b.data(), {2, 4});
    CHECK_NOTHROW(mechlens::find_contrastive_direction(three, two));
    CHECK_THROWS_WITH(mechlens::find_contrastive_direction(three, two, mechlens::direction_method::pca),
                      Catch::Contains("as many positive as negative rows"));
    const mechlens::tensor_view<const float, 2> wide(a.data(), {2, 6});
    CHECK_THROWS_AS(mechlens::find_contrastive_direction(wide, two), mechlens::shape_error);
}

namespace {

/// A small model of each family the edit must handle: LLaMA (RMSNorm, rotary, gated MLP, tied embedding), GPT-2
/// (LayerNorm, biases, learned positions, untied) and GPT-NeoX-style parallel attention and MLP.
std::vector<std::pair<const char*, mechlens::model_config>> ablation_models() {
    mechlens::model_config llama;
    llama.d_model = 16;
    llama.n_layers = 3;
    llama.n_heads = 4;
    llama.n_kv_heads = 2;
    llama.d_mlp = 24;
    llama.d_vocab = 21;
    llama.n_ctx = 16;
    mechlens::model_config gpt2 = llama;
    gpt2.n_kv_heads = 4;
    gpt2.norm = mechlens::norm_kind::layer;
    gpt2.positions = mechlens::positional_kind::learned;
    gpt2.mlp = mechlens::mlp_kind::plain_gelu;
    gpt2.linear_biases = true;
    gpt2.tied_unembed = false;
    mechlens::model_config parallel = gpt2;
    parallel.parallel_attn_mlp = true;
    parallel.positions = mechlens::positional_kind::rotary;
    return {{"llama, tied", llama}, {"gpt-2", gpt2}, {"parallel attention and MLP", parallel}};
}

/// Largest |logit difference| of two logit tensors.
double largest_difference(const mechlens::tensor<float, 3>& a, const mechlens::tensor<float, 3>& b) {
    double worst = 0;
    const auto x = a.view(), y = b.view();
    for (index_t i = 0; i < x.extent(0); ++i)
        for (index_t p = 0; p < x.extent(1); ++p)
            for (index_t v = 0; v < x.extent(2); ++v)
                worst = std::max(worst, std::abs(static_cast<double>(x(i, p, v)) - static_cast<double>(y(i, p, v))));
    return worst;
}

/// Checks that runtime ablation leaves no component along `r` in any residual stream, and that the orthogonalised
/// weights give the runtime-ablated logits; returns the largest logit difference.
double check_ablation(const mechlens::loaded_model& loaded, const std::vector<float>& r,
                      const std::vector<std::int32_t>& prompt) {
    const mechlens::model_config& c = loaded.config;
    const mechlens::transformer model(loaded);
    const mechlens::tensor_view<const std::int32_t, 2> tokens(prompt.data(), {1, static_cast<index_t>(prompt.size())});
    mechlens::direction_ablation_hooks ablate(r, c.d_model, c.n_layers);
    mechlens::caching_hooks<> cache;
    const auto ablated = mechlens::forward_logits(model, tokens, mechlens::compose(ablate, cache));
    const mechlens::activation_cache cached = cache.take();
    double norm = 0;
    for (float v : r) norm += static_cast<double>(v) * static_cast<double>(v);
    norm = std::sqrt(norm);
    for (index_t layer = 0; layer < c.n_layers; ++layer) {
        const auto& resid = cached.at(mechlens::site{mechlens::site_kind::resid_post, layer});
        for (std::size_t row = 0; row * static_cast<std::size_t>(c.d_model) < resid.values.size(); ++row) {
            double along = 0, length = 0;
            for (index_t i = 0; i < c.d_model; ++i) {
                const auto x = static_cast<double>(
                    resid.values[row * static_cast<std::size_t>(c.d_model) + static_cast<std::size_t>(i)]);
                along += x * static_cast<double>(r[static_cast<std::size_t>(i)]) / norm;
                length += x * x;
            }
            INFO("layer " << layer << " row " << row << ": component " << along << " of a row of norm "
                          << std::sqrt(length));
            CHECK(std::abs(along) <= 1e-6 * (1.0 + std::sqrt(length)));
        }
    }
    const auto plain = mechlens::forward_logits(model, tokens);
    CHECK(largest_difference(plain, ablated) > 1e-3);  // the edit does something

    const mechlens::model_parameters original(c, loaded.weights);
    const mechlens::model_parameters edited = mechlens::orthogonalize_weights(original, r);
    CHECK_FALSE(edited.config().tied_unembed);
    const mechlens::transformer baked(mechlens::loaded_model{edited.config(), edited.weights()});
    return largest_difference(mechlens::forward_logits(baked, tokens), ablated);
}

}  // namespace

TEST_CASE("directional ablation: no residual stream keeps the direction, and the orthogonalised weights agree",
          "[medicine][ablation]") {
    for (const auto& [name, config] : ablation_models()) {
        const mechlens::loaded_model loaded = mechlens::random_model(config, 5, 0.3f);
        mechlens::random_generator rng(9);
        std::vector<float> r(static_cast<std::size_t>(config.d_model));
        for (float& v : r) v = static_cast<float>(normal(rng));
        const double gap = check_ablation(loaded, r, {1, 4, 9, 16, 3, 7, 12, 2});
        INFO(name << ": largest |logit difference| between baked and runtime ablation " << gap);
        CHECK(gap <= 1e-4);
    }
    // Bad directions and layers are errors.
    const std::vector<float> zero(16, 0.0f), short_one(15, 1.0f);
    CHECK_THROWS_AS(mechlens::direction_ablation_hooks(zero, 16, 3), std::invalid_argument);
    CHECK_THROWS_AS(mechlens::direction_ablation_hooks(short_one, 16, 3), mechlens::shape_error);
    const std::vector<float> ones(16, 1.0f);
    CHECK_THROWS_WITH(mechlens::direction_ablation_hooks(ones, 16, 3, {3}), Catch::Contains("layer 3 is out of range"));
}

TEST_CASE("directional ablation on stories260K: the baked model written and read back agrees with the runtime edit",
          "[medicine][ablation][real]") {
    const auto path = mechlens_test::model_file("stories260K/stories260K.bin");
    MECHLENS_REQUIRE_FILE_OR_SKIP(path);
    const mechlens::loaded_model loaded = mechlens::load_model(path);
    const mechlens::model_config& c = loaded.config;
    // The direction: the difference of two token embeddings (a real, model-made direction).
    const mechlens::transformer model(loaded);
    std::vector<float> r(static_cast<std::size_t>(c.d_model));
    for (index_t i = 0; i < c.d_model; ++i)
        r[static_cast<std::size_t>(i)] =
            model.weights().token_embedding(400, i) - model.weights().token_embedding(300, i);
    const std::vector<std::int32_t> prompt{1, 403, 407, 261, 378, 5, 90, 400, 300};
    const double gap = check_ablation(loaded, r, prompt);
    INFO("stories260K: largest |logit difference| " << gap);
    CHECK(gap <= 1e-4);
    // Written as a checkpoint and opened again by load_model: the same logits, bit for bit.
    const mechlens::model_parameters edited =
        mechlens::orthogonalize_weights(mechlens::model_parameters(c, loaded.weights), r);
    const auto file = mechlens_test::scratch_dir() / "stories260K_orthogonalized.safetensors";
    mechlens::save_checkpoint(file, edited);
    const mechlens::transformer reopened(mechlens::load_model(file));
    const mechlens::transformer baked(mechlens::loaded_model{edited.config(), edited.weights()});
    const mechlens::tensor_view<const std::int32_t, 2> tokens(prompt.data(), {1, static_cast<index_t>(prompt.size())});
    CHECK(largest_difference(mechlens::forward_logits(reopened, tokens), mechlens::forward_logits(baked, tokens)) ==
          0.0);
}

TEST_CASE("control vectors: written as llama.cpp reads them, read back, and applied at block N's output",
          "[medicine][control_vector]") {
    mechlens::control_vector cv;
    cv.model_hint = "llama";
    for (index_t block : {1, 2}) {
        std::vector<float> v(16);
        for (std::size_t i = 0; i < v.size(); ++i)
            v[i] = 0.25f * static_cast<float>(block) - 0.01f * static_cast<float>(i);
        cv.directions.emplace(block, v);
    }
    const auto path = mechlens_test::scratch_dir() / "control.gguf";
    mechlens::write_control_vector(path, cv);

    // The generic GGUF reader sees what llama.cpp's loader checks.
    const mechlens::gguf_file file(path);
    CHECK(file.version() == 3);
    CHECK(file.get_string("general.architecture") == "controlvector");
    CHECK(file.get_string("controlvector.model_hint") == "llama");
    CHECK(file.get_int("controlvector.layer_count") == 2);
    CHECK(file.at("controlvector.layer_count").type() == mechlens::gguf_type::int32);
    REQUIRE(file.tensors().size() == 2);
    CHECK(file.tensors()[0].name == "direction.1");
    CHECK(file.tensors()[0].type == mechlens::ggml_type::f32);
    CHECK(file.tensors()[0].dims == std::vector<std::uint64_t>{16});
    CHECK(file.tensors()[1].offset % file.alignment() == 0);
    const mechlens::control_vector back = mechlens::read_control_vector(path);
    CHECK(back.model_hint == "llama");
    CHECK(back.directions == cv.directions);

    // direction.N goes to blocks.N.hook_resid_post, scaled by the strength.
    mechlens::steer_hooks<> steer;
    mechlens::add_control_vector(steer, back, 0.5f, 16, 3);
    REQUIRE(steer.targets().size() == 2);
    CHECK(steer.targets()[0].target == mechlens::site{mechlens::site_kind::resid_post, 1});
    CHECK(steer.targets()[1].target == mechlens::site{mechlens::site_kind::resid_post, 2});
    CHECK(steer.targets()[1].scaled[3] == 0.5f * cv.directions.at(2)[3]);
    // Applied in a forward pass: block 1's output moves by exactly strength * direction.1 (block 0's does not).
    const mechlens::model_config config = ablation_models().front().second;
    const mechlens::transformer model(mechlens::random_model(config, 5, 0.3f));
    const std::vector<std::int32_t> prompt{1, 4, 9, 16};
    const mechlens::tensor_view<const std::int32_t, 2> tokens(prompt.data(), {1, 4});
    mechlens::caching_hooks<> plain_cache, steered_cache;
    (void)mechlens::forward_logits(model, tokens, plain_cache);
    (void)mechlens::forward_logits(model, tokens, mechlens::compose(steer, steered_cache));
    const auto plain = plain_cache.take(), steered = steered_cache.take();
    const mechlens::site block0{mechlens::site_kind::resid_post, 0}, block1{mechlens::site_kind::resid_post, 1};
    CHECK(steered.at(block0).values == plain.at(block0).values);
    const auto& before = plain.at(block1).values;
    const auto& after = steered.at(block1).values;
    for (std::size_t k = 0; k < before.size(); ++k) CHECK(after[k] == before[k] + 0.5f * cv.directions.at(1)[k % 16]);

    // What llama.cpp refuses, we refuse.
    mechlens::control_vector zero = cv;
    zero.directions.emplace(0, std::vector<float>(16, 1.0f));
    CHECK_THROWS_WITH(mechlens::write_control_vector(path, zero), Catch::Contains("block 0"));
    mechlens::control_vector ragged = cv;
    ragged.directions.emplace(3, std::vector<float>(15, 1.0f));
    CHECK_THROWS_AS(mechlens::write_control_vector(path, ragged), std::invalid_argument);
    CHECK_THROWS_AS(mechlens::add_control_vector(steer, cv, 1.0f, 12, 3), mechlens::shape_error);
    CHECK_THROWS_WITH(mechlens::add_control_vector(steer, cv, 1.0f, 16, 2), Catch::Contains("direction.2"));
    const auto not_cv = mechlens_test::scratch_dir() / "not_control.gguf";
    mechlens::write_gguf(
        not_cv, {{"general.architecture", mechlens::gguf_value(mechlens::gguf_type::string, std::string("llama"))}},
        {});
    CHECK_THROWS_WITH(mechlens::read_control_vector(not_cv), Catch::Contains("not a control vector"));
    const std::vector<float> four(4, 1.0f);
    const auto zeroth = mechlens_test::scratch_dir() / "zeroth.gguf";
    mechlens::write_gguf(
        zeroth,
        {{"general.architecture", mechlens::gguf_value(mechlens::gguf_type::string, std::string("controlvector"))}},
        {{"direction.0", {4}, four}});
    CHECK_THROWS_WITH(mechlens::read_control_vector(zeroth), Catch::Contains("block 0 never receives"));
}

TEST_CASE("collect_rows: one row per prompt, equal to the row of a full cache", "[medicine][activations]") {
    const mechlens::model_config config = ablation_models()[1].second;  // GPT-2-style: learned positions
    const mechlens::transformer model(mechlens::random_model(config, 5, 0.3f));
    const std::vector<std::vector<std::int32_t>> prompts{{1, 4, 9}, {1, 2, 3, 4, 5, 6}, {7}};
    const std::vector<mechlens::site> sites{{mechlens::site_kind::resid_post, 1}, {mechlens::site_kind::attn_z, 0}};
    std::size_t reported = 0;
    const auto rows = mechlens::collect_rows(model, prompts, sites, -1, [&](std::size_t done, std::size_t total) {
        CHECK(total == 3);
        reported = done;
    });
    CHECK(reported == 3);
    REQUIRE(rows.size() == 2);
    CHECK(rows[0].values.extent(0) == 3);
    CHECK(rows[0].values.extent(1) == config.d_model);
    CHECK(rows[1].values.extent(1) == config.n_heads * config.d_head());
    for (std::size_t p = 0; p < prompts.size(); ++p) {
        mechlens::caching_hooks<> everything;
        const auto& ids = prompts[p];
        (void)mechlens::forward_logits(
            model, mechlens::tensor_view<const std::int32_t, 2>(ids.data(), {1, static_cast<index_t>(ids.size())}),
            everything);
        const mechlens::activation_cache full = everything.take();
        for (const mechlens::site_rows& r : rows) {
            const auto& a = full.at(r.where);
            const index_t width = r.values.extent(1);
            const std::size_t last = (ids.size() - 1) * static_cast<std::size_t>(width);
            for (index_t i = 0; i < width; ++i)
                CHECK(r.values(static_cast<index_t>(p), i) == a.values[last + static_cast<std::size_t>(i)]);
        }
    }
    // A chosen position, and what cannot be collected.
    const auto first = mechlens::collect_rows(model, {{1, 4, 9}}, {sites[0]}, 0);
    CHECK(first[0].values.extent(0) == 1);
    CHECK_THROWS_WITH(mechlens::collect_rows(model, prompts, {sites[0]}, 3), Catch::Contains("past its end"));
    CHECK_THROWS_WITH(mechlens::collect_rows(model, {{}}, {sites[0]}), Catch::Contains("is empty"));
    CHECK_THROWS_AS(mechlens::collect_rows(model, prompts, {{mechlens::site_kind::attn_pattern, 0}}),
                    std::invalid_argument);
}

TEST_CASE("steering with the norm preserved: only the direction of each steered row changes", "[medicine][steering]") {
    const mechlens::model_config config = ablation_models().front().second;
    const mechlens::transformer model(mechlens::random_model(config, 5, 0.3f));
    const std::vector<std::int32_t> prompt{1, 4, 9, 16, 3};
    const mechlens::tensor_view<const std::int32_t, 2> tokens(prompt.data(), {1, 5});
    std::vector<float> v(static_cast<std::size_t>(config.d_model));
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = std::sin(static_cast<float>(i));
    const mechlens::site host{mechlens::site_kind::resid_post, 1};
    // Reference: the clean row x, then (x + 4 v) * ||x|| / ||x + 4 v|| in double, from position 2 on.
    mechlens::caching_hooks<> clean_cache;
    (void)mechlens::forward_logits(model, tokens, clean_cache);
    const auto clean = clean_cache.take();
    mechlens::steer_hooks<> steer;
    steer.add(host, v, 4.0f, {.positions = {2, 3, 4}}, mechlens::steering_norm::preserve);
    mechlens::caching_hooks<> steered_cache;
    (void)mechlens::forward_logits(model, tokens, mechlens::compose(steer, steered_cache));
    const auto steered = steered_cache.take();
    const auto& x = clean.at(host).values;
    const auto& y = steered.at(host).values;
    const auto d = static_cast<std::size_t>(config.d_model);
    for (std::size_t p = 0; p < prompt.size(); ++p) {
        double before = 0, after = 0;
        for (std::size_t i = 0; i < d; ++i) {
            const auto xi = static_cast<double>(x[p * d + i]);
            before += xi * xi;
            const double ui = xi + static_cast<double>(4.0f * v[i]);
            after += ui * ui;
        }
        for (std::size_t i = 0; i < d; ++i) {
            const auto xi = static_cast<double>(x[p * d + i]);
            const double expected = p < 2 ? xi : (xi + static_cast<double>(4.0f * v[i])) * std::sqrt(before / after);
            CHECK(static_cast<double>(y[p * d + i]) == Approx(expected).margin(1e-6));
        }
    }
    // A gradient through the rescaling is refused rather than passed through as if it were the identity.
    mechlens::tensor_view<float, 3> gradient(nullptr, {0, 0, 0});
    CHECK_THROWS_AS(steer.on_gradient(host, gradient, mechlens::hook_context{}), std::logic_error);
}

}  // namespace test_medicine
