// Kernels: every SIMD kernel against its scalar reference (which evaluates the textbook formula in double and is
// itself pinned to hand-computed values), on lengths that are not multiples of any SIMD width, through misaligned
// pointers, in place and out of place, plus extreme inputs, rotary-embedding identities and the linear layers.
//
// Tolerances are stated per kernel as |simd - reference| <= rel * |reference| + abs, where the reference is the
// double result rounded to float; they cover a few float roundings plus the error of xsimd's exp/erfc (about
// 1e-7 and 2e-6 relative) and of float accumulation in reductions. Set MECHLENS_PRINT_ERRORS=1 to print how much
// of each tolerance a comparison uses.

#include <mechlens/mechlens.hpp>

#include "test_support.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

// Everything below is in this file's own namespace, so that unity builds (several test files in one
// translation unit) see no clashes between the helpers of different files.
namespace test_kernels {

namespace {

using mechlens::index_t;
namespace kn = mechlens::kernels;
namespace ref = mechlens::kernels::reference;

/// Lengths 1..70 plus two long ones, none of the long ones a multiple of 8 or 16.
std::vector<index_t> test_lengths() {
    std::vector<index_t> lengths(70);
    std::iota(lengths.begin(), lengths.end(), index_t{1});
    lengths.push_back(1000);
    lengths.push_back(4099);
    return lengths;
}

/// A float buffer whose data() sits one float past a 64-byte boundary, so it is misaligned for every SIMD width.
class misaligned_buffer {
public:
    explicit misaligned_buffer(index_t n) : storage_({n + 1}), n_(n) {}
    float* data() { return storage_.data() + 1; }
    const float* data() const { return storage_.data() + 1; }
    float& operator[](index_t i) { return data()[i]; }
    index_t size() const { return n_; }
    std::vector<float> copy() const { return std::vector<float>(data(), data() + n_); }

private:
    mechlens::tensor<float, 1> storage_;
    index_t n_;
};

/// Fills p[0..n) with uniform values in [lo, hi).
void fill_uniform(float* p, index_t n, float lo, float hi, std::mt19937& rng) {
    std::uniform_real_distribution<float> dist(lo, hi);
    for (index_t i = 0; i < n; ++i) p[i] = dist(rng);
}

/// Allowed |got - want| = rel * |want| + abs.
struct tolerance {
    double rel;
    double abs;
};

/// Requires got[i] close to want[i] for all i, reporting the worst element; NaN or inf in `got` always fails.
void require_close(const float* got, const float* want, index_t n, tolerance tol, const std::string& what) {
    double worst_ratio = 0.0;
    index_t worst = 0;
    double worst_rel = 0.0;
    for (index_t i = 0; i < n; ++i) {
        const double g = static_cast<double>(got[i]), w = static_cast<double>(want[i]);
        const double err = std::fabs(g - w);
        const double ratio = std::isfinite(g) ? err / (tol.rel * std::fabs(w) + tol.abs) : HUGE_VAL;
        if (!(ratio <= worst_ratio)) {
            worst_ratio = ratio;
            worst = i;
        }
        if (w != 0.0) worst_rel = std::max(worst_rel, err / std::fabs(w));
    }
    if (std::getenv("MECHLENS_PRINT_ERRORS"))
        std::printf("%-28s n=%-5td worst ratio %.3g, max rel %.3g\n", what.c_str(), n, worst_ratio, worst_rel);
    INFO(what << ", n = " << n << ": element " << worst << " is " << got[worst] << ", want " << want[worst] << " (rel "
              << tol.rel << ", abs " << tol.abs << ")");
    REQUIRE(worst_ratio <= 1.0);
}

/// Requires got and want bitwise equal (same arithmetic, e.g. in place versus out of place).
void require_identical(const float* got, const float* want, index_t n, const std::string& what) {
    INFO(what << ", n = " << n);
    REQUIRE(std::memcmp(got, want, static_cast<std::size_t>(n) * sizeof(float)) == 0);
}

/// Checks a unary element-wise kernel (out, x, n) against its reference, out of place and in place.
template <class Simd, class Reference>
void check_unary(Simd simd, Reference reference, float lo, float hi, tolerance tol, const std::string& name) {
    std::mt19937 rng(1234);
    for (index_t n : test_lengths()) {
        misaligned_buffer x(n), out(n);
        fill_uniform(x.data(), n, lo, hi, rng);
        std::vector<float> want(static_cast<std::size_t>(n));
        reference(want.data(), x.data(), n);
        simd(out.data(), x.data(), n);
        require_close(out.data(), want.data(), n, tol, name);
        simd(x.data(), x.data(), n);
        require_identical(x.data(), out.data(), n, name + " in place");
    }
}

/// Checks a binary element-wise kernel (out, a, b, n) against its reference, out of place and in place on `a`.
template <class Simd, class Reference>
void check_binary(Simd simd, Reference reference, float lo, float hi, tolerance tol, const std::string& name) {
    std::mt19937 rng(4321);
    for (index_t n : test_lengths()) {
        misaligned_buffer a(n), b(n), out(n);
        fill_uniform(a.data(), n, lo, hi, rng);
        fill_uniform(b.data(), n, lo, hi, rng);
        std::vector<float> want(static_cast<std::size_t>(n));
        reference(want.data(), a.data(), b.data(), n);
        simd(out.data(), a.data(), b.data(), n);
        require_close(out.data(), want.data(), n, tol, name);
        simd(a.data(), a.data(), b.data(), n);
        require_identical(a.data(), out.data(), n, name + " in place");
    }
}

}  // namespace

TEST_CASE("kernels: scalar references match hand-computed values", "[kernels]") {
    // Values from the closed forms in double precision (Python's math module).
    float one = 1.0f, y = 0.0f;
    ref::gelu_erf(&y, &one, 1);
    CHECK(y == Approx(0.8413447460685429).epsilon(1e-7));
    ref::gelu_tanh(&y, &one, 1);
    CHECK(y == Approx(0.8411919906082768).epsilon(1e-7));
    ref::silu(&y, &one, 1);
    CHECK(y == Approx(0.7310585786300049).epsilon(1e-7));
    const float minus_two = -2.0f;
    ref::silu(&y, &minus_two, 1);
    CHECK(y == Approx(-0.23840584404423515).epsilon(1e-7));

    const float v[2] = {3.0f, 4.0f};
    float normed[2];
    CHECK(ref::rmsnorm(normed, v, nullptr, 2, 0.0f) == Approx(3.5355339059327378).epsilon(1e-7));  // sqrt(12.5)
    CHECK(normed[0] == Approx(0.848528137423857).epsilon(1e-7));
    CHECK(normed[1] == Approx(1.131370849898476).epsilon(1e-7));

    const float w[4] = {1.0f, 2.0f, 3.0f, 4.0f};
    const float gain[4] = {2.0f, 2.0f, 2.0f, 2.0f}, shift[4] = {1.0f, 1.0f, 1.0f, 1.0f};
    float ln[4];
    CHECK(ref::layernorm(ln, w, gain, shift, 4, 0.0f) == Approx(1.118033988749895).epsilon(1e-7));  // sqrt(1.25)
    CHECK(ln[0] == Approx(1.0 - 2.0 * 1.3416407864998738).epsilon(1e-6));
    CHECK(ln[3] == Approx(1.0 + 2.0 * 1.3416407864998738).epsilon(1e-6));

    float probs[3] = {0.0f, std::log(2.0f), std::log(3.0f)};
    ref::softmax(probs, 3);
    CHECK(probs[0] == Approx(1.0 / 6.0).epsilon(1e-6));
    CHECK(probs[1] == Approx(2.0 / 6.0).epsilon(1e-6));
    CHECK(probs[2] == Approx(3.0 / 6.0).epsilon(1e-6));

    const float a[3] = {1.0f, 2.0f, 3.0f}, b[3] = {4.0f, 5.0f, 6.0f};
    CHECK(ref::dot(a, b, 3) == 32.0f);

    float pair[2] = {1.0f, 0.0f};
    const float c = 0.0f, s = 1.0f;  // a quarter turn
    ref::rope_adjacent(pair, &c, &s, 2);
    CHECK(pair[0] == 0.0f);
    CHECK(pair[1] == 1.0f);
}

TEST_CASE("kernels: activations match the references", "[kernels]") {
    check_unary(kn::silu, ref::silu, -12.0f, 12.0f, {1e-6, 1e-12}, "silu");
    // In GELU's negative tail the value x e^{-2u} carries the float rounding of 2u amplified by |2u| (up to ~90),
    // so outputs below ~1e-3 get an absolute allowance instead.
    check_unary(kn::gelu_tanh, ref::gelu_tanh, -12.0f, 12.0f, {1e-6, 1e-9}, "gelu_tanh");
    // erfc is the least accurate xsimd function used (about 2e-6 relative deep in the tail, where GELU is tiny).
    check_unary(kn::gelu_erf, ref::gelu_erf, -12.0f, 12.0f, {1e-6, 1e-9}, "gelu_erf");
    check_binary(kn::silu_mul, ref::silu_mul, -12.0f, 12.0f, {1e-6, 1e-12}, "silu_mul");
}

TEST_CASE("kernels: vector operations match the references", "[kernels]") {
    check_binary(kn::add, ref::add, -4.0f, 4.0f, {1e-7, 1e-6}, "add");

    std::mt19937 rng(99);
    for (index_t n : test_lengths()) {
        misaligned_buffer x(n), y(n);
        fill_uniform(x.data(), n, -4.0f, 4.0f, rng);
        fill_uniform(y.data(), n, -4.0f, 4.0f, rng);

        std::vector<float> want = x.copy();
        ref::scale(want.data(), -1.7f, n);
        misaligned_buffer scaled(n);
        std::copy_n(x.data(), n, scaled.data());
        kn::scale(scaled.data(), -1.7f, n);
        require_close(scaled.data(), want.data(), n, {1e-7, 0.0}, "scale");

        // y + a x can cancel, so the absolute part scales with the operands' size (|y| + |a x| <= 10.8).
        want = y.copy();
        ref::axpy(want.data(), 0.7f, x.data(), n);
        kn::axpy(y.data(), 0.7f, x.data(), n);
        require_close(y.data(), want.data(), n, {1e-7, 10.8 * 1.2e-7}, "axpy");

        // Float accumulation: allow 1e-6 of sum |a_i b_i| (about 8 float roundings of the whole magnitude).
        double magnitude = 0.0;
        for (index_t i = 0; i < n; ++i) magnitude += std::fabs(static_cast<double>(x[i]) * static_cast<double>(y[i]));
        const float got = kn::dot(x.data(), y.data(), n), expected = ref::dot(x.data(), y.data(), n);
        require_close(&got, &expected, 1, {0.0, 1e-6 * magnitude}, "dot");
    }
}

TEST_CASE("kernels: norms match the references", "[kernels]") {
    std::mt19937 rng(7);
    for (index_t n : test_lengths()) {
        misaligned_buffer x(n), weight(n), bias(n), out(n);
        // An offset mean makes layernorm's centring matter.
        fill_uniform(x.data(), n, 1.0f, 5.0f, rng);
        fill_uniform(weight.data(), n, 0.5f, 1.5f, rng);
        fill_uniform(bias.data(), n, -1.0f, 1.0f, rng);
        std::vector<float> want(static_cast<std::size_t>(n));
        const float eps = 1e-5f;

        const float rms = kn::rms_scale(x.data(), n, eps), rms_ref = ref::rms_scale(x.data(), n, eps);
        require_close(&rms, &rms_ref, 1, {1e-6, 0.0}, "rms_scale");

        for (const float* g : {static_cast<const float*>(weight.data()), static_cast<const float*>(nullptr)}) {
            const float s = kn::rmsnorm(out.data(), x.data(), g, n, eps);
            const float s_ref = ref::rmsnorm(want.data(), x.data(), g, n, eps);
            require_close(&s, &s_ref, 1, {1e-6, 0.0}, "rmsnorm scale");
            require_close(out.data(), want.data(), n, {2e-6, 0.0}, "rmsnorm");
        }
        std::vector<float> in_place = x.copy();
        kn::rmsnorm(in_place.data(), in_place.data(), weight.data(), n, eps);
        kn::rmsnorm(out.data(), x.data(), weight.data(), n, eps);
        require_identical(in_place.data(), out.data(), n, "rmsnorm in place");

        // Outputs near zero (x near the mean) carry the rounding of the mean, hence the absolute part.
        for (int variant = 0; variant < 4; ++variant) {
            const float* g = variant & 1 ? weight.data() : nullptr;
            const float* b = variant & 2 ? bias.data() : nullptr;
            const float s = kn::layernorm(out.data(), x.data(), g, b, n, eps);
            const float s_ref = ref::layernorm(want.data(), x.data(), g, b, n, eps);
            require_close(&s, &s_ref, 1, {2e-6, 0.0}, "layernorm scale");
            require_close(out.data(), want.data(), n, {2e-6, 2e-6}, "layernorm variant " + std::to_string(variant));
        }
        in_place = x.copy();
        kn::layernorm(in_place.data(), in_place.data(), weight.data(), bias.data(), n, eps);
        kn::layernorm(out.data(), x.data(), weight.data(), bias.data(), n, eps);
        require_identical(in_place.data(), out.data(), n, "layernorm in place");
    }
}

TEST_CASE("kernels: softmax matches the reference and handles extremes", "[kernels]") {
    std::mt19937 rng(11);
    SECTION("random rows: 2e-6 relative (x - max is rounded to float before exp)") {
        for (index_t n : test_lengths()) {
            misaligned_buffer x(n);
            fill_uniform(x.data(), n, -10.0f, 10.0f, rng);
            std::vector<float> want = x.copy();
            ref::softmax(want.data(), n);
            kn::softmax(x.data(), n);
            require_close(x.data(), want.data(), n, {2e-6, 1e-12}, "softmax");
        }
    }
    SECTION("rows with +-1e4 stay finite and sum to one") {
        for (index_t n : test_lengths()) {
            misaligned_buffer x(n);
            for (index_t i = 0; i < n; ++i) x[i] = i % 3 == 0 ? 1e4f : (i % 3 == 1 ? -1e4f : 0.0f);
            kn::softmax(x.data(), n);
            const index_t winners = (n + 2) / 3;  // the entries equal to 1e4 share all the mass
            double sum = 0.0;
            for (index_t i = 0; i < n; ++i) {
                REQUIRE(std::isfinite(x[i]));
                sum += static_cast<double>(x[i]);
                if (i % 3 == 0)
                    REQUIRE(x[i] == Approx(1.0 / static_cast<double>(winners)).epsilon(1e-6));
                else
                    REQUIRE(x[i] == 0.0f);
            }
            REQUIRE(sum == Approx(1.0).epsilon(1e-6));
        }
    }
    SECTION("masked softmax: the valid prefix is a softmax, the tail is zero") {
        for (index_t n : test_lengths()) {
            misaligned_buffer x(n);
            for (index_t valid : {index_t{1}, (n + 1) / 2, n}) {
                fill_uniform(x.data(), n, -10.0f, 10.0f, rng);
                std::vector<float> want = x.copy();
                ref::masked_softmax(want.data(), valid, n);
                kn::masked_softmax(x.data(), valid, n);
                require_close(x.data(), want.data(), n, {2e-6, 1e-12}, "masked_softmax");
                for (index_t i = valid; i < n; ++i) REQUIRE(x[i] == 0.0f);
                REQUIRE(std::accumulate(x.data(), x.data() + valid, 0.0) == Approx(1.0).epsilon(1e-6));
            }
        }
        float row[4] = {1.0f, 2.0f, 3.0f, 4.0f};
        CHECK_THROWS_AS(kn::masked_softmax(row, 0, 4), std::invalid_argument);
        CHECK_THROWS_AS(kn::masked_softmax(row, 5, 4), std::invalid_argument);
        CHECK_THROWS_AS(ref::masked_softmax(row, 0, 4), std::invalid_argument);
    }
}

TEST_CASE("kernels: activations stay finite and correct at extreme inputs", "[kernels]") {
    // Padded to 11 so both the SIMD body and the tail see extremes.
    const std::vector<float> x = {-1e4f, -80.0f, -20.0f, -1.0f, 0.0f, 1.0f, 20.0f, 80.0f, 1e4f, 1e4f, -1e4f};
    const auto n = static_cast<index_t>(x.size());
    std::vector<float> got(x.size()), want(x.size());
    using kernel = void (*)(float*, const float*, index_t);
    const std::vector<std::pair<kernel, kernel>> pairs = {
        {kn::silu, ref::silu}, {kn::gelu_tanh, ref::gelu_tanh}, {kn::gelu_erf, ref::gelu_erf}};
    for (const auto& [simd, reference] : pairs) {
        simd(got.data(), x.data(), n);
        reference(want.data(), x.data(), n);
        for (std::size_t i = 0; i < x.size(); ++i) {
            INFO("x = " << x[i] << ", simd " << got[i] << ", reference " << want[i]);
            REQUIRE(std::isfinite(got[i]));
            REQUIRE(std::isfinite(want[i]));
            REQUIRE(std::fabs(static_cast<double>(got[i]) - static_cast<double>(want[i])) <=
                    1e-6 * std::fabs(static_cast<double>(want[i])) + 1e-30);
            if (x[i] >= 20.0f) REQUIRE(got[i] == x[i]);               // the gate is fully open
            if (x[i] <= -80.0f) REQUIRE(std::fabs(got[i]) < 1e-30f);  // and fully shut
        }
    }
    float big = 1e4f, out = 0.0f;
    kn::silu(&out, &big, 1);
    CHECK(out == 1e4f);
    const float gate[3] = {1e4f, -1e4f, 80.0f}, up[3] = {2.0f, 3.0f, -1.0f};
    float swiglu[3];
    kn::silu_mul(swiglu, gate, up, 3);
    CHECK(swiglu[0] == 2e4f);
    CHECK(std::fabs(swiglu[1]) == 0.0f);
    CHECK(swiglu[2] == -80.0f);
}

TEST_CASE("kernels: rmsnorm and layernorm of degenerate rows", "[kernels]") {
    for (index_t n : {index_t{1}, index_t{7}, index_t{64}, index_t{67}}) {
        std::vector<float> zeros(static_cast<std::size_t>(n), 0.0f), out(static_cast<std::size_t>(n), 1.0f);
        std::vector<float> weight(static_cast<std::size_t>(n), 3.0f), bias(static_cast<std::size_t>(n), 0.25f);
        const float eps = 1e-6f;
        REQUIRE(kn::rmsnorm(out.data(), zeros.data(), weight.data(), n, eps) == Approx(std::sqrt(1e-6)).epsilon(1e-6));
        for (float v : out) REQUIRE(v == 0.0f);
        // A constant row has zero variance: layernorm returns sqrt(eps) and outputs exactly the bias.
        std::vector<float> constant(static_cast<std::size_t>(n), 2.5f);
        REQUIRE(kn::layernorm(out.data(), constant.data(), weight.data(), bias.data(), n, eps) ==
                Approx(std::sqrt(1e-6)).epsilon(1e-6));
        for (float v : out) REQUIRE(v == 0.25f);
    }
}

TEST_CASE("kernels: rope tables hold cos and sin of p * theta^(-2i/d)", "[kernels]") {
    const index_t n_ctx = 37, d_head = 64;
    const float theta = 10000.0f;
    const kn::rope_tables tables = kn::make_rope_tables(n_ctx, d_head, theta);
    REQUIRE(tables.cos.extent(0) == n_ctx);
    REQUIRE(tables.cos.extent(1) == d_head / 2);
    REQUIRE(tables.sin.extent(1) == d_head / 2);
    for (index_t p = 0; p < n_ctx; ++p)
        for (index_t i = 0; i < d_head / 2; ++i) {
            const double angle = static_cast<double>(p) * std::pow(10000.0, -2.0 * static_cast<double>(i) / 64.0);
            REQUIRE(std::fabs(static_cast<double>(tables.cos(p, i)) - std::cos(angle)) <= 6e-8);
            REQUIRE(std::fabs(static_cast<double>(tables.sin(p, i)) - std::sin(angle)) <= 6e-8);
        }
    CHECK(tables.cos(0, 5) == 1.0f);
    CHECK(tables.sin(1, 0) == static_cast<float>(std::sin(1.0)));
    CHECK_THROWS_AS(kn::make_rope_tables(8, 63, theta), mechlens::shape_error);
    CHECK_THROWS_AS(kn::make_rope_tables(8, 0, theta), mechlens::shape_error);
    CHECK_THROWS_AS(kn::make_rope_tables(8, 64, 0.0f), std::invalid_argument);
}

TEST_CASE("kernels: rope rotations", "[kernels]") {
    std::mt19937 rng(5);
    const index_t n_ctx = 50;
    for (index_t d_head = 2; d_head <= 140; d_head += 2) {
        const kn::rope_tables tables = kn::make_rope_tables(n_ctx, d_head, 10000.0f);
        const index_t half = d_head / 2;
        const index_t pos = (d_head * 7) % n_ctx;
        const float* c = &tables.cos(pos, 0);
        const float* s = &tables.sin(pos, 0);
        misaligned_buffer head(d_head), neg_sin(half);
        for (index_t i = 0; i < half; ++i) neg_sin[i] = -s[i];
        fill_uniform(head.data(), d_head, -3.0f, 3.0f, rng);
        const std::vector<float> original = head.copy();

        // Against the reference, both layouts: a rotation is a few roundings of O(|x|) values.
        std::vector<float> want = original;
        ref::rope_adjacent(want.data(), c, s, d_head);
        kn::rope_adjacent(head.data(), c, s, d_head);
        require_close(head.data(), want.data(), d_head, {1e-6, 1e-6}, "rope_adjacent");
        std::vector<float> split = original;
        want = original;
        ref::rope_split_halves(want.data(), c, s, d_head);
        kn::rope_split_halves(split.data(), c, s, d_head);
        require_close(split.data(), want.data(), d_head, {1e-6, 1e-6}, "rope_split_halves");

        // Each pair keeps its length.
        for (index_t i = 0; i < half; ++i) {
            const double before = static_cast<double>(
                std::hypot(original[static_cast<std::size_t>(2 * i)], original[static_cast<std::size_t>(2 * i + 1)]));
            const double after = static_cast<double>(std::hypot(head[2 * i], head[2 * i + 1]));
            REQUIRE(after == Approx(before).epsilon(1e-6).margin(1e-6));
        }

        // Rotating back by the negative angle restores the input.
        kn::rope_adjacent(head.data(), c, neg_sin.data(), d_head);
        require_close(head.data(), original.data(), d_head, {1e-6, 2e-6}, "rope_adjacent round trip");
        kn::rope_split_halves(split.data(), c, neg_sin.data(), d_head);
        require_close(split.data(), original.data(), d_head, {1e-6, 2e-6}, "rope_split_halves round trip");

        // The layouts agree once dims are permuted: adjacent pair (2i, 2i+1) is split pair (i, i + half).
        std::vector<float> adjacent = original, permuted(static_cast<std::size_t>(d_head));
        for (index_t i = 0; i < half; ++i) {
            permuted[static_cast<std::size_t>(i)] = adjacent[static_cast<std::size_t>(2 * i)];
            permuted[static_cast<std::size_t>(i + half)] = adjacent[static_cast<std::size_t>(2 * i + 1)];
        }
        kn::rope_adjacent(adjacent.data(), c, s, d_head);
        kn::rope_split_halves(permuted.data(), c, s, d_head);
        for (index_t i = 0; i < half; ++i) {
            INFO("d_head " << d_head << ", pair " << i);
            REQUIRE(permuted[static_cast<std::size_t>(i)] ==
                    Approx(adjacent[static_cast<std::size_t>(2 * i)]).epsilon(1e-7).margin(1e-7));
            REQUIRE(permuted[static_cast<std::size_t>(i + half)] ==
                    Approx(adjacent[static_cast<std::size_t>(2 * i + 1)]).epsilon(1e-7).margin(1e-7));
        }
    }
}

namespace {

/// Fills a (rows, cols) tensor with uniform values in [-1, 1).
mechlens::tensor<float, 2> random_matrix(index_t rows, index_t cols, std::mt19937& rng) {
    mechlens::tensor<float, 2> m({rows, cols});
    fill_uniform(m.data(), m.size(), -1.0f, 1.0f, rng);
    return m;
}

/// Requires y close to the naive product: float accumulation error within 1e-5 of sum_k |x_k w_k| per output.
void require_linear_close(mechlens::tensor_view<const float, 2> x, mechlens::tensor_view<const float, 2> w,
                          mechlens::tensor_view<const float, 2> got, mechlens::tensor_view<const float, 2> want) {
    double worst = 0.0;
    for (index_t r = 0; r < got.extent(0); ++r)
        for (index_t o = 0; o < got.extent(1); ++o) {
            double magnitude = 0.0;
            for (index_t k = 0; k < x.extent(1); ++k)
                magnitude += std::fabs(static_cast<double>(x(r, k)) * static_cast<double>(w(o, k)));
            const double err = std::fabs(static_cast<double>(got(r, o)) - static_cast<double>(want(r, o)));
            worst = std::max(worst, std::isfinite(err) ? err / (1e-5 * magnitude + 1e-30) : HUGE_VAL);
        }
    INFO("worst error / (1e-5 sum|x w|) = " << worst);
    REQUIRE(worst <= 1.0);
}

}  // namespace

TEST_CASE("kernels: fused_multiply_add rounds once, in every lane and in scalar code", "[kernels]") {
    // a * a = 1 + 2^-11 + 2^-24 exactly: halfway between two floats, so the rounded product is 1 + 2^-11 (ties to
    // even) and adding c = -(1 + 2^-11) gives 0, while a fused multiply-add keeps the 2^-24.
    const float a = 1.0f + std::ldexp(1.0f, -12), c = -(1.0f + std::ldexp(1.0f, -11));
    const float fused = std::ldexp(1.0f, -24), unfused = 0.0f;
    REQUIRE(std::fma(a, a, c) == fused);
    const float want = kn::has_fused_multiply_add ? fused : unfused;
    INFO("simd width " << kn::simd_width << ", has_fused_multiply_add " << kn::has_fused_multiply_add);
#if defined(__x86_64__) || defined(__aarch64__)
    CHECK(kn::has_fused_multiply_add);  // every x86-64 and ARM64 build of the tests has an FMA (-march=native, v3, v4)
#endif
    CHECK(kn::fused_multiply_add(a, a, c) == want);
    // Every lane, with the other operands varying so no lane can be computed by a broadcast.
    std::vector<float> av(kn::float_batch::size), bv(kn::float_batch::size), cv(kn::float_batch::size);
    for (std::size_t i = 0; i < av.size(); ++i) {
        const float scale = std::ldexp(1.0f, static_cast<int>(i % 5));  // exact powers of two keep the rounding tie
        av[i] = a * scale;
        bv[i] = a;
        cv[i] = c * scale;
    }
    const auto result = kn::fused_multiply_add(kn::float_batch::load_unaligned(av.data()),
                                               kn::float_batch::load_unaligned(bv.data()),
                                               kn::float_batch::load_unaligned(cv.data()));
    std::vector<float> out(kn::float_batch::size);
    result.store_unaligned(out.data());
    for (std::size_t i = 0; i < out.size(); ++i) {
        INFO("lane " << i);
        CHECK(out[i] == want * std::ldexp(1.0f, static_cast<int>(i % 5)));
    }
    // Double batches too (the helper is a template over the element type).
    using double_batch = xsimd::batch<double, kn::float_batch::arch_type>;
    const double ad = 1.0 + std::ldexp(1.0, -27), cd = -(1.0 + std::ldexp(1.0, -26));
    const double dfused = std::ldexp(1.0, -54);
    REQUIRE(std::fma(ad, ad, cd) == dfused);
    std::vector<double> dout(double_batch::size);
    kn::fused_multiply_add(double_batch(ad), double_batch(ad), double_batch(cd)).store_unaligned(dout.data());
    for (double v : dout) CHECK(v == (kn::has_fused_multiply_add ? dfused : 0.0));
}

TEST_CASE("kernels: linear matches the naive triple loop", "[kernels]") {
    std::mt19937 rng(2024);
    const std::vector<std::array<index_t, 3>> shapes = {{1, 64, 172}, {7, 64, 512}, {128, 768, 768}, {3, 5, 1}};
    for (const auto& [rows, in, out] : shapes) {
        INFO("x (" << rows << ", " << in << "), w (" << out << ", " << in << ")");
        const auto x = random_matrix(rows, in, rng), w = random_matrix(out, in, rng);
        mechlens::tensor<float, 2> y({rows, out}), want({rows, out});
        y.fill(123.0f);  // linear must overwrite
        kn::linear(x, w, y);
        ref::linear(x, w, want);
        require_linear_close(x, w, y, want);

        // Accumulating onto a random start.
        auto start = random_matrix(rows, out, rng);
        mechlens::tensor<float, 2> acc = start, acc_want = start;
        kn::linear_accumulate(x, w, acc);
        ref::linear_accumulate(x, w, acc_want);
        require_linear_close(x, w, acc, acc_want);
    }
}

/// Rows [begin, end) of m as a new (end - begin, cols) matrix.
mechlens::tensor<float, 2> rows_of(const mechlens::tensor<float, 2>& m, index_t begin, index_t end) {
    mechlens::tensor<float, 2> out({end - begin, m.extent(1)});
    std::copy(m.data() + begin * m.extent(1), m.data() + end * m.extent(1), out.data());
    return out;
}

TEST_CASE("kernels: linear gives every element the same bits whatever tile, band or row count computes it",
          "[kernels]") {
    // Shapes around the tile sizes (3 or 6 rows, 4 outputs, 8 for one row), SIMD tails, and products large enough
    // to be split over threads into blocks of outputs and bands of rows; (3, 512, 300) has a weight matrix of 600 KiB,
    // so even its single rows (a decode step's products) are split over threads by outputs.
    std::mt19937 rng(515);
    const std::vector<std::array<index_t, 3>> shapes = {{1, 17, 37},  {2, 16, 9},   {5, 64, 13},  {6, 1, 4},
                                                        {7, 100, 5},  {13, 33, 24}, {25, 48, 130}, {300, 64, 100},
                                                        {97, 1000, 23}, {500, 64, 1030}, {3, 512, 300}};
    for (const auto& [rows, depth, outputs] : shapes) {
        INFO("x (" << rows << ", " << depth << "), w (" << outputs << ", " << depth << ")");
        const auto x = random_matrix(rows, depth, rng), w = random_matrix(outputs, depth, rng);
        const auto start = random_matrix(rows, outputs, rng);
        mechlens::tensor<float, 2> full({rows, outputs});
        kn::linear(x, w, full);
        mechlens::tensor<float, 2> full_acc = start;
        kn::linear_accumulate(x, w, full_acc);
        // Row by row (the matrix-vector tile), and in uneven groups of rows (partial row tiles).
        for (index_t r = 0; r < rows; r += 1 + r % 4) {
            const index_t end = std::min(rows, r + 1 + r % 4);
            const auto xs = rows_of(x, r, end);
            mechlens::tensor<float, 2> part({end - r, outputs});
            kn::linear(xs, w, part);
            require_identical(part.data(), full.data() + r * outputs, (end - r) * outputs, "rows of linear");
            auto part_acc = rows_of(start, r, end);
            kn::linear_accumulate(xs, w, part_acc);
            require_identical(part_acc.data(), full_acc.data() + r * outputs, (end - r) * outputs,
                              "rows of linear_accumulate");
        }
        // Each output alone (1-wide edge tiles) for the first rows.
        const index_t some_rows = std::min<index_t>(rows, 7);
        const auto xs = rows_of(x, 0, some_rows);
        for (index_t o = 0; o < outputs; o += 1 + o % 3) {
            const auto wo = rows_of(w, o, o + 1);
            mechlens::tensor<float, 2> column({some_rows, 1});
            kn::linear(xs, wo, column);
            for (index_t r = 0; r < some_rows; ++r) {
                INFO("row " << r << ", output " << o);
                REQUIRE(std::memcmp(&column(r, 0), &full(r, o), sizeof(float)) == 0);
            }
        }
    }
}

namespace {

/// `rows` rows of `blocks_per_row` random blocks of `format`: random bytes, with every half scale (d, and Q4_K's
/// dmin) set to a random finite value, so that the blocks decode to finite floats over a few decades.
std::vector<std::byte> random_blocks(kn::block_format format, index_t rows, index_t blocks_per_row,
                                     std::mt19937& rng) {
    const std::size_t bytes = kn::block_bytes(format);
    std::vector<std::byte> out(static_cast<std::size_t>(rows * blocks_per_row) * bytes);
    std::uniform_int_distribution<int> byte(0, 255);
    for (std::byte& b : out) b = static_cast<std::byte>(byte(rng));
    std::uniform_real_distribution<float> exponent(-12.0f, 0.0f);
    const auto put_half = [&](std::byte* at) {
        const float value = std::exp2(exponent(rng)) * (byte(rng) % 2 == 0 ? 1.0f : -1.0f);
        mechlens::detail::store_half(at, mechlens::detail::float_to_half(value));
    };
    for (std::size_t b = 0; b < out.size() / bytes; ++b) {
        std::byte* block = out.data() + b * bytes;
        if (format == kn::block_format::q8_0) put_half(block);
        if (format == kn::block_format::q4_k) put_half(block), put_half(block + 2);
        if (format == kn::block_format::q6_k) put_half(block + 208);
    }
    return out;
}

/// The ggml type of `format`, for the loader's dequantizer.
mechlens::ggml_type ggml_type_of(kn::block_format format) {
    switch (format) {
        case kn::block_format::q8_0: return mechlens::ggml_type::q8_0;
        case kn::block_format::q4_k: return mechlens::ggml_type::q4_k;
        case kn::block_format::q6_k: return mechlens::ggml_type::q6_k;
    }
    return mechlens::ggml_type::f32;
}

}  // namespace

TEST_CASE("kernels: encoded_linear on Q8_0, Q4_K and Q6_K blocks gives kernels::linear's bits on the decoded floats",
          "[kernels][quant]") {
    // The reference is the loader's dequantizer (pinned to llama.cpp's gguf-py in test_loaders) followed by the dense
    // kernel: the blocks must decode in registers to the same floats and reduce in the same order. Shapes: a few
    // outputs (single-output tiles only), a remainder after the 4-wide tiles, and matrices of 2^17 weights and more,
    // whose products are split over threads by outputs.
    std::mt19937 rng(20261204);
    const std::vector<std::array<index_t, 2>> shapes = {{1, 1}, {3, 2}, {7, 1}, {130, 3}, {1030, 2}, {300, 12}};
    for (const kn::block_format format : {kn::block_format::q8_0, kn::block_format::q4_k, kn::block_format::q6_k}) {
        for (const auto& [outputs, blocks_per_row] : shapes) {
            const index_t depth = blocks_per_row * kn::block_elements(format);
            INFO("format " << static_cast<int>(format) << ", w (" << outputs << ", " << depth << ")");
            const std::vector<std::byte> blocks = random_blocks(format, outputs, blocks_per_row, rng);
            mechlens::tensor<float, 2> decoded({outputs, depth});
            mechlens::dequantize_ggml(ggml_type_of(format), blocks.data(), static_cast<std::uint64_t>(outputs * depth),
                                      decoded.data());
            const kn::encoded_matrix m{decoded.data(), blocks.data(), format, outputs, depth,
                                       static_cast<std::size_t>(blocks_per_row) * kn::block_bytes(format)};
            // Decoding rows (the embedding lookup, the float copy made on demand, a prefill's blocks of w) gives
            // the dequantizer's floats.
            mechlens::tensor<float, 2> rows_decoded({outputs, depth});
            rows_decoded.fill(123.0f);
            kn::decode_encoded_rows(m, 0, outputs, rows_decoded.data());
            require_identical(rows_decoded.data(), decoded.data(), decoded.size(), "decode_encoded_rows");
            if (outputs >= 3) {
                kn::decode_encoded_rows(m, 1, 2, rows_decoded.data());
                require_identical(rows_decoded.data(), decoded.data() + depth, 2 * depth, "decode_encoded_rows 1..3");
            }
            // One row multiplies by the blocks in registers; more rows by blocks of w decoded into a buffer that
            // stays in cache (13 rows: two tiles of six and an edge; 130: bands over threads).
            for (const index_t rows : {1, 2, 13, 130}) {
                const auto x = random_matrix(rows, depth, rng);
                mechlens::tensor<float, 2> want({rows, outputs}), got({rows, outputs});
                kn::linear(x, decoded, want);
                got.fill(123.0f);  // overwritten
                kn::encoded_linear(x, m, got);
                require_identical(got.data(), want.data(), got.size(), "encoded_linear");
                const auto start = random_matrix(rows, outputs, rng);
                auto want_acc = start, got_acc = start;
                kn::linear_accumulate(x, decoded, want_acc);
                kn::encoded_linear(x, m, got_acc, true);
                require_identical(got_acc.data(), want_acc.data(), got_acc.size(), "encoded_linear, accumulating");
            }
            // A range of rows on its own (a part of a fused tensor): the same bits as those rows of the whole.
            if (outputs >= 3) {
                const auto x = random_matrix(1, depth, rng);
                mechlens::tensor<float, 2> whole({1, outputs}), part({1, outputs - 2});
                kn::encoded_linear(x, m, whole);
                kn::encoded_linear(x, kn::encoded_rows(m, 1, outputs - 2), part);
                require_identical(part.data(), whole.data() + 1, outputs - 2, "encoded_rows");
            }
        }
    }
}

TEST_CASE("kernels: encoded_linear refuses mismatched shapes and partial blocks", "[kernels][quant]") {
    {
        std::vector<std::byte> blocks(34 * 2);
        std::vector<float> out(64);
        const kn::encoded_matrix two_rows{nullptr, blocks.data(), kn::block_format::q8_0, 2, 32, 34};
        CHECK_THROWS_WITH(kn::decode_encoded_rows(two_rows, 1, 2, out.data()),
                          Catch::Contains("rows [1, 3) of a matrix of 2 rows"));
        CHECK_THROWS_AS(kn::decode_encoded_rows(two_rows, -1, 1, out.data()), mechlens::shape_error);
    }
    std::mt19937 rng(7);
    const std::vector<std::byte> blocks = random_blocks(kn::block_format::q8_0, 4, 2, rng);
    kn::encoded_matrix m{nullptr, blocks.data(), kn::block_format::q8_0, 4, 64, 68};
    mechlens::tensor<float, 2> x({1, 64}), y({1, 4}), wrong_x({1, 32}), wrong_y({1, 5});
    x.fill(1.0f);
    CHECK_NOTHROW(kn::encoded_linear(x, m, y));
    CHECK_THROWS_AS(kn::encoded_linear(wrong_x, m, y), mechlens::shape_error);
    CHECK_THROWS_AS(kn::encoded_linear(x, m, wrong_y), mechlens::shape_error);
    m.row_bytes = 60;
    CHECK_THROWS_WITH(kn::encoded_linear(x, m, y), Catch::Contains("whole blocks per row"));
    m.row_bytes = 68;
    m.depth = 48;
    CHECK_THROWS_WITH(kn::encoded_linear(x, m, y), Catch::Contains("whole blocks per row"));
}

TEST_CASE("kernels: linear on strided rows, with bias, and shape errors", "[kernels]") {
    std::mt19937 rng(77);
    const index_t rows = 5, in = 48, out = 33;
    // Rows of x and y live inside wider buffers (e.g. one slice of a fused QKV activation).
    auto x_wide = random_matrix(rows, in + 7, rng), w = random_matrix(out, in, rng);
    mechlens::tensor<float, 2> y_wide({rows, out + 3}), want({rows, out});
    const auto x = x_wide.view().slice(1, 3, 3 + in);   // (rows, in), row stride in + 7
    const auto y = y_wide.view().slice(1, 1, 1 + out);  // (rows, out), row stride out + 3
    REQUIRE(x.stride(0) == in + 7);
    kn::linear(x, w, y);
    ref::linear(x, w, want);
    require_linear_close(x, w, y, want);
    for (index_t r = 0; r < rows; ++r) {
        REQUIRE(y_wide(r, 0) == 0.0f);  // columns outside the slice untouched
        REQUIRE(y_wide(r, out + 1) == 0.0f);
    }
    // A single strided row takes the matrix-vector path.
    kn::linear(x.slice(0, 2, 3), w, y.slice(0, 0, 1));
    require_linear_close(x.slice(0, 2, 3), w, y.slice(0, 0, 1), want.view().slice(0, 2, 3));

    mechlens::tensor<float, 1> bias({out});
    fill_uniform(bias.data(), out, -1.0f, 1.0f, rng);
    mechlens::tensor<float, 2> with_bias({rows, out});
    kn::linear(x, w, bias, with_bias);
    for (index_t r = 0; r < rows; ++r)
        for (index_t o = 0; o < out; ++o) REQUIRE(with_bias(r, o) == Approx(want(r, o) + bias(o)).margin(1e-5));

    mechlens::tensor<float, 2> wrong_out({rows, out + 1}), wrong_rows({rows + 1, out});
    const auto w_wrong_in = random_matrix(out, in + 1, rng);
    CHECK_THROWS_AS(kn::linear(x, w, wrong_out), mechlens::shape_error);
    CHECK_THROWS_AS(kn::linear(x, w, wrong_rows), mechlens::shape_error);
    CHECK_THROWS_AS(kn::linear(x, w_wrong_in, want), mechlens::shape_error);
    CHECK_THROWS_AS(kn::linear_accumulate(x, w_wrong_in, want), mechlens::shape_error);
    CHECK_THROWS_AS(ref::linear(x, w_wrong_in, want), mechlens::shape_error);
    mechlens::tensor<float, 1> wrong_bias({out - 1});
    CHECK_THROWS_AS(kn::linear(x, w, wrong_bias, want), mechlens::shape_error);
    // A y whose last axis is not dense is rejected.
    mechlens::tensor<float, 2> y_t({out, rows});
    const mechlens::tensor_view<float, 2> transposed(y_t.data(), {rows, out}, {1, rows});
    CHECK_THROWS_AS(kn::linear(x, w, transposed), mechlens::shape_error);

    // An empty inner dimension is an empty sum.
    mechlens::tensor<float, 2> x0({rows, 0}), w0({out, 0}), y0({rows, out});
    y0.fill(5.0f);
    kn::linear(x0, w0, y0);
    for (index_t r = 0; r < rows; ++r) REQUIRE(y0(r, 0) == 0.0f);
}

}  // namespace test_kernels
