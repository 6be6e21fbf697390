// Hook names, the activation cache, the caching policy and saving caches: against the PyTorch fixtures, against
// full forward passes, and against malformed files.
#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "test_support.hpp"

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_hooks_cache {

using mechlens::index_t;
using mechlens::site;
using mechlens::site_kind;
namespace fs = std::filesystem;

namespace {

/// stories260K's hyper-parameters, so name tests need no model file.
mechlens::model_config stories_config() {
    mechlens::model_config c;
    c.d_model = 64;
    c.n_layers = 5;
    c.n_heads = 8;
    c.n_kv_heads = 4;
    c.d_mlp = 172;
    c.d_vocab = 512;
    c.n_ctx = 512;
    return c;
}

const fs::path stories_bin = mechlens_test::model_file("stories260K/stories260K.bin");

std::vector<std::string> names_of(const std::vector<site>& sites) {
    std::vector<std::string> out;
    for (const site& s : sites) out.push_back(mechlens::to_string(s));
    return out;
}

/// The message of the unknown_hook_error that `name` raises (fails the test when nothing is thrown).
template <class F>
mechlens::unknown_hook_error catch_unknown(F&& f) {
    try {
        f();
    } catch (const mechlens::unknown_hook_error& e) {
        return e;
    }
    FAIL("no unknown_hook_error thrown");
    return mechlens::unknown_hook_error("", {});
}

/// Largest |a - b|; equal infinities count as 0, any other non-finite difference as infinity.
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

/// Bitwise equality of two float arrays (so -inf == -inf and the sign of zero matters).
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

mechlens::tensor_view<const std::int32_t, 2> as_batch(const std::vector<std::int32_t>& ids) {
    return mechlens::tensor_view<const std::int32_t, 2>(ids.data(), {1, static_cast<index_t>(ids.size())});
}

std::vector<std::int32_t> fixture_tokens(const fs::path& dir) {
    const mechlens::npy_array tokens = mechlens::read_npy(dir / "tokens.npy");
    std::vector<std::int32_t> ids;
    for (float v : tokens.data) ids.push_back(static_cast<std::int32_t>(v));
    return ids;
}

const std::vector<std::int32_t> prompt_tokens{1, 403, 407, 261, 378, 5, 90};

/// A cache of every site (but attn.hook_result) of one full forward pass.
mechlens::activation_cache full_cache(const mechlens::transformer& model, const std::vector<std::int32_t>& tokens) {
    mechlens::caching_hooks<> hooks;
    (void)mechlens::forward_logits(model, as_batch(tokens), hooks);
    return hooks.take();
}

/// Writes raw bytes to a scratch file and returns its path.
fs::path scratch_file(const std::string& name, const std::string& bytes) {
    fs::create_directories(mechlens_test::scratch_dir());
    const fs::path path = mechlens_test::scratch_dir() / name;
    std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return path;
}

/// A safetensors file: 8-byte little-endian length, the header text, then `data`.
std::string safetensors_bytes(const std::string& header, const std::string& data, std::uint64_t length = UINT64_MAX) {
    if (length == UINT64_MAX) length = header.size();
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((length >> (8 * i)) & 0xffu);
    return out + header + data;
}

}  // namespace

TEST_CASE("hooks names: every site of stories260K round-trips name -> site -> name", "[hooks][cache][names]") {
    const mechlens::model_config c = stories_config();
    const std::vector<site> sites = mechlens::all_sites(c);
    REQUIRE(sites.size() == 5 * 21 + 4);
    CHECK(sites.front() == site{site_kind::embed, -1});
    CHECK(sites.back() == site{site_kind::unembed_out, -1});
    CHECK(sites[1] == site{site_kind::resid_pre, 0});
    CHECK(sites[21] == site{site_kind::resid_post, 0});
    CHECK(sites[22] == site{site_kind::resid_pre, 1});
    std::set<std::string> unique;
    for (std::size_t i = 0; i < sites.size(); ++i) {
        const std::string name = mechlens::to_string(sites[i]);
        INFO(name);
        unique.insert(name);
        const auto parsed = mechlens::parse_site(name);
        REQUIRE(parsed.has_value());
        CHECK(*parsed == sites[i]);
        CHECK(mechlens::site_from_name(name, c) == sites[i]);
        CHECK(mechlens::to_string(*parsed) == name);
        if (i > 0) CHECK(mechlens::detail::forward_order_less(sites[i - 1], sites[i]));
    }
    CHECK(unique.size() == sites.size());
    STATIC_REQUIRE(mechlens::parse_site("blocks.3.attn.hook_pattern") == site{site_kind::attn_pattern, 3});
    STATIC_REQUIRE(mechlens::site_kind_from_suffix("hook_resid_post") == site_kind::resid_post);
}

TEST_CASE("hooks names: malformed names do not parse", "[hooks][cache][names]") {
    for (const char* bad : {"", "blocks", "blocks.", "blocks.0", "blocks.0.", "blocks.x.hook_resid_pre",
                            "blocks.-1.hook_resid_pre", "blocks.01.hook_resid_pre", "blocks.0.hook_embed",
                            "hook_resid_pre", "blocks.0.hook_resid_pre.", " hook_embed", "hook_embed ",
                            "blocks..hook_resid_pre", "blocks.0.ln_final.hook_scale", "Blocks.0.hook_resid_pre",
                            "blocks.99999999999999999999999.hook_resid_pre", "blocks.0.attn.hook_pattern\n"}) {
        INFO("'" << bad << "'");
        CHECK_FALSE(mechlens::parse_site(bad).has_value());
    }
    CHECK(mechlens::parse_site("blocks.1234.hook_mlp_out") == site{site_kind::mlp_out, 1234});
}

TEST_CASE("hooks names: typos and missing layers suggest the closest valid names", "[hooks][cache][names]") {
    const mechlens::model_config c = stories_config();
    struct typo {
        const char* name;
        const char* best;
    };
    for (const typo& t : {typo{"blocks.0.attn.hook_patern", "blocks.0.attn.hook_pattern"},
                          typo{"hook_embd", "hook_embed"},
                          typo{"ln_final.hook_scal", "ln_final.hook_scale"},
                          typo{"blocks.2.mlp.hook_psot", "blocks.2.mlp.hook_post"},
                          typo{"blocks.3.hook_resid_mid ", "blocks.3.hook_resid_mid"},
                          typo{"blocks.4.attn.hook_rotq", "blocks.4.attn.hook_rot_q"},
                          typo{"unembed.hook_outt", "unembed.hook_out"},
                          typo{"blocks.7.hook_resid_post", "blocks.4.hook_resid_post"}}) {
        INFO(t.name);
        const auto error = catch_unknown([&] { (void)mechlens::site_from_name(t.name, c); });
        REQUIRE_FALSE(error.suggestions().empty());
        CHECK(error.suggestions().size() <= 3);
        CHECK(error.suggestions().front() == t.best);
        const std::string message = error.what();
        CHECK(message.find(std::string("unknown hook name '") + t.name + "'") != std::string::npos);
        CHECK(message.find(std::string("did you mean ") + t.best) != std::string::npos);
        CHECK(message.find('\n') == std::string::npos);
    }
    const auto out_of_range = catch_unknown([&] { (void)mechlens::site_from_name("blocks.5.hook_resid_pre", c); });
    CHECK(std::string(out_of_range.what()).find("layer 5 is out of range") != std::string::npos);
    CHECK(out_of_range.suggestions() ==
          std::vector<std::string>{"blocks.4.hook_resid_pre", "blocks.3.hook_resid_pre", "blocks.2.hook_resid_pre"});
    // Derived from std::invalid_argument, so generic handlers catch it.
    CHECK_THROWS_AS(mechlens::site_from_name("nonsense_that_is_far_from_everything_here", c), std::invalid_argument);
    const auto far = catch_unknown([&] { (void)mechlens::site_from_name("xyz", c); });
    CHECK(far.suggestions().empty());
}

TEST_CASE("hooks names: globs select sites in forward order", "[hooks][cache][names]") {
    const mechlens::model_config c = stories_config();
    CHECK(names_of(mechlens::match_sites("blocks.*.hook_resid_post", c)) ==
          std::vector<std::string>{"blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post",
                                   "blocks.3.hook_resid_post", "blocks.4.hook_resid_post"});
    CHECK(names_of(mechlens::match_sites("blocks.0.attn.hook_pattern", c)) ==
          std::vector<std::string>{"blocks.0.attn.hook_pattern"});
    CHECK(names_of(mechlens::match_sites("hook_embed", c)) == std::vector<std::string>{"hook_embed"});
    const auto scales = mechlens::match_sites("*hook_scale", c);
    CHECK(scales.size() == 5 * 2 + 1);
    CHECK(mechlens::to_string(scales.back()) == "ln_final.hook_scale");
    CHECK(mechlens::match_sites("blocks.*.attn.hook_?", c).size() == 5 * 4);  // q, k, v, z
    CHECK(mechlens::match_sites("*", c).size() == mechlens::all_sites(c).size());
    CHECK(mechlens::match_sites("blocks.?.hook_*", c).size() == 5 * 5);  // resid_pre/mid/post, attn_out, mlp_out
    // A union is deduplicated and comes out in forward order, whatever the pattern order; spaces around commas go.
    CHECK(names_of(mechlens::match_sites("ln_final.hook_scale, blocks.1.hook_attn_out ,hook_embed,hook_embed", c)) ==
          std::vector<std::string>{"hook_embed", "blocks.1.hook_attn_out", "ln_final.hook_scale"});
    const auto none = catch_unknown([&] { (void)mechlens::match_sites("blocks.*.hook_resid_pst", c); });
    CHECK(std::string(none.what()).find("matches no site") != std::string::npos);
    REQUIRE_FALSE(none.suggestions().empty());
    CHECK(none.suggestions().front().find("hook_resid_post") != std::string::npos);
    CHECK_THROWS_AS(mechlens::match_sites("hook_embed,,blocks.0.hook_resid_pre", c), mechlens::unknown_hook_error);
    CHECK_THROWS_AS(mechlens::match_sites("", c), mechlens::unknown_hook_error);
    CHECK_THROWS_AS(mechlens::match_sites("blocks.5.*", c), mechlens::unknown_hook_error);
    CHECK(mechlens::detail::glob_match("a*b*c", "axxbyyc"));
    CHECK_FALSE(mechlens::detail::glob_match("a*b*c", "axxbyy"));
    CHECK(mechlens::detail::glob_match("**", ""));
}

TEST_CASE("activation_cache: access by site and by name, forward order, clear errors", "[hooks][cache]") {
    mechlens::activation_cache cache;
    cache.put(site{site_kind::resid_post, 1}, {{1, 2, 3}, {1, 2, 3, 4, 5, 6}, {}});
    cache.put(site{site_kind::embed, -1}, {{1, 1, 2}, {7, 8}, {}});
    cache.put(site{site_kind::attn_pattern, 0}, {{1, 1, 2, 2}, {1, 0, 0.5f, 0.5f}, {}});
    CHECK(cache.size() == 3);
    CHECK(names_of(cache.sites()) ==
          std::vector<std::string>{"hook_embed", "blocks.0.attn.hook_pattern", "blocks.1.hook_resid_post"});
    CHECK(cache["blocks.1.hook_resid_post"].values[5] == 6);
    CHECK(cache.at(site{site_kind::embed, -1}).view<3>()(0, 0, 1) == 8);
    CHECK(cache["blocks.0.attn.hook_pattern"].view<4>()(0, 0, 1, 0) == 0.5f);
    CHECK_THROWS_AS(cache["hook_embed"].view<4>(), mechlens::shape_error);
    CHECK(cache.contains(site{site_kind::resid_post, 1}));
    CHECK_FALSE(cache.contains(site{site_kind::resid_post, 0}));
    const auto missing = catch_unknown([&] { (void)cache["blocks.0.hook_resid_post"]; });
    CHECK(std::string(missing.what()).find("no activation cached for 'blocks.0.hook_resid_post'") != std::string::npos);
    CHECK(missing.suggestions().front() == "blocks.1.hook_resid_post");
    CHECK_THROWS_AS(cache.at(site{site_kind::mlp_out, 3}), mechlens::unknown_hook_error);
    CHECK_THROWS_AS(cache["not a name"], mechlens::unknown_hook_error);
    CHECK_THROWS_AS(cache.put(site{site_kind::embed, -1}, {{1, 2, 2}, {1, 2, 3}, {}}), mechlens::shape_error);
    cache.put(site{site_kind::embed, -1}, {{1, 1, 1}, {9}, {}});  // replaces
    CHECK(cache["hook_embed"].values == std::vector<float>{9});
    CHECK(cache.erase(site{site_kind::embed, -1}));
    CHECK(cache.size() == 2);
}

TEST_CASE("hooks cache: caching never changes the logits (bitwise)", "[hooks][cache]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    const auto plain = mechlens::forward_logits(model, as_batch(prompt_tokens));
    mechlens::caching_hooks<> everything;
    const auto hooked = mechlens::forward_logits(model, as_batch(prompt_tokens), everything);
    CHECK(everything.cache().size() == 5 * 20 + 4);  // every site but attn.hook_result
    REQUIRE(plain.size() == hooked.size());
    CHECK(std::equal(plain.data(), plain.data() + plain.size(), hooked.data()));
    // A filter that keeps almost nothing changes nothing either.
    mechlens::caching_hooks<> one(mechlens::cache_filter().positions({2}).names("blocks.2.hook_resid_mid",
                                                                               model.config()));
    const auto filtered = mechlens::forward_logits(model, as_batch(prompt_tokens), one);
    CHECK(std::equal(plain.data(), plain.data() + plain.size(), filtered.data()));
    CHECK(one.cache().size() == 1);
}

TEST_CASE("hooks cache: cached activations of stories260K equal the PyTorch fixtures within 1e-4",
          "[hooks][cache][reference]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    const fs::path root = mechlens_test::fixtures_dir() / "stories260K";
    index_t prompts = 0;
    for (const char* prompt : {"p0", "p1", "p2"}) {
        const fs::path dir = root / prompt;
        REQUIRE(fs::exists(dir / "tokens.npy"));
        ++prompts;
        const mechlens::activation_cache cache = full_cache(model, fixture_tokens(dir));
        index_t compared = 0;
        std::set<std::string> required;
        for (const site& s : mechlens::all_sites(model.config())) {
            const std::string name = mechlens::to_string(s);
            if (name.find("hook_resid_") != std::string::npos || name.find("hook_pattern") != std::string::npos ||
                name.find("hook_attn_out") != std::string::npos || name.find("hook_mlp_out") != std::string::npos)
                required.insert(name);
        }
        CHECK(required.size() == 5 * 6);
        for (const site& s : cache.sites()) {
            const std::string name = mechlens::to_string(s);
            const fs::path file = dir / (name == "unembed.hook_out" ? std::string("logits.npy") : name + ".npy");
            INFO(name << " of " << prompt);
            if (!fs::exists(file)) {
                CHECK(required.count(name) == 0);
                continue;
            }
            const mechlens::npy_array expected = mechlens::read_npy(file);
            const mechlens::cached_activation& actual = cache[name];
            REQUIRE(actual.shape == expected.shape);
            const double error = max_abs_difference(actual.values, expected.data);
            INFO("max abs error " << error);
            CHECK(error <= 1e-4);
            required.erase(name);
            ++compared;
        }
        CHECK(required.empty());
        CHECK(compared == 5 * 20 + 4);  // 20 per block, hook_embed, ln_final.hook_scale/normalized, the logits
    }
    CHECK(prompts == 3);
}

TEST_CASE("hooks cache: filters select exactly the requested sites and positions", "[hooks][cache][filter]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    const mechlens::model_config& c = model.config();
    const mechlens::activation_cache full = full_cache(model, prompt_tokens);
    auto run = [&](mechlens::cache_filter filter) {
        mechlens::caching_hooks<> hooks(std::move(filter));
        (void)mechlens::forward_logits(model, as_batch(prompt_tokens), hooks);
        return hooks.take();
    };

    SECTION("by kind") {
        const auto cache = run(mechlens::cache_filter().kinds(mechlens::kind_set::of({site_kind::resid_post})));
        CHECK(names_of(cache.sites()) == names_of(mechlens::match_sites("blocks.*.hook_resid_post", c)));
    }
    SECTION("by layer range: block sites of those layers only") {
        const auto cache = run(mechlens::cache_filter().layers(1, 3));
        CHECK(cache.size() == 2 * 20);
        for (const site& s : cache.sites()) CHECK((s.layer == 1 || s.layer == 2));
    }
    SECTION("by name glob") {
        const auto cache = run(mechlens::cache_filter().names("blocks.*.attn.hook_pattern,hook_embed", c));
        CHECK(names_of(cache.sites()) == names_of(mechlens::match_sites("hook_embed,blocks.*.attn.hook_pattern", c)));
        CHECK(same_bits(cache["blocks.3.attn.hook_pattern"].values, full["blocks.3.attn.hook_pattern"].values));
    }
    SECTION("by predicate, combined with a kind set") {
        const auto cache = run(mechlens::cache_filter()
                                   .where([](const site& s) { return s.layer % 2 == 0; })
                                   .kinds(mechlens::kind_set::of({site_kind::attn_out, site_kind::embed})));
        CHECK(names_of(cache.sites()) ==
              std::vector<std::string>{"blocks.0.hook_attn_out", "blocks.2.hook_attn_out", "blocks.4.hook_attn_out"});
    }
    SECTION("by position list: rows of those absolute positions") {
        const auto cache = run(mechlens::cache_filter().positions({5, 1, 3, 1}).names("*resid_pre,*hook_pattern", c));
        const auto& resid = cache["blocks.2.hook_resid_pre"];
        REQUIRE(resid.shape == std::vector<index_t>{1, 3, 64});
        CHECK(resid.positions == std::vector<index_t>{1, 3, 5});
        const auto whole = full["blocks.2.hook_resid_pre"].view<3>();
        const auto rows = resid.view<3>();
        for (index_t r = 0; r < 3; ++r)
            for (index_t i = 0; i < 64; ++i) CHECK(rows(0, r, i) == whole(0, resid.position(r), i));
        const auto& pattern = cache["blocks.1.attn.hook_pattern"];  // query rows kept, every key
        REQUIRE(pattern.shape == std::vector<index_t>{1, 8, 3, 7});
        const auto full_pattern = full["blocks.1.attn.hook_pattern"].view<4>();
        for (index_t h = 0; h < 8; ++h)
            for (index_t r = 0; r < 3; ++r)
                for (index_t k = 0; k < 7; ++k)
                    CHECK(pattern.view<4>()(0, h, r, k) == full_pattern(0, h, pattern.position(r), k));
    }
    SECTION("by position range; nothing selected means no entry") {
        const auto cache = run(mechlens::cache_filter().position_range(4, 100).kinds(
            mechlens::kind_set::of({site_kind::mlp_out, site_kind::unembed_out})));
        CHECK(cache["blocks.0.hook_mlp_out"].shape == std::vector<index_t>{1, 3, 64});
        CHECK(cache["unembed.hook_out"].positions == std::vector<index_t>{4, 5, 6});
        const auto none = run(mechlens::cache_filter().position_range(50, 60));
        CHECK(none.empty());
    }
    SECTION("the compile-time kind set limits what the forward pass hands over") {
        constexpr auto kinds = mechlens::kind_set::of({site_kind::resid_mid, site_kind::ln_final_scale});
        STATIC_REQUIRE(mechlens::hook_policy<mechlens::caching_hooks<kinds>>);
        STATIC_REQUIRE(mechlens::caching_hooks<kinds>::wants(site_kind::resid_mid));
        STATIC_REQUIRE_FALSE(mechlens::caching_hooks<kinds>::wants(site_kind::resid_post));
        STATIC_REQUIRE_FALSE(mechlens::caching_hooks<>::wants(site_kind::attn_result));
        mechlens::caching_hooks<kinds> hooks;
        (void)mechlens::forward_logits(model, as_batch(prompt_tokens), hooks);
        CHECK(hooks.cache().size() == 5 + 1);
        CHECK(same_bits(hooks.cache()["ln_final.hook_scale"].values, full["ln_final.hook_scale"].values));
    }
    SECTION("attn.hook_result when the kind set asks for it") {
        mechlens::caching_hooks<mechlens::kind_set::all()> hooks(mechlens::cache_filter().names("blocks.0.attn.*", c));
        (void)mechlens::forward_logits(model, as_batch(prompt_tokens), hooks);
        const auto& result = hooks.cache()["blocks.0.attn.hook_result"];
        REQUIRE(result.shape == std::vector<index_t>{1, 7, 8, 64});
        // The heads' results sum to hook_attn_out.
        const auto attn_out = full["blocks.0.hook_attn_out"].view<3>();
        double worst = 0;
        for (index_t p = 0; p < 7; ++p)
            for (index_t i = 0; i < 64; ++i) {
                double sum = 0;
                for (index_t h = 0; h < 8; ++h) sum += static_cast<double>(result.view<4>()(0, p, h, i));
                worst = std::max(worst, std::fabs(sum - static_cast<double>(attn_out(0, p, i))));
            }
        CHECK(worst <= 1e-5);
    }
    SECTION("a second full forward starts over instead of appending") {
        mechlens::caching_hooks<> hooks(mechlens::cache_filter().names("hook_embed", c));
        (void)mechlens::forward_logits(model, as_batch(prompt_tokens), hooks);
        const std::vector<std::int32_t> shorter{1, 403, 407};
        (void)mechlens::forward_logits(model, as_batch(shorter), hooks);
        CHECK(hooks.cache()["hook_embed"].shape == std::vector<index_t>{1, 3, 64});
    }
    SECTION("a reused policy (buffers recycled) caches exactly what a fresh one does") {
        mechlens::caching_hooks<> reused;
        (void)mechlens::forward_logits(model, as_batch(prompt_tokens), reused);
        const std::vector<std::int32_t> shorter{1, 403, 407};
        (void)mechlens::forward_logits(model, as_batch(shorter), reused);
        const mechlens::activation_cache fresh = full_cache(model, shorter);
        REQUIRE(reused.cache().sites() == fresh.sites());
        for (const site& s : fresh.sites()) {
            INFO(mechlens::to_string(s));
            CHECK(reused.cache().at(s).shape == fresh.at(s).shape);
            CHECK(reused.cache().at(s).positions.empty());
            CHECK(reused.cache().at(s).values == fresh.at(s).values);  // bitwise
        }
    }
    CHECK_THROWS_AS(mechlens::cache_filter().positions({-1}), std::invalid_argument);
    CHECK_THROWS_AS(mechlens::cache_filter().layers(3, 2), std::invalid_argument);
    CHECK_THROWS_AS(mechlens::cache_filter().names("blocks.*.hook_resid_postt", c), mechlens::unknown_hook_error);
}

TEST_CASE("hooks cache: stacking one site kind across layers", "[hooks][cache]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    const mechlens::activation_cache cache = full_cache(model, prompt_tokens);
    const mechlens::cached_activation stacked = cache.stack(site_kind::resid_post);
    REQUIRE(stacked.shape == std::vector<index_t>{5, 1, 7, 64});
    const mechlens::cached_activation patterns = cache.stack("attn.hook_pattern");
    REQUIRE(patterns.shape == std::vector<index_t>{5, 1, 8, 7, 7});
    for (index_t layer = 0; layer < 5; ++layer) {
        const auto& one = cache.at(site{site_kind::resid_post, layer}).values;
        CHECK(std::equal(one.begin(), one.end(), stacked.values.begin() + layer * 7 * 64));
        const auto& pattern = cache.at(site{site_kind::attn_pattern, layer}).values;
        CHECK(std::equal(pattern.begin(), pattern.end(), patterns.values.begin() + layer * 8 * 7 * 7));
    }
    CHECK(cache.layers(site_kind::mlp_out) == std::vector<index_t>{0, 1, 2, 3, 4});
    CHECK_THROWS_AS(cache.stack(site_kind::embed), std::invalid_argument);
    CHECK_THROWS_AS(cache.stack(site_kind::attn_result), std::invalid_argument);  // not cached
    CHECK_THROWS_AS(cache.stack("hook_resid_postt"), mechlens::unknown_hook_error);
}

TEST_CASE("hooks cache: a cache built while generating equals one full forward's", "[hooks][cache][generate]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    const std::vector<std::int32_t> prompt{1, 403, 407, 261, 378};
    mechlens::generation_options options;
    options.max_new_tokens = 12;
    mechlens::caching_hooks<> hooks;
    const auto generated = mechlens::generate(model, prompt, options, [](std::int32_t) {}, hooks);
    REQUIRE(generated.size() == 12);
    const mechlens::activation_cache& during = hooks.cache();
    // The last generated token is never fed back, so the cache covers the prompt and all but the last new token.
    std::vector<std::int32_t> tokens = prompt;
    tokens.insert(tokens.end(), generated.begin(), generated.end() - 1);
    const auto positions = static_cast<index_t>(tokens.size());
    REQUIRE(during["hook_embed"].shape == std::vector<index_t>{1, positions, 64});
    const mechlens::activation_cache full = full_cache(model, tokens);
    REQUIRE(during.size() == full.size());
    index_t bitwise = 0;
    for (const site& s : full.sites()) {
        const std::string name = mechlens::to_string(s);
        INFO(name);
        const mechlens::cached_activation& a = during.at(s);
        const mechlens::cached_activation& b = full.at(s);
        if (!is_block_site(s.kind) && s.kind != site_kind::embed) {
            // generate() asks only for the last position's logits, so the final norm and the unembedding fire from
            // the last prompt position on: compare those rows of the full forward.
            const index_t first = static_cast<index_t>(prompt.size()) - 1;
            REQUIRE(a.shape[1] == positions - first);
            CHECK(a.position(0) == first);
            const index_t width = b.shape[2];
            const std::vector<float> tail(b.values.begin() + first * width, b.values.end());
            CHECK(max_abs_difference(a.values, tail) <= 1e-5);
            bitwise += same_bits(a.values, tail);
            continue;
        }
        REQUIRE(a.shape == b.shape);
        CHECK(a.positions.empty());
        CHECK(max_abs_difference(a.values, b.values) <= 1e-5);
        bitwise += same_bits(a.values, b.values);
    }
    // KV decoding is batch-invariant here: every site matches bit for bit (masked scores -inf, patterns 0 included).
    CHECK(bitwise == static_cast<index_t>(full.size()));
}

TEST_CASE("hooks cache: saving to safetensors and npy, then reading back, keeps every value", "[hooks][cache][io]") {
    MECHLENS_REQUIRE_FILE_OR_SKIP(stories_bin);
    const mechlens::transformer model(mechlens::load_model(stories_bin));
    mechlens::caching_hooks<> hooks;
    (void)mechlens::forward_logits(model, as_batch(prompt_tokens), hooks);
    mechlens::activation_cache cache = hooks.take();
    cache.put(site{site_kind::resid_post, 9}, {{1, 2, 3}, {1, 2, 3, 4, 5, 6}, {4, 9}});  // explicit positions
    const fs::path file = mechlens_test::scratch_dir() / "hooks_cache_roundtrip.safetensors";
    cache.save_safetensors(file);

    // The layout the format prescribes: length, header padded to 8 bytes, starting with '{', metadata.
    std::string bytes(static_cast<std::size_t>(fs::file_size(file)), '\0');
    std::ifstream(file, std::ios::binary).read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    REQUIRE(bytes.size() > 8);
    std::uint64_t length = 0;
    std::memcpy(&length, bytes.data(), 8);
    CHECK(length % 8 == 0);
    REQUIRE(length + 8 <= bytes.size());
    const std::string header = bytes.substr(8, length);
    CHECK(header.front() == '{');
    CHECK(header.find("\"__metadata__\":{\"format\":\"mechlens\"") != std::string::npos);
    CHECK(header.find("\"blocks.0.attn.hook_pattern\":{\"dtype\":\"F32\",\"shape\":[1,8,7,7]") != std::string::npos);

    const mechlens::activation_cache back = mechlens::activation_cache::load_safetensors(file);
    REQUIRE(names_of(back.sites()) == names_of(cache.sites()));
    for (const site& s : cache.sites()) {
        INFO(mechlens::to_string(s));
        CHECK(back.at(s).shape == cache.at(s).shape);
        CHECK(same_bits(back.at(s).values, cache.at(s).values));  // -inf scores included
        CHECK(back.at(s).positions == cache.at(s).positions);
    }
    CHECK(back["blocks.9.hook_resid_post"].positions == std::vector<index_t>{4, 9});

    const fs::path dir = mechlens_test::scratch_dir() / "hooks_cache_npy";
    fs::remove_all(dir);
    cache.save_npy(dir);
    index_t files = 0;
    for (const site& s : cache.sites()) {
        const mechlens::npy_array a = mechlens::read_npy(dir / (mechlens::to_string(s) + ".npy"));
        CHECK(a.shape == cache.at(s).shape);
        CHECK(same_bits(a.data, cache.at(s).values));
        ++files;
    }
    CHECK(files == static_cast<index_t>(cache.size()));

    // An empty cache is a valid file too.
    const fs::path empty = mechlens_test::scratch_dir() / "hooks_cache_empty.safetensors";
    mechlens::activation_cache().save_safetensors(empty);
    CHECK(mechlens::activation_cache::load_safetensors(empty).empty());
}

TEST_CASE("hooks cache: malformed safetensors files are rejected with the file named", "[hooks][cache][io]") {
    const std::string four_floats(16, '\0');
    const std::string good = R"({"blocks.0.hook_resid_pre":{"dtype":"F32","shape":[1,1,4],"data_offsets":[0,16]}})";
    REQUIRE(mechlens::activation_cache::load_safetensors(scratch_file("st_good.safetensors",
                                                                      safetensors_bytes(good, four_floats)))
                .size() == 1);
    struct bad_file {
        const char* name;
        std::string bytes;
        const char* problem;
    };
    const std::string t = R"("hook_embed":{"dtype":"F32","shape":[1,1,4],)";
    const std::vector<bad_file> cases{
        {"short", std::string("\x08\x00\x00", 3), "truncated"},
        {"length_past_end", safetensors_bytes(good, four_floats, 4096), "truncated"},
        {"huge_length", safetensors_bytes(good, four_floats, std::uint64_t{1} << 62), "100 MiB"},
        {"not_object", safetensors_bytes("[1,2]   ", ""), "does not start with '{'"},
        {"trailing_comma", safetensors_bytes("{" + t + R"("data_offsets":[0,16]},})", four_floats), "malformed JSON"},
        {"unterminated", safetensors_bytes("{\"hook_embed\":{\"dtype\":\"F3", ""), "malformed JSON"},
        {"text_after", safetensors_bytes("{} x", ""), "after the top-level value"},
        {"duplicate", safetensors_bytes("{" + t + R"("data_offsets":[0,16]},)" + t + R"("data_offsets":[0,16]}})",
                                        four_floats), "duplicate key"},
        {"dtype", safetensors_bytes(R"({"hook_embed":{"dtype":"F16","shape":[1,1,4],"data_offsets":[0,8]}})",
                                    std::string(8, '\0')), "only F32"},
        {"size_mismatch", safetensors_bytes("{" + t + R"("data_offsets":[0,12]}})", std::string(12, '\0')),
         "shape needs 16"},
        {"past_data", safetensors_bytes("{" + t + R"("data_offsets":[0,16]}})", std::string(8, '\0')),
         "outside the 8 data bytes"},
        {"hole", safetensors_bytes("{" + t + R"("data_offsets":[4,20]}})", std::string(20, '\0')), "hole"},
        {"trailing_data", safetensors_bytes("{" + t + R"("data_offsets":[0,16]}})", std::string(20, '\0')),
         "cover 16 of the 20"},
        {"overlap", safetensors_bytes("{" + t + R"("data_offsets":[0,16]},"blocks.0.hook_resid_pre":{"dtype":"F32","shape":[1,1,4],"data_offsets":[0,16]}})",
                                      four_floats), "overlapping"},
        {"negative", safetensors_bytes("{" + t + R"("data_offsets":[-1,16]}})", four_floats), "non-negative integer"},
        {"float_extent", safetensors_bytes(R"({"hook_embed":{"dtype":"F32","shape":[1,1,4.0],"data_offsets":[0,16]}})",
                                           four_floats), "non-negative integer"},
        {"overflow", safetensors_bytes(R"({"hook_embed":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,16]}})",
                                       four_floats), "overflows"},
        {"big_number", safetensors_bytes("{" + t + R"("data_offsets":[0,99999999999999999999999]}})", four_floats),
         "too large"},
        {"extra_field", safetensors_bytes("{" + t + R"("data_offsets":[0,16],"x":1}})", four_floats), "unexpected field"},
        {"missing_field", safetensors_bytes(R"({"hook_embed":{"dtype":"F32","shape":[1,1,4]}})", four_floats),
         "lacks dtype"},
        {"metadata_value", safetensors_bytes(R"({"__metadata__":{"format":1}})", ""), "not a string"},
        {"not_hook_name", safetensors_bytes(R"({"weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
                                            four_floats), "not a hook name"},
        {"wrong_rank", safetensors_bytes(R"({"hook_embed":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
                                         four_floats), "rank 1"},
        {"control_char", safetensors_bytes("{\"hook\tembed\":{}}", ""), "control character"},
        {"bad_utf8", safetensors_bytes("{\"hook_\xff\":{}}", ""), "invalid UTF-8"},
        {"bad_escape", safetensors_bytes(R"({"hook_\q":{}})", ""), "invalid escape"},
        {"lone_surrogate", safetensors_bytes(R"({"\ud800":{}})", ""), "surrogate"},
        {"deep", safetensors_bytes("{\"a\":" + std::string(200, '[') + std::string(200, ']') + "}", ""), "nesting"},
        {"bad_positions", safetensors_bytes(R"({"__metadata__":{"mechlens.positions.hook_embed":"1,x"},)" + t +
                                                R"("data_offsets":[0,16]}})",
                                            four_floats), "bad position list"},
        {"positions_count", safetensors_bytes(R"({"__metadata__":{"mechlens.positions.hook_embed":"1,2"},)" + t +
                                                  R"("data_offsets":[0,16]}})",
                                              four_floats), "metadata lists 2"},
    };
    for (const bad_file& bad : cases) {
        INFO(bad.name);
        const fs::path path = scratch_file(std::string("st_bad_") + bad.name + ".safetensors", bad.bytes);
        try {
            (void)mechlens::activation_cache::load_safetensors(path);
            FAIL("accepted a malformed file");
        } catch (const mechlens::format_error& e) {
            const std::string message = e.what();
            INFO(message);
            CHECK(message.find(path.string()) != std::string::npos);
            CHECK(message.find(bad.problem) != std::string::npos);
        }
    }
    // Escapes and padding that the format allows are accepted.
    const std::string escaped = "{\"__metadata__\":{\"note\":\"a\\\"b\\u00e9\\ud83d\\ude00\"}}       ";
    const auto file = mechlens::read_safetensors(scratch_file("st_escaped.safetensors", safetensors_bytes(escaped, "")));
    CHECK(file.metadata.at("note") == "a\"b\xc3\xa9\xf0\x9f\x98\x80");
    const float one = 1.0f;
    const fs::path unwritten = mechlens_test::scratch_dir() / "st_unwritten.safetensors";
    CHECK_THROWS_AS(mechlens::write_safetensors(unwritten, {{"a", {1}, &one}, {"a", {1}, &one}}), std::invalid_argument);
    CHECK_THROWS_AS(mechlens::write_safetensors(unwritten, {{"a", {1}, nullptr}}), std::invalid_argument);
    CHECK_THROWS_AS(mechlens::write_safetensors(unwritten, {{"__metadata__", {1}, &one}}), std::invalid_argument);
}

TEST_CASE("site traits: every fired activation has the shape, axes and masking its table row gives",
          "[hooks][cache][site_traits]") {
    std::vector<mechlens::model_config> variants;
    for (auto norm : {mechlens::norm_kind::rms, mechlens::norm_kind::none})
        for (auto positions : {mechlens::positional_kind::rotary, mechlens::positional_kind::learned})
            for (auto mlp :
                 {mechlens::mlp_kind::gated_silu, mechlens::mlp_kind::plain_gelu, mechlens::mlp_kind::none}) {
                mechlens::model_config c{.d_model = 16, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .d_mlp = 24,
                                         .d_vocab = 37, .n_ctx = 12};
                c.norm = norm, c.positions = positions, c.mlp = mlp;
                variants.push_back(c);
            }
    mechlens::model_config neox = variants.front();  // parallel blocks, split-halves rotary on 2 of 4 dims
    neox.norm = mechlens::norm_kind::layer;
    neox.linear_biases = true;
    neox.mlp = mechlens::mlp_kind::plain_gelu_erf;
    neox.parallel_attn_mlp = true;
    neox.rope = mechlens::rope_layout::split_halves;
    neox.rotary_dim_size = 2;
    variants.push_back(neox);
    const std::vector<std::int32_t> tokens{3, 1, 4, 1, 5, 9};
    const auto n = static_cast<index_t>(tokens.size());
    for (const mechlens::model_config& c : variants) {
        INFO("norm " << int(c.norm) << " positions " << int(c.positions) << " mlp " << int(c.mlp));
        const mechlens::transformer model(mechlens::random_model(c, 11, 0.3f));
        mechlens::caching_hooks<mechlens::kind_set::all()> everything;
        (void)mechlens::forward_logits(model, as_batch(tokens), everything);
        // has_site_kind (the `needs` column) is exactly what the forward pass fires.
        REQUIRE(everything.cache().sites() == mechlens::all_sites(c));
        for (const site& s : everything.cache().sites()) {
            INFO(mechlens::to_string(s));
            const mechlens::site_traits& row = mechlens::site_traits_of(s.kind);
            const mechlens::cached_activation& a = everything.cache().at(s);
            REQUIRE(a.shape.size() == row.rank);
            CHECK(a.shape[0] == 1);
            CHECK(a.shape[static_cast<std::size_t>(row.axes.position)] == n);
            if (row.axes.head >= 0)
                CHECK(a.shape[static_cast<std::size_t>(row.axes.head)] == mechlens::detail::head_count(c, s.kind));
            CHECK(a.shape.back() == mechlens::site_width(c, s.kind, n));
            if (row.axes.key < 0) continue;
            // Future keys hold the row's masked_fill, bit for bit (-inf for scores, 0 for patterns).
            const auto v = a.view<4>();
            for (index_t h = 0; h < a.shape[1]; ++h)
                for (index_t q = 0; q < n; ++q)
                    for (index_t k = q + 1; k < n; ++k)
                        CHECK(std::memcmp(&v(0, h, q, k), &row.masked_fill, sizeof(float)) == 0);
        }
    }
}

TEST_CASE("site traits: visit_kind calls with the compile-time kind and refuses kinds outside its set",
          "[hooks][site_traits]") {
    constexpr mechlens::kind_set kinds = mechlens::kind_set::of({site_kind::resid_pre, site_kind::attn_z});
    auto kind_of = [](auto k) { return decltype(k)::value; };
    CHECK(mechlens::detail::visit_kind<kinds>(site_kind::attn_z, kind_of) == site_kind::attn_z);
    CHECK(mechlens::detail::visit_kind<kinds>(site_kind::resid_pre, kind_of) == site_kind::resid_pre);
    CHECK_THROWS_AS(mechlens::detail::visit_kind<kinds>(site_kind::mlp_out, kind_of), std::logic_error);
    int calls = 0;
    mechlens::detail::visit_kind<mechlens::kind_set::all()>(site_kind::unembed_out, [&](auto) { ++calls; });
    CHECK(calls == 1);
}

}  // namespace test_hooks_cache
