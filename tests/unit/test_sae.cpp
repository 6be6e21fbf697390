// Sparse autoencoders: every architecture's forward values, training loss terms and gradients (float and double)
// against tests/reference/sae_reference.py (PyTorch, written from SAELens's definitions); the splice's sites and
// input gradient against the same fixtures; SAELens folders written, read back and rejected when malformed.
#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "test_support.hpp"

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_sae {

using mechlens::index_t;

namespace {

const char* const fixture_names[] = {"standard",      "standard_norm", "topk",      "topk_rescale",
                                     "jumprelu_step", "jumprelu_tanh", "batchtopk", "topk_norm",
                                     "jumprelu_tanh_norm"};

std::vector<double> numbers(const mechlens::json_value& v) {
    std::vector<double> out;
    for (const mechlens::json_value& e : v.items()) out.push_back(e.as_double());
    return out;
}

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
    std::vector<T> out;
    for (double d : v) out.push_back(static_cast<T>(d));
    return out;
}

/// One fixture: options, weights, batch and expected values.
struct fixture {
    mechlens::json_value root;
    mechlens::sae_options options;
    mechlens::sae_training_options training;
    index_t d_in = 0, d_sae = 0, n = 0;

    explicit fixture(const std::string& name)
        : root(mechlens::read_json_file(mechlens_test::fixtures_dir() / "sae" / (name + ".json"))) {
        d_in = static_cast<index_t>(root.at("d_in").as_int64());
        d_sae = static_cast<index_t>(root.at("d_sae").as_int64());
        n = static_cast<index_t>(root.at("n").as_int64());
        const mechlens::json_value& o = root.at("options");
        options.error_term = false;
        options.architecture = *mechlens::parse_sae_architecture(o.at("architecture").as_string());
        options.apply_b_dec_to_input = o.at("apply_b_dec_to_input").as_bool();
        options.normalize_activations = *mechlens::parse_sae_normalization(o.at("normalize_activations").as_string());
        if (const auto* k = o.find("k")) options.k = k->as_double();
        if (const auto* r = o.find("rescale_acts_by_decoder_norm")) options.rescale_acts_by_decoder_norm = r->as_bool();
        if (const auto* v = o.find("l1_coefficient")) training.l1_coefficient = v->as_double();
        if (const auto* v = o.find("l0_coefficient")) training.l0_coefficient = v->as_double();
        if (const auto* v = o.find("bandwidth")) training.jumprelu_bandwidth = v->as_double();
        if (const auto* v = o.find("tanh_scale")) training.jumprelu_tanh_scale = v->as_double();
        if (const auto* v = o.find("sparsity"))
            training.sparsity = v->as_string() == "tanh" ? mechlens::jumprelu_sparsity::tanh : mechlens::jumprelu_sparsity::step;
        if (const auto* v = o.find("pre_act_loss_coefficient")) training.pre_act_loss_coefficient = v->as_double();
        if (const auto* v = o.find("aux_loss_coefficient")) training.aux_loss_coefficient = v->as_double();
        if (const auto* v = o.find("dead"))
            for (const auto& e : v->items()) training.dead.push_back(e.as_int64() != 0 ? 1 : 0);
    }
    template <class T>
    mechlens::basic_sae_weights<T> weights() const {
        const mechlens::json_value& w = root.at("weights");
        mechlens::basic_sae_weights<T> out{d_in, d_sae, cast<T>(numbers(w.at("W_enc"))), cast<T>(numbers(w.at("W_dec"))),
                                           cast<T>(numbers(w.at("b_enc"))), cast<T>(numbers(w.at("b_dec"))), {}};
        if (const auto* t = w.find("threshold")) out.threshold = cast<T>(numbers(*t));
        return out;
    }
    std::vector<double> expected(const char* group, const char* key) const { return numbers(root.at(group).at(key)); }
};

/// Largest |a - b| / max(1, |b|) over two sequences of the same length.
template <class T>
double max_error(const std::vector<T>& actual, const std::vector<double>& expected) {
    REQUIRE(actual.size() == expected.size());
    double worst = 0;
    for (std::size_t i = 0; i < actual.size(); ++i)
        worst = std::max(worst, std::abs(static_cast<double>(actual[i]) - expected[i]) / std::max(1.0, std::abs(expected[i])));
    return worst;
}

/// Compares a training pass with the fixture; returns the largest error.
template <class T>
double compare_training(const fixture& f) {
    const std::vector<T> x = cast<T>(numbers(f.root.at("x")));
    const auto pass = mechlens::sae_loss_and_gradients<T>(f.weights<T>(), f.options, f.training,
                                                          mechlens::tensor_view<const T, 2>(x.data(), {f.n, f.d_in}));
    double worst = 0;
    worst = std::max(worst, max_error(pass.sae_in, f.expected("forward", "sae_in")));
    worst = std::max(worst, max_error(pass.hidden_pre, f.expected("forward", "pre")));
    worst = std::max(worst, max_error(pass.acts, f.expected("forward", "acts")));
    worst = std::max(worst, max_error(pass.output, f.expected("forward", "output")));
    const mechlens::json_value& loss = f.root.at("loss");
    auto term = [&](const char* key) { return loss.find(key) ? loss.at(key).as_double() : 0.0; };
    worst = std::max(worst, max_error(std::vector<T>{pass.loss.mse, pass.loss.l1, pass.loss.l0, pass.loss.pre_act,
                                                     pass.loss.aux, pass.loss.total},
                                      {term("mse"), term("l1"), term("l0"), term("pre_act"), term("aux"),
                                       f.root.at("total").as_double()}));
    worst = std::max(worst, max_error(pass.grad.w_enc, f.expected("grad", "W_enc")));
    worst = std::max(worst, max_error(pass.grad.w_dec, f.expected("grad", "W_dec")));
    worst = std::max(worst, max_error(pass.grad.b_enc, f.expected("grad", "b_enc")));
    worst = std::max(worst, max_error(pass.grad.b_dec, f.expected("grad", "b_dec")));
    if (f.options.architecture == mechlens::sae_architecture::jumprelu)
        worst = std::max(worst, max_error(pass.grad.threshold, f.expected("grad", "threshold")));
    return worst;
}

/// Splice hooks that record what each site shows and change nothing.
class recording_hooks final : public mechlens::splice_hooks {
public:
    std::vector<std::vector<float>> seen = std::vector<std::vector<float>>(8);
    bool active(std::size_t) const noexcept override { return false; }
    void fire(std::size_t index, mechlens::tensor_view<float, 2> rows) override {
        seen[index].assign(rows.data(), rows.data() + rows.extent(0) * rows.extent(1));
    }
};

bool report() { return std::getenv("MECHLENS_SAE_REPORT") != nullptr; }

}  // namespace

