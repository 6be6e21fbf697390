// Transcoders: spliced over an MLP of a random model (reading the MLP's input, replacing its output), checked
// against the plain model (error term), an independent double-precision computation (replacing), central finite
// differences of a double reference (gradients), and the shipped policies on its sites.
#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "test_support.hpp"

using mechlens::index_t;
using mechlens::site;
using mechlens::site_kind;

namespace {

constexpr index_t d_tc = 40;

double wide(float x) { return static_cast<double>(x); }

const char* norm_name(mechlens::norm_kind norm) {
    return norm == mechlens::norm_kind::rms ? "rms" : norm == mechlens::norm_kind::layer ? "layernorm" : "no norms";
}

mechlens::model_config small_config(mechlens::norm_kind norm = mechlens::norm_kind::rms) {
    mechlens::model_config c;
    c.d_model = 16;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.d_mlp = 24;
    c.d_vocab = 13;
    c.n_ctx = 8;
    c.norm = norm;
    return c;
}

/// Random transcoder weights of width d_in, with a skip when asked: roughly half the latents fire.
mechlens::transcoder_weights random_transcoder(index_t d_in, std::uint64_t seed, bool skip) {
    mechlens::random_generator rng(seed);
    mechlens::transcoder_weights w;
    w.sae.d_in = d_in;
    w.sae.d_sae = d_tc;
    auto draw = [&](std::vector<float>& v, std::size_t n, float scale) {
        v.resize(n);
        for (float& x : v) x = scale * (2.0f * static_cast<float>(rng.uniform()) - 1.0f);
    };
    draw(w.sae.w_enc, static_cast<std::size_t>(d_in * d_tc), 0.5f);
    draw(w.sae.w_dec, static_cast<std::size_t>(d_tc * d_in), 0.5f);
    draw(w.sae.b_enc, static_cast<std::size_t>(d_tc), 0.2f);
    draw(w.sae.b_dec, static_cast<std::size_t>(d_in), 0.2f);
    if (skip) draw(w.w_skip, static_cast<std::size_t>(d_in * d_in), 0.3f);
    return w;
}

mechlens::sae_options with_error_term(bool on) {
    mechlens::sae_options options = mechlens::transcoder_options();
    options.error_term = on;
    return options;
}

mechlens::tensor_view<const std::int32_t, 2> as_batch(const std::vector<std::int32_t>& ids) {
    return mechlens::tensor_view<const std::int32_t, 2>(ids.data(), {1, static_cast<index_t>(ids.size())});
}

/// Copies every firing of the sites it is registered at, by name (the last firing wins).
struct snapshots {
    std::map<std::string, std::vector<float>> values;
    mechlens::hook_callback callback() {
        return [this](const site& s, mechlens::activation_view view, const mechlens::hook_context&) {
            const auto v = view.as<3>();
            std::vector<float>& out = values[mechlens::to_string(s)];
            out.clear();
            for (index_t b = 0; b < v.extent(0); ++b)
                for (index_t p = 0; p < v.extent(1); ++p)
                    for (index_t i = 0; i < v.extent(2); ++i) out.push_back(v(b, p, i));
        };
    }
};

/// The transcoder in double precision, from circuit-tracer's definition: relu(x W_enc + b_enc) W_dec + b_dec +
/// x W_skip, with latent `nudge_latent` moved by `nudge` after the ReLU.
std::vector<double> reference_transcoder(const mechlens::transcoder_weights& w, const std::vector<double>& x,
                                         index_t nudge_latent = -1, double nudge = 0.0) {
    const index_t d_in = w.sae.d_in;
    std::vector<double> acts(static_cast<std::size_t>(w.sae.d_sae));
    for (index_t j = 0; j < w.sae.d_sae; ++j) {
        double sum = wide(w.sae.b_enc[static_cast<std::size_t>(j)]);
        for (index_t i = 0; i < d_in; ++i)
            sum += x[static_cast<std::size_t>(i)] * wide(w.sae.w_enc[static_cast<std::size_t>(i * w.sae.d_sae + j)]);
        acts[static_cast<std::size_t>(j)] = std::max(sum, 0.0) + (j == nudge_latent ? nudge : 0.0);
    }
    std::vector<double> out(static_cast<std::size_t>(d_in));
    for (index_t o = 0; o < d_in; ++o) {
        double sum = wide(w.sae.b_dec[static_cast<std::size_t>(o)]);
        for (index_t j = 0; j < w.sae.d_sae; ++j)
            sum += acts[static_cast<std::size_t>(j)] * wide(w.sae.w_dec[static_cast<std::size_t>(j * d_in + o)]);
        if (!w.w_skip.empty())
            for (index_t i = 0; i < d_in; ++i)
                sum += x[static_cast<std::size_t>(i)] * wide(w.w_skip[static_cast<std::size_t>(i * d_in + o)]);
        out[static_cast<std::size_t>(o)] = sum;
    }
    return out;
}

/// A hook policy (float or double passes) that replaces hook_mlp_out of one layer by reference_transcoder of the
/// MLP input it recorded at `input` (plus the error term), and can nudge one element of the embedding or of the
/// latents: the finite-difference side of the gradient test. With `freeze_error` the error is the one recorded in the
/// last run without it (the error term is detached).
struct reference_replacement {
    const mechlens::transcoder_weights* w = nullptr;
    index_t layer = 0;
    site_kind input = site_kind::ln2_normalized;
    bool error_term = true;
    bool freeze_error = false;
    std::vector<double> x, frozen;  // (rows, d_in) each
    site nudge_site;                // hook_embed, or the host for a nudge of the latents
    index_t nudge_element = -1;     // into the site's (rows, width) values
    double nudge = 0.0;

