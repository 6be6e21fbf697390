// Forward-pass benchmarks: prefill of 128 tokens and KV-cache decoding, for stories260K (when the shared model is
// present) and for random-weight models of the stories15M and LLaMA-110M shapes, at 1 and 2 threads.
// Throughput counters are tokens per second, the unit llama.cpp's llama-bench reports (pp128 / tg128).
// MECHLENS_BENCH_FILES=A.gguf,B.gguf adds the same two benchmarks for those model files (any format load_model
// opens; BM_prefill128_file / BM_decode128_file, labelled with the file name), so that mechlens and llama.cpp can be
// timed on the same files (bench/peers/llama_cpp/bench_vs_llama_cpp.sh).

#include <mechlens/mechlens.hpp>

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace {

using mechlens::index_t;

mechlens::model_config shape_config(index_t d_model, index_t layers, index_t heads, index_t d_mlp, index_t vocab) {
    mechlens::model_config c;
    c.d_model = d_model;
    c.n_layers = layers;
    c.n_heads = heads;
    c.n_kv_heads = heads;
    c.d_mlp = d_mlp;
    c.d_vocab = vocab;
    c.n_ctx = 1024;
    return c;
}

/// The model files of MECHLENS_BENCH_FILES (comma-separated), in order.
const std::vector<std::string>& bench_files() {
    static const std::vector<std::string> files = [] {
        std::vector<std::string> out;
        const char* env = std::getenv("MECHLENS_BENCH_FILES");
        std::string list = env ? env : "";
        for (std::size_t at = 0; at < list.size();) {
            const std::size_t comma = std::min(list.find(',', at), list.size());
            if (comma > at) out.push_back(list.substr(at, comma - at));
            at = comma + 1;
        }
        return out;
    }();
    return files;
}

/// The models under test, built once: 0 = stories260K (real), 1 = stories15M shape, 2 = LLaMA 110M shape, 3 and on
/// the files of MECHLENS_BENCH_FILES.
const mechlens::transformer* model_by_index(int index) {
    static std::map<int, std::unique_ptr<mechlens::transformer>> models;
    auto& slot = models[index];
    if (!slot) {
        if (index >= 3) {
            slot = std::make_unique<mechlens::transformer>(
                mechlens::load_model(bench_files().at(static_cast<std::size_t>(index - 3))));
            // A warm-up, as llama-bench runs one before it times: a file's weights are pages of its mapping, and the
            // first pass would otherwise time their page faults. One prefill reads every float matrix, one decode
            // step every matrix's blocks.
            mechlens::workspace ws;
            mechlens::kv_cache cache(slot->config(), 1, 128);
            std::vector<std::int32_t> tokens(128, 1);
            mechlens::tensor<float, 3> logits({1, 1, slot->config().vocab_out()});
            mechlens::forward(*slot, mechlens::tensor_view<const std::int32_t, 2>(tokens.data(), {1, 127}), cache,
                              logits.view(), ws);
            mechlens::forward(*slot, mechlens::tensor_view<const std::int32_t, 2>(tokens.data(), {1, 1}), cache,
                              logits.view(), ws);
        } else if (index == 0) {
            const char* env = std::getenv("MECHLENS_MODELS");
            const std::filesystem::path dir = env && *env ? env : MECHLENS_DEFAULT_MODELS;
            const auto path = dir / "stories260K" / "stories260K.bin";
            if (!std::filesystem::exists(path)) return nullptr;
            slot = std::make_unique<mechlens::transformer>(mechlens::load_model(path));
        } else if (index == 1) {
            slot = std::make_unique<mechlens::transformer>(mechlens::random_model(shape_config(288, 6, 6, 768, 32000), 1));
        } else {
            slot = std::make_unique<mechlens::transformer>(mechlens::random_model(shape_config(768, 12, 12, 2048, 32000), 2));
        }
    }
    return slot.get();
}

std::string model_name(int index) {
    if (index >= 3) return std::filesystem::path(bench_files().at(static_cast<std::size_t>(index - 3))).filename();
    return index == 0 ? "stories260K" : index == 1 ? "stories15M_shape" : "llama110M_shape";
}

std::vector<std::int32_t> some_tokens(index_t count, index_t vocab) {
    std::vector<std::int32_t> tokens{1};
    for (index_t i = 1; i < count; ++i) tokens.push_back(static_cast<std::int32_t>((i * 7919 + 13) % vocab));
    return tokens;
}

/// Prefill: one forward over 128 tokens, logits of the last position only (as llama.cpp's pp128 computes).
void BM_prefill128(benchmark::State& state) {
    const auto* model = model_by_index(static_cast<int>(state.range(0)));
    if (!model) return state.SkipWithError("stories260K not found (set MECHLENS_MODELS)");
    mechlens::set_num_threads(static_cast<int>(state.range(1)));
    const index_t positions = 128;
    const auto tokens = some_tokens(positions, model->config().d_vocab);
    mechlens::workspace ws;
    mechlens::tensor<float, 3> logits({1, 1, model->config().d_vocab});
    const mechlens::tensor_view<const std::int32_t, 2> batch(tokens.data(), {1, positions});
    for (auto _ : state) {
        mechlens::forward(*model, batch, logits.view(), ws);
        benchmark::DoNotOptimize(logits.data());
    }
    state.SetLabel(model_name(static_cast<int>(state.range(0))));
    state.counters["tok/s"] = benchmark::Counter(static_cast<double>(positions), benchmark::Counter::kIsIterationInvariantRate);
}

/// Decode: 128 single-token forward passes through a KV cache from an empty context (llama.cpp's tg128).
void BM_decode128(benchmark::State& state) {
    const auto* model = model_by_index(static_cast<int>(state.range(0)));
    if (!model) return state.SkipWithError("stories260K not found (set MECHLENS_MODELS)");
    mechlens::set_num_threads(static_cast<int>(state.range(1)));
    const index_t steps = 128;
    const auto tokens = some_tokens(steps, model->config().d_vocab);
    mechlens::kv_cache cache(model->config(), 1, steps);
    mechlens::workspace ws;
    mechlens::tensor<float, 3> logits({1, 1, model->config().d_vocab});
    for (auto _ : state) {
        cache.clear();
        for (index_t i = 0; i < steps; ++i) {
            mechlens::forward(*model, mechlens::tensor_view<const std::int32_t, 2>(&tokens[static_cast<std::size_t>(i)], {1, 1}),
                              cache, logits.view(), ws);
        }
        benchmark::DoNotOptimize(logits.data());
    }
    state.SetLabel(model_name(static_cast<int>(state.range(0))));
    state.counters["tok/s"] = benchmark::Counter(static_cast<double>(steps), benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_prefill128)->ArgsProduct({{0, 1, 2}, {1, 2}})->ArgNames({"model", "threads"})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_decode128)->ArgsProduct({{0, 1, 2}, {1, 2}})->ArgNames({"model", "threads"})->Unit(benchmark::kMillisecond)->UseRealTime();

int main(int argc, char** argv) {
    if (!bench_files().empty()) {
        std::vector<std::int64_t> files;
        for (std::size_t i = 0; i < bench_files().size(); ++i) files.push_back(static_cast<std::int64_t>(i + 3));
        for (const auto& [name, function] : {std::pair{"BM_prefill128_file", &BM_prefill128},
                                             std::pair{"BM_decode128_file", &BM_decode128}})
            benchmark::RegisterBenchmark(name, function)
                ->ArgsProduct({files, {1, 2}})
                ->ArgNames({"model", "threads"})
                ->Unit(benchmark::kMillisecond)
                ->UseRealTime();
    }
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
