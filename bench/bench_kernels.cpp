// Kernel benchmarks: each SIMD kernel against its scalar reference at row lengths 64, 768 and 4096 (elements per
// second), rotary embedding over 128 positions of d_head 64, and Eigen linear layers against the naive triple loop
// (FLOP/s). The references evaluate in double, so their timings bound "plain scalar code" from above.
// The gemm/ rows run the batch-invariant GEMM and Eigen's GEMM on the shapes of a GPT-2-small layer and of SAE
// training, and report each rate as a fraction of the single-core fused multiply-add peak measured at start-up
// (`peak_fma_gflops` in the context; `of_peak` per row; rates are per second of process CPU time, so a row at 2
// threads is a per-core efficiency).
//
//   mechlens_bench_kernels --benchmark_min_time=0.05 [--benchmark_filter=softmax]
// The gemv/ rows are one decode step's product, from F32 weights or from Q8_0 / Q4_K / Q6_K blocks, reported as weight
// bytes read per second and as a fraction of the single-core DRAM read bandwidth measured at start-up
// (`read_gbytes_per_s`; `of_bandwidth` per row).
//
//   mechlens_bench_kernels --benchmark_filter='gemm/|peak' --benchmark_repetitions=3
//   mechlens_bench_kernels --benchmark_filter='gemv|peak/read' --benchmark_repetitions=3
// The encoded_gemm/ rows are a 128-token prefill's product from the same blocks (or F32), against the FMA peak:
//
//   mechlens_bench_kernels --benchmark_filter='encoded_gemm|peak/fma' --benchmark_repetitions=3

#include <cstdint>
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <random>
#include <string>
#include <vector>

// mechlens first: it includes Eigen with GCC 12's AVX-512 false positive silenced (detail/third_party.hpp).
#include <mechlens/mechlens.hpp>

#include <Eigen/Core>
#include <benchmark/benchmark.h>

#if defined(_OPENMP)
#include <omp.h>
#endif

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

/// Independent accumulator chains of the peak probe: enough to cover FMA latency x FMA ports on Zen 3-5 (4 x 2),
/// and few enough to stay in 16 vector registers with the two constants.
constexpr std::size_t peak_chains = 12;

/// Runs `rounds` x peak_chains fused multiply-adds on whole float batches; returns the sum (to keep them live).
float fma_probe(std::int64_t rounds) {
    std::array<kn::float_batch, peak_chains> acc;
    for (std::size_t i = 0; i < peak_chains; ++i) acc[i] = kn::float_batch(static_cast<float>(i) * 1e-3f);
    const kn::float_batch factor(0.999999f), offset(1e-7f);
    for (std::int64_t r = 0; r < rounds; ++r)
        for (auto& a : acc) a = kn::fused_multiply_add(a, factor, offset);
    kn::float_batch sum(0.0f);
    for (const auto& a : acc) sum += a;
    return xsimd::hadd(sum);
}

/// FLOPs of one fma_probe round.
constexpr double probe_flops_per_round = 2.0 * static_cast<double>(peak_chains) * kn::float_batch::size;

/// Single-thread fused multiply-add peak (FLOP/s), the best of five timed runs of about 20 ms each.
double measure_peak_flops() {
    double best = 0.0;
    const std::int64_t rounds = 1 << 21;
    for (int run = 0; run < 5; ++run) {
        const auto start = std::chrono::steady_clock::now();
        std::int64_t opaque_rounds = rounds;
        benchmark::DoNotOptimize(opaque_rounds);
        const float keep = fma_probe(opaque_rounds);
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        benchmark::DoNotOptimize(keep);
        best = std::max(best, probe_flops_per_round * static_cast<double>(rounds) / seconds);
    }
    return best;
}

/// The measured single-core peak that the gemm/ rows divide by (set in main before the benchmarks run).
double peak_flops = 0.0;

