// Transcoders: spliced over an MLP of a random model (reading the MLP's input, replacing its output), checked
// against the plain model (error term), an independent double-precision computation (replacing), central finite
// differences of a double reference (gradients), and the shipped policies on its sites.
#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "sae_test_support.hpp"
#include "test_support.hpp"

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_transcoder {

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
    w.sae = mechlens_test::random_sae_weights(rng, d_in, d_tc);
    if (skip) mechlens_test::fill_uniform(rng, w.w_skip, static_cast<std::size_t>(d_in * d_in), 0.3f);
    return w;
}

mechlens::sae_options with_error_term(bool on) {
    mechlens::sae_options options = mechlens::transcoder_options();
    options.error_term = on;
    return options;
}

using mechlens_test::as_batch;
using mechlens_test::snapshots;

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
                const bool here =
                    nudge_site.kind == site_kind::mlp_out && nudge_element >= 0 && nudge_element / w->sae.d_sae == r;
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
    for (const mechlens::norm_kind norm :
         {mechlens::norm_kind::rms, mechlens::norm_kind::layer, mechlens::norm_kind::none}) {
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

TEST_CASE("transcoder: its source is validated and read after the source's own callbacks", "[sae][transcoder]") {
    const mechlens::model_config c = small_config();
    const mechlens::transformer model(mechlens::random_model(c, 7, 0.3f));
    const mechlens::transcoder_weights w = random_transcoder(c.d_model, 11, false);
    mechlens::dynamic_hooks hooks(c);
    // A source must fire before the host, in its block, with the declared width.
    CHECK_THROWS_WITH(
        hooks.splice("blocks.0.hook_mlp_out", std::make_shared<mechlens::transcoder_splice>(
                                                  w, mechlens::transcoder_options(), site_kind::resid_post)),
        Catch::Contains("does not fire before the host"));
    CHECK_THROWS_WITH(hooks.splice("blocks.0.hook_mlp_out", std::make_shared<mechlens::transcoder_splice>(
                                                                w, mechlens::transcoder_options(), site_kind::mlp_pre)),
                      Catch::Contains("has width 24, not the splice's 16"));
    CHECK(hooks.empty());
    // A callback at the source registered after the transcoder still runs first: the transcoder reads what the MLP
    // reads (here, zeros).
    (void)hooks.splice("blocks.0.hook_mlp_out", std::make_shared<mechlens::transcoder_splice>(w));
    (void)hooks.add("blocks.0.ln2.hook_normalized",
                    [](const site&, mechlens::activation_view view, const mechlens::hook_context&) {
                        const auto v = view.as<3>();
                        for (index_t p = 0; p < v.extent(1); ++p)
                            for (index_t i = 0; i < v.extent(2); ++i) v(0, p, i) = 0.0f;
                    });
    snapshots seen;
    (void)hooks.add("blocks.0.hook_mlp_out.hook_sae_input", seen.callback());
    const std::vector<std::int32_t> prompt{1, 5, 9};
    (void)mechlens::forward_logits(model, as_batch(prompt), hooks);
    const std::vector<float>& x = seen.values.at("blocks.0.hook_mlp_out.hook_sae_input");
    REQUIRE(x.size() == static_cast<std::size_t>(3 * c.d_model));
    CHECK(std::all_of(x.begin(), x.end(), [](float v) { return v == 0.0f; }));
}

TEST_CASE("transcoder: replacing, the logits are those of the MLP output overwritten by the transcoder",
          "[sae][transcoder]") {
    const mechlens::model_config c = small_config();
    const mechlens::transformer model(mechlens::random_model(c, 7, 0.3f));
    const mechlens::transcoder_weights w = random_transcoder(c.d_model, 11, true);
    const std::vector<std::int32_t> prompt{1, 5, 9, 2, 11, 3};
    const auto plain = mechlens::forward_logits(model, as_batch(prompt));

    mechlens::dynamic_hooks hooks(c);
    (void)hooks.splice("blocks.0.hook_mlp_out",
                       std::make_shared<mechlens::transcoder_splice>(w, with_error_term(false)));
    const auto spliced = mechlens::forward_logits(model, as_batch(prompt), hooks);

    // Independent: cache ln2's output with a hook, overwrite hook_mlp_out with the double-precision transcoder of it.
    mechlens::dynamic_hooks independent(c);
    std::vector<double> x;
    (void)independent.add("blocks.0.ln2.hook_normalized",
                          [&](const site&, mechlens::activation_view view, const mechlens::hook_context&) {
                              const auto v = view.as<3>();
                              x.clear();
                              for (index_t p = 0; p < v.extent(1); ++p)
                                  for (index_t i = 0; i < v.extent(2); ++i) x.push_back(wide(v(0, p, i)));
                          });
    (void)independent.add(
        "blocks.0.hook_mlp_out", [&](const site&, mechlens::activation_view view, const mechlens::hook_context&) {
            const auto v = view.as<3>();
            for (index_t p = 0; p < v.extent(1); ++p) {
                const std::vector<double> row(x.begin() + p * c.d_model, x.begin() + (p + 1) * c.d_model);
                const std::vector<double> out = reference_transcoder(w, row);
                for (index_t i = 0; i < c.d_model; ++i)
                    v(0, p, i) = static_cast<float>(out[static_cast<std::size_t>(i)]);
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
    mechlens::dynamic_hooks hooks(c);
    (void)hooks.splice(host, std::make_shared<mechlens::transcoder_splice>(w));
    // Parsed after the splice declared its suffixes (an extension name is known once some splice declares it).
    const site acts = *mechlens::parse_site(acts_name);
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
        auto guard =
            hooks.scoped(acts_name, [&](const site&, mechlens::activation_view view, const mechlens::hook_context&) {
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

namespace {

/// Every number of a (nested) JSON array, flattened.
void flatten(const mechlens::json_value& v, std::vector<double>& out) {
    if (v.is_array()) {
        for (const mechlens::json_value& e : v.items()) flatten(e, out);
    } else {
        out.push_back(v.as_double());
    }
}

/// Collects the forward activations a splice fires, by position in its sites().
class recording_hooks final : public mechlens::splice_hooks {
public:
    std::map<std::size_t, std::vector<float>> fired;
    [[nodiscard]] bool active(std::size_t) const noexcept override { return true; }
    void fire(std::size_t index, mechlens::tensor_view<float, 2> rows) override {
        std::vector<float>& out = fired[index];
        out.clear();
        for (index_t r = 0; r < rows.extent(0); ++r)
            for (index_t i = 0; i < rows.extent(1); ++i) out.push_back(rows(r, i));
    }
};

std::vector<std::byte> file_bytes(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    REQUIRE(in);
    std::vector<std::byte> out(static_cast<std::size_t>(in.tellg()));
    in.seekg(0);
    in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(out.size()));
    REQUIRE(in);
    return out;
}

/// Writes a safetensors file of the given F32 tensors (name, shape, values) with our writer.
void write_tensors(const std::filesystem::path& path,
                   const std::vector<std::pair<std::string, std::vector<index_t>>>& shapes) {
    std::vector<std::vector<float>> storage;
    std::vector<mechlens::safetensors_tensor_ref> refs;
    storage.reserve(shapes.size());
    for (const auto& [name, shape] : shapes) {
        std::size_t n = 1;
        for (index_t e : shape) n *= static_cast<std::size_t>(e);
        storage.emplace_back(n, 0.25f);
        refs.push_back({name, shape, storage.back().data()});
    }
    mechlens::write_safetensors(path, refs);
}

}  // namespace

TEST_CASE("circuit-tracer files: files written by numpy in its layout compute what circuit-tracer computes",
          "[sae][transcoder][io]") {
    const auto dir = mechlens_test::fixtures_dir() / "transcoder";
    const mechlens::json_value reference = mechlens::read_json_file(dir / "reference.json");
    for (const char* name : {"layer_0", "layer_1"}) {
        INFO(name);
        const mechlens::json_value& expected = reference.at(name);
        const mechlens::circuit_tracer_transcoder t =
            mechlens::read_circuit_tracer_transcoder(dir / (std::string(name) + ".safetensors"));
        CHECK(t.weights.sae.d_in == expected.at("d_model").as_int64());
        CHECK(t.weights.sae.d_sae == expected.at("d_tc").as_int64());
        CHECK(mechlens::to_string(t.options.architecture) == expected.at("architecture").as_string());
        CHECK(t.weights.w_skip.empty() == !expected.at("skip").as_bool());
        CHECK_FALSE(t.options.apply_b_dec_to_input);

        // The splice's own forward on the reference inputs, replacing (no error term).
        mechlens::sae_options options = t.options;
        options.error_term = false;
        const mechlens::transcoder_splice splice(t.weights, options);
        std::vector<double> x, pre, acts, out;
        flatten(expected.at("x"), x);
        flatten(expected.at("acts_pre"), pre);
        flatten(expected.at("acts_post"), acts);
        flatten(expected.at("output"), out);
        const index_t d = t.weights.sae.d_in, rows = static_cast<index_t>(x.size()) / d;
        mechlens::splice_tape tape;
        tape.source.assign(x.begin(), x.end());                     // (rows, d_model)
        std::vector<float> host(x.size(), 0.0f), output(x.size());  // (rows, d_model) each
        recording_hooks hooks;
        splice.forward(mechlens::tensor_view<const float, 2>(host.data(), {rows, d}),
                       mechlens::tensor_view<float, 2>(output.data(), {rows, d}), hooks, tape);
        auto gap = [](const std::vector<float>& got, const std::vector<double>& want) {
            REQUIRE(got.size() == want.size());
            double worst = 0.0;
            for (std::size_t k = 0; k < got.size(); ++k)
                worst = std::max(worst, std::abs(wide(got[k]) - want[k]) / std::max(1.0, std::abs(want[k])));
            return worst;
        };
        const double gap_pre = gap(hooks.fired.at(mechlens::transcoder_splice::acts_pre), pre);
        const double gap_acts = gap(hooks.fired.at(mechlens::transcoder_splice::acts_post), acts);
        const double gap_out = gap(output, out);
        WARN(name << ": largest relative gap acts_pre " << gap_pre << ", acts_post " << gap_acts << ", output "
                  << gap_out);
        CHECK(gap_pre <= 1e-6);
        CHECK(gap_acts <= 1e-6);
        CHECK(gap_out <= 1e-6);
        const std::vector<float>& fired = hooks.fired.at(mechlens::transcoder_splice::acts_post);
        CHECK(std::count_if(fired.begin(), fired.end(), [](float a) { return a != 0.0f; }) ==
              expected.at("active").as_int64());
    }

    // config.yaml: the two hook names, and what they are in mechlens.
    const mechlens::circuit_tracer_hooks hooks = mechlens::read_circuit_tracer_config(dir / "config.yaml");
    CHECK(hooks.feature_input_hook == "ln2.hook_normalized");
    CHECK(hooks.feature_output_hook == "hook_mlp_out");
    const mechlens::circuit_tracer_sites sites = mechlens::circuit_tracer_site_kinds(hooks);
    CHECK(sites.input == site_kind::ln2_normalized);
    CHECK(sites.output == site_kind::mlp_out);
    const auto scratch = mechlens_test::scratch_dir();
    const auto yaml = scratch / "transcoder_config.yaml";
    std::ofstream(yaml) << "model_kind: transcoder_set\nfeature_input_hook: blocks.{layer}.hook_resid_mid  # llama\n"
                           "feature_output_hook: \"mlp.hook_out\"\n";
    const mechlens::circuit_tracer_hooks templated = mechlens::read_circuit_tracer_config(yaml);
    CHECK(templated.feature_input_hook == "hook_resid_mid");
    CHECK(mechlens::circuit_tracer_site_kinds(templated).input == site_kind::resid_mid);
    CHECK(mechlens::circuit_tracer_site_kinds(templated).output == site_kind::mlp_out);
    CHECK_THROWS_WITH(mechlens::circuit_tracer_site_kinds({"mlp.hook_in", "mlp.hook_out"}),
                      Catch::Contains("no mechlens site"));
    std::ofstream(yaml) << "feature_input_hook: ln2.hook_normalized\n";
    CHECK_THROWS_WITH(mechlens::read_circuit_tracer_config(yaml), Catch::Contains("feature_output_hook"));
    // A templated name with nothing after the prefix is no hook (found by fuzz_transcoder_file).
    std::ofstream(yaml) << "feature_input_hook: blocks.{layer}.\nfeature_output_hook: hook_mlp_out\n";
    CHECK_THROWS_WITH(mechlens::read_circuit_tracer_config(yaml), Catch::Contains("names no hook"));
}

TEST_CASE("circuit-tracer files: round trip, and malformed files are one-line errors", "[sae][transcoder][io]") {
    const auto scratch = mechlens_test::scratch_dir();
    // Round trip: JumpReLU with a skip, and ReLU without; every value back bit for bit.
    for (const bool jump : {true, false}) {
        mechlens::transcoder_weights w = random_transcoder(16, 5, jump);
        mechlens::sae_options options = mechlens::transcoder_options();
        if (jump) {
            options.architecture = mechlens::sae_architecture::jumprelu;
            w.sae.threshold.assign(static_cast<std::size_t>(d_tc), 0.05f);
            w.sae.threshold[3] = 0.0f;
        }
        const auto path = mechlens::circuit_tracer_layer_file(scratch, jump ? 3 : 4);
        CHECK(path.filename() == (jump ? "layer_3.safetensors" : "layer_4.safetensors"));
        mechlens::write_circuit_tracer_transcoder(path, w, options);
        const mechlens::circuit_tracer_transcoder back = mechlens::read_circuit_tracer_transcoder(path);
        CHECK(back.options.architecture == options.architecture);
        CHECK(back.weights.sae.w_enc == w.sae.w_enc);
        CHECK(back.weights.sae.w_dec == w.sae.w_dec);
        CHECK(back.weights.sae.b_enc == w.sae.b_enc);
        CHECK(back.weights.sae.b_dec == w.sae.b_dec);
        CHECK(back.weights.sae.threshold == w.sae.threshold);
        CHECK(back.weights.w_skip == w.w_skip);
        // The file really is circuit-tracer's orientation: W_enc (d_tc, d_model), element (j, i) = ours (i, j).
        const mechlens::safetensors_file raw = mechlens::read_safetensors(path);
        REQUIRE(raw.tensors[0].name == "W_enc");
        CHECK(raw.tensors[0].shape == std::vector<index_t>{d_tc, 16});
        CHECK(raw.tensors[0].values[static_cast<std::size_t>(2 * 16 + 5)] ==
              w.sae.w_enc[static_cast<std::size_t>(5 * d_tc + 2)]);
    }
    CHECK_THROWS_AS(
        mechlens::write_circuit_tracer_transcoder(scratch / "topk.safetensors", random_transcoder(16, 5, false),
                                                  mechlens::transcoder_options(mechlens::sae_architecture::topk, 4)),
        std::invalid_argument);

    // Malformed files: each a format_error naming the file and the problem.
    const auto path = scratch / "bad_transcoder.safetensors";
    auto rejects = [&](const std::vector<std::pair<std::string, std::vector<index_t>>>& shapes, const char* problem) {
        write_tensors(path, shapes);
        INFO(problem);
        CHECK_THROWS_WITH(mechlens::read_circuit_tracer_transcoder(path),
                          Catch::Contains(path.string()) && Catch::Contains(problem));
    };
    const std::pair<std::string, std::vector<index_t>> b_enc{"b_enc", {10}}, b_dec{"b_dec", {6}};
    const std::pair<std::string, std::vector<index_t>> w_enc{"W_enc", {10, 6}}, w_dec{"W_dec", {10, 6}};
    rejects({w_enc, b_enc, b_dec}, "missing tensor 'W_dec'");
    rejects({w_enc, w_dec, b_dec}, "missing tensor 'b_enc'");
    rejects({w_enc, {"W_dec", {6, 10}}, b_enc, b_dec},
            "tensor 'W_dec' has shape (6, 10), but b_enc and b_dec imply (10, 6)");
    rejects({{"W_enc", {6, 10}}, w_dec, b_enc, b_dec}, "tensor 'W_enc' has shape (6, 10)");
    rejects({w_enc, w_dec, b_enc, b_dec, {"W_skip", {6, 10}}}, "tensor 'W_skip' has shape (6, 10)");
    rejects({w_enc, w_dec, b_enc, b_dec, {"activation_function.threshold", {6}}},
            "tensor 'activation_function.threshold' has shape (6,)");
    rejects({w_enc, w_dec, b_enc, b_dec, {"log_threshold", {10}}}, "unexpected tensor 'log_threshold'");
    rejects({w_enc, w_dec, {"b_enc", {10, 1}}, b_dec}, "b_enc and b_dec must be non-empty vectors");
    {
        std::vector<float> w1(60, 0.1f), b1(10, 0.0f), b2(6, 0.0f), negative(10, 0.1f);
        negative[4] = -0.5f;
        mechlens::write_safetensors(path, {{"W_enc", {10, 6}, w1.data()},
                                           {"W_dec", {10, 6}, w1.data()},
                                           {"b_enc", {10}, b1.data()},
                                           {"b_dec", {6}, b2.data()},
                                           {"activation_function.threshold", {10}, negative.data()}});
        CHECK_THROWS_WITH(mechlens::read_circuit_tracer_transcoder(path), Catch::Contains("negative"));
    }
    // Truncated at every length: always a format_error, never a crash or a transcoder.
    const std::vector<std::byte> whole =
        file_bytes(mechlens_test::fixtures_dir() / "transcoder" / "layer_0.safetensors");
    int rejected = 0;
    for (std::size_t cut = 0; cut < whole.size(); ++cut) {
        try {
            (void)mechlens::parse_circuit_tracer_transcoder(whole.data(), cut, "cut");
        } catch (const mechlens::format_error&) {
            ++rejected;
        }
    }
    CHECK(rejected == static_cast<int>(whole.size()));
    CHECK_NOTHROW(mechlens::parse_circuit_tracer_transcoder(whole.data(), whole.size(), "whole"));
    CHECK_THROWS_AS(mechlens::read_circuit_tracer_transcoder(scratch / "no_such_layer.safetensors"),
                    mechlens::format_error);
}

TEST_CASE("attribution patching runs with splices: an identity SAE changes nothing, a random one does",
          "[sae][transcoder][attribution]") {
    const mechlens::model_config c = small_config();
    const mechlens::transformer model(mechlens::random_model(c, 7, 0.3f));
    const std::vector<std::int32_t> clean_ids{1, 5, 9, 2, 11, 3}, corrupt_ids{1, 5, 4, 2, 11, 3};
    const mechlens::tensor_view<const std::int32_t, 2> clean(clean_ids.data(), {1, 6}),
        corrupt(corrupt_ids.data(), {1, 6});
    const auto metric = mechlens::answer_metric::logit_difference({3}, {7});
    const mechlens::attribution_patcher plain(model, clean, corrupt, metric);

    // relu(x) - relu(-x) = x, in value and in gradient: replacing the residual stream with it changes nothing.
    mechlens::sae_weights identity;
    identity.d_in = c.d_model;
    identity.d_sae = 2 * c.d_model;
    identity.w_enc.assign(static_cast<std::size_t>(identity.d_in * identity.d_sae), 0.0f);
    identity.w_dec.assign(identity.w_enc.size(), 0.0f);
    identity.b_enc.assign(static_cast<std::size_t>(identity.d_sae), 0.0f);
    identity.b_dec.assign(static_cast<std::size_t>(identity.d_in), 0.0f);
    for (index_t i = 0; i < c.d_model; ++i) {
        identity.w_enc[static_cast<std::size_t>(i * identity.d_sae + i)] = 1.0f;
        identity.w_enc[static_cast<std::size_t>(i * identity.d_sae + c.d_model + i)] = -1.0f;
        identity.w_dec[static_cast<std::size_t>(i * c.d_model + i)] = 1.0f;
        identity.w_dec[static_cast<std::size_t>((c.d_model + i) * c.d_model + i)] = -1.0f;
    }
    mechlens::sae_options replace;
    replace.error_term = false;
    mechlens::dynamic_hooks hooks(c);
    (void)hooks.splice("blocks.0.hook_resid_post", std::make_shared<mechlens::sae_splice>(identity, replace));
    const mechlens::attribution_patcher spliced(model, clean, corrupt, metric, &hooks);
    CHECK(std::abs(spliced.clean_metric() - plain.clean_metric()) <= 1e-5);
    for (const site_kind kind : {site_kind::resid_pre, site_kind::attn_out, site_kind::mlp_out}) {
        const auto grid = mechlens::patching_grid::by_layer_position(kind);
        const auto a = plain.estimate(grid), b = spliced.estimate(grid);
        CHECK(max_gap(a.raw, b.raw) <= 1e-5);
    }

    // A transcoder replacing layer 0's MLP: the runs and their gradients go through it.
    hooks.clear();
    (void)hooks.splice("blocks.0.hook_mlp_out", std::make_shared<mechlens::transcoder_splice>(
                                                    random_transcoder(c.d_model, 11, true), with_error_term(false)));
    const mechlens::attribution_patcher transcoded(model, clean, corrupt, metric, &hooks);
    CHECK(std::abs(transcoded.clean_metric() - plain.clean_metric()) > 1e-3);
    const auto grid = mechlens::patching_grid::by_layer_position(site_kind::resid_pre);
    CHECK(max_gap(plain.estimate(grid).raw, transcoded.estimate(grid).raw) > 1e-4);
}

}  // namespace test_transcoder
