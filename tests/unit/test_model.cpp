// The LLaMA forward pass on the real stories260K, against the independent PyTorch reference in tests/reference/.
#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "test_support.hpp"

using mechlens::index_t;
namespace fs = std::filesystem;

namespace {

/// Records a copy of every site the forward pass fires, by TransformerLens name.
struct capture_everything {
    struct record {
        std::vector<index_t> shape;
        std::vector<float> values;
    };
    std::map<std::string, record> records;

    static constexpr bool wants(mechlens::site_kind) { return true; }

    template <std::size_t Rank>
    void on_activation(const mechlens::site& s, mechlens::tensor_view<float, Rank> view,
                       const mechlens::hook_context&) {
        record& r = records[mechlens::to_string(s)];
        r.shape.assign(view.shape().begin(), view.shape().end());
        r.values.resize(static_cast<std::size_t>(view.size()));
        mechlens::tensor_view<float, Rank> destination(r.values.data(), view.shape());
        mechlens::copy(mechlens::tensor_view<const float, Rank>(view), destination);
    }
};
static_assert(mechlens::hook_policy<capture_everything>);

/// Largest |a - b| over two arrays of equal length; -inf == -inf counts as 0, any other non-finite as infinity.
double max_abs_difference(const std::vector<float>& a, const std::vector<float>& b) {
    REQUIRE(a.size() == b.size());
    double worst = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (std::isinf(a[i]) && a[i] == b[i]) continue;
        const double d = std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
        worst = std::isfinite(d) ? std::max(worst, d) : HUGE_VAL;
    }
    return worst;
}

std::vector<std::int32_t> fixture_tokens(const fs::path& dir) {
    const mechlens::npy_array tokens = mechlens::read_npy(dir / "tokens.npy");
    REQUIRE(tokens.shape.size() == 2);
    REQUIRE(tokens.shape[0] == 1);
    std::vector<std::int32_t> ids;
    for (float v : tokens.data) ids.push_back(static_cast<std::int32_t>(v));
    return ids;
}

mechlens::tensor_view<const std::int32_t, 2> as_batch(const std::vector<std::int32_t>& ids) {
    return mechlens::tensor_view<const std::int32_t, 2>(ids.data(), {1, static_cast<index_t>(ids.size())});
}

std::vector<fs::path> fixture_prompts() {
    std::vector<fs::path> dirs;
    const fs::path root = mechlens_test::fixtures_dir() / "stories260K";
    if (fs::exists(root))
        for (const auto& entry : fs::directory_iterator(root))
            if (entry.is_directory() && fs::exists(entry.path() / "logits.npy")) dirs.push_back(entry.path());
    std::sort(dirs.begin(), dirs.end());
    return dirs;
}

const fs::path stories_bin = mechlens_test::model_file("stories260K/stories260K.bin");
const fs::path stories_gguf = mechlens_test::model_file("stories260K/stories260K.gguf");

}  // namespace

TEST_CASE("model: stories260K logits equal the PyTorch reference within 1e-4", "[model][reference]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    const auto prompts = fixture_prompts();
    REQUIRE(prompts.size() >= 3);
    for (const fs::path& dir : prompts) {
        INFO("fixture " << dir.filename().string());
        const auto tokens = fixture_tokens(dir);
        const mechlens::npy_array expected = mechlens::read_npy(dir / "logits.npy");
        const mechlens::tensor<float, 3> logits = mechlens::forward_logits(model, as_batch(tokens));
        REQUIRE(expected.shape == std::vector<index_t>{1, static_cast<index_t>(tokens.size()), 512});
        const std::vector<float> actual(logits.data(), logits.data() + logits.size());
        const double error = max_abs_difference(actual, expected.data);
        INFO("max abs error of logits: " << error);
        CHECK(error <= 1e-4);
    }
}