    static constexpr bool wants(site_kind kind) noexcept {
        return kind == site_kind::embed || kind == site_kind::ln2_normalized || kind == site_kind::resid_mid ||
               kind == site_kind::mlp_out;
    }
    template <std::size_t R, class T>
    void on_activation(const site& s, mechlens::tensor_view<T, R> view, const mechlens::hook_context&) {
        if constexpr (R == 3) {
            T* data = view.data();  // (batch, pos, width), dense
            const index_t rows = view.extent(0) * view.extent(1), width = view.extent(2);
            if (s.kind == site_kind::embed && nudge_site.kind == site_kind::embed && nudge_element >= 0)
                data[nudge_element] += static_cast<T>(nudge);
            if (s.layer != layer) return;
            if (s.kind == input) x.assign(data, data + rows * width);
            if (s.kind != site_kind::mlp_out) return;
            const index_t d_in = w->sae.d_in;
            if (!freeze_error) frozen.assign(static_cast<std::size_t>(rows * d_in), 0.0);
            for (index_t r = 0; r < rows; ++r) {
                const std::vector<double> row(x.begin() + r * d_in, x.begin() + (r + 1) * d_in);
                const bool here = nudge_site.kind == site_kind::mlp_out && nudge_element >= 0 &&
                                  nudge_element / w->sae.d_sae == r;
                const std::vector<double> clean = reference_transcoder(*w, row);
                const std::vector<double> out =
                    here ? reference_transcoder(*w, row, nudge_element % w->sae.d_sae, nudge) : clean;
                for (index_t o = 0; o < d_in; ++o) {
                    const auto k = static_cast<std::size_t>(r * d_in + o);
                    if (!freeze_error) frozen[k] = static_cast<double>(data[k]) - clean[static_cast<std::size_t>(o)];
                    data[k] = static_cast<T>(out[static_cast<std::size_t>(o)] + (error_term ? frozen[k] : 0.0));
                }
            }
        }
    }
};
static_assert(mechlens::hook_policy<reference_replacement>);

double max_abs(const std::vector<double>& v) {
    double m = 0.0;
    for (double x : v) m = std::max(m, std::abs(x));
    return m;
}

double max_gap(const mechlens::tensor<float, 3>& a, const mechlens::tensor<float, 3>& b) {
    double m = 0.0;
    for (index_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(wide(a.data()[i]) - wide(b.data()[i])));
    return m;
}

}  // namespace