TEST_CASE("sae: training losses and gradients match the PyTorch reference", "[sae]") {
    for (const char* name : fixture_names) {
        SECTION(name) {
            const fixture f(name);
            const double in_double = compare_training<double>(f);
            const double in_float = compare_training<float>(f);
            if (report()) std::printf("sae %-14s loss/grad max error: double %.3g, float %.3g\n", name, in_double, in_float);
            CHECK(in_double < 1e-9);
            CHECK(in_float < 1e-5);
        }
    }
}

TEST_CASE("sae: the splice's sites and input gradient match the PyTorch reference", "[sae]") {
    for (const char* name : fixture_names) {
        SECTION(name) {
            const fixture f(name);
            const mechlens::sae_splice sae(f.weights<float>(), f.options);
            const std::vector<float> x = cast<float>(numbers(f.root.at("x")));
            std::vector<float> out(x.size()), d_in(x.size());
            std::vector<float> probe = cast<float>(numbers(f.root.at("probe")));
            recording_hooks hooks;
            mechlens::splice_tape tape;
            sae.forward(mechlens::tensor_view<const float, 2>(x.data(), {f.n, f.d_in}),
                        mechlens::tensor_view<float, 2>(out.data(), {f.n, f.d_in}), hooks, tape);
            double worst = 0;
            worst = std::max(worst, max_error(hooks.seen[mechlens::sae_splice::input], numbers(f.root.at("x"))));
            worst = std::max(worst, max_error(hooks.seen[mechlens::sae_splice::acts_pre], f.expected("forward", "pre")));
            worst = std::max(worst, max_error(hooks.seen[mechlens::sae_splice::acts_post], f.expected("forward", "acts")));
            worst = std::max(worst, max_error(hooks.seen[mechlens::sae_splice::recons], f.expected("forward", "recons")));
            worst = std::max(worst, max_error(out, f.expected("forward", "output")));
            sae.backward(tape, mechlens::tensor_view<float, 2>(probe.data(), {f.n, f.d_in}),
                         mechlens::tensor_view<float, 2>(d_in.data(), {f.n, f.d_in}), hooks);
            worst = std::max(worst, max_error(d_in, numbers(f.root.at("d_x"))));
            if (report()) std::printf("sae %-14s splice max error: %.3g\n", name, worst);
            CHECK(worst < 1e-5);

            // With the error term the output is the input while nothing intervenes.
            mechlens::sae_options with_error = f.options;
            with_error.error_term = true;
            const mechlens::sae_splice spliced(f.weights<float>(), with_error);
            CHECK(spliced.sites().size() == 6);
            spliced.forward(mechlens::tensor_view<const float, 2>(x.data(), {f.n, f.d_in}),
                            mechlens::tensor_view<float, 2>(out.data(), {f.n, f.d_in}), hooks, tape);
            CHECK(max_error(out, numbers(f.root.at("x"))) < 1e-5);
        }
    }
}