TEST_CASE("model: every cached activation of stories260K equals the reference within 1e-4", "[model][reference]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    for (const fs::path& dir : fixture_prompts()) {
        const auto tokens = fixture_tokens(dir);
        capture_everything capture;
        (void)mechlens::forward_logits(model, as_batch(tokens), capture);
        REQUIRE(capture.records.size() == 5 * 21 + 4);  // 21 sites per block, 4 global ones
        index_t compared = 0, residual_layers = 0;
        for (const auto& entry : fs::directory_iterator(dir)) {
            const std::string name = entry.path().stem().string();
            if (entry.path().extension() != ".npy" || name == "tokens" || name == "logits" || name == "greedy") continue;
            INFO("site " << name << " of fixture " << dir.filename().string());
            const auto found = capture.records.find(name);
            REQUIRE(found != capture.records.end());
            const mechlens::npy_array expected = mechlens::read_npy(entry.path());
            REQUIRE(found->second.shape == expected.shape);
            const double error = max_abs_difference(found->second.values, expected.data);
            INFO("max abs error: " << error);
            CHECK(error <= 1e-4);
            ++compared;
            if (name.find("hook_resid_post") != std::string::npos) ++residual_layers;
        }
        CHECK(residual_layers == 5);
        CHECK(compared >= 5 * 19);
    }
}

TEST_CASE("model: hooks that only read change no logit", "[model]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    const std::vector<std::int32_t> tokens{1, 403, 407, 261, 378, 5, 90};
    const auto plain = mechlens::forward_logits(model, as_batch(tokens));
    capture_everything capture;
    const auto hooked = mechlens::forward_logits(model, as_batch(tokens), capture);
    // The hooked pass sums per-head results (attn.hook_result is wanted), so rounding may differ in the last bits.
    const std::vector<float> a(plain.data(), plain.data() + plain.size()), b(hooked.data(), hooked.data() + hooked.size());
    CHECK(max_abs_difference(a, b) <= 1e-5);
}

TEST_CASE("model: stories260K.bin and stories260K.gguf give identical logits", "[model][gguf]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_gguf);
    const mechlens::transformer from_bin(mechlens::load_model(stories_bin));
    const mechlens::transformer from_gguf(mechlens::load_model(stories_gguf));
    CHECK(from_gguf.config().d_model == from_bin.config().d_model);
    CHECK(from_gguf.config().n_kv_heads == from_bin.config().n_kv_heads);
    const std::vector<std::int32_t> tokens{1, 403, 407, 261, 378, 1000 % 512, 17, 300};
    const auto a = mechlens::forward_logits(from_bin, as_batch(tokens));
    const auto b = mechlens::forward_logits(from_gguf, as_batch(tokens));
    REQUIRE(a.size() == b.size());
    CHECK(std::equal(a.data(), a.data() + a.size(), b.data()));
}

TEST_CASE("model: greedy continuation reproduces llama2.c's reference text", "[model][generate]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    const auto tokenizer = mechlens::bpe_tokenizer::from_llama2c(mechlens_test::model_file("stories260K/tok512.bin"));
    const auto prompt = tokenizer.encode("Once upon a time");
    REQUIRE(prompt == std::vector<std::int32_t>{1, 403, 407, 261, 378});
    mechlens::generation_options options;
    options.max_new_tokens = 40;
    std::string streamed;
    std::int32_t previous = prompt.back();
    const auto generated = mechlens::generate(model, prompt, options, [&](std::int32_t id) {
        streamed += tokenizer.decode_piece(previous, id);
        previous = id;
    });
    CHECK(generated.size() == 40);
    CHECK(streamed ==
          ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red "
          "ball.");
}

TEST_CASE("model: KV-cache decoding equals the full forward pass", "[model][kv]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    const index_t vocab = model.config().d_vocab;
    std::vector<std::int32_t> tokens{1, 403, 407, 261, 378};
    for (int i = 0; i < 27; ++i) tokens.push_back((tokens.back() * 37 + 11) % 512);
    const auto full = mechlens::forward_logits(model, as_batch(tokens));
    const auto n = static_cast<index_t>(tokens.size());

    for (index_t chunk : {index_t{1}, index_t{3}, index_t{8}}) {
        INFO("chunk " << chunk);
        mechlens::kv_cache cache(model.config(), 1, n);
        mechlens::workspace ws;
        double worst = 0.0;
        for (index_t start = 0; start < n; start += chunk) {
            const index_t count = std::min(chunk, n - start);
            mechlens::tensor<float, 3> logits({1, count, vocab});
            mechlens::forward(model, mechlens::tensor_view<const std::int32_t, 2>(tokens.data() + start, {1, count}),
                              cache, logits.view(), ws);
            for (index_t p = 0; p < count; ++p)
                for (index_t v = 0; v < vocab; ++v)
                    worst = std::max(worst, std::fabs(static_cast<double>(logits(0, p, v) - full(0, start + p, v))));
        }
        CHECK(cache.length() == n);
        CHECK(worst <= 1e-5);  // the bound
        CHECK(worst == 0.0);   // what the batch-invariant GEMM actually guarantees
    }
}