TEST_CASE("transcoder: with the error term the logits are the plain model's; the MLP input is found per model",
          "[sae][transcoder]") {
    const std::vector<std::int32_t> prompt{1, 5, 9, 2, 11, 3};
    for (const mechlens::norm_kind norm : {mechlens::norm_kind::rms, mechlens::norm_kind::layer,
                                           mechlens::norm_kind::none}) {
        const mechlens::model_config c = small_config(norm);
        INFO("norm " << norm_name(norm));
        const mechlens::transformer model(mechlens::random_model(c, 7, 0.3f));
        const site_kind input = mechlens::mlp_input_site(c);
        CHECK(input == (norm == mechlens::norm_kind::none ? site_kind::resid_mid : site_kind::ln2_normalized));
        const auto plain = mechlens::forward_logits(model, as_batch(prompt));
        mechlens::dynamic_hooks hooks(c);
        for (index_t layer = 0; layer < c.n_layers; ++layer)
            (void)hooks.splice("blocks." + std::to_string(layer) + ".hook_mlp_out",
                               std::make_shared<mechlens::transcoder_splice>(
                                   random_transcoder(c.d_model, 11 + static_cast<std::uint64_t>(layer), true),
                                   mechlens::transcoder_options(), input));
        snapshots seen;
        (void)hooks.add("blocks.1.hook_mlp_out.hook_sae_recons, blocks.1.hook_mlp_out.hook_sae_acts_post",
                        seen.callback());
        const auto spliced = mechlens::forward_logits(model, as_batch(prompt), hooks);
        const double gap = max_gap(plain, spliced);
        WARN("error term, norm " << norm_name(norm) << ": largest logit gap " << gap);
        CHECK(gap <= 1e-5);
        // The transcoder really ran: its latents are sparse but not all zero, its reconstruction not b_dec.
        const std::vector<float>& acts = seen.values.at("blocks.1.hook_mlp_out.hook_sae_acts_post");
        const auto active = std::count_if(acts.begin(), acts.end(), [](float a) { return a > 0.0f; });
        CHECK(active > 0);
        CHECK(active < static_cast<std::ptrdiff_t>(acts.size()));
    }

    // Models without the source site or without an MLP are refused with the reason.
    mechlens::model_config none = small_config(mechlens::norm_kind::none);
    mechlens::dynamic_hooks hooks(none);
    CHECK_THROWS_WITH(hooks.splice("blocks.0.hook_mlp_out", std::make_shared<mechlens::transcoder_splice>(
                                                                random_transcoder(none.d_model, 1, false))),
                      Catch::Contains("ln2.hook_normalized") && Catch::Contains("no normalisation layers"));
    mechlens::model_config attention_only = small_config();
    attention_only.mlp = mechlens::mlp_kind::none;
    CHECK_THROWS_WITH(mechlens::mlp_input_site(attention_only), Catch::Contains("attention-only"));
    // Options that subtract b_dec from the input, and a skip of the wrong size.
    CHECK_THROWS_WITH(mechlens::transcoder_splice(random_transcoder(16, 1, false), mechlens::sae_options{}),
                      Catch::Contains("apply_b_dec_to_input = false"));
    mechlens::transcoder_weights bad = random_transcoder(16, 1, true);
    bad.w_skip.pop_back();
    CHECK_THROWS_AS(mechlens::transcoder_splice(bad), mechlens::shape_error);
}