TEST_CASE("sae: batchtopk keeps int(k * rows) latents and its threshold update follows SAELens", "[sae]") {
    const fixture f("batchtopk");
    const std::vector<double> acts = f.expected("forward", "acts");
    CHECK(std::count_if(acts.begin(), acts.end(), [](double a) { return a != 0.0; }) == 12);  // int(2.4 * 5)
    double smallest = 1e300;
    for (double a : acts)
        if (a > 0) smallest = std::min(smallest, a);
    CHECK(mechlens::batchtopk_threshold_update(0.5, acts, 0.01) == Approx(0.99 * 0.5 + 0.01 * smallest));
    CHECK(mechlens::batchtopk_threshold_update(0.5, std::vector<double>(4, 0.0), 0.01) == 0.5);
}

namespace {

std::filesystem::path scratch(const std::string& name) {
    const std::filesystem::path dir = mechlens_test::scratch_dir() / "sae" / name;
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    return dir;
}

void write_text(const std::filesystem::path& path, const std::string& text) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

/// The message of the format_error `read_saelens_folder(dir)` throws (empty when it does not throw).
std::string folder_error(const std::filesystem::path& dir) {
    try {
        (void)mechlens::read_saelens_folder(dir);
    } catch (const mechlens::format_error& e) {
        return e.what();
    }
    return {};
}

}  // namespace

TEST_CASE("sae: SAELens folders round trip every architecture", "[sae]") {
    for (const char* name : fixture_names) {
        SECTION(name) {
            const fixture f(name);
            mechlens::saelens_sae sae{f.weights<float>(), f.options, {}};
            sae.metadata.hook_name = "blocks.1.hook_resid_post";
            sae.metadata.model_name = "stories260K";
            if (f.options.architecture == mechlens::sae_architecture::batchtopk) {
                CHECK_THROWS_AS(mechlens::write_saelens_folder(scratch(name), sae), std::invalid_argument);
                sae = mechlens::batchtopk_as_jumprelu(sae, 0.25f);
            }
            const std::filesystem::path dir = scratch(name);
            mechlens::write_saelens_folder(dir, sae);
            const mechlens::saelens_sae back = mechlens::read_saelens_folder(dir);
            CHECK(back.weights.d_in == f.d_in);
            CHECK(back.weights.d_sae == f.d_sae);
            CHECK(back.weights.w_enc == sae.weights.w_enc);
            CHECK(back.weights.w_dec == sae.weights.w_dec);
            CHECK(back.weights.b_enc == sae.weights.b_enc);
            CHECK(back.weights.b_dec == sae.weights.b_dec);
            CHECK(back.weights.threshold == sae.weights.threshold);
            CHECK(back.options.architecture == sae.options.architecture);
            CHECK(back.options.k == sae.options.k);
            CHECK(back.options.apply_b_dec_to_input == sae.options.apply_b_dec_to_input);
            CHECK(back.options.normalize_activations == sae.options.normalize_activations);
            CHECK(back.options.rescale_acts_by_decoder_norm == sae.options.rescale_acts_by_decoder_norm);
            CHECK(back.metadata.hook_name == "blocks.1.hook_resid_post");
            CHECK(back.metadata.model_name == "stories260K");
            CHECK_FALSE(back.metadata.hook_head_index.has_value());
        }
    }
}