TEST_CASE("model: a batch of sequences equals each sequence alone", "[model][batch]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    const std::vector<std::int32_t> batch{1, 403, 407, 261, 378, 1, 20, 30, 40, 50, 1, 499, 3, 258, 7};
    const auto logits = mechlens::forward_logits(
        model, mechlens::tensor_view<const std::int32_t, 2>(batch.data(), {3, 5}));
    for (index_t b = 0; b < 3; ++b) {
        const std::vector<std::int32_t> one(batch.begin() + b * 5, batch.begin() + b * 5 + 5);
        const auto alone = mechlens::forward_logits(model, as_batch(one));
        double worst = 0.0;
        for (index_t p = 0; p < 5; ++p)
            for (index_t v = 0; v < 512; ++v)
                worst = std::max(worst, std::fabs(static_cast<double>(logits(b, p, v) - alone(0, p, v))));
        CHECK(worst == 0.0);
    }
}

TEST_CASE("model: last-position logits equal the last row of the full logits", "[model]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    const std::vector<std::int32_t> tokens{1, 403, 407, 261, 378, 90};
    const auto full = mechlens::forward_logits(model, as_batch(tokens));
    mechlens::tensor<float, 3> last({1, 1, 512});
    mechlens::workspace ws;
    mechlens::forward(model, as_batch(tokens), last.view(), ws);
    for (index_t v = 0; v < 512; ++v) CHECK(last(0, 0, v) == full(0, 5, v));
}

TEST_CASE("model: one and two threads agree up to float rounding", "[model][threads]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    std::vector<std::int32_t> tokens{1};
    for (int i = 0; i < 63; ++i) tokens.push_back((i * 131 + 7) % 512);
    const int before = mechlens::num_threads();
    mechlens::set_num_threads(1);
    const auto one = mechlens::forward_logits(model, as_batch(tokens));
    mechlens::set_num_threads(2);
    const auto two = mechlens::forward_logits(model, as_batch(tokens));
    mechlens::set_num_threads(before);
    const std::vector<float> a(one.data(), one.data() + one.size()), b(two.data(), two.data() + two.size());
    CHECK(max_abs_difference(a, b) == 0.0);  // outputs are split between threads, never a reduction
}

TEST_CASE("model: a reused workspace allocates nothing in steady state", "[model][workspace]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    const std::vector<std::int32_t> tokens{1, 403, 407, 261, 378, 9, 9, 9};
    mechlens::workspace ws;
    mechlens::tensor<float, 3> logits({1, 8, 512});
    mechlens::forward(model, as_batch(tokens), logits.view(), ws);
    const float* residual = ws.residual.data();
    const float* scores = ws.scores.data();
    const float* keys = ws.own_cache.keys(0).data();
    const index_t capacity = ws.residual.capacity();
    for (int repeat = 0; repeat < 3; ++repeat) mechlens::forward(model, as_batch(tokens), logits.view(), ws);
    CHECK(ws.residual.data() == residual);
    CHECK(ws.scores.data() == scores);
    CHECK(ws.own_cache.keys(0).data() == keys);
    CHECK(ws.residual.capacity() == capacity);
}

