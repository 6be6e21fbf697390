// The LLaMA forward pass on the real stories260K, against the independent PyTorch reference in tests/reference/.
#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "test_support.hpp"

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_model {

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

// ---------------------------------------------------------------------------------------------------------------------
// Model variants (norm none, learned positions, plain GELU MLP, attention-only) against the float64 reference of
// tests/reference/variants_reference.py, whose fixtures hold weights, tokens, logits and activations.

namespace {

/// One variants fixture: its config, its weights as model_parameters, its tokens and every stored tensor by name.
struct variant_fixture {
    std::string name;
    mechlens::model_config config;
    mechlens::model_parameters params;
    std::vector<std::int32_t> tokens;
    std::map<std::string, mechlens::safetensors_tensor> tensors;
};

mechlens::model_config variant_config(const mechlens::safetensors_file& file) {
    auto meta = [&](const std::string& key) {
        const auto it = file.metadata.find(key);
        INFO("metadata key " << key);
        REQUIRE(it != file.metadata.end());
        return it->second;
    };
    mechlens::model_config c;
    c.d_model = std::stoll(meta("d_model"));
    c.n_layers = std::stoll(meta("n_layers"));
    c.n_heads = std::stoll(meta("n_heads"));
    c.n_kv_heads = std::stoll(meta("n_kv_heads"));
    c.d_mlp = std::stoll(meta("d_mlp"));
    c.d_vocab = std::stoll(meta("d_vocab"));
    c.n_ctx = std::stoll(meta("n_ctx"));
    c.rope_theta = std::stof(meta("rope_theta"));
    c.norm_eps = std::stof(meta("norm_eps"));
    c.tied_unembed = meta("tied_unembed") == "true";
    const std::string rope = meta("rope");
    REQUIRE((rope == "adjacent_pairs" || rope == "split_halves"));
    c.rope = rope == "split_halves" ? mechlens::rope_layout::split_halves : mechlens::rope_layout::adjacent_pairs;
    const std::string norm = meta("norm"), positions = meta("positions"), mlp = meta("mlp");
    REQUIRE((norm == "rms" || norm == "none" || norm == "layer"));
    REQUIRE((positions == "rotary" || positions == "learned"));
    REQUIRE((mlp == "gated_silu" || mlp == "plain_gelu" || mlp == "none" || mlp == "plain_relu" ||
             mlp == "plain_gelu_erf"));
    c.norm = norm == "rms" ? mechlens::norm_kind::rms : norm == "layer" ? mechlens::norm_kind::layer
                                                                        : mechlens::norm_kind::none;
    c.positions = positions == "rotary" ? mechlens::positional_kind::rotary : mechlens::positional_kind::learned;
    c.mlp = mlp == "gated_silu"       ? mechlens::mlp_kind::gated_silu
            : mlp == "plain_gelu"     ? mechlens::mlp_kind::plain_gelu
            : mlp == "plain_relu"     ? mechlens::mlp_kind::plain_relu
            : mlp == "plain_gelu_erf" ? mechlens::mlp_kind::plain_gelu_erf
                                      : mechlens::mlp_kind::none;
    // The GPT-2 family's options are written only when set.
    auto optional = [&](const std::string& key) -> std::string {
        const auto it = file.metadata.find(key);
        return it == file.metadata.end() ? std::string() : it->second;
    };
    c.linear_biases = optional("linear_biases") == "true";
    if (optional("attention") == "bidirectional") c.attention = mechlens::attention_dir::bidirectional;
    if (!optional("d_vocab_out").empty()) c.d_vocab_out = std::stoll(optional("d_vocab_out"));
    // GPT-NeoX's likewise.
    c.parallel_attn_mlp = optional("parallel_attn_mlp") == "true";
    if (!optional("rotary_dim_size").empty()) c.rotary_dim_size = std::stoll(optional("rotary_dim_size"));
    return c;
}

/// Reads a fixture and copies its weights, by parameter_layout name, into model_parameters.
variant_fixture load_variant(const fs::path& path) {
    mechlens::safetensors_file file = mechlens::read_safetensors(path);
    variant_fixture f{path.stem().string(), variant_config(file), {}, {}, {}};
    for (mechlens::safetensors_tensor& t : file.tensors) f.tensors.emplace(t.name, std::move(t));
    f.params = mechlens::model_parameters(f.config);
    for (const mechlens::parameter_entry& e : f.params.layout()) {
        INFO("parameter " << e.name << " of " << f.name);
        const auto found = f.tensors.find(e.name);
        REQUIRE(found != f.tensors.end());
        const std::vector<index_t> shape =
            e.rank == 1 ? std::vector<index_t>{e.shape[0]} : std::vector<index_t>{e.shape[0], e.shape[1]};
        REQUIRE(found->second.shape == shape);
        const auto destination = f.params.find(e.name);
        std::copy(found->second.values.begin(), found->second.values.end(), destination.begin());
    }
    const mechlens::safetensors_tensor& tokens = f.tensors.at("tokens");
    REQUIRE(tokens.shape.size() == 2);
    REQUIRE(tokens.shape[0] == 1);
    for (float v : tokens.values) {
        REQUIRE(v == std::floor(v));
        f.tokens.push_back(static_cast<std::int32_t>(v));
    }
    return f;
}

std::vector<variant_fixture> variant_fixtures() {
    std::vector<fs::path> paths;
    for (const auto& entry : fs::directory_iterator(mechlens_test::fixtures_dir() / "variants"))
        if (entry.path().extension() == ".safetensors") paths.push_back(entry.path());
    std::sort(paths.begin(), paths.end());
    std::vector<variant_fixture> out;
    for (const fs::path& p : paths) out.push_back(load_variant(p));
    REQUIRE(out.size() >= 10);
    return out;
}

mechlens::transformer variant_model(const variant_fixture& f) {
    return mechlens::transformer(mechlens::loaded_model{f.config, f.params.weights()});
}

std::vector<float> values_of(const mechlens::tensor<float, 3>& t) { return {t.data(), t.data() + t.size()}; }

/// Every combination of norm x positions x MLP, tied and untied alternately, at the fixtures' small shape.
std::vector<mechlens::model_config> every_variant() {
    std::vector<mechlens::model_config> out;
    for (auto norm : {mechlens::norm_kind::rms, mechlens::norm_kind::none})
        for (auto positions : {mechlens::positional_kind::rotary, mechlens::positional_kind::learned})
            for (auto mlp : {mechlens::mlp_kind::gated_silu, mechlens::mlp_kind::plain_gelu, mechlens::mlp_kind::none}) {
                mechlens::model_config c{.d_model = 16, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .d_mlp = 32,
                                         .d_vocab = 37, .n_ctx = 12};
                c.norm = norm, c.positions = positions, c.mlp = mlp;
                c.tied_unembed = out.size() % 2 == 0;
                out.push_back(c);
            }
    mechlens::model_config neox = out.front();  // GPT-NeoX's parallel blocks and partial split-halves rotary
    neox.mlp = mechlens::mlp_kind::plain_gelu_erf;
    neox.parallel_attn_mlp = true;
    neox.rope = mechlens::rope_layout::split_halves;
    neox.rotary_dim_size = 2;
    neox.tied_unembed = false;
    out.insert(out.end() - 1, neox);  // the last entry stays the attention-only, norm-free, learned one
    return out;
}

}  // namespace

TEST_CASE("variants: logits and activations equal the float64 reference within 1e-4", "[variants][reference]") {
    for (const variant_fixture& f : variant_fixtures()) {
        INFO("fixture " << f.name);
        const mechlens::transformer model = variant_model(f);
        mechlens::caching_hooks<> run;
        const auto logits = mechlens::forward_logits(model, as_batch(f.tokens), run);
        const mechlens::safetensors_tensor& expected = f.tensors.at("logits");
        REQUIRE(expected.shape == std::vector<index_t>{1, 10, f.config.vocab_out()});
        const double logit_error = max_abs_difference(values_of(logits), expected.values);
        CAPTURE(logit_error);
        CHECK(logit_error <= 1e-4);
        // The hooked run (every site, the norms unfused) rounds exactly like the plain one.
        const auto plain = mechlens::forward_logits(model, as_batch(f.tokens));
        CHECK(std::equal(plain.data(), plain.data() + plain.size(), logits.data()));
        // Direct logit attribution (with LayerNorm's centring and every bias as components) sums to the logit
        // difference at the last position.
        const std::int32_t answer = 1, other = 0;
        const mechlens::logit_attribution dla =
            mechlens::direct_logit_attribution(model, run.cache(), 0, 9, answer, other);
        const double difference = static_cast<double>(logits(0, 9, answer)) - static_cast<double>(logits(0, 9, other));
        CAPTURE(dla.total, difference);
        CHECK(std::abs(dla.total - difference) <= 1e-4 * std::max(1.0, std::abs(difference)));
        // The logit lens at the last block is the model's own output (its final norm, bias and unembedding bias).
        const auto lens = mechlens::logit_lens(model, run.cache());  // (layers, 1, pos, vocab)
        double lens_error = 0.0;
        for (index_t p = 0; p < 10; ++p)
            for (index_t v = 0; v < f.config.vocab_out(); ++v)
                lens_error = std::max(lens_error, std::abs(static_cast<double>(lens(f.config.n_layers - 1, 0, p, v)) -
                                                           static_cast<double>(logits(0, p, v))));
        CAPTURE(lens_error);
        CHECK(lens_error <= 1e-4);
        double worst = 0.0;
        index_t compared = 0, residual_layers = 0, pos_embeds = 0;
        for (const auto& [name, t] : f.tensors) {
            if (!mechlens::parse_site(name)) continue;  // weights, tokens, logits
            INFO("site " << name);
            const mechlens::cached_activation& actual = run.cache()[name];
            REQUIRE(actual.shape == t.shape);
            worst = std::max(worst, max_abs_difference(actual.values, t.values));
            ++compared;
            residual_layers += name.find("hook_resid_post") != std::string::npos;
            pos_embeds += name == "hook_pos_embed";
        }
        CAPTURE(worst, compared);
        CHECK(worst <= 1e-4);
        CHECK(residual_layers == f.config.n_layers);
        CHECK(pos_embeds == (f.config.rotary() ? 0 : 1));
        CHECK(compared >= 2 + 5 * f.config.n_layers);  // at least 2 global sites and 5 per block
    }
}

TEST_CASE("variants: KV-cache decoding token by token equals the full forward bit for bit", "[variants][kv]") {
    for (const variant_fixture& f : variant_fixtures()) {
        INFO("fixture " << f.name);
        if (!f.config.causal()) continue;  // a bidirectional model's rows see later tokens: nothing to decode
        const mechlens::transformer model = variant_model(f);
        const auto n = static_cast<index_t>(f.tokens.size());
        mechlens::caching_hooks<> full_run, decoded_run;
        const auto full = mechlens::forward_logits(model, as_batch(f.tokens), full_run);
        mechlens::kv_cache cache(f.config, 1, n);
        mechlens::workspace ws;
        for (index_t p = 0; p < n; ++p) {
            mechlens::tensor<float, 3> step({1, 1, f.config.vocab_out()});
            mechlens::forward(model, mechlens::tensor_view<const std::int32_t, 2>(f.tokens.data() + p, {1, 1}), cache,
                              step.view(), ws, decoded_run);
            for (index_t v = 0; v < f.config.vocab_out(); ++v) REQUIRE(step(0, 0, v) == full(0, p, v));
        }
        // Every site too, hook_pos_embed included: decode steps add the rows of their absolute positions.
        REQUIRE(decoded_run.cache().sites() == full_run.cache().sites());
        for (const mechlens::site& s : full_run.cache().sites()) {
            INFO("site " << mechlens::to_string(s));
            const auto& a = decoded_run.cache().at(s);
            REQUIRE(a.shape == full_run.cache().at(s).shape);
            CHECK(max_abs_difference(a.values, full_run.cache().at(s).values) == 0.0);
        }
    }
}

TEST_CASE("variants: a forward pass fires exactly the sites match_sites lists", "[variants][hooks]") {
    for (const mechlens::model_config& c : every_variant()) {
        const mechlens::transformer model(mechlens::random_model(c, 7, 0.3f));
        INFO("norm " << int(c.norm) << " positions " << int(c.positions) << " mlp " << int(c.mlp));
        mechlens::caching_hooks<mechlens::kind_set::all()> everything;
        const std::vector<std::int32_t> tokens{3, 1, 4, 1, 5, 9};
        (void)mechlens::forward_logits(model, as_batch(tokens), everything);
        const std::vector<mechlens::site> listed = mechlens::match_sites("*", c);
        CHECK(everything.cache().sites() == listed);
        CHECK(listed == mechlens::all_sites(c));
        for (const mechlens::site& s : listed) CHECK(mechlens::site_from_name(mechlens::to_string(s), c) == s);
    }
    // TransformerLens's attn-only, normalization_type None, learned positions: 10 sites per block, 3 global.
    mechlens::model_config c = every_variant().back();
    REQUIRE((c.attn_only() && !c.has_norm() && !c.rotary()));
    CHECK(mechlens::all_sites(c).size() == 2 * 10 + 3);
    CHECK(mechlens::all_site_names(c)[1] == "hook_pos_embed");
    CHECK_THROWS_WITH(mechlens::site_from_name("blocks.0.hook_resid_mid", c), Catch::Matchers::Contains("attention-only"));
    CHECK_THROWS_WITH(mechlens::site_from_name("ln_final.hook_scale", c), Catch::Matchers::Contains("no normalisation"));
    CHECK_THROWS_WITH(mechlens::site_from_name("blocks.1.attn.hook_rot_k", c), Catch::Matchers::Contains("learned"));
    CHECK_THROWS_AS(mechlens::match_sites("*ln1*", c), mechlens::unknown_hook_error);
    CHECK_THROWS_WITH(mechlens::site_from_name("hook_pos_embed", mechlens::model_config{}),
                      Catch::Matchers::Contains("rotary"));
}

TEST_CASE("family: GPT-2 and GPT-NeoX gradients and activation patching equal PyTorch autograd",
          "[variants][grad][patching][reference]") {
    // tests/reference/family_grad_reference.py: d metric / d weight and d metric / d site for two metrics, and the
    // logits after patching one activation from a corrupt run, in float64 PyTorch on the variants' weights.
    double worst_weight = 0.0, worst_site = 0.0, worst_patch = 0.0;
    index_t compared_sites = 0;
    for (const std::string name : {"gpt2_layer_learned", "neox_parallel_partial_rotary"}) {
        INFO("fixture " << name);
        const variant_fixture f = load_variant(mechlens_test::fixtures_dir() / "variants" / (name + ".safetensors"));
        const mechlens::safetensors_file expected_file =
            mechlens::read_safetensors(mechlens_test::fixtures_dir() / "family_grad" / (name + ".safetensors"));
        std::map<std::string, const mechlens::safetensors_tensor*> expected;
        for (const mechlens::safetensors_tensor& t : expected_file.tensors) expected.emplace(t.name, &t);
        const auto n = static_cast<index_t>(f.tokens.size());
        const mechlens::tensor_view<const std::int32_t, 2> tokens(f.tokens.data(), {1, n});
        // max |got - want| / max |want| (the fixture is float64 PyTorch rounded to float32).
        auto relative = [](const float* got, const std::vector<float>& want) {
            double diff = 0.0, scale = 0.0;
            for (std::size_t i = 0; i < want.size(); ++i) {
                diff = std::max(diff, std::abs(static_cast<double>(got[i]) - static_cast<double>(want[i])));
                scale = std::max(scale, std::abs(static_cast<double>(want[i])));
            }
            return scale > 0.0 ? diff / scale : diff;
        };
        auto largest = [](const float* values, std::size_t count) {
            double m = 0.0;
            for (std::size_t i = 0; i < count; ++i) m = std::max(m, std::abs(static_cast<double>(values[i])));
            return m;
        };
        const std::string last_diff_tokens = expected_file.metadata.at("diff_tokens");
        REQUIRE(last_diff_tokens == "3,7");
        const std::pair<const char*, mechlens::metric> metrics[] = {
            {"ce", mechlens::metric::cross_entropy()}, {"diff", mechlens::metric::logit_diff(3, 7, -1)}};
        for (const auto& [metric_name, objective] : metrics) {
            INFO("metric " << metric_name);
            mechlens::model_parameters grads(f.config);
            mechlens::gradient_cache<> observed;
            const float value = mechlens::forward_backward(f.params, tokens, objective, &grads, observed);
            const double want_value = std::stod(expected_file.metadata.at(metric_name));
            CHECK(std::abs(static_cast<double>(value) - want_value) <= 1e-5 * std::max(1.0, std::abs(want_value)));
            const std::string prefix = std::string(metric_name) + ".grad.";
            // Some weight gradients are zero in exact arithmetic (b_K without rotary: a key bias shifts every score
            // of a query alike), where PyTorch's float64 leaves ~1e-17 and float32 ~1e-7 of the metric's largest
            // weight gradient: those are checked against that scale instead.
            double metric_scale = 0.0;
            for (const auto& [key, tensor] : expected)
                if (key.rfind(prefix, 0) == 0 && key.find("hook_") == std::string::npos)
                    metric_scale = std::max(metric_scale, largest(tensor->values.data(), tensor->values.size()));
            index_t weights_seen = 0, sites_seen = 0;
            for (const auto& [key, tensor] : expected) {
                if (key.rfind(prefix, 0) != 0) continue;
                const std::string target = key.substr(prefix.size());
                INFO("gradient " << target);
                if (target.find("hook_") == std::string::npos) {  // a weight
                    const auto got = grads.find(target);
                    REQUIRE(static_cast<std::size_t>(got.size()) == tensor->values.size());
                    if (largest(tensor->values.data(), tensor->values.size()) <= 1e-12 * metric_scale) {
                        CHECK(largest(got.data(), tensor->values.size()) <= 1e-6 * metric_scale);
                        ++weights_seen;
                        continue;
                    }
                    const double error = relative(got.data(), tensor->values);
                    CHECK(error <= 2e-5);
                    worst_weight = std::max(worst_weight, error);
                    ++weights_seen;
                } else {
                    const mechlens::cached_activation& got = observed.cache()[target];
                    REQUIRE(got.shape == tensor->shape);
                    const double error = relative(got.values.data(), tensor->values);
                    CHECK(error <= 2e-5);
                    worst_site = std::max(worst_site, error);
                    ++sites_seen;
                }
            }
            CHECK(weights_seen == static_cast<index_t>(f.params.layout().size()));
            CHECK(sites_seen >= 14 * f.config.n_layers);
            compared_sites += sites_seen;
        }

        // Activation patching from the corrupt tokens into the clean run.
        const mechlens::safetensors_tensor& corrupt_values = *expected.at("corrupt_tokens");
        std::vector<std::int32_t> corrupt;
        for (float v : corrupt_values.values) corrupt.push_back(static_cast<std::int32_t>(v));
        const mechlens::transformer model = variant_model(f);
        mechlens::caching_hooks<> corrupt_run;
        (void)mechlens::forward_logits(model, as_batch(corrupt), corrupt_run);
        struct patch_case {
            const char* name;
            mechlens::site target;
            mechlens::selection where;
        };
        const patch_case cases[] = {
            {"z_L0H1", {mechlens::site_kind::attn_z, 0}, {.heads = {1}}},
            {"resid_pre_L1_p6", {mechlens::site_kind::resid_pre, 1}, {.positions = {6}}},
            {"mlp_out_L0", {mechlens::site_kind::mlp_out, 0}, {}},
        };
        for (const patch_case& pc : cases) {
            INFO("patch " << pc.name);
            mechlens::patch_hooks<> patch(corrupt_run.cache());
            patch.patch(pc.target, pc.where);
            const auto logits = mechlens::forward_logits(model, as_batch(f.tokens), patch);
            const mechlens::safetensors_tensor& want = *expected.at(std::string("patched.") + pc.name);
            REQUIRE(want.shape == std::vector<index_t>{1, n, f.config.vocab_out()});
            const double error = max_abs_difference(values_of(logits), want.values);
            CHECK(error <= 1e-4);
            worst_patch = std::max(worst_patch, error);
        }
    }
    WARN("GPT-2 / GPT-NeoX against PyTorch autograd: worst relative error " << worst_weight << " (weights), "
         << worst_site << " (" << compared_sites << " site gradients); patched logits within " << worst_patch);
}

TEST_CASE("variants: patching hook_pos_embed changes the logits as editing W_pos does", "[variants][hooks]") {
    for (const variant_fixture& f : variant_fixtures()) {
        if (f.config.rotary()) continue;
        INFO("fixture " << f.name);
        const mechlens::transformer model = variant_model(f);
        mechlens::caching_hooks<> clean;
        const auto base = mechlens::forward_logits(model, as_batch(f.tokens), clean);
        const mechlens::site pos_site{mechlens::site_kind::pos_embed, -1};
        mechlens::patch_hooks<> same(clean.cache());
        same.patch(pos_site);
        CHECK(max_abs_difference(values_of(mechlens::forward_logits(model, as_batch(f.tokens), same)),
                                 values_of(base)) == 0.0);

        // Reverse the position rows, once through the hook and once in a copy of the weights.
        mechlens::activation_cache reversed = clean.cache();
        auto rows = reversed.at(pos_site).view<3>();  // (1, pos, d_model)
        const index_t n = rows.extent(1), d = rows.extent(2);
        mechlens::model_parameters edited = f.params;
        for (index_t p = 0; p < n; ++p)
            for (index_t i = 0; i < d; ++i) {
                rows(0, p, i) = f.params.pos_embedding(n - 1 - p, i);
                edited.pos_embedding(p, i) = f.params.pos_embedding(n - 1 - p, i);
            }
        mechlens::patch_hooks<> patch(reversed);
        patch.patch(pos_site);
        const auto patched = mechlens::forward_logits(model, as_batch(f.tokens), patch);
        const mechlens::transformer edited_model(mechlens::loaded_model{f.config, edited.weights()});
        mechlens::caching_hooks<> edited_run;  // the same hooked code path as the patched run
        const auto expected = mechlens::forward_logits(edited_model, as_batch(f.tokens), edited_run);
        CHECK(max_abs_difference(values_of(patched), values_of(base)) > 1e-2);
        CHECK(max_abs_difference(values_of(patched), values_of(expected)) <= 1e-6);
    }
}

TEST_CASE("variants: weights validate per variant; random_model keeps LLaMA's weights", "[variants][weights]") {
    for (const variant_fixture& f : variant_fixtures()) {
        INFO("fixture " << f.name);
        CHECK_NOTHROW(mechlens::validate_weights(f.config, f.params.weights()));
        mechlens::model_weights w = f.params.weights();
        if (f.config.rotary()) {
            w.pos_embedding = f.params.weights().token_embedding.slice(0, 0, f.config.n_ctx);  // a stray table
        } else {
            w.pos_embedding = {};  // learned positions without their table
        }
        CHECK_THROWS_AS(mechlens::validate_weights(f.config, w), mechlens::shape_error);
        CHECK_THROWS_AS(mechlens::transformer(mechlens::loaded_model{f.config, w}), mechlens::shape_error);
    }
    // random_model's draws are pinned: these FNV-1a hashes of every weight were taken before the variants existed.
    auto fnv = [](const mechlens::model_weights& w) {
        std::uint64_t h = 1469598103934665603ull;
        auto mix = [&](auto view) {
            for (index_t i = 0; i < view.size(); ++i) {
                std::uint32_t bits = 0;
                std::memcpy(&bits, view.data() + i, sizeof bits);
                for (int k = 0; k < 4; ++k) h = (h ^ ((bits >> (8 * k)) & 0xffu)) * 1099511628211ull;
            }
        };
        mix(w.token_embedding);
        for (const mechlens::layer_weights& l : w.layers) {
            mix(l.attn_norm), mix(l.w_q), mix(l.w_k), mix(l.w_v), mix(l.w_o);
            mix(l.mlp_norm), mix(l.w_gate), mix(l.w_up), mix(l.w_down);
        }
        mix(w.final_norm), mix(w.unembed);
        return h;
    };
    const std::vector<mechlens::model_config> variants = every_variant();
    mechlens::model_config llama = variants.front();  // rms, rotary, gated
    REQUIRE((llama.has_norm() && llama.rotary() && llama.mlp == mechlens::mlp_kind::gated_silu));
    llama.tied_unembed = true;
    CHECK(fnv(mechlens::random_model(llama, 42).weights) == 0xe3c6bd3346fde4f9ull);
    llama.tied_unembed = false;
    const mechlens::loaded_model untied = mechlens::random_model(llama, 42);
    CHECK(fnv(untied.weights) == 0x502ad54de6642210ull);
    // Every variant validates, has exactly the weights it uses, and shares the draws that come before its first
    // difference from LLaMA (position tables are drawn last).
    for (const mechlens::model_config& c : variants) {
        const mechlens::loaded_model m = mechlens::random_model(c, 42);
        CHECK_NOTHROW(mechlens::validate_weights(c, m.weights));
        CHECK(m.weights.pos_embedding.size() == (c.rotary() ? 0 : c.n_ctx * c.d_model));
        CHECK(m.weights.final_norm.size() == (c.has_norm() ? c.d_model : 0));
        const mechlens::tensor_view<const float, 2> a = m.weights.layers[0].w_o, b = untied.weights.layers[0].w_o;
        CHECK(std::equal(a.data(), a.data() + a.size(), b.data()));
        CHECK(std::equal(m.weights.token_embedding.data(), m.weights.token_embedding.data() + 37 * 16,
                         untied.weights.token_embedding.data()));
    }
}

}  // namespace test_model
