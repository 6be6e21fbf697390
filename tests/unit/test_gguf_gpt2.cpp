// GGUF files of architecture gpt2 (llama.cpp's names and keys): the committed two-block tiny GPT-2
// (tests/reference/gguf_gpt2_reference.py) loads with the right config, its fused Q|K|V is viewed in place, its
// logits match the PyTorch reference, and broken variants of the file are one-line format errors.
#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "test_support.hpp"

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_gguf_gpt2 {

namespace fs = std::filesystem;
using mechlens::index_t;

namespace {

fs::path fixture(const std::string& name) { return mechlens_test::fixtures_dir() / "gguf_gpt2" / name; }

std::string read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream bytes;
    bytes << in.rdbuf();
    return bytes.str();
}

/// Writes `bytes` to a scratch file named `name` and returns its path.
fs::path write_scratch(const std::string& name, const std::string& bytes) {
    const fs::path path = mechlens_test::scratch_dir() / name;
    std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return path;
}

/// The fixture with the first occurrence of `from` (after `after`, when given) replaced by `to` (same length).
std::string patched(const std::string& from, const std::string& to, const std::string& after = {}) {
    REQUIRE(from.size() == to.size());
    std::string bytes = read_bytes(fixture("tiny-gpt2.gguf"));
    const std::size_t start = after.empty() ? 0 : bytes.find(after);
    REQUIRE(start != std::string::npos);
    const std::size_t at = bytes.find(from, start);
    REQUIRE(at != std::string::npos);
    bytes.replace(at, from.size(), to);
    return bytes;
}

/// The message of the format_error that loading `path` throws ("" when it loads).
std::string load_error(const fs::path& path) {
    try {
        (void)mechlens::load_model(path);
    } catch (const mechlens::format_error& e) {
        return e.what();
    }
    return {};
}

}  // namespace

TEST_CASE("gguf gpt2: the tiny GPT-2 loads with GPT-2's config and a zero-copy fused Q|K|V", "[gguf_gpt2]") {
    const mechlens::loaded_model loaded = mechlens::load_gguf(fixture("tiny-gpt2.gguf"));
    const mechlens::model_config& c = loaded.config;
    CHECK(c.d_model == 32);
    CHECK(c.n_layers == 2);
    CHECK(c.n_heads == 4);
    CHECK(c.n_kv_heads == 4);
    CHECK(c.d_mlp == 128);
    CHECK(c.d_vocab == 1000);
    CHECK(c.n_ctx == 64);
    CHECK(c.norm == mechlens::norm_kind::layer);
    CHECK(c.positions == mechlens::positional_kind::learned);
    CHECK(c.mlp == mechlens::mlp_kind::plain_gelu);
    CHECK(c.linear_biases);
    CHECK(c.tied_unembed);
    const auto& layer = loaded.weights.layers[1];
    // Q, K and V are consecutive row blocks of one mapped tensor, not copies.
    CHECK(mechlens::views_mapping(loaded.weights, layer.w_q));
    CHECK(mechlens::views_mapping(loaded.weights, layer.b_v));
    CHECK(layer.w_k.data() == layer.w_q.data() + 32 * 32);
    CHECK(layer.w_v.data() == layer.w_q.data() + 2 * 32 * 32);
    CHECK(layer.b_k.data() == layer.b_q.data() + 32);
    const auto& bias = loaded.weights.unembed_bias;
    REQUIRE(bias.extent(0) == 1000);
    for (index_t i = 0; i < bias.extent(0); ++i) REQUIRE(bias(i) == 0.0f);
}

TEST_CASE("gguf gpt2: logits match the PyTorch reference within 1e-4", "[gguf_gpt2]") {
    const mechlens::transformer model(mechlens::load_model(fixture("tiny-gpt2.gguf")));
    const mechlens::npy_array tokens_npy = mechlens::read_npy(fixture("tokens.npy"));
    const mechlens::npy_array expected = mechlens::read_npy(fixture("logits.npy"));
    std::vector<std::int32_t> tokens;
    for (const float t : tokens_npy.data) tokens.push_back(static_cast<std::int32_t>(t));
    const auto positions = static_cast<index_t>(tokens.size());
    REQUIRE(expected.shape == std::vector<index_t>{positions, 1000});
    const mechlens::tensor<float, 3> logits = mechlens::forward_logits(
        model, mechlens::tensor_view<const std::int32_t, 2>(tokens.data(), {1, positions}));
    double gap = 0.0;
    for (std::size_t i = 0; i < expected.data.size(); ++i)
        gap = std::max(gap, std::fabs(static_cast<double>(logits.data()[i]) - static_cast<double>(expected.data[i])));
    INFO("max |logit - reference| = " << gap);
    CHECK(gap < 1e-4);
}

TEST_CASE("gguf gpt2: broken files are one-line format errors", "[gguf_gpt2]") {
    SECTION("a missing tensor") {
        // Renaming keeps every length and offset: the file parses, the loader misses blk.1.ffn_up.bias.
        const fs::path path = write_scratch("gpt2_missing.gguf", patched("blk.1.ffn_up.bias", "blk.1.ffn_up.biax"));
        const std::string error = load_error(path);
        CHECK(error.find("blk.1.ffn_up.bias") != std::string::npos);
        CHECK(error.find('\n') == std::string::npos);
    }
    SECTION("a fused Q|K|V of the wrong shape") {
        // ggml dims of blk.0.attn_qkv.weight: [32, 96] -> [32, 64] (the tensor info's second uint64).
        std::string bytes = read_bytes(fixture("tiny-gpt2.gguf"));
        const std::string name = "blk.0.attn_qkv.weight";
        const std::size_t at = bytes.find(name);
        REQUIRE(at != std::string::npos);
        const std::size_t second_dim = at + name.size() + 4 + 8;  // after n_dims (uint32) and the first dim
        REQUIRE(static_cast<unsigned char>(bytes[second_dim]) == 96);
        bytes[second_dim] = static_cast<char>(64);
        const std::string error = load_error(write_scratch("gpt2_qkv.gguf", bytes));
        CHECK(error.find("blk.0.attn_qkv.weight") != std::string::npos);
        CHECK(error.find("[32, 96]") != std::string::npos);
        CHECK(error.find('\n') == std::string::npos);
    }
    SECTION("an unknown architecture") {
        const fs::path path = write_scratch("gpt2_arch.gguf", patched("gpt2", "gpt3", "general.architecture"));
        const std::string error = load_error(path);
        CHECK(error.find("architecture 'gpt3' is not supported (only 'llama', 'gpt2')") != std::string::npos);
        CHECK(error.find('\n') == std::string::npos);
    }
}

}  // namespace test_gguf_gpt2