TEST_CASE("sae: SAELens configs of older versions are read", "[sae]") {
    const mechlens::json_value cfg = mechlens::parse_json(
        R"({"d_in": 6, "d_sae": 12, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 2},
            "hook_point": "blocks.0.hook_resid_pre", "hook_point_head_index": 3, "normalize_activations": true})",
        "cfg.json");
    const mechlens::saelens_sae sae = mechlens::read_saelens_config(cfg);
    CHECK(sae.options.architecture == mechlens::sae_architecture::topk);
    CHECK(sae.options.k == 2.0);
    CHECK(sae.options.apply_b_dec_to_input);
    CHECK(sae.options.normalize_activations == mechlens::sae_normalization::expected_average_only_in);
    CHECK(sae.metadata.hook_name == "blocks.0.hook_resid_pre");
    CHECK(sae.metadata.hook_head_index == 3);
}

TEST_CASE("sae: folding the activation scaling factor keeps the SAE's function", "[sae]") {
    // Before folding, the data pipeline feeds x * factor and the reconstruction is read divided by factor; after
    // folding, the SAE reads x itself.
    const fixture f("standard");
    mechlens::saelens_sae sae{f.weights<float>(), f.options, {}};
    sae.options.normalize_activations = mechlens::sae_normalization::expected_average_only_in;
    const float factor = 1.75f;
    const std::vector<float> x = cast<float>(numbers(f.root.at("x")));
    std::vector<float> scaled = x;
    for (float& v : scaled) v *= factor;
    std::vector<float> before(x.size()), after(x.size());
    recording_hooks hooks;
    mechlens::splice_tape tape;
    mechlens::sae_splice(sae.weights, sae.options)
        .forward(mechlens::tensor_view<const float, 2>(scaled.data(), {f.n, f.d_in}),
                 mechlens::tensor_view<float, 2>(before.data(), {f.n, f.d_in}), hooks, tape);
    mechlens::fold_activation_scaling_factor(sae, factor);
    CHECK(sae.options.normalize_activations == mechlens::sae_normalization::none);
    mechlens::sae_splice(sae.weights, sae.options)
        .forward(mechlens::tensor_view<const float, 2>(x.data(), {f.n, f.d_in}),
                 mechlens::tensor_view<float, 2>(after.data(), {f.n, f.d_in}), hooks, tape);
    for (std::size_t i = 0; i < x.size(); ++i) CHECK(after[i] == Approx(before[i] / factor).margin(1e-5));
}