TEST_CASE("model: bad arguments are clear errors", "[model][errors]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    mechlens::workspace ws;
    const std::vector<std::int32_t> bad{1, 512};
    mechlens::tensor<float, 3> logits({1, 2, 512});
    REQUIRE_THROWS_WITH(mechlens::forward(model, as_batch(bad), logits.view(), ws),
                        Catch::Matchers::Contains("token id 512"));
    const std::vector<std::int32_t> good{1, 2};
    mechlens::tensor<float, 3> wrong({1, 2, 100});
    REQUIRE_THROWS_AS(mechlens::forward(model, as_batch(good), wrong.view(), ws), mechlens::shape_error);
    mechlens::kv_cache small(model.config(), 1, 1);
    REQUIRE_THROWS_WITH(mechlens::forward(model, as_batch(good), small, logits.view(), ws),
                        Catch::Matchers::Contains("capacity"));
    std::vector<std::int32_t> too_long(600, 5);
    REQUIRE_THROWS_AS(mechlens::forward_logits(model, as_batch(too_long)), mechlens::shape_error);
}

TEST_CASE("model: aidreams260K, a third-party llama2.c model, runs and generates", "[model]") {
    const fs::path path = mechlens_test::model_file("aidreams260K/aidreams260K.bin");
    MECHLENS_REQUIRE_FILE_OR_SKIP(path);
    const mechlens::transformer model(mechlens::load_model(path));
    CHECK(model.config().n_layers == 4);
    const std::vector<std::int32_t> prompt{1, 300, 301};
    mechlens::generation_options options;
    options.max_new_tokens = 20;
    options.stop_at_bos = options.stop_at_eos = false;
    const auto out = mechlens::generate(model, prompt, options, [](std::int32_t) {});
    CHECK(out.size() == 20);
    const auto logits = mechlens::forward_logits(model, as_batch(prompt));
    CHECK(std::all_of(logits.data(), logits.data() + logits.size(), [](float v) { return std::isfinite(v); }));
}

TEST_CASE("sampling: seeds reproduce, temperature follows the softmax, top-p keeps the nucleus", "[sampling]") {
    const std::vector<float> logits{2.0f, 1.0f, 0.0f, -1.0f, 0.5f};
    const auto n = static_cast<index_t>(logits.size());
    CHECK(mechlens::argmax(logits.data(), n) == 0);

    mechlens::sampler a({.temperature = 1.0f, .top_p = 1.0f, .seed = 5});
    mechlens::sampler b({.temperature = 1.0f, .top_p = 1.0f, .seed = 5});
    mechlens::sampler c({.temperature = 1.0f, .top_p = 1.0f, .seed = 6});
    std::vector<int> counts(logits.size(), 0);
    bool differs = false;
    const int draws = 200000;
    for (int i = 0; i < draws; ++i) {
        const auto x = a.sample(logits.data(), n);
        REQUIRE(x == b.sample(logits.data(), n));
        differs = differs || x != c.sample(logits.data(), n);
        ++counts[static_cast<std::size_t>(x)];
    }
    CHECK(differs);
    double total = 0.0;
    for (float l : logits) total += std::exp(static_cast<double>(l));
    for (std::size_t i = 0; i < logits.size(); ++i) {
        const double expected = std::exp(static_cast<double>(logits[i])) / total;
        const double observed = counts[i] / static_cast<double>(draws);
        INFO("token " << i << " expected " << expected << " observed " << observed);
        CHECK(std::fabs(observed - expected) < 5.0 * std::sqrt(expected * (1 - expected) / draws));
    }

    // p = (0.563, 0.207, 0.076, 0.028, 0.126): a nucleus of 0.5 keeps only token 0; 0.75 keeps tokens 0 and 1.
    mechlens::sampler narrow({.temperature = 1.0f, .top_p = 0.5f, .seed = 1});
    mechlens::sampler wider({.temperature = 1.0f, .top_p = 0.75f, .seed = 1});
    for (int i = 0; i < 2000; ++i) {
        CHECK(narrow.sample(logits.data(), n) == 0);
        const auto x = wider.sample(logits.data(), n);
        CHECK((x == 0 || x == 1));
    }
    REQUIRE_THROWS_AS(mechlens::sampler({.temperature = -1.0f}), std::invalid_argument);
    REQUIRE_THROWS_AS(mechlens::sampler({.temperature = 1.0f, .top_p = 0.0f}), std::invalid_argument);
}
