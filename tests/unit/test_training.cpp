// Training utilities (AdamW, clipping, schedule, synthetic data, checkpoints) and head detectors.
#include <mechlens/mechlens.hpp>

#include "test_support.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <numbers>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <vector>

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_training {

namespace {

namespace fs = std::filesystem;
using mechlens::index_t;
using json = mechlens::json_value;

json load_json(const fs::path& path) { return mechlens::read_json_file(path); }

const json& member(const json& object, const std::string& key) { return object.at(key); }

double number(const json& v) { return v.as_double(); }

std::vector<float> floats(const json& v) {
    std::vector<float> out;
    for (const json& x : v.items()) out.push_back(static_cast<float>(number(x)));
    return out;
}

// |a - b| <= rel * max(|a|, |b|): the relative tolerance the brief asks for against torch.
bool close_rel(double a, double b, double rel) {
    return std::abs(a - b) <= rel * std::max(std::abs(a), std::abs(b));
}

void require_close(const std::vector<float>& got, const std::vector<float>& want, double rel, const std::string& what) {
    REQUIRE(got.size() == want.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
        INFO(what << "[" << i << "] = " << got[i] << ", reference " << want[i]);
        CHECK(close_rel(static_cast<double>(got[i]), static_cast<double>(want[i]), rel));
    }
}

fs::path train_fixture(const std::string& name) { return mechlens_test::fixtures_dir() / "train" / name; }

// Small configs covering every variant a checkpoint must describe.
std::vector<mechlens::model_config> checkpoint_configs() {
    using namespace mechlens;
    model_config llama{16, 2, 4, 2, 24, 37, 32};
    llama.tied_unembed = false;
    llama.rope_theta = 500000.0f;
    llama.norm_eps = 1e-6f;
    llama.rope = rope_layout::split_halves;
    model_config attn_only{12, 2, 3, 3, 0, 20, 16};
    attn_only.norm = norm_kind::none;
    attn_only.positions = positional_kind::learned;
    attn_only.mlp = mlp_kind::none;
    model_config gpt{8, 1, 2, 1, 32, 11, 9};
    gpt.positions = positional_kind::learned;
    gpt.mlp = mlp_kind::plain_gelu;
    gpt.tied_unembed = false;
    gpt.norm_eps = 3.3e-7f;
    return {llama, attn_only, gpt};
}

mechlens::model_parameters random_parameters(const mechlens::model_config& config, std::uint64_t seed) {
    mechlens::model_parameters p(config);
    mechlens::random_generator rng(seed);
    for (float& x : p.flat()) x = static_cast<float>(rng.uniform() * 2.0 - 1.0);
    return p;
}

bool same_config(const mechlens::model_config& a, const mechlens::model_config& b) {
    return a.d_model == b.d_model && a.n_layers == b.n_layers && a.n_heads == b.n_heads &&
           a.n_kv_heads == b.n_kv_heads && a.d_mlp == b.d_mlp && a.d_vocab == b.d_vocab && a.n_ctx == b.n_ctx &&
           std::memcmp(&a.rope_theta, &b.rope_theta, sizeof(float)) == 0 &&
           std::memcmp(&a.norm_eps, &b.norm_eps, sizeof(float)) == 0 && a.tied_unembed == b.tied_unembed &&
           a.rope == b.rope && a.norm == b.norm && a.positions == b.positions && a.mlp == b.mlp;
}

std::string read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

void write_bytes(const fs::path& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Expects load_checkpoint(path) to throw format_error whose message names the file and contains `problem`.
void require_rejected(const fs::path& path, const std::string& problem) {
    INFO("file " << path << ", expected problem: " << problem);
    try {
        (void)mechlens::load_checkpoint(path);
        FAIL("load_checkpoint accepted a bad file");
    } catch (const mechlens::format_error& e) {
        const std::string message = e.what();
        INFO("message: " << message);
        CHECK(message.find(path.string()) != std::string::npos);
        CHECK(message.find(problem) != std::string::npos);
    }
}

std::vector<std::int32_t> npy_tokens(const fs::path& path) {
    const mechlens::npy_array a = mechlens::read_npy(path);
    std::vector<std::int32_t> out;
    for (const float x : a.data) out.push_back(static_cast<std::int32_t>(x));
    return out;
}

const char* const detector_names[] = {"previous_token", "duplicate_token", "induction"};
const mechlens::head_kind detector_kinds[] = {mechlens::head_kind::previous_token, mechlens::head_kind::duplicate_token,
                                              mechlens::head_kind::induction};
struct option_case {
    const char* name;
    mechlens::head_detector_options options;
};
const option_case option_cases[] = {
    {"plain", {false, false}},
    {"exclude_bos", {true, false}},
    {"exclude_current", {false, true}},
    {"exclude_both", {true, true}},
};

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// AdamW and clipping against torch

TEST_CASE("adamw matches torch.optim.AdamW step by step", "[train]") {
    const json root = load_json(train_fixture("adamw.json"));
    const json& cases = member(root, "cases");
    REQUIRE(cases.items().size() >= 4);
    for (const json& c : cases.items()) {
        const std::string name = member(c, "name").as_string();
        SECTION(name) {
            mechlens::adamw_options o;
            o.lr = static_cast<float>(number(member(c, "lr")));
            o.beta1 = static_cast<float>(number(member(c, "beta1")));
            o.beta2 = static_cast<float>(number(member(c, "beta2")));
            o.eps = static_cast<float>(number(member(c, "eps")));
            o.weight_decay = static_cast<float>(number(member(c, "weight_decay")));
            std::vector<float> params = floats(member(c, "params0"));
            const auto n = static_cast<index_t>(params.size());
            const auto decay_end = static_cast<index_t>(number(member(c, "decay_end")));
            mechlens::adamw opt(n, o, {{0, decay_end}});
            const json& lr_per_step = member(c, "lr_per_step");
            const json& grads = member(c, "grads");
            const json& after = member(c, "params_after");
            REQUIRE(grads.items().size() == after.items().size());
            for (std::size_t s = 0; s < grads.items().size(); ++s) {
                if (lr_per_step.is_array())
                    opt.options().lr = static_cast<float>(number(lr_per_step.items()[s]));
                const std::vector<float> g = floats(grads.items()[s]);
                opt.step(params, g);
                CHECK(opt.steps() == static_cast<std::int64_t>(s + 1));
                require_close(params, floats(after.items()[s]), 1e-6, name + " step " + std::to_string(s + 1));
            }
            require_close({opt.m().begin(), opt.m().end()}, floats(member(c, "m")), 1e-6, name + " m");
            require_close({opt.v().begin(), opt.v().end()}, floats(member(c, "v")), 1e-6, name + " v");
        }
    }
}

TEST_CASE("adamw validates sizes and options, and its state can be saved and restored", "[train]") {
    mechlens::adamw opt(4);
    std::vector<float> p{1, 2, 3, 4}, g{0.1f, -0.2f, 0.3f, 0.0f}, short_grads{1, 2, 3};
    CHECK_THROWS_AS(opt.step(p, short_grads), std::invalid_argument);
    std::vector<float> long_params{1, 2, 3, 4, 5};
    CHECK_THROWS_AS(opt.step(long_params, std::vector<float>(5)), std::invalid_argument);
    CHECK(opt.steps() == 0);
    CHECK_THROWS_AS(mechlens::adamw(4, {.lr = -1.0f}), std::invalid_argument);
    CHECK_THROWS_AS(mechlens::adamw(4, {.beta1 = 1.0f}), std::invalid_argument);
    CHECK_THROWS_AS(mechlens::adamw(4, {.beta2 = -0.5f}), std::invalid_argument);
    CHECK_THROWS_AS(mechlens::adamw(4, {.weight_decay = -0.1f}), std::invalid_argument);
    CHECK_THROWS_AS(mechlens::adamw(4, {}, {{2, 3}}), std::invalid_argument);          // past the end
    CHECK_THROWS_AS(mechlens::adamw(4, {}, {{0, 2}, {1, 2}}), std::invalid_argument);  // overlapping

    // Two runs, the second interrupted and resumed from a saved state, end bitwise equal.
    mechlens::adamw a(4, {.lr = 0.05f, .weight_decay = 0.1f});
    std::vector<float> pa = p;
    for (int s = 0; s < 5; ++s) a.step(pa, g);
    mechlens::adamw b(4, {.lr = 0.05f, .weight_decay = 0.1f});
    std::vector<float> pb = p;
    for (int s = 0; s < 2; ++s) b.step(pb, g);
    mechlens::adamw c(4, {.lr = 0.05f, .weight_decay = 0.1f});
    c.set_state(b.state());
    for (int s = 0; s < 3; ++s) c.step(pb, g);
    CHECK(c.steps() == 5);
    CHECK(std::memcmp(pa.data(), pb.data(), pa.size() * sizeof(float)) == 0);
    CHECK_THROWS_AS(c.set_state(mechlens::adamw_state{1, std::vector<float>(3), std::vector<float>(4)}),
                    std::invalid_argument);
    c.reset();
    CHECK(c.steps() == 0);
    CHECK(std::all_of(c.m().begin(), c.m().end(), [](float x) { return x == 0.0f; }));

    // With zero gradients only the decayed range moves: p *= 1 - lr * wd exactly once per step.
    mechlens::adamw d(4, {.lr = 0.1f, .weight_decay = 0.5f}, {{1, 2}});
    std::vector<float> pd{1, 1, 1, 1};
    d.step(pd, std::vector<float>(4, 0.0f));
    CHECK(pd[0] == 1.0f);
    CHECK(pd[1] == Approx(0.95f).epsilon(1e-7));
    CHECK(pd[2] == Approx(0.95f).epsilon(1e-7));
    CHECK(pd[3] == 1.0f);
}

TEST_CASE("decay_ranges selects layout entries by name and merges neighbours", "[train]") {
    mechlens::model_config c{16, 2, 4, 2, 24, 37, 32};
    c.tied_unembed = false;
    const mechlens::model_parameters params(c);
    const auto& layout = params.layout();
    auto covered = [](const std::vector<mechlens::parameter_range>& ranges) {
        index_t n = 0;
        for (const auto& r : ranges) n += r.size;
        return n;
    };
    index_t matrices = 0, block_matrices = 0;
    for (const auto& e : layout) {
        if (e.rank == 2) matrices += e.size();
        if (e.rank == 2 && e.name.rfind("blocks.", 0) == 0) block_matrices += e.size();
    }
    const auto all_matrices = mechlens::decay_ranges(layout, mechlens::decay_matrices);
    CHECK(covered(all_matrices) == matrices);
    CHECK(covered(mechlens::decay_ranges(layout, mechlens::decay_block_matrices)) == block_matrices);
    CHECK(block_matrices < matrices);
    // Gains split the matrices into: token_embedding; per block w_q..w_o and w_gate..w_down; unembed.
    CHECK(all_matrices.size() == 6);
    const auto only_gains = mechlens::decay_ranges(layout, [](const mechlens::parameter_entry& e) { return e.rank == 1; });
    CHECK(covered(only_gains) == params.size() - matrices);
    for (const auto& r : only_gains) CHECK(r.size % c.d_model == 0);
    CHECK_NOTHROW(mechlens::adamw(params.size(), {}, all_matrices));
}

TEST_CASE("clip_grad_norm matches torch.nn.utils.clip_grad_norm_", "[train]") {
    const json root = load_json(train_fixture("clip.json"));
    for (const json& c : member(root, "cases").items()) {
        const std::string name = member(c, "name").as_string();
        std::vector<float> g = floats(member(c, "grads"));
        const double norm = mechlens::clip_grad_norm(g, static_cast<float>(number(member(c, "max_norm"))));
        INFO(name);
        CHECK(close_rel(norm, number(member(c, "norm")), 1e-6));
        require_close(g, floats(member(c, "clipped")), 1e-6, name);
        CHECK(mechlens::global_norm(g) <= number(member(c, "max_norm")) * (1 + 1e-6));
    }
    std::vector<float> bad{1.0f, INFINITY, 2.0f};
    CHECK(std::isinf(mechlens::clip_grad_norm(bad, 1.0f)));
    CHECK(bad[0] == 1.0f);
    CHECK_THROWS_AS(mechlens::clip_grad_norm(bad, 0.0f), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------------------------
// Schedule

TEST_CASE("warmup_cosine follows its documented formula", "[train]") {
    const mechlens::warmup_cosine lr({.peak = 1e-3f, .warmup_steps = 10, .total_steps = 110, .min = 1e-4f});
    CHECK(lr(0) == 0.0f);
    CHECK(lr(-3) == 0.0f);
    CHECK(lr(5) == Approx(5e-4).epsilon(1e-6));
    CHECK(lr(9) == Approx(9e-4).epsilon(1e-6));
    CHECK(lr(10) == 1e-3f);                                      // cos(0) = 1: exactly the peak
    CHECK(lr(60) == Approx((1e-3 + 1e-4) / 2).epsilon(1e-6));    // halfway through the decay
    CHECK(lr(35) == Approx(1e-4 + 0.9e-3 * 0.5 * (1 + std::cos(std::numbers::pi / 4))).epsilon(1e-6));
    CHECK(lr(110) == 1e-4f);
    CHECK(lr(1000) == 1e-4f);
    for (index_t s = 10; s < 120; ++s) CHECK(lr(s + 1) <= lr(s));
    for (index_t s = 0; s < 10; ++s) CHECK(lr(s + 1) > lr(s));

    const mechlens::warmup_cosine from_start({.peak = 2.0f, .warmup_steps = 4, .total_steps = 4, .start = 1.0f});
    CHECK(from_start(0) == 1.0f);
    CHECK(from_start(2) == 1.5f);
    CHECK(from_start(4) == 0.0f);  // T == W: no decay phase, straight to the floor
    const mechlens::warmup_cosine no_warmup({.peak = 1.0f, .warmup_steps = 0, .total_steps = 2});
    CHECK(no_warmup(0) == 1.0f);
    CHECK(no_warmup(1) == Approx(0.5).margin(1e-7));
    CHECK_THROWS_AS(mechlens::warmup_cosine({.warmup_steps = 5, .total_steps = 4}), std::invalid_argument);
    CHECK_THROWS_AS(mechlens::warmup_cosine({.peak = -1.0f, .total_steps = 4}), std::invalid_argument);
    CHECK_THROWS_AS(mechlens::warmup_cosine({.peak = NAN, .total_steps = 4}), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------------------------
// Data

TEST_CASE("repeated_random_tokens is deterministic and repeats its first half", "[train]") {
    const mechlens::induction_options o{.batch = 64, .half_length = 10, .vocab = 50, .first_token = 3, .bos = 1};
    const auto a = mechlens::repeated_random_tokens(o, 42);
    const auto b = mechlens::repeated_random_tokens(o, 42);
    const auto c = mechlens::repeated_random_tokens(o, 43);
    REQUIRE(a.data.tokens.shape() == mechlens::extents<2>{64, 21});
    CHECK(std::equal(a.data.tokens.data(), a.data.tokens.data() + a.data.tokens.size(), b.data.tokens.data()));
    CHECK_FALSE(std::equal(a.data.tokens.data(), a.data.tokens.data() + a.data.tokens.size(), c.data.tokens.data()));
    CHECK(a.prefix == 1);
    CHECK(a.half_length == 10);
    std::set<std::int32_t> seen;
    for (index_t r = 0; r < 64; ++r) {
        CHECK(a.data.tokens(r, 0) == 1);
        for (index_t i = 0; i < 10; ++i) {
            CHECK(a.data.tokens(r, 1 + i) == a.data.tokens(r, 11 + i));
            CHECK(a.data.tokens(r, 1 + i) >= 3);
            CHECK(a.data.tokens(r, 1 + i) < 50);
            seen.insert(a.data.tokens(r, 1 + i));
        }
        for (index_t t = 0; t < 20; ++t) {
            CHECK(a.data.targets(r, t) == a.data.tokens(r, t + 1));
            CHECK(a.data.loss_mask(r, t) == 1.0f);
        }
        CHECK(a.data.targets(r, 20) == mechlens::ignore_target);
        CHECK(a.data.loss_mask(r, 20) == 0.0f);
    }
    CHECK(seen.size() == 47);  // 640 draws over 47 values: every value appears
    for (index_t t = 0; t < 21; ++t) {
        CHECK(a.repeated(t) == (t >= 11 ? 1.0f : 0.0f));
        CHECK(a.induction_mask(t) == (t >= 11 && t < 20 ? 1.0f : 0.0f));
    }
    const auto no_bos = mechlens::repeated_random_tokens({.batch = 2, .half_length = 3, .vocab = 5}, 7);
    CHECK(no_bos.prefix == 0);
    CHECK(no_bos.data.positions() == 6);
    CHECK(no_bos.data.tokens(1, 0) == no_bos.data.tokens(1, 3));
    CHECK_THROWS_AS(mechlens::repeated_random_tokens({.batch = 0, .half_length = 3, .vocab = 5}, 1),
                    std::invalid_argument);
    CHECK_THROWS_AS(mechlens::repeated_random_tokens({.batch = 1, .half_length = 3, .vocab = 5, .first_token = 5}, 1),
                    std::invalid_argument);
}

TEST_CASE("modular addition: the full table and a seeded split", "[train]") {
    const std::int32_t p = 7;
    const auto table = mechlens::modular_addition_table(p);
    REQUIRE(table.tokens.shape() == mechlens::extents<2>{49, 4});
    for (std::int32_t a = 0; a < p; ++a)
        for (std::int32_t b = 0; b < p; ++b) {
            const index_t r = a * p + b;
            CHECK(table.tokens(r, 0) == a);
            CHECK(table.tokens(r, 1) == b);
            CHECK(table.tokens(r, 2) == p);
            CHECK(table.tokens(r, 3) == (a + b) % p);
            CHECK(table.targets(r, 2) == (a + b) % p);
            CHECK(table.loss_mask(r, 0) == 0.0f);
            CHECK(table.loss_mask(r, 1) == 0.0f);
            CHECK(table.loss_mask(r, 2) == 1.0f);
            CHECK(table.loss_mask(r, 3) == 0.0f);
        }
    const auto split = mechlens::modular_addition(p, 0.3, 5);
    const auto again = mechlens::modular_addition(p, 0.3, 5);
    const auto other = mechlens::modular_addition(p, 0.3, 6);
    CHECK(split.train.batch() == 15);  // round(0.3 * 49)
    CHECK(split.test.batch() == 34);
    std::set<std::pair<int, int>> rows;
    auto add_rows = [&](const mechlens::token_batch& t) {
        for (index_t r = 0; r < t.batch(); ++r) {
            rows.insert({t.tokens(r, 0), t.tokens(r, 1)});
            CHECK(t.tokens(r, 3) == (t.tokens(r, 0) + t.tokens(r, 1)) % p);
            if (r > 0) CHECK(t.tokens(r - 1, 0) * p + t.tokens(r - 1, 1) < t.tokens(r, 0) * p + t.tokens(r, 1));
        }
    };
    add_rows(split.train);
    add_rows(split.test);
    CHECK(rows.size() == 49);  // disjoint and complete
    auto same = [](const mechlens::token_batch& x, const mechlens::token_batch& y) {
        return x.tokens.shape() == y.tokens.shape() &&
               std::equal(x.tokens.data(), x.tokens.data() + x.tokens.size(), y.tokens.data());
    };
    CHECK(same(split.train, again.train));
    CHECK_FALSE(same(split.train, other.train));
    CHECK(mechlens::modular_addition(p, 1.0, 1).test.batch() == 0);
    CHECK_THROWS_AS(mechlens::modular_addition(p, 1.5, 1), std::invalid_argument);
    CHECK_THROWS_AS(mechlens::modular_addition_table(1), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------------------------
// Checkpoints

TEST_CASE("checkpoints round-trip bitwise for every config variant", "[train]") {
    const fs::path dir = mechlens_test::scratch_dir() / "checkpoints";
    fs::create_directories(dir);
    std::uint64_t seed = 1;
    for (const mechlens::model_config& config : checkpoint_configs()) {
        const mechlens::model_parameters params = random_parameters(config, seed++);
        const fs::path path = dir / ("variant" + std::to_string(seed) + ".safetensors");
        mechlens::save_checkpoint(path, params, {{"run", "test"}, {"step", "12"}});
        const mechlens::checkpoint loaded = mechlens::load_checkpoint(path);
        CHECK(same_config(loaded.parameters.config(), config));
        REQUIRE(loaded.parameters.size() == params.size());
        CHECK(std::memcmp(loaded.parameters.flat().data(), params.flat().data(),
                          static_cast<std::size_t>(params.size()) * sizeof(float)) == 0);
        CHECK(loaded.metadata == std::map<std::string, std::string>{{"run", "test"}, {"step", "12"}});
        CHECK_FALSE(loaded.optimizer.has_value());
        // A plain safetensors reader sees the layout names and shapes.
        const mechlens::safetensors_file raw = mechlens::read_safetensors(path);
        REQUIRE(raw.tensors.size() == params.layout().size());
        for (std::size_t i = 0; i < raw.tensors.size(); ++i) CHECK(raw.tensors[i].name == params.layout()[i].name);
        CHECK(raw.metadata.at("mechlens.config.mlp") ==
              (config.mlp == mechlens::mlp_kind::none         ? "none"
               : config.mlp == mechlens::mlp_kind::plain_gelu ? "plain_gelu"
                                                              : "gated_silu"));
    }
    // The float parameters run in a transformer after loading.
    const mechlens::checkpoint loaded = mechlens::load_checkpoint(dir / "variant2.safetensors");
    CHECK(loaded.parameters.weights().layers.size() == 2);
}

TEST_CASE("checkpoints carry the AdamW state", "[train]") {
    const mechlens::model_config config = checkpoint_configs()[1];
    mechlens::model_parameters params = random_parameters(config, 9);
    mechlens::adamw opt(params.size(), {.lr = 0.01f});
    std::vector<float> grads(static_cast<std::size_t>(params.size()));
    mechlens::random_generator rng(3);
    for (int s = 0; s < 3; ++s) {
        for (float& g : grads) g = static_cast<float>(rng.uniform() - 0.5);
        opt.step(params.flat(), grads);
    }
    const fs::path path = mechlens_test::scratch_dir() / "checkpoints" / "with_optimizer.safetensors";
    fs::create_directories(path.parent_path());
    mechlens::save_checkpoint(path, params, opt);
    const mechlens::checkpoint loaded = mechlens::load_checkpoint(path);
    REQUIRE(loaded.optimizer.has_value());
    CHECK(loaded.optimizer->step == 3);
    CHECK(loaded.optimizer->m == opt.state().m);
    CHECK(loaded.optimizer->v == opt.state().v);
    CHECK(loaded.metadata.empty());

    // Resuming from the checkpoint continues exactly as the uninterrupted run.
    mechlens::model_parameters resumed = loaded.parameters;
    mechlens::adamw opt2(resumed.size(), {.lr = 0.01f});
    opt2.set_state(*loaded.optimizer);
    for (float& g : grads) g = static_cast<float>(rng.uniform() - 0.5);
    opt.step(params.flat(), grads);
    opt2.step(resumed.flat(), grads);
    CHECK(std::equal(params.flat().begin(), params.flat().end(), resumed.flat().begin()));

    CHECK_THROWS_AS(mechlens::save_checkpoint(path, params, {{"mechlens.config.d_model", "3"}}), std::invalid_argument);
    const mechlens::adamw wrong(5);
    CHECK_THROWS_AS(mechlens::save_checkpoint(path, params, wrong), std::invalid_argument);
}

TEST_CASE("load_checkpoint rejects truncated and corrupted files, naming them", "[train]") {
    const fs::path dir = mechlens_test::scratch_dir() / "checkpoints";
    fs::create_directories(dir);
    const mechlens::model_config config = checkpoint_configs()[0];
    const mechlens::model_parameters params = random_parameters(config, 21);
    const fs::path good = dir / "good.safetensors";
    mechlens::save_checkpoint(good, params);
    const std::string bytes = read_bytes(good);
    const fs::path bad = dir / "bad.safetensors";

    SECTION("truncated") {
        for (const std::size_t keep : {std::size_t{0}, std::size_t{5}, std::size_t{100}, bytes.size() / 2,
                                       bytes.size() - 1}) {
            write_bytes(bad, bytes.substr(0, keep));
            require_rejected(bad, "");
        }
    }
    SECTION("trailing bytes") {
        write_bytes(bad, bytes + "xxxx");
        require_rejected(bad, "data bytes");
    }
    SECTION("a corrupted header") {
        std::string b = bytes;
        const std::size_t at = b.find("\"dtype\":\"F32\"");
        REQUIRE(at != std::string::npos);
        b.replace(at + 9, 3, "F16");
        write_bytes(bad, b);
        require_rejected(bad, "F16");
    }
    // Files that are valid safetensors but not valid checkpoints, written with the plain writer.
    std::vector<mechlens::safetensors_tensor_ref> tensors;
    for (const auto& e : params.layout()) {
        std::vector<index_t> shape{e.shape[0]};
        if (e.rank == 2) shape.push_back(e.shape[1]);
        tensors.push_back({e.name, shape, params.flat().data() + e.offset});
    }
    const mechlens::safetensors_file original = mechlens::read_safetensors(good);
    SECTION("a missing tensor") {
        auto t = tensors;
        t.erase(t.begin() + 3);
        mechlens::write_safetensors(bad, t, original.metadata);
        require_rejected(bad, "lacks tensor '" + tensors[3].name + "'");
    }
    SECTION("a tensor of the wrong shape") {
        auto t = tensors;
        t[2].shape = {t[2].shape[0] * t[2].shape[1]};
        mechlens::write_safetensors(bad, t, original.metadata);
        require_rejected(bad, "has shape");
    }
    SECTION("an unexpected tensor") {
        auto t = tensors;
        const float x = 1.0f;
        t.push_back({"blocks.9.w_q", {1}, &x});
        mechlens::write_safetensors(bad, t, original.metadata);
        require_rejected(bad, "unexpected tensor 'blocks.9.w_q'");
    }
    SECTION("a missing config field") {
        auto m = original.metadata;
        m.erase("mechlens.config.n_kv_heads");
        mechlens::write_safetensors(bad, tensors, m);
        require_rejected(bad, "mechlens.config.n_kv_heads");
    }
    SECTION("a bad enum value") {
        auto m = original.metadata;
        m["mechlens.config.rope"] = "sideways";
        mechlens::write_safetensors(bad, tensors, m);
        require_rejected(bad, "sideways");
    }
    SECTION("a bad number") {
        auto m = original.metadata;
        m["mechlens.config.d_model"] = "16x";
        mechlens::write_safetensors(bad, tensors, m);
        require_rejected(bad, "d_model");
    }
    SECTION("an inconsistent config") {
        auto m = original.metadata;
        m["mechlens.config.n_heads"] = "3";  // 16 is not a multiple of 3
        mechlens::write_safetensors(bad, tensors, m);
        require_rejected(bad, "n_heads");
    }
    SECTION("not a checkpoint") {
        mechlens::write_safetensors(bad, tensors, {});
        require_rejected(bad, "not a mechlens checkpoint");
    }
    SECTION("half an optimizer state") {
        auto m = original.metadata;
        m["mechlens.optimizer.step"] = "4";
        mechlens::write_safetensors(bad, tensors, m);
        require_rejected(bad, "incomplete optimizer state");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Head detectors

TEST_CASE("detection patterns follow TransformerLens's definitions", "[detectors]") {
    const std::vector<std::int32_t> tokens{1, 5, 7, 5, 7, 7};
    const auto prev = mechlens::detection_pattern(mechlens::head_kind::previous_token, tokens);
    const auto dup = mechlens::detection_pattern(mechlens::head_kind::duplicate_token, tokens);
    const auto ind = mechlens::detection_pattern(mechlens::head_kind::induction, tokens);
    for (index_t q = 0; q < 6; ++q)
        for (index_t k = 0; k < 6; ++k) {
            INFO("query " << q << ", key " << k);
            CHECK(prev(q, k) == (k == q - 1 ? 1.0f : 0.0f));
            const bool duplicate = k < q && tokens[static_cast<std::size_t>(k)] == tokens[static_cast<std::size_t>(q)];
            CHECK(dup(q, k) == (duplicate ? 1.0f : 0.0f));
        }
    // Induction: query 3 (token 5) -> key 2 (after the 5 at 1); query 4 (7) -> key 3; query 5 (7) -> keys 3 and 5
    // (after the 7s at 2 and 4; key 5 is the query itself, kept as TransformerLens keeps it).
    std::vector<std::pair<index_t, index_t>> ones;
    for (index_t q = 0; q < 6; ++q)
        for (index_t k = 0; k < 6; ++k)
            if (ind(q, k) == 1.0f) ones.emplace_back(q, k);
    CHECK(ones == std::vector<std::pair<index_t, index_t>>{{3, 2}, {4, 3}, {5, 3}, {5, 5}});
}

TEST_CASE("head scores on hand-built patterns", "[detectors]") {
    const index_t n = 6;
    mechlens::tensor<std::int32_t, 2> tokens({1, n});
    const std::int32_t row[] = {1, 5, 7, 5, 7, 7};
    std::copy(std::begin(row), std::end(row), tokens.data());
    // Head 0 attends to the previous token (row 0 to itself); head 1 attends uniformly to 0..q.
    mechlens::tensor<float, 4> pattern({1, 2, n, n});
    for (index_t q = 0; q < n; ++q) {
        pattern(0, 0, q, q == 0 ? 0 : q - 1) = 1.0f;
        for (index_t k = 0; k <= q; ++k) pattern(0, 1, q, k) = 1.0f / static_cast<float>(q + 1);
    }
    using mechlens::head_kind;
    const auto prev = mechlens::detect_head(pattern.view(), tokens.view(), head_kind::previous_token);
    CHECK(prev(0) == Approx(5.0 / 6.0).epsilon(1e-6));  // all but row 0, which has no previous token
    double uniform_prev = 0;
    for (index_t q = 1; q < n; ++q) uniform_prev += 1.0 / static_cast<double>(q + 1);
    CHECK(prev(1) == Approx(uniform_prev / 6.0).epsilon(1e-6));
    // Zeroing each query's own position removes row 0 entirely: a perfect previous-token head scores 1.
    const auto prev_ex = mechlens::detect_head(pattern.view(), tokens.view(), head_kind::previous_token,
                                               {.exclude_current_token = true});
    CHECK(prev_ex(0) == Approx(1.0).epsilon(1e-6));
    // Uniform head, duplicate detector: the 1/(q+1) masses on earlier equal tokens (q=3: k=1; q=4: k=2;
    // q=5: k=2, 4), over the total mass 6.
    const auto dup = mechlens::detect_head(pattern.view(), tokens.view(), head_kind::duplicate_token);
    CHECK(dup(1) == Approx((1.0 / 4 + 1.0 / 5 + 2.0 / 6) / 6.0).epsilon(1e-6));
    CHECK(dup(0) == Approx(1.0 / 6.0).epsilon(1e-6));  // only q=5 (7) -> k=4 (7) lands on a duplicate
    const auto ind = mechlens::detect_head(pattern.view(), tokens.view(), head_kind::induction);
    CHECK(ind(0) == Approx(2.0 / 6.0).epsilon(1e-6));  // q=3 -> 2 and q=4 -> 3 are previous tokens too
    // exclude_bos drops column 0: head 0's rows 0 and 1 lose all their mass.
    const auto prev_bos = mechlens::detect_head(pattern.view(), tokens.view(), head_kind::previous_token,
                                                {.exclude_bos = true});
    CHECK(prev_bos(0) == Approx(1.0).epsilon(1e-6));

    // Shape checks.
    mechlens::tensor<std::int32_t, 2> two_rows({2, n});
    CHECK_THROWS_AS(mechlens::detect_head(pattern.view(), two_rows.view(), head_kind::induction), mechlens::shape_error);
    const std::vector<index_t> outside{7, 1, 2, 3, 4, 5};
    CHECK_THROWS_AS(mechlens::detect_head(pattern.view(), tokens.view(), head_kind::induction, {}, outside),
                    mechlens::shape_error);
}

TEST_CASE("batched head scores match the numpy reference", "[detectors]") {
    const json root = load_json(train_fixture("head_detectors.json"));
    const json& c = member(root, "random_batch");
    const std::vector<float> shape = floats(member(c, "shape"));
    const mechlens::extents<4> e{static_cast<index_t>(shape[0]), static_cast<index_t>(shape[1]),
                                 static_cast<index_t>(shape[2]), static_cast<index_t>(shape[3])};
    const std::vector<float> values = floats(member(c, "pattern"));
    const mechlens::tensor_view<const float, 4> pattern(values.data(), e);
    mechlens::tensor<std::int32_t, 2> tokens({e[0], e[3]});
    const json& rows = member(c, "tokens");
    for (index_t b = 0; b < e[0]; ++b)
        for (index_t t = 0; t < e[3]; ++t)
            tokens(b, t) = static_cast<std::int32_t>(number(rows.items()[static_cast<std::size_t>(b)].items()[static_cast<std::size_t>(t)]));
    for (const option_case& o : option_cases)
        for (int d = 0; d < 3; ++d) {
            const std::vector<float> want = floats(member(member(member(c, "scores"), o.name), detector_names[d]));
            const auto got = mechlens::detect_head(pattern, tokens.view(), detector_kinds[d], o.options);
            REQUIRE(got.size() == static_cast<index_t>(want.size()));
            for (index_t h = 0; h < got.size(); ++h) {
                INFO(o.name << " " << detector_names[d] << " head " << h);
                CHECK(got(h) == Approx(want[static_cast<std::size_t>(h)]).margin(1e-5));
            }
        }
}

TEST_CASE("head scores on stories260K's cached patterns match the numpy reference", "[detectors]") {
    const json root = load_json(train_fixture("head_detectors.json"));
    const json& stories = member(root, "stories260K");
    for (const char* prompt : {"p0", "p1", "p2"}) {
        const fs::path dir = mechlens_test::fixtures_dir() / "stories260K" / prompt;
        const std::vector<std::int32_t> ids = npy_tokens(dir / "tokens.npy");
        const json& ref = member(stories, prompt);
        REQUIRE(floats(member(ref, "tokens")).size() == ids.size());
        mechlens::tensor<std::int32_t, 2> tokens({1, static_cast<index_t>(ids.size())});
        std::copy(ids.begin(), ids.end(), tokens.data());

        mechlens::activation_cache cache;
        const json& layers = member(ref, "layers");
        for (std::size_t layer = 0; layer < layers.items().size(); ++layer) {
            const auto path = dir / ("blocks." + std::to_string(layer) + ".attn.hook_pattern.npy");
            mechlens::npy_array a = mechlens::read_npy(path);
            cache.put({mechlens::site_kind::attn_pattern, static_cast<index_t>(layer)},
                      {a.shape, std::move(a.data), {}});
        }
        for (const option_case& o : option_cases) {
            const mechlens::head_detector_scores all = mechlens::detect_heads(cache, tokens.view(), o.options);
            for (int d = 0; d < 3; ++d) {
                const mechlens::tensor<float, 2>& table = all[detector_kinds[d]];
                REQUIRE(table.extent(0) == static_cast<index_t>(layers.items().size()));
                for (std::size_t layer = 0; layer < layers.items().size(); ++layer) {
                    const std::vector<float> want =
                        floats(member(member(layers.items()[layer], o.name), detector_names[d]));
                    REQUIRE(table.extent(1) == static_cast<index_t>(want.size()));
                    for (index_t h = 0; h < table.extent(1); ++h) {
                        INFO(prompt << " " << o.name << " " << detector_names[d] << " L" << layer << "H" << h);
                        CHECK(table(static_cast<index_t>(layer), h) ==
                              Approx(want[static_cast<std::size_t>(h)]).margin(1e-5));
                    }
                }
            }
        }
        // p1 repeats "Lily" and "Tom": some head must attend to duplicates, so the scores are not all zero.
        if (std::string(prompt) == "p1") {
            const auto dup = mechlens::detect_heads(cache, tokens.view(), mechlens::head_kind::duplicate_token);
            CHECK(*std::max_element(dup.data(), dup.data() + dup.size()) > 0.01f);
        }

        // A cache without layer 2 leaves that row at -1; rows kept at some positions are scored there.
        mechlens::activation_cache partial = cache;
        partial.erase({mechlens::site_kind::attn_pattern, 2});
        const auto table = mechlens::detect_heads(partial, tokens.view(), mechlens::head_kind::previous_token);
        for (index_t h = 0; h < table.extent(1); ++h) CHECK(table(2, h) == -1.0f);
        const mechlens::cached_activation& full = cache.at({mechlens::site_kind::attn_pattern, 1});
        const auto pattern = full.view<4>();
        const index_t pos = pattern.extent(3);
        // Keep the last two query rows; the reference is the full pattern with every other row zeroed.
        mechlens::cached_activation rows_kept{{1, pattern.extent(1), 2, pos}, {}, {pos - 2, pos - 1}};
        mechlens::tensor<float, 4> zeroed({1, pattern.extent(1), pos, pos});
        for (index_t h = 0; h < pattern.extent(1); ++h)
            for (index_t q = pos - 2; q < pos; ++q)
                for (index_t k = 0; k < pos; ++k) zeroed(0, h, q, k) = pattern(0, h, q, k);
        for (index_t h = 0; h < pattern.extent(1); ++h)
            for (index_t q = pos - 2; q < pos; ++q)
                for (index_t k = 0; k < pos; ++k) rows_kept.values.push_back(pattern(0, h, q, k));
        mechlens::activation_cache subset;
        subset.put({mechlens::site_kind::attn_pattern, 0}, rows_kept);
        const auto got = mechlens::detect_heads(subset, tokens.view(), mechlens::head_kind::induction);
        const auto want = mechlens::detect_head(zeroed.view(), tokens.view(), mechlens::head_kind::induction);
        for (index_t h = 0; h < want.size(); ++h) CHECK(got(0, h) == Approx(want(h)).margin(1e-6));
    }
    CHECK_THROWS_AS(mechlens::detect_heads(mechlens::activation_cache{}, mechlens::tensor<std::int32_t, 2>({1, 3}).view(),
                                           mechlens::head_kind::induction),
                    std::invalid_argument);
}

namespace {

/// Three configs that between them leave out every optional row of the parameter table somewhere.
std::vector<mechlens::model_config> table_configs() {
    mechlens::model_config llama;
    llama.d_model = 16;
    llama.n_layers = 2;
    llama.n_heads = 4;
    llama.n_kv_heads = 2;
    llama.d_mlp = 24;
    llama.d_vocab = 13;
    llama.n_ctx = 8;
    llama.tied_unembed = false;
    mechlens::model_config gpt = llama;  // no norms, learned positions, plain GELU MLP, tied
    gpt.norm = mechlens::norm_kind::none;
    gpt.positions = mechlens::positional_kind::learned;
    gpt.mlp = mechlens::mlp_kind::plain_gelu;
    gpt.tied_unembed = true;
    mechlens::model_config attention_only = llama;
    attention_only.mlp = mechlens::mlp_kind::none;
    mechlens::model_config gpt2 = gpt;  // LayerNorm and biases everywhere, untied
    gpt2.norm = mechlens::norm_kind::layer;
    gpt2.linear_biases = true;
    gpt2.tied_unembed = false;
    mechlens::model_config classifier = gpt2;  // ReLU, bidirectional, 5 classes
    classifier.mlp = mechlens::mlp_kind::plain_relu;
    classifier.attention = mechlens::attention_dir::bidirectional;
    classifier.d_vocab_out = 5;
    return {llama, gpt, attention_only, gpt2, classifier};
}

}  // namespace

TEST_CASE("parameter table: every row reaches the layout, the views, validation and the gradients", "[parameters]") {
    using mechlens::parameter_id;
    for (const mechlens::model_config& c : table_configs()) {
        INFO("norm " << static_cast<int>(c.norm) << ", mlp " << static_cast<int>(c.mlp) << ", tied "
                     << c.tied_unembed);
        const auto layout = mechlens::parameter_layout(c);
        // The layout holds exactly the stored rows, once per block for block rows, with the table's shapes.
        std::size_t expected_entries = 0;
        for (const mechlens::parameter_traits& row : mechlens::parameter_table)
            if (mechlens::parameter_stored(row, c))
                expected_entries += row.per_block ? static_cast<std::size_t>(c.n_layers) : 1;
        REQUIRE(layout.size() == expected_entries);
        index_t offset = 0;
        for (const mechlens::parameter_entry& e : layout) {
            const mechlens::parameter_traits& row = mechlens::traits_of(e.id);
            CHECK(e.offset == offset);
            offset += e.size();
            CHECK(e.rank == row.rank);
            CHECK(e.shape == row.shape(c));
            CHECK(e.name == (row.per_block ? "blocks." + std::to_string(e.layer) + "." : std::string()) +
                                std::string(row.name));
        }

        // Every view of the weights points at its own entry of the flat buffer (a tied unembedding at the token
        // embedding's); every view without an entry is empty.
        mechlens::model_parameters params(c);
        for (std::size_t i = 0; i < params.flat().size(); ++i) params.flat()[i] = static_cast<float>(i);
        const mechlens::model_weights w = params.weights();
        std::size_t views = 0;
        mechlens::for_each_view(w, [&](parameter_id id, index_t layer, const auto& view) {
            ++views;
            const parameter_id home = id == parameter_id::unembed && c.tied_unembed ? parameter_id::token_embedding : id;
            const auto entry = std::find_if(layout.begin(), layout.end(), [&](const mechlens::parameter_entry& e) {
                return e.id == home && e.layer == layer;
            });
            if (entry == layout.end()) {
                CHECK(view.size() == 0);
                return;
            }
            REQUIRE(view.size() == entry->size());
            CHECK(view.data() == params.flat().data() + entry->offset);
        });
        std::size_t rows_per_block = 0, global_rows = 0;
        for (const mechlens::parameter_traits& row : mechlens::parameter_table)
            (row.per_block ? rows_per_block : global_rows) += 1;
        CHECK(views == global_rows + rows_per_block * static_cast<std::size_t>(c.n_layers));
        CHECK_NOTHROW(mechlens::validate_weights(c, w));

        // Validation names the row whose view has the wrong shape.
        for (const mechlens::parameter_entry& e : layout) {
            mechlens::model_weights broken = w;
            mechlens::for_each_view(broken, [&](parameter_id id, index_t layer, auto& view) {
                if (id != e.id || layer != e.layer) return;
                using view_type = std::remove_cvref_t<decltype(view)>;
                if constexpr (view_type::rank == 1)
                    view = view_type(view.data(), {view.extent(0) - 1});
                else
                    view = view_type(view.data(), {view.extent(0) - 1, view.extent(1)});
            });
            CHECK_THROWS_WITH(mechlens::validate_weights(c, broken),
                              Catch::Contains(std::string(mechlens::traits_of(e.id).name)));
        }

        // The gradient pass reaches every stored parameter: each entry's gradient is somewhere non-zero.
        const mechlens::loaded_model random = mechlens::random_model(c, 3, 0.5f);
        const mechlens::model_parameters model(c, random.weights);
        mechlens::model_parameters grads(c);
        const std::vector<std::int32_t> ids{1, 5, 7, 2, 11, 3, 9, 4};
        const mechlens::tensor_view<const std::int32_t, 2> tokens(ids.data(), {1, 8});
        // A classifier head has no next-token logits: the sum of all logits reaches every parameter just as well.
        const auto objective = c.vocab_out() == c.d_vocab
                                   ? mechlens::metric::cross_entropy()
                                   : mechlens::metric::custom([](mechlens::tensor_view<const float, 3> logits,
                                                                 mechlens::tensor_view<float, 3> d_logits) {
                                         float sum = 0.0f;
                                         for (index_t p = 0; p < logits.extent(1); ++p)
                                             for (index_t v = 0; v < logits.extent(2); ++v) {
                                                 sum += logits(0, p, v) * logits(0, p, v);
                                                 d_logits(0, p, v) = 2.0f * logits(0, p, v);
                                             }
                                         return sum;
                                     });
        (void)mechlens::forward_backward(model, tokens, objective, &grads);
        for (const mechlens::parameter_entry& e : grads.layout()) {
            INFO(e.name);
            const auto g = grads.flat().subspan(static_cast<std::size_t>(e.offset), static_cast<std::size_t>(e.size()));
            CHECK(std::any_of(g.begin(), g.end(), [](float x) { return x != 0.0f; }));
        }
    }
}

TEST_CASE("parameter table: GGUF names are unique and llama2.c sections are the file's order", "[parameters]") {
    std::set<std::string_view> gguf_names;
    std::set<int> sections;
    for (const mechlens::parameter_traits& row : mechlens::parameter_table) {
        CHECK(gguf_names.insert(row.gguf_name).second);
        if (row.llama2c_section >= 0) CHECK(sections.insert(row.llama2c_section).second);
    }
    // token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1 (gate), w2 (down), w3 (up), rms_final, -, -, wcls.
    using mechlens::parameter_id;
    CHECK(mechlens::traits_of(parameter_id::w_gate).llama2c_section == 7);
    CHECK(mechlens::traits_of(parameter_id::w_down).llama2c_section == 8);
    CHECK(mechlens::traits_of(parameter_id::w_up).llama2c_section == 9);
    CHECK(mechlens::traits_of(parameter_id::unembed).llama2c_section == 13);
}

}  // namespace test_training