TEST_CASE("sae: malformed SAELens folders are one-line format errors naming the file", "[sae]") {
    const fixture f("jumprelu_step");
    const mechlens::saelens_sae good{f.weights<float>(), f.options, {"blocks.0.hook_resid_post", {}, {}, "float32"}};
    auto fresh = [&](const std::string& name) {
        const std::filesystem::path dir = scratch(name);
        mechlens::write_saelens_folder(dir, good);
        return dir;
    };
    auto check_error = [](const std::filesystem::path& dir, const std::string& file, const std::string& words) {
        const std::string message = folder_error(dir);
        INFO(message);
        CHECK(message.find(file) != std::string::npos);
        CHECK(message.find(words) != std::string::npos);
        CHECK(message.find('\n') == std::string::npos);
    };
    const std::string cfg_text = mechlens::saelens_config_text(good);
    auto with_cfg = [&](const std::string& name, const std::string& from, const std::string& to) {
        const std::filesystem::path dir = fresh(name);
        std::string text = cfg_text;
        const std::size_t at = text.find(from);
        REQUIRE(at != std::string::npos);
        text.replace(at, from.size(), to);
        write_text(dir / "cfg.json", text);
        return dir;
    };
    check_error(with_cfg("arch", "\"jumprelu\"", "\"gated\""), "cfg.json", "unknown architecture \"gated\"");
    check_error(with_cfg("d_in_type", "\"d_in\": 6", "\"d_in\": \"6\""), "cfg.json", "expected a number");
    check_error(with_cfg("d_in_missing", "\"d_in\": 6,", ""), "cfg.json", "missing key \"d_in\"");
    check_error(with_cfg("d_sae_wrong", "\"d_sae\": 12", "\"d_sae\": 13"), "sae_weights.safetensors",
                "tensor 'W_enc' has shape (6, 12), but cfg.json implies (6, 13)");
    check_error(with_cfg("layer_norm", "\"normalize_activations\": \"none\"", "\"normalize_activations\": \"layer_norm\""),
                "cfg.json", "is not supported");
    check_error(with_cfg("bool_type", "\"apply_b_dec_to_input\": true", "\"apply_b_dec_to_input\": 1"), "cfg.json",
                "expected a boolean");
    check_error(with_cfg("not_json", "{", "["), "cfg.json", "");
    check_error(with_cfg("topk_without_k", "\"jumprelu\"", "\"topk\""), "cfg.json", "missing key \"k\"");
    {  // a jumprelu file without its threshold
        const std::filesystem::path dir = fresh("no_threshold");
        const mechlens::sae_weights& w = good.weights;
        mechlens::write_safetensors(dir / "sae_weights.safetensors",
                                    {{"W_enc", {w.d_in, w.d_sae}, w.w_enc.data()},
                                     {"W_dec", {w.d_sae, w.d_in}, w.w_dec.data()},
                                     {"b_enc", {w.d_sae}, w.b_enc.data()},
                                     {"b_dec", {w.d_in}, w.b_dec.data()}});
        check_error(dir, "sae_weights.safetensors", "missing tensor 'threshold'");
        // ... and a standard config over a file with one.
        const std::filesystem::path extra = with_cfg("extra_tensor", "\"jumprelu\"", "\"standard\"");
        check_error(extra, "sae_weights.safetensors", "unexpected tensor 'threshold'");
    }
    {  // a missing weights file
        const std::filesystem::path dir = fresh("no_weights");
        std::filesystem::remove(dir / "sae_weights.safetensors");
        CHECK_THROWS_AS(mechlens::read_saelens_folder(dir), mechlens::format_error);
    }
}

TEST_CASE("sae: inconsistent weights and options are rejected", "[sae]") {
    const fixture f("topk");
    mechlens::sae_options o = f.options;
    o.k = 0;
    CHECK_THROWS_AS(mechlens::sae_splice(f.weights<float>(), o), mechlens::shape_error);
    o.k = 2.5;
    CHECK_THROWS_AS(mechlens::sae_splice(f.weights<float>(), o), mechlens::shape_error);
    o = f.options;
    o.architecture = mechlens::sae_architecture::jumprelu;  // no threshold
    CHECK_THROWS_AS(mechlens::sae_splice(f.weights<float>(), o), mechlens::shape_error);
    const std::vector<double> x(7, 0.0);
    CHECK_THROWS_AS(mechlens::sae_loss_and_gradients<double>(f.weights<double>(), f.options, f.training,
                                                              mechlens::tensor_view<const double, 2>(x.data(), {1, 7})),
                    mechlens::shape_error);
}

}  // namespace test_sae
