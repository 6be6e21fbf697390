// SAE training throughput (sae/training.hpp): rows ("tokens") per second of full training steps (forward, losses,
// gradients, clipping, Adam, dead-latent bookkeeping) at 1 and 2 threads, for standard (L1 5, as SAELens's
// tutorials) and topk (k 32) SAEs on d_in 64 (stories260K's residual stream) with 1024 and 2048 latents, and
// d_in 512 with 8192 latents; batch 4096. The data are Gaussian rows with a few strong directions. Each benchmark
// trains one fresh SAE and times its steps 3 to 18 (d_in 64) or 3 and 4 (d_in 512): early training, where a
// standard SAE's L0 is still high. bench/peers/sae_train_pytorch.py times the same steps in PyTorch. Counters:
// tokens/s and the last step's L0.

#include <mechlens/sae.hpp>

#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

using mechlens::index_t;

constexpr index_t batch = 4096;

/// 8 batches of rows: x = 0.3 g + sum over 4 of 64 directions of u * direction (g Gaussian, u uniform).
std::vector<float> bench_rows(index_t d_in, std::uint64_t seed) {
    std::mt19937_64 g(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    std::uniform_int_distribution<int> pick(0, 63);
    std::vector<float> dirs(static_cast<std::size_t>(64 * d_in));
    for (float& v : dirs) v = normal(g) / std::sqrt(static_cast<float>(d_in));
    std::vector<float> x(static_cast<std::size_t>(8 * batch * d_in));
    for (index_t r = 0; r < 8 * batch; ++r) {
        float* row = x.data() + r * d_in;
        for (index_t i = 0; i < d_in; ++i) row[i] = 0.3f * normal(g) / std::sqrt(static_cast<float>(d_in));
        for (int m = 0; m < 4; ++m) {
            const float u = 3.0f * uniform(g);
            const float* d = dirs.data() + pick(g) * d_in;
            for (index_t i = 0; i < d_in; ++i) row[i] += u * d[i];
        }
    }
    return x;
}

void BM_sae_train(benchmark::State& state) {
    const auto arch = state.range(0) == 0 ? mechlens::sae_architecture::standard : mechlens::sae_architecture::topk;
    const index_t d_in = state.range(1), d_sae = state.range(2);
    const int threads = static_cast<int>(state.range(3));
#if defined(_OPENMP)
    const int before = omp_get_max_threads();
    omp_set_num_threads(threads);
#else
    if (threads > 1) {
        state.SkipWithError("built without OpenMP");
        return;
    }
#endif
    mechlens::sae_trainer_options o;
    o.sae.architecture = arch;
    o.sae.k = 32;
    o.d_sae = d_sae;
    o.batch_size = batch;
    o.tokens_total = std::int64_t{batch} * 1'000'000;
    o.l1_coefficient = 5.0;
    o.lr = 3e-4;
    mechlens::in_memory_batches data(bench_rows(d_in, 7), {}, d_in);
    mechlens::sae_trainer trainer(o, d_in);
    double l0 = 0;
    auto progress = [&](const mechlens::sae_training_progress& p) { l0 = p.loss.l0_norm; };
    trainer.train(data, progress, 2);  // warm-up: buffers grown, first sparse steps
    for (auto _ : state) trainer.train(data, progress, 1);
    state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(batch) * static_cast<double>(state.iterations()),
                                                    benchmark::Counter::kIsRate);
    state.counters["L0"] = l0;
#if defined(_OPENMP)
    omp_set_num_threads(before);
#endif
}

/// The d_in 64 shapes (steps 3 to 18 of a run) or the d_in 512 shape (steps 3 and 4).
template <bool Large>
void shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"topk", "d_in", "d_sae", "threads"});
    for (int threads : {1, 2})
        for (int arch : {0, 1}) {
            if (Large) {
                b->Args({arch, 512, 8192, threads});
            } else {
                b->Args({arch, 64, 1024, threads});
                b->Args({arch, 64, 2048, threads});
            }
        }
}

// A fixed number of steps, so that both sides time the same stretch of training (the standard SAE's L0, and with it
// the cost of a step, falls as it trains); the PyTorch peer times the same steps.
BENCHMARK(BM_sae_train)->Apply(shapes<false>)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(16);
BENCHMARK(BM_sae_train)->Apply(shapes<true>)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);

}  // namespace

BENCHMARK_MAIN();