/// The peak probe itself as a row (FLOPS should match peak_fma_gflops).
void bm_peak_fma(benchmark::State& state) {
    std::int64_t rounds = 1 << 16;
    for (auto _ : state) {
        benchmark::DoNotOptimize(rounds);  // opaque, so the call is not hoisted out of the loop as invariant
        benchmark::DoNotOptimize(fma_probe(rounds));
    }
    state.counters["FLOPS"] = benchmark::Counter(probe_flops_per_round * static_cast<double>(rounds),
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(bm_peak_fma)->Name("peak/fma_one_thread")->Unit(benchmark::kMicrosecond);

/// Bytes of the bandwidth probe's buffer: far beyond any last-level cache, so every pass reads DRAM.
constexpr index_t bandwidth_probe_floats = index_t{1} << 26;  // 256 MiB

/// Streams the probe reads at once: one core reached its highest DRAM read rate with four (Zen 5: 39 GB/s against 31
/// with one stream; eight and sixteen streams were slower again).
constexpr index_t bandwidth_probe_streams = 4;

/// Sums `n` floats as bandwidth_probe_streams consecutive parts read side by side, one vector accumulator each:
/// one core's streaming read, bound by memory.
float read_probe(const float* data, index_t n) {
    constexpr auto streams = static_cast<std::size_t>(bandwidth_probe_streams);
    std::array<kn::float_batch, streams> acc;
    acc.fill(kn::float_batch(0.0f));
    const index_t part = n / bandwidth_probe_streams;
    for (index_t i = 0; i + kn::simd_width <= part; i += kn::simd_width)
        for (std::size_t k = 0; k < streams; ++k)
            acc[k] += kn::float_batch::load_aligned(data + static_cast<index_t>(k) * part + i);
    kn::float_batch sum(0.0f);
    for (const auto& a : acc) sum += a;
    return xsimd::hadd(sum);
}

/// The probe's buffer, filled once (every page touched before any timing).
const mechlens::tensor<float, 1>& bandwidth_buffer() {
    static const mechlens::tensor<float, 1> buffer = [] {
        mechlens::tensor<float, 1> b({bandwidth_probe_floats});
        b.fill(1.0f);
        return b;
    }();
    return buffer;
}

/// Single-thread streaming read bandwidth (bytes/s) from DRAM, the best of three passes over 256 MiB.
double measure_read_bandwidth() {
    const auto& buffer = bandwidth_buffer();
    double best = 0.0;
    for (int run = 0; run < 3; ++run) {
        const auto start = std::chrono::steady_clock::now();
        const float keep = read_probe(buffer.data(), buffer.size());
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        benchmark::DoNotOptimize(keep);
        best = std::max(best, static_cast<double>(buffer.size()) * sizeof(float) / seconds);
    }
    return best;
}

/// The measured single-core read bandwidth that the gemv/ rows divide by (set in main).
double read_bandwidth = 0.0;

/// The bandwidth probe itself as a row (bytes_per_second should match read_gbytes_per_s).
void bm_read_bandwidth(benchmark::State& state) {
    const auto& buffer = bandwidth_buffer();
    for (auto _ : state) benchmark::DoNotOptimize(read_probe(buffer.data(), buffer.size()));
    state.SetBytesProcessed(state.iterations() * buffer.size() * static_cast<std::int64_t>(sizeof(float)));
}
BENCHMARK(bm_read_bandwidth)->Name("peak/read_bandwidth_one_thread")->Unit(benchmark::kMillisecond);

/// Sets the OpenMP and Eigen thread counts; returns the previous Eigen count (OpenMP's is the same or unset).
int use_threads(int threads) {
    const int previous = Eigen::nbThreads();
#if defined(_OPENMP)
    omp_set_num_threads(threads);
#endif
    Eigen::setNbThreads(threads);
    return previous;
}

/// Which GEMM a gemm/ row runs.
enum class gemm_impl { mechlens, eigen };

/// y = x w^T for x (rows, depth), w (outputs, depth) on `threads` threads (args: rows, depth, outputs, threads).
/// Reports FLOPS per second of process CPU time and of_peak, that rate over the measured single-core peak.
template <gemm_impl Impl>
void bm_gemm(benchmark::State& state) {
    const index_t rows = state.range(0), depth = state.range(1), outputs = state.range(2);
    const int previous_threads = use_threads(static_cast<int>(state.range(3)));
    mechlens::tensor<float, 2> x({rows, depth}), w({outputs, depth}), y({rows, outputs});
    const auto xv = random_vector(rows * depth, -1.0f, 1.0f, 6), wv = random_vector(outputs * depth, -1.0f, 1.0f, 7);
    std::copy(xv.begin(), xv.end(), x.data());
    std::copy(wv.begin(), wv.end(), w.data());
    using row_major = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    Eigen::Map<const row_major> xm(x.data(), rows, depth), wm(w.data(), outputs, depth);
    Eigen::Map<row_major> ym(y.data(), rows, outputs);
    for (auto _ : state) {
        if constexpr (Impl == gemm_impl::mechlens)
            kn::linear(x, w, y);
        else
            ym.noalias() = xm * wm.transpose();
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    const double flops = 2.0 * static_cast<double>(rows) * static_cast<double>(depth) * static_cast<double>(outputs);
    state.counters["FLOPS"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["of_peak"] = benchmark::Counter(flops / peak_flops, benchmark::Counter::kIsIterationInvariantRate);
    use_threads(previous_threads);
}

/// The gemm/ shapes: GPT-2 small's attention and MLP projections over 128 tokens, the SAE training products of
/// d_in 64 with d_sae 1024 and 2048 over a batch of 4096 (encoder and input gradient: depth 64; decoder: 64
/// outputs; weight gradients: depth 4096), each at 1 and 2 threads.
void gemm_shapes(benchmark::internal::Benchmark* b) {
    for (const int threads : {1, 2}) {
        b->Args({128, 768, 768, threads})->Args({128, 768, 2048, threads});
        for (const int d_sae : {1024, 2048})
            b->Args({4096, 64, d_sae, threads})->Args({4096, d_sae, 64, threads})->Args({d_sae, 4096, 64, threads});
    }
    b->ArgNames({"rows", "depth", "outputs", "threads"});
}
BENCHMARK_TEMPLATE(bm_gemm, gemm_impl::mechlens)
    ->Name("gemm/mechlens")
    ->Apply(gemm_shapes)
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(bm_gemm, gemm_impl::eigen)
    ->Name("gemm/eigen")
    ->Apply(gemm_shapes)
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMicrosecond);

/// A (outputs, depth) weight matrix of random blocks of `format` with finite, moderate half scales.
std::vector<std::byte> random_weight_blocks(kn::block_format format, index_t outputs, index_t depth) {
    const std::size_t block_bytes = kn::block_bytes(format);
    const auto blocks = static_cast<std::size_t>(outputs * (depth / kn::block_elements(format)));
    std::vector<std::byte> bytes(blocks * block_bytes);
    std::mt19937 rng(11);
    for (std::byte& b : bytes) b = static_cast<std::byte>(rng() & 0xFFu);
    const auto put_scale = [&](std::byte* at) {
        const float value = std::ldexp(1.0f + static_cast<float>(rng() % 1024) / 1024.0f, -8);
        mechlens::detail::store_half(at, mechlens::detail::float_to_half(value));
    };
    for (std::size_t k = 0; k < blocks; ++k) {
        std::byte* block = bytes.data() + k * block_bytes;
        if (format == kn::block_format::q8_0) put_scale(block);
        if (format == kn::block_format::q4_k) put_scale(block), put_scale(block + 2);
        if (format == kn::block_format::q6_k) put_scale(block + 208);
    }
    return bytes;
}

/// Times y = x w^T over the benchmark's iterations for random x (rows, depth) and w (outputs, depth), w as F32
/// (format < 0, kernels::linear) or as random blocks of block_format `format` (kernels::encoded_linear). Returns the
/// bytes of w.
double time_product(benchmark::State& state, std::int64_t format, index_t rows, index_t depth, index_t outputs) {
    mechlens::tensor<float, 2> x({rows, depth}), y({rows, outputs});
    const auto xv = random_vector(rows * depth, -1.0f, 1.0f, 6);
    std::copy(xv.begin(), xv.end(), x.data());
    const auto timed = [&](auto&& product) {
        for (auto _ : state) {
            product();
            benchmark::DoNotOptimize(y.data());
            benchmark::ClobberMemory();
        }
    };
    if (format < 0) {
        mechlens::tensor<float, 2> w({outputs, depth});
        const auto wv = random_vector(outputs * depth, -1.0f, 1.0f, 7);
        std::copy(wv.begin(), wv.end(), w.data());
        timed([&] { kn::linear(x, w, y); });
        return static_cast<double>(w.size()) * sizeof(float);
    }
    const auto layout = static_cast<kn::block_format>(format);
    const std::vector<std::byte> blocks = random_weight_blocks(layout, outputs, depth);
    const kn::encoded_matrix m{nullptr, blocks.data(), layout, outputs, depth,
                               blocks.size() / static_cast<std::size_t>(outputs)};
    timed([&] { kn::encoded_linear(x, m, y); });
    return static_cast<double>(blocks.size());
}

/// One decode-step product y = x w^T for a single row x (depth 768) and w (outputs, 768) as F32 (format -1) or as
/// the blocks of a Q8_0 (0), Q4_K (1) or Q6_K (2) matrix (args: format, outputs, threads). Reports the weight bytes
/// read per second and of_bandwidth, that rate over the measured single-core read bandwidth (131,072 outputs: 57 MB
/// of Q4_K to 403 MB of F32, beyond any L3 here; 2,048: an MLP matrix, which sits in L2 or L3).
void bm_gemv(benchmark::State& state) {
    const index_t depth = 768, outputs = state.range(1);
    const int previous_threads = use_threads(static_cast<int>(state.range(2)));
    const double weight_bytes = time_product(state, state.range(0), 1, depth, outputs);
    state.counters["weights_per_s"] = benchmark::Counter(static_cast<double>(outputs * depth),
                                                         benchmark::Counter::kIsIterationInvariantRate);
    state.counters["weight_bytes_per_s"] =
        benchmark::Counter(weight_bytes, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["of_bandwidth"] =
        benchmark::Counter(weight_bytes / read_bandwidth, benchmark::Counter::kIsIterationInvariantRate);
    use_threads(previous_threads);
}
BENCHMARK(bm_gemv)
    ->Name("gemv")
    ->ArgsProduct({{-1, 0, 1, 2}, {2048, 131072}, {1, 2}})
    ->ArgNames({"format", "outputs", "threads"})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

/// A prefill's product y = x w^T for x (128, 768) and w (outputs, 768) as F32 (format -1) or as the blocks of a Q8_0
/// (0), Q4_K (1) or Q6_K (2) matrix, decoded block by block into a buffer in cache (args: format, outputs, threads).
/// Reports FLOPS per second of process CPU time and of_peak as the gemm/ rows do: the encoded rows' distance to the
/// F32 row is what decoding the blocks costs.
void bm_encoded_gemm(benchmark::State& state) {
    const index_t rows = 128, depth = 768, outputs = state.range(1);
    const int previous_threads = use_threads(static_cast<int>(state.range(2)));
    (void)time_product(state, state.range(0), rows, depth, outputs);
    const double flops = 2.0 * static_cast<double>(rows) * static_cast<double>(depth) * static_cast<double>(outputs);
    state.counters["FLOPS"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["of_peak"] = benchmark::Counter(flops / peak_flops, benchmark::Counter::kIsIterationInvariantRate);
    use_threads(previous_threads);
}
BENCHMARK(bm_encoded_gemm)
    ->Name("encoded_gemm")
    ->ArgsProduct({{-1, 0, 1, 2}, {768, 2048}, {1, 2}})
    ->ArgNames({"format", "outputs", "threads"})
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
    register_row_kernels();
    benchmark::AddCustomContext("simd_width_floats", std::to_string(kn::simd_width));
    benchmark::AddCustomContext("eigen_threads", std::to_string(Eigen::nbThreads()));
    benchmark::AddCustomContext("eigen_simd", Eigen::SimdInstructionSetsInUse());
    peak_flops = measure_peak_flops();
    benchmark::AddCustomContext("peak_fma_gflops", std::to_string(peak_flops * 1e-9));
    read_bandwidth = measure_read_bandwidth();
    benchmark::AddCustomContext("read_gbytes_per_s", std::to_string(read_bandwidth * 1e-9));
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
