// SAE evaluation (sae/evaluate.hpp): every metric against an independent computation in double (the host site
// cached by caching_hooks, the SAE written out by hand, cross-entropies from plain and overwritten forward passes),
// an exact-identity SAE, batch-size independence, ignored tokens, bad input, and stories260K.

#include <mechlens/mechlens.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "sae_test_support.hpp"
#include "test_support.hpp"

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_sae_eval {

using mechlens::index_t;

namespace {

mechlens::model_config eval_config() {
    mechlens::model_config c;
    c.d_model = 16;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.d_mlp = 24;
    c.d_vocab = 29;
    c.n_ctx = 16;
    return c;
}

const mechlens::transformer& eval_model() {
    static const mechlens::transformer model(mechlens::random_model(eval_config(), 5, 0.3f));
    return model;
}

/// Random standard-SAE weights: about half the latents fire on a typical row.
/// Random SAE weights in which latent 0 never fires (a dead latent) and latent 1 always does (a dense one).
mechlens::sae_weights random_sae(index_t d_in, index_t d_sae, std::uint64_t seed) {
    mechlens::random_generator rng(seed);
    mechlens::sae_weights w = mechlens_test::random_sae_weights(rng, d_in, d_sae);
    for (index_t i = 0; i < d_in; ++i) w.w_enc[static_cast<std::size_t>(i * d_sae)] = 0.0f;
    w.b_enc[0] = -1.0f;
    for (index_t i = 0; i < d_in; ++i) w.w_enc[static_cast<std::size_t>(i * d_sae + 1)] = 0.0f;
    w.b_enc[1] = 1.0f;
    return w;
}

/// The exact ReLU identity (relu(x) - relu(-x) = x): FVU 0 and CE recovered 1.
mechlens::sae_weights identity_sae(index_t d_in) { return mechlens_test::identity_sae_weights(d_in); }

using mechlens_test::random_contexts;

/// The metrics written out directly: the SAE by hand in double on cached activations, two-pass variance, and
/// cross-entropies of forward passes with the site overwritten (reconstruction) or ablated by ablate_hooks.
struct expected_metrics {
    double l0 = 0, l1 = 0, fvu = 0, cosine = 0, ce_clean = 0, ce_spliced = 0, ce_ablated = 0, dead = 0, dense = 0;
    std::int64_t tokens = 0, predictions = 0;
};

double mean_ce(const mechlens::tensor<float, 3>& logits, const std::vector<std::int32_t>& tokens, index_t n, index_t T,
               std::int32_t ignored, std::int64_t* count) {
    double sum = 0.0;
    std::int64_t k = 0;
    const index_t V = logits.extent(2);
    for (index_t b = 0; b < n; ++b)
        for (index_t p = 0; p + 1 < T; ++p) {
            if (tokens[static_cast<std::size_t>(b * T + p)] == ignored) continue;
            double m = -1e300;
            for (index_t v = 0; v < V; ++v) m = std::max(m, static_cast<double>(logits(b, p, v)));
            double s = 0.0;
            for (index_t v = 0; v < V; ++v) s += std::exp(static_cast<double>(logits(b, p, v)) - m);
            sum += m + std::log(s) - static_cast<double>(logits(b, p, tokens[static_cast<std::size_t>(b * T + p + 1)]));
            ++k;
        }
    if (count != nullptr) *count = k;
    return sum / static_cast<double>(k);
}

expected_metrics brute_force(const mechlens::transformer& model, const std::string& hook, const mechlens::sae_weights& w,
                             const std::vector<std::int32_t>& tokens, index_t n, index_t T, std::int32_t ignored = -1,
                             double dense_threshold = 0.1) {
    const mechlens::site host = mechlens::site_from_name(hook, model.config());
    const mechlens::tensor_view<const std::int32_t, 2> ids(tokens.data(), {n, T});
    const index_t d_in = w.d_in, d_sae = w.d_sae;
    mechlens::caching_hooks<> cache;
    const auto clean_logits = mechlens::forward_logits(model, ids, cache);
    const auto x = cache.cache().at(host).view<3>();  // (n, T, d_in)

    expected_metrics e;
    std::vector<double> recons(static_cast<std::size_t>(n * T * d_in));  // (n * T, d_in)
    std::vector<std::int64_t> counts(static_cast<std::size_t>(d_sae), 0);
    std::vector<double> mean(static_cast<std::size_t>(d_in), 0.0);
    double resid = 0.0;
    for (index_t b = 0; b < n; ++b)
        for (index_t p = 0; p < T; ++p) {
            const bool counted = tokens[static_cast<std::size_t>(b * T + p)] != ignored;
            std::vector<double> acts(static_cast<std::size_t>(d_sae));
            for (index_t j = 0; j < d_sae; ++j) {
                double pre = static_cast<double>(w.b_enc[static_cast<std::size_t>(j)]);
                for (index_t i = 0; i < d_in; ++i)
                    pre += (static_cast<double>(x(b, p, i)) - static_cast<double>(w.b_dec[static_cast<std::size_t>(i)])) *
                           static_cast<double>(w.w_enc[static_cast<std::size_t>(i * d_sae + j)]);
                acts[static_cast<std::size_t>(j)] = std::max(pre, 0.0);
            }
            double dot = 0, xx = 0, hh = 0;
            for (index_t i = 0; i < d_in; ++i) {
                double r = static_cast<double>(w.b_dec[static_cast<std::size_t>(i)]);
                for (index_t j = 0; j < d_sae; ++j)
                    r += acts[static_cast<std::size_t>(j)] * static_cast<double>(w.w_dec[static_cast<std::size_t>(j * d_in + i)]);
                recons[static_cast<std::size_t>((b * T + p) * d_in + i)] = counted ? r : static_cast<double>(x(b, p, i));
                const double xi = static_cast<double>(x(b, p, i));
                if (counted) {
                    resid += (xi - r) * (xi - r);
                    dot += xi * r;
                    xx += xi * xi;
                    hh += r * r;
                    mean[static_cast<std::size_t>(i)] += xi;
                }
            }
            if (!counted) continue;
            ++e.tokens;
            e.cosine += dot / std::sqrt(xx * hh);
            for (index_t j = 0; j < d_sae; ++j)
                if (acts[static_cast<std::size_t>(j)] > 0.0) {
                    e.l0 += 1.0;
                    e.l1 += acts[static_cast<std::size_t>(j)];
                    ++counts[static_cast<std::size_t>(j)];
                }
        }
    const auto tokens_counted = static_cast<double>(e.tokens);
    for (double& m : mean) m /= tokens_counted;
    double total = 0.0;  // second pass: deviations from the mean over every counted token
    for (index_t b = 0; b < n; ++b)
        for (index_t p = 0; p < T; ++p)
            if (tokens[static_cast<std::size_t>(b * T + p)] != ignored)
                for (index_t i = 0; i < d_in; ++i) {
                    const double d = static_cast<double>(x(b, p, i)) - mean[static_cast<std::size_t>(i)];
                    total += d * d;
                }
    e.fvu = resid / total;
    e.l0 /= tokens_counted;
    e.l1 /= tokens_counted;
    e.cosine /= tokens_counted;
    for (const std::int64_t c : counts) {
        e.dead += c == 0 ? 1.0 : 0.0;
        e.dense += static_cast<double>(c) > dense_threshold * tokens_counted ? 1.0 : 0.0;
    }
    e.dead /= static_cast<double>(d_sae);
    e.dense /= static_cast<double>(d_sae);
    e.ce_clean = mean_ce(clean_logits, tokens, n, T, ignored, &e.predictions);

    // The reconstruction written over the host by a plain callback.
    mechlens::dynamic_hooks overwrite(model.config());
    overwrite.add(hook, [&](const mechlens::site&, mechlens::activation_view v, const mechlens::hook_context&) {
        const auto a = v.as<3>();
        for (index_t b = 0; b < n; ++b)
            for (index_t p = 0; p < T; ++p)
                for (index_t i = 0; i < d_in; ++i)
                    a(b, p, i) = static_cast<float>(recons[static_cast<std::size_t>((b * T + p) * d_in + i)]);
    });
    e.ce_spliced = mean_ce(mechlens::forward_logits(model, ids, overwrite), tokens, n, T, ignored, nullptr);
    mechlens::ablate_hooks<> ablate;
    ablate.zero(host);
    e.ce_ablated = mean_ce(mechlens::forward_logits(model, ids, ablate), tokens, n, T, ignored, nullptr);
    return e;
}

void check_against(const mechlens::sae_eval_result& r, const expected_metrics& e) {
    CHECK(r.tokens == e.tokens);
    CHECK(r.predictions == e.predictions);
    CHECK(r.l0 == Approx(e.l0).epsilon(1e-12));
    CHECK(r.l1 == Approx(e.l1).epsilon(1e-5));
    CHECK(r.fvu == Approx(e.fvu).epsilon(1e-5));
    CHECK(r.explained_variance == Approx(1.0 - e.fvu).epsilon(1e-5));
    CHECK(r.cosine == Approx(e.cosine).epsilon(1e-5));
    CHECK(r.ce_clean == Approx(e.ce_clean).epsilon(1e-5));
    CHECK(r.ce_spliced == Approx(e.ce_spliced).epsilon(1e-5));
    CHECK(r.ce_ablated == Approx(e.ce_ablated).epsilon(1e-5));
    CHECK(r.ce_recovered ==
          Approx((e.ce_ablated - e.ce_spliced) / (e.ce_ablated - e.ce_clean)).epsilon(1e-4));
    CHECK(r.dead_fraction == Approx(e.dead).epsilon(1e-12));
    CHECK(r.dense_fraction == Approx(e.dense).epsilon(1e-12));
}

}  // namespace

TEST_CASE("sae eval: every metric equals a direct computation on a random model", "[sae][sae_eval]") {
    const auto& model = eval_model();
    const index_t n = 5, T = 12, d_sae = 40;
    const auto w = random_sae(16, d_sae, 3);
    const auto tokens = random_contexts(n, T, 29, 9);
    const mechlens::tensor_view<const std::int32_t, 2> ids(tokens.data(), {n, T});
    for (const std::string hook : {"blocks.1.hook_resid_pre", "blocks.0.hook_mlp_out"}) {
        INFO(hook);
        const expected_metrics e = brute_force(model, hook, w, tokens, n, T);
        std::vector<mechlens::sae_eval_progress> seen;
        mechlens::sae_eval_options o;
        o.batch_contexts = 2;
        const auto r = mechlens::evaluate_sae(model, hook, w, {}, ids, o,
                                              [&](const mechlens::sae_eval_progress& p) { seen.push_back(p); });
        check_against(r, e);
        CHECK(r.contexts == n);
        CHECK(r.tokens == n * T);
        CHECK(r.predictions == n * (T - 1));
        // The figures are not degenerate: some variance explained, some lost, the splice costs some CE.
        CHECK(r.fvu > 0.05);
        CHECK(r.l0 > 2.0);
        CHECK(r.l0 < static_cast<double>(d_sae) - 2.0);
        CHECK(r.ce_ablated != Approx(r.ce_clean).epsilon(1e-3));
        CHECK(r.dead_fraction >= 1.0 / d_sae);  // latent 0
        CHECK(r.dense_fraction >= 1.0 / d_sae);  // latent 1
        CHECK(r.active_counts[0] == 0);
        CHECK(r.active_counts[1] == n * T);
        // Progress after each batch of 2 contexts: 24, 48, 60 of 60 tokens.
        REQUIRE(seen.size() == 3);
        CHECK(seen[0].tokens_done == 2 * T);
        CHECK(seen[2].tokens_done == n * T);
        CHECK(seen[2].tokens_total == n * T);
    }
}

TEST_CASE("sae eval: ignored tokens (BOS) are left out of every metric and keep their activation", "[sae][sae_eval]") {
    const auto& model = eval_model();
    const index_t n = 4, T = 10;
    const auto w = random_sae(16, 24, 4);
    auto tokens = random_contexts(n, T, 29, 10);
    tokens[5] = 1;  // a BOS inside a context too
    const mechlens::tensor_view<const std::int32_t, 2> ids(tokens.data(), {n, T});
    const expected_metrics e = brute_force(model, "blocks.1.hook_resid_post", w, tokens, n, T, /*ignored=*/1);
    mechlens::sae_eval_options o;
    o.ignore_tokens = {1};
    o.batch_contexts = 3;
    const auto r = mechlens::evaluate_sae(model, "blocks.1.hook_resid_post", w, {}, ids, o);
    check_against(r, e);
    CHECK(r.tokens == n * T - n - 1);
    CHECK(r.predictions == n * (T - 1) - n - 1);
    // Without ignoring, the figures differ.
    const auto all = mechlens::evaluate_sae(model, "blocks.1.hook_resid_post", w, {}, ids, {});
    CHECK(all.fvu != Approx(r.fvu).epsilon(1e-6));
}

TEST_CASE("sae eval: an exact identity SAE has FVU 0 and recovers all of the cross-entropy", "[sae][sae_eval]") {
    const auto& model = eval_model();
    const index_t n = 3, T = 16;
    const auto tokens = random_contexts(n, T, 29, 11);
    const mechlens::tensor_view<const std::int32_t, 2> ids(tokens.data(), {n, T});
    const auto r = mechlens::evaluate_sae(model, "blocks.0.hook_resid_post", identity_sae(16), {}, ids, {});
    CHECK(r.fvu == 0.0);
    CHECK(r.mse == 0.0);
    CHECK(r.explained_variance == 1.0);
    CHECK(r.cosine == Approx(1.0).epsilon(1e-12));
    CHECK(r.ce_spliced == r.ce_clean);  // bit for bit: the reconstruction is x itself
    CHECK(r.ce_recovered == 1.0);
    CHECK(std::abs(r.ce_ablated - r.ce_clean) > 0.01);  // (a random model may even do better without the site)
    CHECK(r.l0 == Approx(16.0));  // one of each (x_i, -x_i) pair is active when x_i != 0
    CHECK(r.dead_fraction == 0.0);
}

TEST_CASE("sae eval: the figures do not depend on the batch size; a packer feeds it too", "[sae][sae_eval]") {
    const auto& model = eval_model();
    const index_t n = 6, T = 8;
    const auto w = random_sae(16, 32, 5);
    const auto tokens = random_contexts(n, T, 29, 12);
    const mechlens::tensor_view<const std::int32_t, 2> ids(tokens.data(), {n, T});
    mechlens::sae_eval_options one, four;
    one.batch_contexts = 1;
    four.batch_contexts = 4;
    const auto a = mechlens::evaluate_sae(model, "blocks.1.hook_attn_out", w, {}, ids, one);
    const auto b = mechlens::evaluate_sae(model, "blocks.1.hook_attn_out", w, {}, ids, four);
    CHECK(a.l0 == b.l0);
    CHECK(a.fvu == Approx(b.fvu).epsilon(1e-12));
    CHECK(a.cosine == Approx(b.cosine).epsilon(1e-12));
    CHECK(a.ce_spliced == Approx(b.ce_spliced).epsilon(1e-6));
    CHECK(a.active_counts == b.active_counts);

    // tokens_total rounds down to whole contexts; a supplier that runs out ends the evaluation early.
    std::size_t next = 0;
    mechlens::sae_eval_options o;
    o.context = T;
    o.tokens_total = 100 * T + 3;
    const auto c = mechlens::evaluate_sae(model, "blocks.1.hook_attn_out", w, {},
                                          mechlens::context_supplier([&](std::span<std::int32_t> ctx) {
                                              if (next >= static_cast<std::size_t>(n)) return false;
                                              std::copy_n(tokens.begin() + static_cast<std::ptrdiff_t>(next * T), T, ctx.begin());
                                              ++next;
                                              return true;
                                          }),
                                          o);
    CHECK(c.contexts == n);
    CHECK(c.l0 == a.l0);
    CHECK(c.fvu == Approx(a.fvu).epsilon(1e-12));

    // Any architecture: a topk SAE keeps at most k latents per token.
    mechlens::sae_options topk;
    topk.architecture = mechlens::sae_architecture::topk;
    topk.k = 3;
    const auto t = mechlens::evaluate_sae(model, "blocks.1.hook_attn_out", w, topk, ids, four);
    CHECK(t.l0 <= 3.0);
    CHECK(t.l0 > 2.0);
    CHECK(t.l0 < a.l0);
}

TEST_CASE("sae eval: bad input is refused with a clear message", "[sae][sae_eval]") {
    const auto& model = eval_model();
    const auto tokens = random_contexts(2, 8, 29, 13);
    const mechlens::tensor_view<const std::int32_t, 2> ids(tokens.data(), {2, 8});
    const auto w = random_sae(16, 8, 6);
    CHECK_THROWS_WITH(mechlens::evaluate_sae(model, "blocks.0.mlp.hook_post", w, {}, ids, {}),
                      Catch::Contains("reads 16 values per token") && Catch::Contains("has 24"));
    CHECK_THROWS_WITH(mechlens::evaluate_sae(model, "blocks.0.ln1.hook_normalized", w, {}, ids, {}),
                      Catch::Contains("cannot hold an SAE"));
    CHECK_THROWS_AS(mechlens::evaluate_sae(model, "blocks.7.hook_resid_post", w, {}, ids, {}),
                    mechlens::unknown_hook_error);
    mechlens::sae_eval_options o;
    o.context = 32;
    o.tokens_total = 64;
    const mechlens::context_supplier none = [](std::span<std::int32_t>) { return false; };
    CHECK_THROWS_WITH(mechlens::evaluate_sae(model, "hook_embed", w, {}, none, o), Catch::Contains("exceeds the model's n_ctx 16"));
    o.context = 8;
    o.tokens_total = 7;
    CHECK_THROWS_WITH(mechlens::evaluate_sae(model, "hook_embed", w, {}, none, o), Catch::Contains("less than one context"));
    o.tokens_total = 16;
    CHECK_THROWS_WITH(mechlens::evaluate_sae(model, "hook_embed", w, {}, none, o), Catch::Contains("yielded no context"));
    auto bad = tokens;
    bad[3] = 29;
    CHECK_THROWS_WITH(mechlens::evaluate_sae(model, "hook_embed", w, {},
                                             mechlens::tensor_view<const std::int32_t, 2>(bad.data(), {2, 8}), {}),
                      Catch::Contains("token id 29"));
    auto broken = w;
    broken.b_dec.pop_back();
    CHECK_THROWS_AS(mechlens::evaluate_sae(model, "hook_embed", broken, {}, ids, {}), mechlens::shape_error);
}

TEST_CASE("sae eval: stories260K with an identity SAE and a random one", "[sae][sae_eval][stories260K]") {
    const auto path = mechlens_test::model_file("stories260K/stories260K.bin");
    MECHLENS_REQUIRE_FILE_OR_SKIP(path);
    const mechlens::transformer model(mechlens::load_model(path));
    const auto tokenizer = mechlens::bpe_tokenizer::from_llama2c(mechlens_test::model_file("stories260K/tok512.bin"));
    const std::string text =
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she "
        "saw a big, red ball. She wanted to play with it, but it was too high. Her mom said, \"Let's ask the man.\" "
        "The man was kind and gave the ball to Lily. She said thank you and played all day.";
    auto ids = tokenizer.encode(text, false);
    const index_t T = 32, n = static_cast<index_t>(ids.size()) / (T - 1);
    std::vector<std::int32_t> tokens;
    for (index_t r = 0; r < n; ++r) {
        tokens.push_back(1);
        tokens.insert(tokens.end(), ids.begin() + r * (T - 1), ids.begin() + (r + 1) * (T - 1));
    }
    const mechlens::tensor_view<const std::int32_t, 2> contexts(tokens.data(), {n, T});
    mechlens::sae_eval_options o;
    o.ignore_tokens = {1};
    const auto r = mechlens::evaluate_sae(model, "blocks.2.hook_resid_post", identity_sae(64), {}, contexts, o);
    CHECK(r.fvu == 0.0);
    CHECK(r.ce_recovered == 1.0);
    CHECK(r.ce_clean < 2.5);              // the model knows this kind of story
    CHECK(r.ce_ablated > r.ce_clean + 1.0);  // and the residual stream matters
    const auto w = random_sae(64, 128, 7);
    const expected_metrics e = brute_force(model, "blocks.2.hook_resid_post", w, tokens, n, T, 1);
    check_against(mechlens::evaluate_sae(model, "blocks.2.hook_resid_post", w, {}, contexts, o), e);
}

TEST_CASE("sae eval: a transcoder in place of an MLP, every metric against a direct computation",
          "[sae][sae_eval][transcoder]") {
    const auto& model = eval_model();
    const index_t n = 4, T = 12, d_in = 16, d_sae = 32, layer = 1;
    mechlens::transcoder_weights w;
    w.sae = random_sae(d_in, d_sae, 21);
    mechlens::random_generator rng(22);
    w.w_skip.resize(static_cast<std::size_t>(d_in * d_in));
    for (float& v : w.w_skip) v = 0.1f * (2.0f * static_cast<float>(rng.uniform()) - 1.0f);
    const auto tokens = random_contexts(n, T, 29, 23);
    const mechlens::tensor_view<const std::int32_t, 2> ids(tokens.data(), {n, T});

    // By hand: the transcoder of the cached MLP input, against the cached MLP output.
    const std::string out_name = "blocks." + std::to_string(layer) + ".hook_mlp_out";
    const mechlens::site in_site = mechlens::site_from_name("blocks." + std::to_string(layer) + ".ln2.hook_normalized",
                                                            model.config());
    const mechlens::site out_site = mechlens::site_from_name(out_name, model.config());
    mechlens::caching_hooks<> cache;
    const auto clean_logits = mechlens::forward_logits(model, ids, cache);
    const auto x = cache.cache().at(in_site).view<3>();   // (n, T, d_in) the MLP's input
    const auto y = cache.cache().at(out_site).view<3>();  // (n, T, d_in) the MLP's output
    std::vector<double> recons(static_cast<std::size_t>(n * T * d_in));  // (n * T, d_in)
    std::vector<double> mean(static_cast<std::size_t>(d_in), 0.0);
    double resid = 0.0, l0 = 0.0;
    for (index_t b = 0; b < n; ++b)
        for (index_t p = 0; p < T; ++p) {
            std::vector<double> acts(static_cast<std::size_t>(d_sae));
            for (index_t j = 0; j < d_sae; ++j) {
                double pre = static_cast<double>(w.sae.b_enc[static_cast<std::size_t>(j)]);
                for (index_t i = 0; i < d_in; ++i)
                    pre += static_cast<double>(x(b, p, i)) * static_cast<double>(w.sae.w_enc[static_cast<std::size_t>(i * d_sae + j)]);
                acts[static_cast<std::size_t>(j)] = std::max(pre, 0.0);
                l0 += pre > 0.0 ? 1.0 : 0.0;
            }
            for (index_t i = 0; i < d_in; ++i) {
                double r = static_cast<double>(w.sae.b_dec[static_cast<std::size_t>(i)]);
                for (index_t j = 0; j < d_sae; ++j)
                    r += acts[static_cast<std::size_t>(j)] * static_cast<double>(w.sae.w_dec[static_cast<std::size_t>(j * d_in + i)]);
                for (index_t k = 0; k < d_in; ++k)
                    r += static_cast<double>(x(b, p, k)) * static_cast<double>(w.w_skip[static_cast<std::size_t>(k * d_in + i)]);
                recons[static_cast<std::size_t>((b * T + p) * d_in + i)] = r;
                const double yi = static_cast<double>(y(b, p, i));
                resid += (yi - r) * (yi - r);
                mean[static_cast<std::size_t>(i)] += yi;
            }
        }
    const auto count = static_cast<double>(n * T);
    for (double& m : mean) m /= count;
    double total = 0.0;
    for (index_t b = 0; b < n; ++b)
        for (index_t p = 0; p < T; ++p)
            for (index_t i = 0; i < d_in; ++i) {
                const double d = static_cast<double>(y(b, p, i)) - mean[static_cast<std::size_t>(i)];
                total += d * d;
            }
    mechlens::dynamic_hooks overwrite(model.config());
    overwrite.add(out_name, [&](const mechlens::site&, mechlens::activation_view v, const mechlens::hook_context&) {
        const auto a = v.as<3>();  // (n, T, d_in)
        for (index_t b = 0; b < n; ++b)
            for (index_t p = 0; p < T; ++p)
                for (index_t i = 0; i < d_in; ++i)
                    a(b, p, i) = static_cast<float>(recons[static_cast<std::size_t>((b * T + p) * d_in + i)]);
    });
    const double ce_clean = mean_ce(clean_logits, tokens, n, T, -1, nullptr);
    const double ce_spliced = mean_ce(mechlens::forward_logits(model, ids, overwrite), tokens, n, T, -1, nullptr);
    mechlens::ablate_hooks<> ablate;
    ablate.zero(out_site);
    const double ce_ablated = mean_ce(mechlens::forward_logits(model, ids, ablate), tokens, n, T, -1, nullptr);

    mechlens::sae_eval_options o;
    o.batch_contexts = 3;
    o.context = T;
    o.tokens_total = n * T;
    index_t row = 0;
    const auto r = mechlens::evaluate_transcoder(
        model, layer, w, mechlens::transcoder_options(),
        [&](std::span<std::int32_t> context) {
            if (row >= n) return false;
            std::copy_n(tokens.begin() + row * T, T, context.begin());
            ++row;
            return true;
        },
        o);
    CHECK(r.tokens == n * T);
    CHECK(r.l0 == Approx(l0 / count).epsilon(1e-12));
    CHECK(r.fvu == Approx(resid / total).epsilon(1e-5));
    CHECK(r.ce_clean == Approx(ce_clean).epsilon(1e-5));
    CHECK(r.ce_spliced == Approx(ce_spliced).epsilon(1e-5));
    CHECK(r.ce_ablated == Approx(ce_ablated).epsilon(1e-5));
    CHECK(r.ce_recovered == Approx((ce_ablated - ce_spliced) / (ce_ablated - ce_clean)).epsilon(1e-4));
    CHECK(r.fvu > 0.05);  // a random transcoder explains little: the comparison is not degenerate
    CHECK(r.ce_spliced != Approx(r.ce_clean).epsilon(1e-4));

    CHECK_THROWS_WITH(mechlens::evaluate_transcoder(model, 2, w, mechlens::transcoder_options(),
                                                    [](std::span<std::int32_t>) { return false; }, o),
                      Catch::Matchers::Contains("layer 2 is outside 0..1"));
}

}  // namespace test_sae_eval
