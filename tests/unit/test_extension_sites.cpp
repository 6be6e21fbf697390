// Extension sites: a sparse autoencoder spliced into the forward and backward passes of a random model. Its
// activations are named below the host as SAELens names them, the shipped policies cache, patch, ablate and steer
// them, and gradients through the splice agree with central finite differences of a double-precision reference
// written here from SAELens's definitions.
#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "sae_test_support.hpp"
#include "test_support.hpp"

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_extension_sites {

using mechlens::index_t;
using mechlens::kind_set;
using mechlens::site;
using mechlens::site_kind;

namespace {

constexpr index_t d_sae = 40;

double wide(float x) { return static_cast<double>(x); }

/// A standard SAE's options, with or without the error term.
mechlens::sae_options with_error_term(bool on) {
    mechlens::sae_options options;
    options.error_term = on;
    return options;
}

mechlens::model_config small_config() {
    mechlens::model_config c;
    c.d_model = 16;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.d_mlp = 24;
    c.d_vocab = 13;
    c.n_ctx = 8;
    return c;
}

/// Random SAE weights of width d_in: roughly half the latents fire on a typical residual row.
mechlens::sae_weights random_sae(index_t d_in, std::uint64_t seed) {
    mechlens::random_generator rng(seed);
    return mechlens_test::random_sae_weights(rng, d_in, d_sae);
}

using mechlens_test::as_batch;
using mechlens_test::snapshots;

/// The SAE of SAELens in double precision, straight from the definitions, on rows of width d_in.
struct reference_sae {
    const mechlens::sae_weights* w = nullptr;
    bool apply_b_dec = true;

    /// Latents before the ReLU for one row x.
    [[nodiscard]] std::vector<double> pre(const double* x) const {
        std::vector<double> out(static_cast<std::size_t>(w->d_sae));
        for (index_t j = 0; j < w->d_sae; ++j) {
            double sum = wide(w->b_enc[static_cast<std::size_t>(j)]);
            for (index_t i = 0; i < w->d_in; ++i)
                sum += (x[i] - (apply_b_dec ? wide(w->b_dec[static_cast<std::size_t>(i)]) : 0.0)) *
                       wide(w->w_enc[static_cast<std::size_t>(i * w->d_sae + j)]);
            out[static_cast<std::size_t>(j)] = sum;
        }
        return out;
    }
    /// Reconstruction from latents.
    [[nodiscard]] std::vector<double> decode(const std::vector<double>& acts) const {
        std::vector<double> out(static_cast<std::size_t>(w->d_in));
        for (index_t i = 0; i < w->d_in; ++i) {
            double sum = wide(w->b_dec[static_cast<std::size_t>(i)]);
            for (index_t j = 0; j < w->d_sae; ++j)
                sum += acts[static_cast<std::size_t>(j)] * wide(w->w_dec[static_cast<std::size_t>(j * w->d_in + i)]);
            out[static_cast<std::size_t>(i)] = sum;
        }
        return out;
    }
};

/// A hook policy (float or double passes) that splices reference_sae at one site and can nudge one element of the
/// embedding or of the latents: the finite-difference side of the gradient test. With `freeze_error` the error term
/// is the one recorded in the last run without it (SAELens detaches the error, so its gradient is the derivative
/// with the error held fixed).
struct reference_splice {
    reference_sae sae;
    site host;
    bool error_term = true;
    bool freeze_error = false;
    std::vector<double> frozen;  // (rows, d_in)
    site nudge_site;             // hook_embed, or the host for a nudge of the latents
    index_t nudge_element = -1;  // into the site's (rows, width) values
    double nudge = 0.0;

    static constexpr bool wants(site_kind kind) noexcept {
        return kind == site_kind::embed || kind == site_kind::resid_post;
    }
    template <std::size_t R, class T>
    void on_activation(const site& s, mechlens::tensor_view<T, R> view, const mechlens::hook_context&) {
        if constexpr (R == 3) {
            T* data = view.data();  // (batch, pos, width), dense
            if (s == nudge_site && s.kind == site_kind::embed && nudge_element >= 0)
                data[nudge_element] += static_cast<T>(nudge);
            if (!(s == host)) return;
            const index_t rows = view.extent(0) * view.extent(1), d_in = view.extent(2);
            if (!freeze_error) frozen.assign(static_cast<std::size_t>(rows * d_in), 0.0);
            for (index_t r = 0; r < rows; ++r) {
                std::vector<double> x(static_cast<std::size_t>(d_in));
                for (index_t i = 0; i < d_in; ++i) x[static_cast<std::size_t>(i)] = data[r * d_in + i];
                std::vector<double> acts = sae.pre(x.data());
                for (double& a : acts) a = std::max(a, 0.0);
                const std::vector<double> clean = sae.decode(acts);
                if (s == nudge_site && nudge_element >= 0 && nudge_element / sae.w->d_sae == r)
                    acts[static_cast<std::size_t>(nudge_element % sae.w->d_sae)] += nudge;
                const std::vector<double> out = sae.decode(acts);
                for (index_t i = 0; i < d_in; ++i) {
                    const auto k = static_cast<std::size_t>(r * d_in + i);
                    if (!freeze_error) frozen[k] = x[static_cast<std::size_t>(i)] - clean[static_cast<std::size_t>(i)];
                    data[r * d_in + i] = static_cast<T>(out[static_cast<std::size_t>(i)] + (error_term ? frozen[k] : 0.0));
                }
            }
        }
    }
};
static_assert(mechlens::hook_policy<reference_splice>);

double max_abs(const std::vector<double>& v) {
    double m = 0.0;
    for (double x : v) m = std::max(m, std::abs(x));
    return m;
}

}  // namespace

TEST_CASE("extension sites: SAELens names below the host, listed, parsed, validated and detached",
          "[hooks][splice]") {
    const mechlens::model_config c = small_config();
    const mechlens::transformer model(mechlens::random_model(c, 7, 0.3f));
    auto sae = std::make_shared<mechlens::sae_splice>(random_sae(c.d_model, 11));
    mechlens::dynamic_hooks hooks(c);
    const std::vector<std::int32_t> prompt{1, 5, 9, 2, 11};
    const auto plain = mechlens::forward_logits(model, as_batch(prompt));

    const mechlens::hook_handle handle = hooks.splice("blocks.1.hook_resid_post", sae);
    const std::vector<std::string> expected{"hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post",
                                            "hook_sae_recons", "hook_sae_error",  "hook_sae_output"};
    std::vector<std::string> names;
    for (const site& s : hooks.sites()) names.push_back(mechlens::to_string(s));
    const auto host = std::find(names.begin(), names.end(), "blocks.1.hook_resid_post");
    REQUIRE(host != names.end());
    for (std::size_t k = 0; k < expected.size(); ++k) CHECK(host[1 + static_cast<std::ptrdiff_t>(k)] ==
                                                            "blocks.1.hook_resid_post." + expected[k]);
    CHECK(names.size() == mechlens::all_sites(c).size() + expected.size());

    const std::string acts_name = "blocks.1.hook_resid_post.hook_sae_acts_post";
    const auto parsed = mechlens::parse_site(acts_name);
    REQUIRE(parsed.has_value());
    CHECK(parsed->kind == site_kind::resid_post);
    CHECK(parsed->layer == 1);
    CHECK(parsed->extension >= 0);
    CHECK(mechlens::to_string(*parsed) == acts_name);
    CHECK(mechlens::host_of(*parsed) == site{site_kind::resid_post, 1});
    CHECK(hooks.extension_width(*parsed) == d_sae);
    CHECK_FALSE(mechlens::parse_site("blocks.1.hook_resid_post.hook_never_spliced_anywhere").has_value());
    CHECK_FALSE(mechlens::parse_site("blocks.1.hook_resid_post.Hook_sae_acts_post").has_value());

    // Wrong extension names fail with the closest real ones; model-only lookups refuse extension sites.
    const auto nothing = [](const site&, mechlens::activation_view, const mechlens::hook_context&) {};
    try {
        (void)hooks.add("blocks.1.hook_resid_post.hook_sae_acts_pst", nothing);
        FAIL("a misspelt extension name was accepted");
    } catch (const mechlens::unknown_hook_error& e) {
        CHECK_THAT(e.what(), Catch::Matchers::Contains(acts_name));
    }
    CHECK_THROWS_AS(hooks.add("blocks.0.hook_resid_post.hook_sae_acts_post", nothing), mechlens::unknown_hook_error);
    CHECK_THROWS_WITH(mechlens::site_from_name(acts_name, c), Catch::Matchers::Contains("extension site"));
    CHECK(mechlens::match_sites("blocks.*", c).size() + expected.size() ==
          [&] {
              std::size_t n = 0;
              for (const std::string& name : names) n += name.rfind("blocks.", 0) == 0 ? 1u : 0u;
              return n;
          }());
    {
        int fired = 0;
        auto guard = hooks.scoped("blocks.1.hook_resid_post.*", [&](const site& s, mechlens::activation_view view,
                                                                    const mechlens::hook_context&) {
            ++fired;
            CHECK(view.rank == 3);
            CHECK(view.shape[2] == (s.extension >= 0 && mechlens::to_string(s).find("acts") != std::string::npos
                                        ? d_sae
                                        : c.d_model));
        });
        (void)mechlens::forward_logits(model, as_batch(prompt), hooks);
        CHECK(fired == 6);
    }

    // Hosts: one splice per site, rank-3 always-computed sites outside the norms, matching widths.
    CHECK_THROWS_AS(hooks.splice("blocks.1.hook_resid_post", sae), std::invalid_argument);
    CHECK_THROWS_AS(hooks.splice("blocks.0.ln1.hook_normalized", sae), std::invalid_argument);
    CHECK_THROWS_AS(hooks.splice("blocks.0.attn.hook_z", sae), std::invalid_argument);
    CHECK_THROWS_AS(hooks.splice("blocks.0.mlp.hook_post", sae), mechlens::shape_error);
    CHECK_THROWS_AS(hooks.splice("blocks.7.hook_resid_post", sae), mechlens::unknown_hook_error);
    CHECK_THROWS_AS(hooks.splice("blocks.0.hook_resid_post", nullptr), std::invalid_argument);
    CHECK_THROWS_AS(mechlens::sae_splice(mechlens::sae_weights{16, 4, {}, {}, {}, {}, {}}), mechlens::shape_error);

    // Detached: the extension sites are gone and the pass is the plain one again, bit for bit.
    CHECK(hooks.remove(handle));
    CHECK(hooks.sites().size() == mechlens::all_sites(c).size());
    CHECK(hooks.extension_width(*parsed) == 0);
    CHECK_THROWS_AS(hooks.add(acts_name, nothing), mechlens::unknown_hook_error);
    const auto after = mechlens::forward_logits(model, as_batch(prompt), hooks);
    CHECK(std::equal(plain.data(), plain.data() + plain.size(), after.data()));
}

TEST_CASE("extension sites: the spliced SAE computes SAELens's activations", "[hooks][splice]") {
    const mechlens::model_config c = small_config();
    const mechlens::transformer model(mechlens::random_model(c, 7, 0.3f));
    const mechlens::sae_weights weights = random_sae(c.d_model, 11);
    const std::vector<std::int32_t> prompt{1, 5, 9, 2, 11, 3};
    const auto plain = mechlens::forward_logits(model, as_batch(prompt));

    for (const bool error_term : {true, false}) {
        INFO("error term " << error_term);
        mechlens::dynamic_hooks hooks(c);
        (void)hooks.splice("blocks.0.hook_resid_post",
                           std::make_shared<mechlens::sae_splice>(weights, with_error_term(error_term)));
        snapshots seen;
        (void)hooks.add("blocks.0.hook_resid_post, blocks.0.hook_resid_post.*", seen.callback());
        const auto logits = mechlens::forward_logits(model, as_batch(prompt), hooks);

        const reference_sae ref{&weights, true};
        const std::vector<float>& x = seen.values.at("blocks.0.hook_resid_post");  // the host, before the splice
        const auto at = [&](const char* suffix) -> const std::vector<float>& {
            return seen.values.at(std::string("blocks.0.hook_resid_post.") + suffix);
        };
        double worst = 0.0;
        const auto rows = static_cast<index_t>(prompt.size());
        for (index_t r = 0; r < rows; ++r) {
            std::vector<double> row(static_cast<std::size_t>(c.d_model));
            for (index_t i = 0; i < c.d_model; ++i)
                row[static_cast<std::size_t>(i)] = wide(x[static_cast<std::size_t>(r * c.d_model + i)]);
            const std::vector<double> pre = ref.pre(row.data());
            std::vector<double> acts = pre;
            for (double& a : acts) a = std::max(a, 0.0);
            const std::vector<double> recons = ref.decode(acts);
            auto compare = [&](const std::vector<float>& got, const std::vector<double>& want, index_t width) {
                for (index_t i = 0; i < width; ++i)
                    worst = std::max(worst, std::abs(wide(got[static_cast<std::size_t>(r * width + i)]) -
                                                     want[static_cast<std::size_t>(i)]));
            };
            std::vector<double> error(row);
            for (index_t i = 0; i < c.d_model; ++i)
                error[static_cast<std::size_t>(i)] -= recons[static_cast<std::size_t>(i)];
            compare(at("hook_sae_input"), row, c.d_model);  // SAELens: the input before b_dec is subtracted
            compare(at("hook_sae_acts_pre"), pre, d_sae);
            compare(at("hook_sae_acts_post"), acts, d_sae);
            compare(at("hook_sae_recons"), recons, c.d_model);
            compare(at("hook_sae_output"), error_term ? row : recons, c.d_model);
            if (error_term) compare(at("hook_sae_error"), error, c.d_model);
        }
        CHECK(worst <= 1e-5);
        CHECK(seen.values.count("blocks.0.hook_resid_post.hook_sae_error") == (error_term ? 1u : 0u));

        // About half the latents fire, so the ReLU's both sides are exercised.
        const std::vector<float>& acts = at("hook_sae_acts_post");
        const auto active = std::count_if(acts.begin(), acts.end(), [](float a) { return a > 0.0f; });
        CHECK(active > static_cast<std::ptrdiff_t>(acts.size() / 5));
        CHECK(active < static_cast<std::ptrdiff_t>(acts.size() * 4 / 5));

        // With the error term the model is unchanged (up to rounding); without it, the reconstruction is what
        // flows on: the same logits as writing the splice's output into the host by hand.
        double logit_gap = 0.0;
        for (index_t i = 0; i < plain.size(); ++i)
            logit_gap = std::max(logit_gap, static_cast<double>(std::abs(plain.data()[i] - logits.data()[i])));
        if (error_term) {
            CHECK(logit_gap <= 1e-5);
        } else {
            CHECK(logit_gap > 1e-2);
            mechlens::dynamic_hooks by_hand(c);
            const std::vector<float> output = at("hook_sae_output");
            (void)by_hand.add("blocks.0.hook_resid_post", [&](const site&, mechlens::activation_view view,
                                                              const mechlens::hook_context&) {
                std::copy(output.begin(), output.end(), view.data);
            });
            const auto expected = mechlens::forward_logits(model, as_batch(prompt), by_hand);
            CHECK(std::equal(expected.data(), expected.data() + expected.size(), logits.data()));
        }
    }
}

TEST_CASE("extension sites: the shipped policies cache, patch, ablate and steer SAE latents", "[hooks][splice]") {
    const mechlens::model_config c = small_config();
    const mechlens::transformer model(mechlens::random_model(c, 7, 0.3f));
    const mechlens::sae_weights weights = random_sae(c.d_model, 11);
    const std::vector<std::int32_t> prompt_a{1, 5, 9, 2, 11, 3}, prompt_b{4, 8, 6, 10, 12, 0};
    const std::string host = "blocks.0.hook_resid_post", acts_name = host + ".hook_sae_acts_post";
    const std::string output_name = host + ".hook_sae_output";

    // Cache: the latents under their SAELens name, (batch, pos, d_sae), through a file and back.
    mechlens::dynamic_hooks replace(c);
    (void)replace.splice(host, std::make_shared<mechlens::sae_splice>(weights, with_error_term(false)));
    mechlens::caching_hooks<> cache_a;
    (void)replace.add(acts_name, mechlens::as_callback(cache_a));
    const auto logits_a = mechlens::forward_logits(model, as_batch(prompt_a), replace);
    const site acts = *mechlens::parse_site(acts_name);
    REQUIRE(cache_a.cache().contains(acts));
    CHECK(cache_a.cache().at(acts).shape == std::vector<index_t>{1, 6, d_sae});
    const auto file = mechlens_test::scratch_dir() / "extension_cache.safetensors";
    cache_a.cache().save_safetensors(file);
    const mechlens::activation_cache loaded = mechlens::activation_cache::load_safetensors(file);
    CHECK(loaded[acts_name].values == cache_a.cache().at(acts).values);
    replace.clear();

    // Patch: prompt B with every latent of prompt A. Without the error term the block's output is then A's
    // reconstruction at every position, so everything after it, logits included, is A's run, bit for bit.
    (void)replace.splice(host, std::make_shared<mechlens::sae_splice>(weights, with_error_term(false)));
    mechlens::patch_hooks<> patch(cache_a.cache());
    patch.patch(acts);
    (void)replace.add(acts_name, mechlens::as_callback(patch));
    const auto patched = mechlens::forward_logits(model, as_batch(prompt_b), replace);
    CHECK(std::equal(logits_a.data(), logits_a.data() + logits_a.size(), patched.data()));
    replace.clear();

    // With the error term: zero-ablating the latents leaves b_dec + error; steering latent j by alpha moves the
    // output by alpha * W_dec[j]; zeroing latent j alone moves it by -acts_j * W_dec[j].
    mechlens::dynamic_hooks hooks(c);
    (void)hooks.splice(host, std::make_shared<mechlens::sae_splice>(weights));
    snapshots clean;
    auto watch = hooks.scoped(host + ".*", clean.callback());
    (void)mechlens::forward_logits(model, as_batch(prompt_b), hooks);
    const std::vector<float> acts_b = clean.values.at(acts_name), output_b = clean.values.at(output_name);
    const std::vector<float> error_b = clean.values.at(host + ".hook_sae_error");
    const auto rows = static_cast<index_t>(prompt_b.size());
    auto check_output = [&](const std::vector<float>& got, auto expected_row_delta, const char* what) {
        double worst = 0.0;
        for (index_t r = 0; r < rows; ++r)
            for (index_t i = 0; i < c.d_model; ++i) {
                const auto k = static_cast<std::size_t>(r * c.d_model + i);
                worst = std::max(worst, std::abs(static_cast<double>(got[k]) - wide(output_b[k]) - expected_row_delta(r, i)));
            }
        INFO(what);
        CHECK(worst <= 1e-5);
    };
    {
        mechlens::ablate_hooks<> ablate;
        ablate.zero(acts);
        auto guard = hooks.scoped(acts_name, mechlens::as_callback(ablate));
        (void)mechlens::forward_logits(model, as_batch(prompt_b), hooks);
        double worst = 0.0;
        for (index_t r = 0; r < rows; ++r)
            for (index_t i = 0; i < c.d_model; ++i) {
                const auto k = static_cast<std::size_t>(r * c.d_model + i);
                worst = std::max(worst, std::abs(static_cast<double>(clean.values.at(output_name)[k]) -
                                                 wide(weights.b_dec[static_cast<std::size_t>(i)]) - wide(error_b[k])));
            }
        CHECK(worst <= 1e-5);
        // The error term is the clean one: the ablation did not leak into it.
        CHECK(clean.values.at(host + ".hook_sae_error") == error_b);
    }
    const index_t feature = 7;
    const float alpha = 1.5f;
    {
        std::vector<float> direction(static_cast<std::size_t>(d_sae), 0.0f);
        direction[static_cast<std::size_t>(feature)] = 1.0f;
        mechlens::steer_hooks<> steer;
        steer.add(acts, direction, alpha);
        auto guard = hooks.scoped(acts_name, mechlens::as_callback(steer));
        (void)mechlens::forward_logits(model, as_batch(prompt_b), hooks);
        check_output(clean.values.at(output_name), [&](index_t, index_t i) {
            return static_cast<double>(alpha) * wide(weights.w_dec[static_cast<std::size_t>(feature * c.d_model + i)]);
        }, "steer");
    }
    {
        auto guard = hooks.scoped(acts_name, [&](const site&, mechlens::activation_view view,
                                                 const mechlens::hook_context&) {
            const auto v = view.as<3>();
            for (index_t p = 0; p < v.extent(1); ++p) v(0, p, feature) = 0.0f;
        });
        (void)mechlens::forward_logits(model, as_batch(prompt_b), hooks);
        check_output(clean.values.at(output_name), [&](index_t r, index_t i) {
            return -static_cast<double>(acts_b[static_cast<std::size_t>(r * d_sae + feature)]) *
                   wide(weights.w_dec[static_cast<std::size_t>(feature * c.d_model + i)]);
        }, "ablate one latent");
    }
}

TEST_CASE("extension sites: gradients through the splice equal finite differences of a double reference",
          "[hooks][splice][grad][fd]") {
    const mechlens::model_config c = small_config();
    const mechlens::loaded_model loaded = mechlens::random_model(c, 7, 0.3f);
    const mechlens::transformer model(mechlens::random_model(c, 7, 0.3f));
    const mechlens::model_parameters_f64 reference_model(loaded.config, loaded.weights);
    const mechlens::sae_weights weights = random_sae(c.d_model, 11);
    const std::vector<std::int32_t> prompt{1, 5, 9, 2, 11};
    const auto tokens = as_batch(prompt);
    const index_t rows = static_cast<index_t>(prompt.size());
    const std::string host = "blocks.0.hook_resid_post", acts_name = host + ".hook_sae_acts_post";

    for (const bool error_term : {false, true}) {
        INFO("error term " << error_term);
        // Analytic: the float pass with the splice, gradients read at hook_embed and at the latents.
        mechlens::dynamic_hooks hooks(c);
        (void)hooks.splice(host, std::make_shared<mechlens::sae_splice>(weights,
                                                                        with_error_term(error_term)));
        snapshots gradient;
        (void)hooks.add_gradient("hook_embed, " + acts_name, gradient.callback());
        const float value = mechlens::forward_backward(model, tokens, mechlens::metric::logit_diff(3, 7),
                                                       static_cast<mechlens::model_parameters*>(nullptr), hooks);

        // Finite differences: the double reference splice, nudging one element at a time (error held fixed).
        reference_splice ref;
        ref.sae = reference_sae{&weights, true};
        ref.host = site{site_kind::resid_post, 0};
        ref.error_term = error_term;
        const auto metric = mechlens::basic_metric<double>::logit_diff(3, 7);
        const double base = mechlens::forward_backward(reference_model, tokens, metric,
                                                       static_cast<mechlens::model_parameters_f64*>(nullptr), ref);
        CHECK(std::abs(base - static_cast<double>(value)) <= 1e-5 * std::max(1.0, std::abs(base)));
        ref.freeze_error = true;
        auto finite_difference = [&](const site& where, index_t element) {
            const double step = 1e-4;
            ref.nudge_site = where;
            ref.nudge_element = element;
            ref.nudge = step;
            const double up = mechlens::forward_backward(reference_model, tokens, metric,
                                                         static_cast<mechlens::model_parameters_f64*>(nullptr), ref);
            ref.nudge = -step;
            const double down = mechlens::forward_backward(reference_model, tokens, metric,
                                                           static_cast<mechlens::model_parameters_f64*>(nullptr), ref);
            ref.nudge_element = -1;
            return (up - down) / (2.0 * step);
        };
        struct target {
            std::string name;
            site where;
            index_t width;
        };
        for (const target& t : {target{"hook_embed", site{site_kind::embed, -1}, c.d_model},
                                target{acts_name, ref.host, d_sae}}) {
            const std::vector<float>& got = gradient.values.at(t.name);
            REQUIRE(got.size() == static_cast<std::size_t>(rows * t.width));
            std::vector<double> expected(got.size()), gap(got.size());
            for (index_t e = 0; e < rows * t.width; ++e) {
                const auto k = static_cast<std::size_t>(e);
                expected[k] = finite_difference(t.where, e);
                gap[k] = wide(got[k]) - expected[k];
            }
            WARN((error_term ? "error term, " : "replacement, ") << t.name << ": largest gradient "
                                                                   << max_abs(expected) << ", largest gap "
                                                                   << max_abs(gap));
            CHECK(max_abs(expected) > 1e-2);  // a real signal, not zeros agreeing with zeros
            CHECK(max_abs(gap) <= 1e-4 * max_abs(expected));
        }
    }
}

}  // namespace test_extension_sites
