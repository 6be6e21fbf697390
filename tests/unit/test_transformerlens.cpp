// TransformerLens models: the four trained ARENA models (../shared/models/arena) load from the `.pt` files
// torch.save wrote, match an independent PyTorch reference on every hook site, and do their tasks; bad directories
// are clear errors.
#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "test_support.hpp"

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_transformerlens {

namespace fs = std::filesystem;
using mechlens::index_t;
using mechlens::site;
using mechlens::site_kind;

namespace {

fs::path arena(const std::string& name) { return mechlens_test::model_file("arena/" + name); }

/// Largest |a - b| over two equally long arrays; equal infinities (masked scores) count as equal.
double max_gap(const std::vector<float>& a, const std::vector<float>& b) {
    double gap = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (std::isinf(a[i]) && a[i] == b[i]) continue;
        gap = std::max(gap, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    }
    return gap;
}

/// Uniform integer in [0, n).
index_t draw(mechlens::random_generator& rng, index_t n) {
    return std::min(n - 1, static_cast<index_t>(rng.uniform() * static_cast<double>(n)));
}

/// Runs a batch of equally long sequences and returns the logits (batch, pos, d_vocab_out).
mechlens::tensor<float, 3> run(const mechlens::transformer& model, const std::vector<std::vector<std::int32_t>>& seqs) {
    std::vector<std::int32_t> flat;
    for (const auto& s : seqs) flat.insert(flat.end(), s.begin(), s.end());
    const mechlens::tensor_view<const std::int32_t, 2> tokens(
        flat.data(), {static_cast<index_t>(seqs.size()), static_cast<index_t>(seqs.front().size())});
    return mechlens::forward_logits(model, tokens);
}

std::int32_t argmax(const mechlens::tensor<float, 3>& logits, index_t b, index_t p) {
    index_t best = 0;
    for (index_t v = 1; v < logits.extent(2); ++v)
        if (logits(b, p, v) > logits(b, p, best)) best = v;
    return static_cast<std::int32_t>(best);
}

}  // namespace

TEST_CASE("transformerlens: the ARENA models match the PyTorch reference on every hook site", "[transformerlens]") {
    for (const char* name : {"sorted_list", "sum", "palindrome", "cumsum"}) {
        INFO("model " << name);
        MECHLENS_REQUIRE_FILE_OR_SKIP(arena(name) / "config.json");
        const mechlens::transformer model(mechlens::load_model(arena(name)));
        const mechlens::safetensors_file fixture =
            mechlens::read_safetensors(mechlens_test::fixtures_dir() / "transformerlens" / (std::string(name) + ".safetensors"));
        std::vector<std::int32_t> tokens;
        for (const auto& t : fixture.tensors)
            if (t.name == "tokens")
                for (float v : t.values) tokens.push_back(static_cast<std::int32_t>(v));
        REQUIRE(!tokens.empty());
        mechlens::caching_hooks<> cache;
        const mechlens::tensor_view<const std::int32_t, 2> batch(tokens.data(), {1, static_cast<index_t>(tokens.size())});
        const auto logits = mechlens::forward_logits(model, batch, cache);
        double worst = 0.0;
        std::size_t compared = 0;
        for (const auto& t : fixture.tensors) {
            if (t.name == "tokens") continue;
            INFO("tensor " << t.name);
            if (t.name == "logits") {
                REQUIRE(t.values.size() == static_cast<std::size_t>(logits.size()));
                worst = std::max(worst, max_gap(std::vector<float>(logits.data(), logits.data() + logits.size()), t.values));
                continue;
            }
            const mechlens::cached_activation& a = cache.cache()[t.name];
            REQUIRE(a.shape == t.shape);
            const double gap = max_gap(a.values, t.values);
            CHECK(gap <= 1e-4);
            worst = std::max(worst, gap);
            ++compared;
        }
        CHECK(worst <= 1e-4);
        CHECK(compared >= 15);
        WARN(name << ": " << compared << " sites and the logits against PyTorch, worst |difference| " << worst);
    }
}

TEST_CASE("transformerlens: the sorted-list model sorts random lists", "[transformerlens][task]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(arena("sorted_list") / "config.json");
    const mechlens::transformer model(mechlens::load_model(arena("sorted_list")));
    mechlens::random_generator rng(7);
    std::vector<std::vector<std::int32_t>> lists;
    for (int i = 0; i < 1000; ++i) {
        std::vector<std::int32_t> values(51);
        std::iota(values.begin(), values.end(), 0);
        for (index_t k = 50; k > 0; --k) std::swap(values[static_cast<std::size_t>(k)], values[static_cast<std::size_t>(draw(rng, k + 1))]);
        values.resize(10);
        std::vector<std::int32_t> sorted = values;
        std::sort(sorted.begin(), sorted.end());
        values.push_back(51);  // SEP
        values.insert(values.end(), sorted.begin(), sorted.end());
        lists.push_back(values);
    }
    const auto logits = run(model, lists);
    int exact = 0, elements = 0;
    for (std::size_t b = 0; b < lists.size(); ++b) {
        bool all = true;
        for (index_t p = 10; p < 20; ++p) {  // the position before each sorted value predicts it
            const bool right = argmax(logits, static_cast<index_t>(b), p) == lists[b][static_cast<std::size_t>(p + 1)];
            elements += right ? 1 : 0;
            all = all && right;
        }
        exact += all ? 1 : 0;
    }
    WARN("sorted_list: " << exact << " of 1000 random lists sorted exactly, " << elements << " of 10000 values right");
    // The model itself sorts about 98.9 % of lists exactly (PyTorch, 3 x 1000 lists drawn as the ARENA dataset draws
    // them: 99.2, 98.7, 98.9 %) and places 99.89 % of the values.
    CHECK(exact >= 980);
    CHECK(elements >= 9980);
}

TEST_CASE("transformerlens: the sum model adds four-digit numbers", "[transformerlens][task]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(arena("sum") / "config.json");
    const mechlens::transformer model(mechlens::load_model(arena("sum")));
    mechlens::random_generator rng(8);
    std::vector<std::vector<std::int32_t>> problems;
    for (int i = 0; i < 200; ++i) {
        std::vector<std::int32_t> seq;
        int a = 0, b = 0;
        for (int which = 0; which < 2; ++which) {
            int number = 0;
            for (int d = 0; d < 4; ++d) {
                const auto digit = static_cast<std::int32_t>(draw(rng, d == 0 ? 5 : 10));  // first digit < 5
                seq.push_back(digit);
                number = number * 10 + digit;
            }
            (which == 0 ? a : b) = number;
            seq.push_back(which == 0 ? 10 : 11);  // '+' then '='
        }
        const int total = a + b;
        for (int d = 3; d >= 0; --d) seq.push_back(static_cast<std::int32_t>(total / static_cast<int>(std::pow(10, d)) % 10));
        problems.push_back(seq);
    }
    const auto logits = run(model, problems);
    int exact = 0;
    for (std::size_t b = 0; b < problems.size(); ++b) {
        bool all = true;
        for (index_t p = 9; p < 13; ++p)
            all = all && argmax(logits, static_cast<index_t>(b), p) == problems[b][static_cast<std::size_t>(p + 1)];
        exact += all ? 1 : 0;
    }
    WARN("sum: " << exact << " of 200 random sums exactly right");
    CHECK(exact >= 198);
}

TEST_CASE("transformerlens: the palindrome classifier tells palindromes apart", "[transformerlens][task]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(arena("palindrome") / "config.json");
    const mechlens::transformer model(mechlens::load_model(arena("palindrome")));
    CHECK(model.config().vocab_out() == 2);
    mechlens::random_generator rng(9);
    std::vector<std::vector<std::int32_t>> seqs;
    std::vector<int> labels;
    for (int i = 0; i < 200; ++i) {
        // As the ARENA dataset makes them: half palindromes, half with each mirrored value redrawn with chance 1/2.
        std::vector<std::int32_t> half(10), second(10);
        for (auto& v : half) v = static_cast<std::int32_t>(draw(rng, 31));
        for (std::size_t k = 0; k < 10; ++k)
            second[k] = i % 2 == 0 || draw(rng, 2) == 0 ? half[9 - k] : static_cast<std::int32_t>(draw(rng, 31));
        std::vector<std::int32_t> seq{31};  // START
        seq.insert(seq.end(), half.begin(), half.end());
        seq.insert(seq.end(), second.begin(), second.end());
        seq.push_back(32);  // END
        bool palindrome = true;
        for (std::size_t k = 0; k < 10; ++k) palindrome = palindrome && half[k] == second[9 - k];
        seqs.push_back(seq);
        labels.push_back(palindrome ? 1 : 0);
    }
    const auto logits = run(model, seqs);
    int right = 0;
    for (std::size_t b = 0; b < seqs.size(); ++b)
        right += argmax(logits, static_cast<index_t>(b), 21) == labels[b] ? 1 : 0;  // read at END, as trained
    WARN("palindrome: " << right << " of 200 classified right");
    CHECK(right >= 196);  // >= 98 %
}

TEST_CASE("transformerlens: bad model directories are one-line errors", "[transformerlens][errors]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(arena("palindrome") / "config.json");
    const fs::path dir = mechlens_test::scratch_dir() / "tl_bad";
    fs::remove_all(dir);
    fs::create_directories(dir);
    const std::string good = [] {
        std::ifstream in(arena("palindrome") / "config.json");
        std::stringstream text;
        text << in.rdbuf();
        return text.str();
    }();
    fs::copy_file(arena("palindrome") / "palindrome_classifier.pt", dir / "model.pt");
    auto with_config = [&](const std::string& text) {
        std::ofstream(dir / "config.json") << text;
    };
    auto replaced = [&](const std::string& from, const std::string& to) {
        std::string text = good;
        const auto at = text.find(from);
        REQUIRE(at != std::string::npos);
        return text.replace(at, from.size(), to);
    };
    with_config(good);
    CHECK_NOTHROW(mechlens::load_model(dir));
    with_config(replaced("\"d_model\": 28", "\"d_model\": 30"));
    CHECK_THROWS_WITH(mechlens::load_model(dir), Catch::Matchers::Contains("embed.W_E"));
    with_config(replaced("\"d_head\": 14", "\"d_head\": 0"));
    CHECK_THROWS_WITH(mechlens::load_model(dir), Catch::Matchers::Contains("d_head"));
    with_config(replaced("\"n_ctx\": 22", "\"n_ctx\": 23"));
    CHECK_THROWS_WITH(mechlens::load_model(dir), Catch::Matchers::Contains("pos_embed.W_pos"));
    with_config(replaced("\"attn_only\": true", "\"attn_only\": false"));  // then d_mlp (null) is needed
    CHECK_THROWS_WITH(mechlens::load_model(dir), Catch::Matchers::Contains("d_mlp"));
    with_config(replaced("\"normalization_type\": \"LN\"", "\"normalization_type\": \"BatchNorm\""));
    CHECK_THROWS_WITH(mechlens::load_model(dir), Catch::Matchers::Contains("BatchNorm"));
    with_config(replaced("\"attention_dir\": \"causal\"", "\"attention_dir\": \"sideways\""));
    CHECK_THROWS_WITH(mechlens::load_model(dir), Catch::Matchers::Contains("attention_dir"));
    with_config(replaced("\"positional_embedding_type\": \"standard\"", "\"positional_embedding_type\": \"alibi\""));
    CHECK_THROWS_WITH(mechlens::load_model(dir), Catch::Matchers::Contains("alibi"));
    with_config(replaced("\"n_layers\": 2", "\"n_layers\": 3"));
    CHECK_THROWS_WITH(mechlens::load_model(dir), Catch::Matchers::Contains("lacks 'blocks.2."));
    with_config(replaced("\"n_layers\": 2", "\"n_layers\": 1"));
    CHECK_THROWS_WITH(mechlens::load_model(dir), Catch::Matchers::Contains("unexpected tensor 'blocks.1."));
    with_config(replaced("\"n_layers\": 2", "\"n_layers\": \"two\""));
    CHECK_THROWS_WITH(mechlens::load_model(dir), Catch::Matchers::Contains("n_layers"));
    with_config("{\"n_layers\": 2,");
    CHECK_THROWS_AS(mechlens::load_model(dir), mechlens::format_error);
    with_config(good);
    fs::copy_file(dir / "model.pt", dir / "second.pt");
    CHECK_THROWS_WITH(mechlens::load_model(dir), Catch::Matchers::Contains("exactly one state dict"));
    fs::remove(dir / "second.pt");
    fs::remove(dir / "model.pt");
    CHECK_THROWS_WITH(mechlens::load_model(dir), Catch::Matchers::Contains("exactly one state dict"));
    fs::remove(dir / "config.json");
    CHECK_THROWS_AS(mechlens::load_model(dir), mechlens::format_error);
}

TEST_CASE("transformerlens: GPT-NeoX's options (parallel blocks, partial rotary) are read from the config",
          "[transformerlens]") {
    const std::string base = R"({"n_layers": 2, "d_model": 16, "n_ctx": 12, "n_heads": 4, "d_head": 4, "d_vocab": 37,
        "d_mlp": 32, "act_fn": "gelu", "normalization_type": "LN", "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": false, "rotary_base": 10000, "parallel_attn_mlp": true, "rotary_dim": ROTARY})";
    auto config_with = [&](const std::string& rotary) {
        std::string text = base;
        text.replace(text.find("ROTARY"), 6, rotary);
        return mechlens::read_transformerlens_config(mechlens::parse_json(text, "config.json"), "config.json").config;
    };
    const mechlens::model_config c = config_with("2");
    CHECK(c.parallel_attn_mlp);
    CHECK(c.rotary_dim() == 2);
    CHECK(c.rope == mechlens::rope_layout::split_halves);
    CHECK_FALSE(mechlens::has_site_kind(c, mechlens::site_kind::resid_mid));
    CHECK(config_with("4").rotary_dim_size == 0);  // the whole head: no partial width to remember
    CHECK_THROWS_WITH(config_with("6"), Catch::Matchers::Contains("rotary_dim 6 is outside [1, d_head = 4]"));
    CHECK_THROWS_WITH(config_with("3"), Catch::Matchers::Contains("must be even"));
}

}  // namespace test_transformerlens