TEST_CASE("transcoder: replacing, the logits are those of the MLP output overwritten by the transcoder",
          "[sae][transcoder]") {
    const mechlens::model_config c = small_config();
    const mechlens::transformer model(mechlens::random_model(c, 7, 0.3f));
    const mechlens::transcoder_weights w = random_transcoder(c.d_model, 11, true);
    const std::vector<std::int32_t> prompt{1, 5, 9, 2, 11, 3};
    const auto plain = mechlens::forward_logits(model, as_batch(prompt));

    mechlens::dynamic_hooks hooks(c);
    (void)hooks.splice("blocks.0.hook_mlp_out", std::make_shared<mechlens::transcoder_splice>(w, with_error_term(false)));
    const auto spliced = mechlens::forward_logits(model, as_batch(prompt), hooks);

    // Independent: cache ln2's output with a hook, overwrite hook_mlp_out with the double-precision transcoder of it.
    mechlens::dynamic_hooks independent(c);
    std::vector<double> x;
    (void)independent.add("blocks.0.ln2.hook_normalized", [&](const site&, mechlens::activation_view view,
                                                              const mechlens::hook_context&) {
        const auto v = view.as<3>();
        x.clear();
        for (index_t p = 0; p < v.extent(1); ++p)
            for (index_t i = 0; i < v.extent(2); ++i) x.push_back(wide(v(0, p, i)));
    });
    (void)independent.add("blocks.0.hook_mlp_out", [&](const site&, mechlens::activation_view view,
                                                       const mechlens::hook_context&) {
        const auto v = view.as<3>();
        for (index_t p = 0; p < v.extent(1); ++p) {
            const std::vector<double> row(x.begin() + p * c.d_model, x.begin() + (p + 1) * c.d_model);
            const std::vector<double> out = reference_transcoder(w, row);
            for (index_t i = 0; i < c.d_model; ++i) v(0, p, i) = static_cast<float>(out[static_cast<std::size_t>(i)]);
        }
    });
    const auto expected = mechlens::forward_logits(model, as_batch(prompt), independent);
    const double gap = max_gap(expected, spliced), change = max_gap(plain, spliced);
    WARN("replacing: largest logit gap " << gap << ", largest change from the plain model " << change);
    CHECK(gap <= 1e-4);
    CHECK(change > 1e-2);  // the replacement matters, so agreeing is not trivial
}

