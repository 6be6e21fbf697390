// SAE feature dashboards (sae/dashboard.hpp): top contexts equal a brute-force search over activations computed by
// hand, the bounded histogram, logit weights equal a direct computation, the page is balanced, escaped, complete and
// deterministic, bad input is refused; stories260K when present.

#include <mechlens/mechlens.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "sae_test_support.hpp"
#include "test_support.hpp"

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_sae_dashboard {

using mechlens::index_t;

namespace {

mechlens::model_config dash_config(mechlens::norm_kind norm = mechlens::norm_kind::rms) {
    mechlens::model_config c;
    c.d_model = 16;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.d_mlp = 24;
    c.d_vocab = 31;
    c.n_ctx = 16;
    c.norm = norm;
    return c;
}

/// Random SAE weights whose encoder biases centre on `enc_bias` (negative: sparser firing).
mechlens::sae_weights random_sae(index_t d_in, index_t d_sae, std::uint64_t seed, float enc_bias = -0.3f) {
    mechlens::random_generator rng(seed);
    return mechlens_test::random_sae_weights(rng, d_in, d_sae, enc_bias);
}

using mechlens_test::random_contexts;

/// A supplier over contexts held in memory.
mechlens::context_supplier from_memory(const std::vector<std::int32_t>& tokens, index_t T, std::size_t& next) {
    return [&tokens, T, &next](std::span<std::int32_t> ctx) {
        if ((next + 1) * static_cast<std::size_t>(T) > tokens.size()) return false;
        std::copy_n(tokens.begin() + static_cast<std::ptrdiff_t>(next * static_cast<std::size_t>(T)), T, ctx.begin());
        ++next;
        return true;
    };
}

/// Each latent's activation at every token, by hand in double from the cached host activation: (n * T, d_sae).
std::vector<double> activations_by_hand(const mechlens::transformer& model, const std::string& hook,
                                        const mechlens::sae_weights& w, const std::vector<std::int32_t>& tokens,
                                        index_t n, index_t T) {
    mechlens::caching_hooks<> cache;
    (void)mechlens::forward_logits(model, mechlens::tensor_view<const std::int32_t, 2>(tokens.data(), {n, T}), cache);
    const auto x = cache.cache().at(mechlens::site_from_name(hook, model.config())).view<3>();
    std::vector<double> acts(static_cast<std::size_t>(n * T * w.d_sae));
    for (index_t b = 0; b < n; ++b)
        for (index_t p = 0; p < T; ++p)
            for (index_t j = 0; j < w.d_sae; ++j) {
                double pre = static_cast<double>(w.b_enc[static_cast<std::size_t>(j)]);
                for (index_t i = 0; i < w.d_in; ++i)
                    pre += (static_cast<double>(x(b, p, i)) - static_cast<double>(w.b_dec[static_cast<std::size_t>(i)])) *
                           static_cast<double>(w.w_enc[static_cast<std::size_t>(i * w.d_sae + j)]);
                acts[static_cast<std::size_t>((b * T + p) * w.d_sae + j)] = std::max(pre, 0.0);
            }
    return acts;
}

/// The tags the page opens and closes, checked for balance (void elements and self-closing SVG tags left out).
bool balanced(const std::string& html, std::string* problem) {
    std::vector<std::string> stack;
    static const std::set<std::string> void_tags{"meta", "br", "hr", "img", "input", "link"};
    std::size_t i = 0;
    while ((i = html.find('<', i)) != std::string::npos) {
        const std::size_t end = html.find('>', i);
        if (end == std::string::npos) {
            *problem = "unterminated tag";
            return false;
        }
        std::string tag = html.substr(i + 1, end - i - 1);
        i = end + 1;
        if (tag.empty() || tag[0] == '!') continue;
        const bool closing = tag[0] == '/';
        const bool self_closing = tag.back() == '/';
        std::string name = tag.substr(closing ? 1 : 0);
        name = name.substr(0, name.find_first_of(" /"));
        if (self_closing || void_tags.count(name)) continue;
        if (!closing) {
            stack.push_back(name);
        } else if (stack.empty() || stack.back() != name) {
            *problem = "</" + name + "> closes <" + (stack.empty() ? std::string("nothing") : stack.back()) + ">";
            return false;
        } else {
            stack.pop_back();
        }
    }
    if (!stack.empty()) *problem = "<" + stack.back() + "> never closed";
    return stack.empty();
}

/// Token text with the characters HTML cares about.
std::string tricky_text(std::int32_t t) {
    switch (t % 5) {
        case 0: return "<b>" + std::to_string(t);
        case 1: return "a&b" + std::to_string(t);
        case 2: return "\"q'" + std::to_string(t);
        case 3: return " sp\n" + std::to_string(t);
        default: return "w" + std::to_string(t);
    }
}

}  // namespace

TEST_CASE("sae dashboard: top contexts equal a brute-force search", "[sae][sae_dashboard]") {
    const mechlens::transformer model(mechlens::random_model(dash_config(), 3, 0.3f));
    const index_t n = 7, T = 12, d_sae = 20;
    const auto w = random_sae(16, d_sae, 4);
    const auto tokens = random_contexts(n, T, 31, 5);
    const std::string hook = "blocks.1.hook_resid_pre";
    const auto acts = activations_by_hand(model, hook, w, tokens, n, T);
    const std::vector<index_t> features{3, 0, 17, 9};
    mechlens::feature_collector_options co;
    co.top_k = 6;
    co.window_before = 3;
    co.window_after = 2;
    co.ignore_tokens = {1};
    mechlens::sae_eval_options o;
    o.context = T;
    o.tokens_total = n * T;
    o.batch_contexts = 3;
    std::size_t next = 0;
    std::int64_t last_done = 0;
    const auto got = mechlens::collect_feature_activity(model, hook, w, {}, from_memory(tokens, T, next), o, features, co,
                                                        [&](const mechlens::sae_eval_progress& p) { last_done = p.tokens_done; });
    CHECK(last_done == n * T);
    REQUIRE(got.size() == features.size());
    for (std::size_t f = 0; f < features.size(); ++f) {
        const index_t j = features[f];
        INFO("feature " << j);
        const mechlens::feature_summary& s = got[f];
        CHECK(s.feature == j);
        // Every (activation, context, position) with a non-zero activation, BOS left out, sorted as documented.
        std::vector<std::tuple<double, index_t, index_t>> all;
        std::int64_t active = 0;
        for (index_t b = 0; b < n; ++b)
            for (index_t p = 0; p < T; ++p) {
                if (tokens[static_cast<std::size_t>(b * T + p)] == 1) continue;
                const double a = acts[static_cast<std::size_t>((b * T + p) * d_sae + j)];
                if (a > 0.0) {
                    ++active;
                    all.emplace_back(-a, b, p);
                }
            }
        std::sort(all.begin(), all.end());
        CHECK(s.tokens == n * (T - 1));
        CHECK(s.active == active);
        std::int64_t histogram_total = 0;
        for (const std::int64_t c : s.histogram.counts()) histogram_total += c;
        CHECK(histogram_total == active);
        REQUIRE(s.top.size() == std::min<std::size_t>(6, all.size()));
        for (std::size_t k = 0; k < s.top.size(); ++k) {
            const auto& [neg, b, p] = all[k];
            const mechlens::feature_context& c = s.top[k];
            CHECK(static_cast<double>(c.activation) == Approx(-neg).epsilon(1e-5));
            CHECK(c.context_index == b);
            CHECK(c.position == p);
            CHECK(c.first == std::max<index_t>(0, p - 3));
            const index_t last = std::min<index_t>(T, p + 3);
            REQUIRE(static_cast<index_t>(c.tokens.size()) == last - c.first);
            for (index_t q = c.first; q < last; ++q) {
                CHECK(c.tokens[static_cast<std::size_t>(q - c.first)] == tokens[static_cast<std::size_t>(b * T + q)]);
                CHECK(static_cast<double>(c.activations[static_cast<std::size_t>(q - c.first)]) ==
                      Approx(acts[static_cast<std::size_t>((b * T + q) * d_sae + j)]).margin(1e-5));
            }
        }
    }
    CHECK(got[0].active > 6);  // enough activity that the heap had to drop entries
}

TEST_CASE("sae dashboard: the histogram keeps exact counts in a fixed number of bins", "[sae][sae_dashboard]") {
    mechlens::activation_histogram h(8);
    h.add(1.0f);  // width 0.25: bins cover [0, 2)
    CHECK(h.width() == 0.25);
    h.add(0.1f);
    h.add(1.9f);
    CHECK(h.counts() == std::vector<std::int64_t>{1, 0, 0, 0, 1, 0, 0, 1});
    h.add(7.5f);  // doubles twice: width 1, bins cover [0, 8)
    CHECK(h.width() == 1.0);
    CHECK(h.counts() == std::vector<std::int64_t>{1, 2, 0, 0, 0, 0, 0, 1});  // 0.1 | 1.0, 1.9 | 7.5
    CHECK(h.counts().size() == 8);
}

TEST_CASE("sae dashboard: logit weights equal a direct computation (RMSNorm and LayerNorm)", "[sae][sae_dashboard]") {
    for (const auto norm : {mechlens::norm_kind::rms, mechlens::norm_kind::layer}) {
        const mechlens::transformer model(mechlens::random_model(dash_config(norm), 6, 0.3f));
        const auto w = random_sae(16, 8, 7);
        const auto& mw = model.weights();
        for (const index_t j : {0, 5}) {
            // Direct: the decoder row (centred for LayerNorm) times the gain, dotted with each unembedding row.
            std::vector<std::pair<double, std::int32_t>> all;
            double mean = 0.0;
            for (index_t i = 0; i < 16; ++i) mean += static_cast<double>(w.w_dec[static_cast<std::size_t>(j * 16 + i)]) / 16.0;
            for (index_t t = 0; t < 31; ++t) {
                double s = 0.0;
                for (index_t i = 0; i < 16; ++i) {
                    double d = static_cast<double>(w.w_dec[static_cast<std::size_t>(j * 16 + i)]);
                    if (norm == mechlens::norm_kind::layer) d -= mean;
                    s += d * static_cast<double>(mw.final_norm(i)) * static_cast<double>(mw.unembed(t, i));
                }
                all.emplace_back(s, static_cast<std::int32_t>(t));
            }
            std::sort(all.begin(), all.end());
            const auto got = mechlens::logit_weights(model, w, j, 4);
            REQUIRE(got.promoted.size() == 4);
            REQUIRE(got.suppressed.size() == 4);
            for (std::size_t k = 0; k < 4; ++k) {
                CHECK(got.suppressed[k].token == all[k].second);
                CHECK(got.suppressed[k].weight == Approx(all[k].first).epsilon(1e-12));
                CHECK(got.promoted[k].token == all[all.size() - 1 - k].second);
                CHECK(got.promoted[k].weight == Approx(all[all.size() - 1 - k].first).epsilon(1e-12));
            }
        }
        CHECK_THROWS_WITH(mechlens::logit_weights(model, w, 8), Catch::Contains("feature 8 is outside [0, 8)"));
        CHECK_THROWS_WITH(mechlens::logit_weights(model, random_sae(24, 8, 1), 0), Catch::Contains("not d_model"));
    }
}

TEST_CASE("sae dashboard: the page is balanced, escaped, complete and deterministic", "[sae][sae_dashboard]") {
    const mechlens::transformer model(mechlens::random_model(dash_config(), 3, 0.3f));
    const index_t n = 5, T = 10;
    const auto tokens = random_contexts(n, T, 31, 8);
    const std::vector<index_t> features{2, 11, 7};
    auto page = [&](std::uint64_t seed) {
        const auto w = random_sae(16, 16, seed);
        mechlens::sae_eval_options o;
        o.context = T;
        o.tokens_total = n * T;
        std::size_t next = 0;
        auto summaries =
            mechlens::collect_feature_activity(model, "blocks.0.hook_resid_post", w, {}, from_memory(tokens, T, next), o, features);
        const auto dashboards = mechlens::build_feature_dashboards(model, "blocks.0.hook_resid_post", w, std::move(summaries), 5);
        mechlens::dashboard_page_info info;
        info.lines = {"model: random <test> & co"};
        return mechlens::feature_dashboard_html(dashboards, tricky_text, info);
    };
    const std::string html = page(9);
    std::string problem;
    CHECK(balanced(html, &problem));
    INFO(problem);
    for (const index_t j : features) {
        CHECK(html.find("id=\"feature-" + std::to_string(j) + "\"") != std::string::npos);
        CHECK(html.find("href=\"#feature-" + std::to_string(j) + "\"") != std::string::npos);
        CHECK(html.find("<h2>Feature " + std::to_string(j) + "</h2>") != std::string::npos);
    }
    CHECK(html.find("model: random &lt;test&gt; &amp; co") != std::string::npos);
    CHECK(html.find("&lt;b&gt;") != std::string::npos);     // token text escaped ...
    CHECK(html.find("<b>") == std::string::npos);            // ... never raw
    CHECK(html.find("a&amp;b") != std::string::npos);
    CHECK(html.find("&quot;q&#39;") != std::string::npos);
    CHECK(html.find("\u21b5") != std::string::npos);         // newlines shown as arrows
    CHECK(html.find("class=\"tok max") != std::string::npos);
    CHECK(html.find("<svg") != std::string::npos);
    CHECK(html.find("promoted") != std::string::npos);
    CHECK(html.find("<script") == std::string::npos);
    CHECK(html.find("http://") == html.find("http://www.w3.org/2000/svg"));  // the SVG namespace, nothing fetched
    CHECK(html.find("https://") == std::string::npos);
    CHECK(page(9) == html);   // the same bytes for the same seed
    CHECK(page(10) != html);  // and others for another SAE
}

TEST_CASE("sae dashboard: bad input is refused", "[sae][sae_dashboard]") {
    const mechlens::transformer model(mechlens::random_model(dash_config(), 3, 0.3f));
    const auto w = random_sae(16, 8, 4);
    const auto tokens = random_contexts(2, 8, 31, 8);
    mechlens::sae_eval_options o;
    o.context = 8;
    o.tokens_total = 16;
    std::size_t next = 0;
    const auto run = [&](std::vector<index_t> features) {
        next = 0;
        return mechlens::collect_feature_activity(model, "hook_embed", w, {}, from_memory(tokens, 8, next), o, features);
    };
    CHECK_THROWS_WITH(run({8}), Catch::Contains("feature 8 is outside the SAE's 8 latents"));
    CHECK_THROWS_WITH(run({1, 1}), Catch::Contains("feature 1 is chosen twice"));
    CHECK_THROWS_WITH(run({}), Catch::Contains("no features chosen"));
    CHECK(run({0, 7}).size() == 2);
    // An SAE on an MLP site has no logit weights, and the page says so.
    const auto mlp = random_sae(24, 8, 5);
    next = 0;
    auto summaries = mechlens::collect_feature_activity(model, "blocks.0.mlp.hook_post", mlp, {}, from_memory(tokens, 8, next), o, {3});
    const auto d = mechlens::build_feature_dashboards(model, "blocks.0.mlp.hook_post", mlp, std::move(summaries));
    CHECK_FALSE(d[0].logits.has_value());
    CHECK(mechlens::feature_dashboard_html(d, {}).find("No logit weights") != std::string::npos);
}

TEST_CASE("sae dashboard: stories260K", "[sae][sae_dashboard][stories260K]") {
    const auto path = mechlens_test::model_file("stories260K/stories260K.bin");
    MECHLENS_REQUIRE_FILE_OR_SKIP(path);
    const mechlens::transformer model(mechlens::load_model(path));
    const auto tokenizer = mechlens::bpe_tokenizer::from_llama2c(mechlens_test::model_file("stories260K/tok512.bin"));
    const std::string text =
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she "
        "saw a big, red ball. She wanted to play with it, but it was too high. Her mom said, \"Let's ask the man.\"";
    const auto ids = tokenizer.encode(text, false);
    const index_t T = 24, n = static_cast<index_t>(ids.size()) / (T - 1);
    std::vector<std::int32_t> tokens;
    for (index_t r = 0; r < n; ++r) {
        tokens.push_back(1);
        tokens.insert(tokens.end(), ids.begin() + r * (T - 1), ids.begin() + (r + 1) * (T - 1));
    }
    const auto w = random_sae(64, 96, 12, -0.6f);
    mechlens::sae_eval_options o;
    o.context = T;
    o.tokens_total = n * T;
    std::size_t next = 0;
    mechlens::feature_collector_options co;
    co.ignore_tokens = {1};
    auto summaries =
        mechlens::collect_feature_activity(model, "blocks.2.hook_resid_post", w, {}, from_memory(tokens, T, next), o, {0, 1, 2}, co);
    const auto d = mechlens::build_feature_dashboards(model, "blocks.2.hook_resid_post", w, std::move(summaries));
    const std::string html = mechlens::feature_dashboard_html(d, [&](std::int32_t t) { return tokenizer.decode_piece(0, t); });
    std::string problem;
    CHECK(balanced(html, &problem));
    CHECK(html.find("Lily") != std::string::npos);
    std::ofstream(mechlens_test::scratch_dir() / "stories260K_dashboard.html") << html;
}

}  // namespace test_sae_dashboard
