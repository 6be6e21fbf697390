// Kernel benchmarks: each SIMD kernel against its scalar reference at row lengths 64, 768 and 4096 (elements per
// second), rotary embedding over 128 positions of d_head 64, and Eigen linear layers against the naive triple loop
// (FLOP/s). The references evaluate in double, so their timings bound "plain scalar code" from above.
//
//   mechlens_bench_kernels --benchmark_min_time=0.05 [--benchmark_filter=softmax]

#include <cstdint>
#include <algorithm>
#include <random>
#include <string>
#include <vector>

// mechlens first: it includes Eigen with GCC 12's AVX-512 false positive silenced (detail/third_party.hpp).
#include <mechlens/mechlens.hpp>

#include <Eigen/Core>
#include <benchmark/benchmark.h>

namespace {

using mechlens::index_t;
namespace kn = mechlens::kernels;
namespace ref = mechlens::kernels::reference;

/// n uniform values in [lo, hi) from a fixed seed.
std::vector<float> random_vector(index_t n, float lo, float hi, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (float& x : v) x = dist(rng);
    return v;
}

/// Buffers for one row-kernel run: two inputs, a weight, a bias and an output, all of length n.
struct row_buffers {
    explicit row_buffers(index_t n)
        : a(random_vector(n, -4.0f, 4.0f, 1)),
          b(random_vector(n, -4.0f, 4.0f, 2)),
          weight(random_vector(n, 0.5f, 1.5f, 3)),
          bias(random_vector(n, -1.0f, 1.0f, 4)),
          out(static_cast<std::size_t>(n)) {}
    std::vector<float> a, b, weight, bias, out;  // each (n)
};

/// Registers "<name>/<flavour>/<n>" for n in {64, 768, 4096}; `kernel(buffers, n)` runs once (a lambda, stored by
/// value so the call inlines); `bytes_per_element` counts reads and writes.
template <class Kernel>
void register_row(const std::string& name, const std::string& flavour, Kernel kernel, int bytes_per_element) {
    for (index_t n : {index_t{64}, index_t{768}, index_t{4096}}) {
        const std::string full = name + "/" + flavour + "/" + std::to_string(n);
        benchmark::RegisterBenchmark(full.c_str(), [kernel, n, bytes_per_element](benchmark::State& state) {
            row_buffers buffers(n);
            for (auto _ : state) {
                kernel(buffers, n);
                benchmark::DoNotOptimize(buffers.out.data());
                benchmark::DoNotOptimize(buffers.a.data());
                benchmark::ClobberMemory();
            }
            state.SetItemsProcessed(state.iterations() * n);
            state.SetBytesProcessed(state.iterations() * n * bytes_per_element);
        });
    }
}

/// Registers one kernel twice: the SIMD version and the scalar reference.
template <class Simd, class Reference>
void register_pair(const std::string& name, Simd simd, Reference reference, int bytes) {
    register_row(name, "simd", simd, bytes);
    register_row(name, "reference", reference, bytes);
}

void register_row_kernels() {
    constexpr float eps = 1e-5f;
    register_pair(
        "rmsnorm", [](row_buffers& r, index_t n) { kn::rmsnorm(r.out.data(), r.a.data(), r.weight.data(), n, eps); },
        [](row_buffers& r, index_t n) { ref::rmsnorm(r.out.data(), r.a.data(), r.weight.data(), n, eps); }, 12);
    register_pair(
        "layernorm",
        [](row_buffers& r, index_t n) {
            kn::layernorm(r.out.data(), r.a.data(), r.weight.data(), r.bias.data(), n, eps);
        },
        [](row_buffers& r, index_t n) {
            ref::layernorm(r.out.data(), r.a.data(), r.weight.data(), r.bias.data(), n, eps);
        },
        16);
    // In place: a softmax of probabilities is again a valid row, so repeated runs stay representative.
    register_pair(
        "softmax", [](row_buffers& r, index_t n) { kn::softmax(r.a.data(), n); },
        [](row_buffers& r, index_t n) { ref::softmax(r.a.data(), n); }, 8);
    register_pair(
        "silu", [](row_buffers& r, index_t n) { kn::silu(r.out.data(), r.a.data(), n); },
        [](row_buffers& r, index_t n) { ref::silu(r.out.data(), r.a.data(), n); }, 8);
    register_pair(
        "silu_mul", [](row_buffers& r, index_t n) { kn::silu_mul(r.out.data(), r.a.data(), r.b.data(), n); },
        [](row_buffers& r, index_t n) { ref::silu_mul(r.out.data(), r.a.data(), r.b.data(), n); }, 12);
    register_pair(
        "gelu_tanh", [](row_buffers& r, index_t n) { kn::gelu_tanh(r.out.data(), r.a.data(), n); },
        [](row_buffers& r, index_t n) { ref::gelu_tanh(r.out.data(), r.a.data(), n); }, 8);
    register_pair(
        "gelu_erf", [](row_buffers& r, index_t n) { kn::gelu_erf(r.out.data(), r.a.data(), n); },
        [](row_buffers& r, index_t n) { ref::gelu_erf(r.out.data(), r.a.data(), n); }, 8);
    register_pair(
        "add", [](row_buffers& r, index_t n) { kn::add(r.out.data(), r.a.data(), r.b.data(), n); },
        [](row_buffers& r, index_t n) { ref::add(r.out.data(), r.a.data(), r.b.data(), n); }, 12);
    // Scaling by -1 is exact, so repeating it in place never drifts into denormals or overflow.
    register_pair(
        "scale", [](row_buffers& r, index_t n) { kn::scale(r.a.data(), -1.0f, n); },
        [](row_buffers& r, index_t n) { ref::scale(r.a.data(), -1.0f, n); }, 8);
    register_pair(
        "axpy", [](row_buffers& r, index_t n) { kn::axpy(r.out.data(), 1e-3f, r.a.data(), n); },
        [](row_buffers& r, index_t n) { ref::axpy(r.out.data(), 1e-3f, r.a.data(), n); }, 12);
    register_pair(
        "dot", [](row_buffers& r, index_t n) { r.out[0] = kn::dot(r.a.data(), r.b.data(), n); },
        [](row_buffers& r, index_t n) { r.out[0] = ref::dot(r.a.data(), r.b.data(), n); }, 8);
}

/// Rotary embedding of 128 positions, one head of 64 each, both pair layouts.
template <bool Simd, bool Adjacent>
void bm_rope(benchmark::State& state) {
    constexpr index_t n_pos = 128, d_head = 64;
    const kn::rope_tables tables = kn::make_rope_tables(n_pos, d_head, 10000.0f);
    std::vector<float> heads = random_vector(n_pos * d_head, -2.0f, 2.0f, 5);  // (pos, d_head)
    using rope_fn = void (*)(float*, const float*, const float*, index_t);
    rope_fn rope = nullptr;
    if constexpr (Simd)
        rope = Adjacent ? kn::rope_adjacent : kn::rope_split_halves;
    else
        rope = Adjacent ? ref::rope_adjacent : ref::rope_split_halves;
    for (auto _ : state) {
        for (index_t p = 0; p < n_pos; ++p)
            rope(heads.data() + p * d_head, tables.cos.data() + p * (d_head / 2), tables.sin.data() + p * (d_head / 2),
                 d_head);
        benchmark::DoNotOptimize(heads.data());
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(state.iterations() * n_pos * d_head);
}
BENCHMARK_TEMPLATE(bm_rope, true, true)->Name("rope_adjacent/simd/128x64");
BENCHMARK_TEMPLATE(bm_rope, false, true)->Name("rope_adjacent/reference/128x64");
BENCHMARK_TEMPLATE(bm_rope, true, false)->Name("rope_split_halves/simd/128x64");
BENCHMARK_TEMPLATE(bm_rope, false, false)->Name("rope_split_halves/reference/128x64");

/// Which implementation of y = x w^T a linear benchmark runs.
enum class linear_impl { eigen, dot_rows, naive };

/// y = x w^T for x (rows, in), w (out, in); reports FLOP/s (2 rows in out per product) per second of process CPU
/// time, so Eigen's worker threads are counted and a busy machine does not inflate the rate.
template <linear_impl Impl>
void bm_linear(benchmark::State& state) {
    const index_t rows = state.range(0), in = state.range(1), out = state.range(2);
    mechlens::tensor<float, 2> x({rows, in}), w({out, in}), y({rows, out});
    const auto xv = random_vector(rows * in, -1.0f, 1.0f, 6), wv = random_vector(out * in, -1.0f, 1.0f, 7);
    std::copy(xv.begin(), xv.end(), x.data());
    std::copy(wv.begin(), wv.end(), w.data());
    for (auto _ : state) {
        if constexpr (Impl == linear_impl::eigen) {
            kn::linear(x, w, y);
        } else if constexpr (Impl == linear_impl::dot_rows) {
            // The alternative to Eigen's GEMV: one SIMD dot product per output feature.
            for (index_t r = 0; r < rows; ++r)
                for (index_t o = 0; o < out; ++o) y(r, o) = kn::dot(&x(r, 0), &w(o, 0), in);
        } else {
            ref::linear(x, w, y);
        }
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    state.counters["FLOPS"] =
        benchmark::Counter(2.0 * static_cast<double>(rows * in * out), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK_TEMPLATE(bm_linear, linear_impl::eigen)
    ->Name("linear/eigen")
    ->Args({1, 768, 2048})
    ->Args({128, 768, 768})
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(bm_linear, linear_impl::dot_rows)
    ->Name("linear/simd_dot_rows")
    ->Args({1, 768, 2048})
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(bm_linear, linear_impl::naive)
    ->Name("linear/naive")
    ->Args({1, 768, 2048})
    ->Args({128, 768, 768})
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
    register_row_kernels();
    benchmark::AddCustomContext("simd_width_floats", std::to_string(kn::simd_width));
    benchmark::AddCustomContext("eigen_threads", std::to_string(Eigen::nbThreads()));
    benchmark::AddCustomContext("eigen_simd", Eigen::SimdInstructionSetsInUse());
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