TEST_CASE("transcoder: gradients at a feature and at the embedding equal finite differences of a double reference",
          "[sae][transcoder][grad][fd]") {
    const std::vector<std::int32_t> prompt{1, 5, 9, 2, 11};
    const auto tokens = as_batch(prompt);
    const auto rows = static_cast<index_t>(prompt.size());
    for (const mechlens::norm_kind norm : {mechlens::norm_kind::rms, mechlens::norm_kind::none}) {
        const mechlens::model_config c = small_config(norm);
        const mechlens::loaded_model loaded = mechlens::random_model(c, 7, 0.3f);
        const mechlens::transformer model(mechlens::random_model(c, 7, 0.3f));
        const mechlens::model_parameters_f64 reference_model(loaded.config, loaded.weights);
        const mechlens::transcoder_weights w = random_transcoder(c.d_model, 11, true);
        const site_kind input = mechlens::mlp_input_site(c);
        const std::string host = "blocks.0.hook_mlp_out", acts_name = host + ".hook_sae_acts_post";
        for (const bool error_term : {false, true}) {
            INFO("norm " << norm_name(norm) << ", error term " << error_term);
            mechlens::dynamic_hooks hooks(c);
            mechlens::sae_options options = with_error_term(error_term);
            (void)hooks.splice(host, std::make_shared<mechlens::transcoder_splice>(w, options, input));
            snapshots gradient;
            (void)hooks.add_gradient("hook_embed, " + acts_name, gradient.callback());
            const float value = mechlens::forward_backward(model, tokens, mechlens::metric::logit_diff(3, 7),
                                                           static_cast<mechlens::model_parameters*>(nullptr), hooks);

            reference_replacement ref;
            ref.w = &w;
            ref.input = input;
            ref.error_term = error_term;
            const auto metric = mechlens::basic_metric<double>::logit_diff(3, 7);
            auto run = [&] {
                return mechlens::forward_backward(reference_model, tokens, metric,
                                                  static_cast<mechlens::model_parameters_f64*>(nullptr), ref);
            };
            const double base = run();
            CHECK(std::abs(base - static_cast<double>(value)) <= 1e-5 * std::max(1.0, std::abs(base)));
            ref.freeze_error = true;
            auto finite_difference = [&](const site& where, index_t element) {
                const double step = 1e-4;
                ref.nudge_site = where;
                ref.nudge_element = element;
                ref.nudge = step;
                const double up = run();
                ref.nudge = -step;
                const double down = run();
                ref.nudge_element = -1;
                return (up - down) / (2.0 * step);
            };
            struct target {
                std::string name;
                site where;
                index_t width;
            };
            for (const target& t : {target{"hook_embed", site{site_kind::embed, -1}, c.d_model},
                                    target{acts_name, site{site_kind::mlp_out, 0}, d_tc}}) {
                const std::vector<float>& got = gradient.values.at(t.name);
                REQUIRE(got.size() == static_cast<std::size_t>(rows * t.width));
                std::vector<double> expected(got.size()), gap(got.size());
                for (index_t e = 0; e < rows * t.width; ++e) {
                    const auto k = static_cast<std::size_t>(e);
                    expected[k] = finite_difference(t.where, e);
                    gap[k] = wide(got[k]) - expected[k];
                }
                WARN("norm " << norm_name(norm) << (error_term ? ", error term, " : ", replacing, ") << t.name
                             << ": largest gradient " << max_abs(expected) << ", largest gap " << max_abs(gap));
                CHECK(max_abs(expected) > 1e-2);  // a real signal, not zeros agreeing with zeros
                CHECK(max_abs(gap) <= 1e-4 * max_abs(expected));
            }
        }
    }
}

