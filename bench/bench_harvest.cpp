// Harvesting throughput (sae/harvest.hpp) against the plain forward pass over the same contexts: stories260K (when
// the shared model is present) and a random-weight model of the stories15M shape, one thread. Each iteration
// harvests 4 batches of 8 contexts of 128 tokens (4096 tokens) into 2048-row shards on disk, from documents made in
// memory (tokenization is not measured); the forward pass runs the same 4 batches with last-position logits (what
// llama.cpp's pp128 computes). The counter is tokens per second.

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

constexpr index_t context = 128, batch = 8, batches = 4;

/// The models under test, built once: 0 = stories260K (real), 1 = stories15M shape (random weights).
const mechlens::transformer* model_by_index(int index) {
    static std::map<int, std::unique_ptr<mechlens::transformer>> models;
    auto& slot = models[index];
    if (!slot) {
        if (index == 0) {
            const char* env = std::getenv("MECHLENS_MODELS");
            const std::filesystem::path dir = env && *env ? env : MECHLENS_DEFAULT_MODELS;
            const auto path = dir / "stories260K" / "stories260K.bin";
            if (!std::filesystem::exists(path)) return nullptr;
            slot = std::make_unique<mechlens::transformer>(mechlens::load_model(path));
        } else {
            mechlens::model_config c;
            c.d_model = 288;
            c.n_layers = 6;
            c.n_heads = 6;
            c.n_kv_heads = 6;
            c.d_mlp = 768;
            c.d_vocab = 32000;
            c.n_ctx = 1024;
            slot = std::make_unique<mechlens::transformer>(mechlens::random_model(c, 1));
        }
    }
    return slot.get();
}

const char* model_name(int index) { return index == 0 ? "stories260K" : "stories15M_shape"; }

/// Endless documents of 200 pseudo-random tokens (ids 3 and up), made on the fly.
class random_documents final : public mechlens::document_source {
public:
    explicit random_documents(std::int32_t vocab) : vocab_(vocab) {}
    bool next(std::vector<std::int32_t>& tokens) override {
        tokens.resize(200);
        for (auto& t : tokens) t = 3 + static_cast<std::int32_t>(rng_.next() % static_cast<std::uint64_t>(vocab_ - 3));
        return true;
    }
    void skip(std::uint64_t) override {}
    [[nodiscard]] std::string describe() const override { return "random documents"; }

private:
    std::int32_t vocab_;
    mechlens::random_generator rng_{11};
};

/// The plain forward pass over the contexts a harvest would run.
void BM_forward(benchmark::State& state) {
    const auto* model = model_by_index(static_cast<int>(state.range(0)));
    if (!model) return state.SkipWithError("stories260K not found (set MECHLENS_MODELS)");
    mechlens::set_num_threads(1);
    const mechlens::model_config& c = model->config();
    random_documents docs(static_cast<std::int32_t>(c.d_vocab));
    mechlens::context_packer packer(docs, context, 1);
    std::vector<std::int32_t> tokens(static_cast<std::size_t>(batches * batch * context));
    for (index_t i = 0; i < batches * batch; ++i)
        packer.next(std::span<std::int32_t>(tokens.data() + i * context, static_cast<std::size_t>(context)));
    mechlens::workspace ws;
    mechlens::tensor<float, 3> logits({batch, 1, c.d_vocab});
    for (auto _ : state) {
        for (index_t b = 0; b < batches; ++b) {
            const mechlens::tensor_view<const std::int32_t, 2> view(tokens.data() + b * batch * context, {batch, context});
            mechlens::forward(*model, view, logits.view(), ws);
        }
        benchmark::DoNotOptimize(logits.data());
    }
    state.SetLabel(model_name(static_cast<int>(state.range(0))));
    state.counters["tok/s"] = benchmark::Counter(static_cast<double>(batches * batch * context),
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

/// A harvest of the same amount: site 0 = the last block's hook_resid_post (every block runs), 1 = the middle
/// block's (the blocks after it are skipped), 2 = the last block's hook_resid_post and attn.hook_z together.
void BM_harvest(benchmark::State& state) {
    const auto* model = model_by_index(static_cast<int>(state.range(0)));
    if (!model) return state.SkipWithError("stories260K not found (set MECHLENS_MODELS)");
    mechlens::set_num_threads(1);
    const mechlens::model_config& c = model->config();
    const index_t layer = state.range(1) == 1 ? c.n_layers / 2 : c.n_layers - 1;
    std::string block = "blocks.";  // built by appending: GCC 12 -Wrestrict misfires on "literal" + std::string&&
    block += std::to_string(layer);
    mechlens::harvest_options o;
    o.sites.push_back(mechlens::parse_harvest_site(block + ".hook_resid_post", c));
    if (state.range(1) == 2) o.sites.push_back(mechlens::parse_harvest_site(block + ".attn.hook_z", c));
    o.context = context;
    o.batch_contexts = batch;
    o.tokens_total = batches * batch * context;
    o.shard_rows = 2048;
    const std::filesystem::path dir = std::filesystem::temp_directory_path() / "mechlens_bench_harvest";
    for (auto _ : state) {
        state.PauseTiming();
        std::filesystem::remove_all(dir);
        random_documents docs(static_cast<std::int32_t>(c.d_vocab));
        state.ResumeTiming();
        const mechlens::harvest_result r = mechlens::harvest(*model, docs, dir, o);
        benchmark::DoNotOptimize(r.manifest.contexts_done);
    }
    std::filesystem::remove_all(dir);
    const char* sites[] = {"last resid_post", "middle resid_post", "last resid_post + attn.hook_z"};
    std::string label = model_name(static_cast<int>(state.range(0)));
    label += ", ";
    label += sites[state.range(1)];
    state.SetLabel(label);
    state.counters["tok/s"] = benchmark::Counter(static_cast<double>(batches * batch * context),
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_forward)->ArgsProduct({{0, 1}})->ArgNames({"model"})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_harvest)
    ->ArgsProduct({{0, 1}, {0, 1, 2}})
    ->ArgNames({"model", "sites"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK_MAIN();