TEST_CASE("transcoder: the shipped policies cache, ablate and steer its features", "[sae][transcoder]") {
    const mechlens::model_config c = small_config();
    const mechlens::transformer model(mechlens::random_model(c, 7, 0.3f));
    const mechlens::transcoder_weights w = random_transcoder(c.d_model, 11, true);
    const std::vector<std::int32_t> prompt{1, 5, 9, 2, 11, 3};
    const auto rows = static_cast<index_t>(prompt.size());
    const std::string host = "blocks.1.hook_mlp_out", acts_name = host + ".hook_sae_acts_post";
    const std::string output_name = host + ".hook_sae_output";
    const site acts = *mechlens::parse_site(acts_name);

    mechlens::dynamic_hooks hooks(c);
    (void)hooks.splice(host, std::make_shared<mechlens::transcoder_splice>(w));
    // Listed after the host, in firing order.
    std::vector<std::string> names;
    for (const site& s : hooks.sites())
        if (mechlens::to_string(s).rfind(host + ".", 0) == 0) names.push_back(mechlens::to_string(s));
    CHECK(names == std::vector<std::string>{host + ".hook_sae_input", host + ".hook_sae_acts_pre", acts_name,
                                            host + ".hook_sae_recons", host + ".hook_sae_error", output_name});

    // Cache: the features under their SAELens name, (batch, pos, d_tc).
    mechlens::caching_hooks<> cache;
    auto cached = hooks.scoped(acts_name, mechlens::as_callback(cache));
    const auto plain = mechlens::forward_logits(model, as_batch(prompt), hooks);
    REQUIRE(cache.cache().contains(acts));
    CHECK(cache.cache().at(acts).shape == std::vector<index_t>{1, rows, d_tc});
    const std::vector<float> acts_clean = cache.cache().at(acts).values;
    cached.reset();

    snapshots clean;
    auto watch = hooks.scoped(host + ".*", clean.callback());
    (void)mechlens::forward_logits(model, as_batch(prompt), hooks);
    const std::vector<float> output_clean = clean.values.at(output_name);
    CHECK(clean.values.at(host + ".hook_sae_input").size() == static_cast<std::size_t>(rows * c.d_model));

    // The feature that fires most at the last position: zero-ablating it moves the output by -acts_j * W_dec[j]
    // and changes the logits; steering it by alpha moves the output by alpha * W_dec[j].
    index_t feature = 0;
    for (index_t j = 1; j < d_tc; ++j)
        if (acts_clean[static_cast<std::size_t>((rows - 1) * d_tc + j)] >
            acts_clean[static_cast<std::size_t>((rows - 1) * d_tc + feature)])
            feature = j;
    REQUIRE(acts_clean[static_cast<std::size_t>((rows - 1) * d_tc + feature)] > 0.0f);
    auto output_moves_by = [&](auto expected_row_delta) {
        double worst = 0.0;
        for (index_t r = 0; r < rows; ++r)
            for (index_t i = 0; i < c.d_model; ++i) {
                const auto k = static_cast<std::size_t>(r * c.d_model + i);
                worst = std::max(worst, std::abs(wide(clean.values.at(output_name)[k]) - wide(output_clean[k]) -
                                                 expected_row_delta(r, i)));
            }
        return worst;
    };
    auto decoder = [&](index_t i) { return wide(w.sae.w_dec[static_cast<std::size_t>(feature * c.d_model + i)]); };
    {
        auto guard = hooks.scoped(acts_name, [&](const site&, mechlens::activation_view view,
                                                 const mechlens::hook_context&) {
            const auto v = view.as<3>();
            for (index_t p = 0; p < v.extent(1); ++p) v(0, p, feature) = 0.0f;
        });
        const auto ablated = mechlens::forward_logits(model, as_batch(prompt), hooks);
        CHECK(output_moves_by([&](index_t r, index_t i) {
                  return -wide(acts_clean[static_cast<std::size_t>(r * d_tc + feature)]) * decoder(i);
              }) <= 1e-5);
        CHECK(max_gap(plain, ablated) > 1e-4);
    }
    {
        mechlens::ablate_hooks<> ablate;  // all features: the output is b_dec + x W_skip + error
        ablate.zero(acts);
        auto guard = hooks.scoped(acts_name, mechlens::as_callback(ablate));
        (void)mechlens::forward_logits(model, as_batch(prompt), hooks);
        CHECK(output_moves_by([&](index_t r, index_t i) {
                  double sum = 0.0;
                  for (index_t j = 0; j < d_tc; ++j)
                      sum += wide(acts_clean[static_cast<std::size_t>(r * d_tc + j)]) *
                             wide(w.sae.w_dec[static_cast<std::size_t>(j * c.d_model + i)]);
                  return -sum;
              }) <= 1e-5);
    }
    {
        const float alpha = 1.5f;
        std::vector<float> direction(static_cast<std::size_t>(d_tc), 0.0f);
        direction[static_cast<std::size_t>(feature)] = 1.0f;
        mechlens::steer_hooks<> steer;
        steer.add(acts, direction, alpha);
        auto guard = hooks.scoped(acts_name, mechlens::as_callback(steer));
        (void)mechlens::forward_logits(model, as_batch(prompt), hooks);
        CHECK(output_moves_by([&](index_t, index_t i) { return static_cast<double>(alpha) * decoder(i); }) <= 1e-5);
    }
    // Detached: the source is no longer read, the logits are the plain model's again.
    watch.reset();
    hooks.clear();
    const auto after = mechlens::forward_logits(model, as_batch(prompt), hooks);
    CHECK(max_gap(plain, after) <= 1e-5);
}
