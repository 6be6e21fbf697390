// The cost of hooks: one prefill of 128 tokens (batch 1, logits of the last position only, as llama.cpp's pp128)
// through a random-weight model of the LLaMA 110M shape (d_model 768, 12 layers, 12 heads, d_mlp 2048, vocab 32000),
// one thread, under each kind of policy:
//   no_hooks            the plain forward pass;
//   stripped            every hook site compiled out (bench_hooks_stripped.cpp): must equal no_hooks;
//   dispatch/<kinds>    wants every kind, does nothing: the pure cost of handing out views (and, for the norm sites,
//                       of computing the RMSNorm scale separately so it can be hooked);
//   copy/<kinds>        wants every kind, copies each activation into buffers allocated on the first call;
//   caching_hooks       the library's caching policy (mechlens::caching_hooks<>), a fresh cache per pass;
//   caching_hooks_reused  the same policy object run again and again (a sweep): its buffers are reused;
//   dynamic/<kinds>     the library's run-time registry (mechlens::basic_dynamic_hooks) with nothing registered.
// <kinds> is `all_but_result` (every site except attn.hook_result, the default of the caching policy) or `all`
// (attn.hook_result too, which replaces the output projection by per-head projections and a sum).
// Read each line as a ratio to no_hooks (docs/HOOKS.md lists measured ratios).

#include <mechlens/mechlens.hpp>

#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

/// Defined in bench_hooks_stripped.cpp, compiled with MECHLENS_STRIP_HOOK_SITES.
void mechlens_bench_stripped_forward(const mechlens::transformer& model,
                                     mechlens::tensor_view<const std::int32_t, 2> tokens,
                                     mechlens::tensor_view<float, 3> logits, mechlens::workspace& ws);

namespace {

using mechlens::index_t;
using mechlens::kind_set;
using mechlens::site_kind;

constexpr index_t prefill_positions = 128;

/// The LLaMA 110M shape with random weights, built once.
const mechlens::transformer& model_110m() {
    static const mechlens::transformer model = [] {
        mechlens::model_config c;
        c.d_model = 768;
        c.n_layers = 12;
        c.n_heads = 12;
        c.n_kv_heads = 12;
        c.d_mlp = 2048;
        c.d_vocab = 32000;
        c.n_ctx = 1024;
        return mechlens::transformer(mechlens::random_model(c, 2));
    }();
    return model;
}

std::vector<std::int32_t> some_tokens(index_t count, index_t vocab) {
    std::vector<std::int32_t> tokens{1};
    for (index_t i = 1; i < count; ++i) tokens.push_back(static_cast<std::int32_t>((i * 7919 + 13) % vocab));
    return tokens;
}

/// Wants every kind in Kinds and does nothing with them.
template <kind_set Kinds>
struct dispatch_only {
    static constexpr bool wants(site_kind kind) noexcept { return Kinds.contains(kind); }
    template <std::size_t Rank>
    void on_activation(const mechlens::site&, mechlens::tensor_view<float, Rank> view, const mechlens::hook_context&) {
        benchmark::DoNotOptimize(view.data());
    }
};

/// Wants every kind in Kinds and copies each activation into a buffer per site, allocated on first use only.
template <kind_set Kinds>
struct copy_everything {
    std::vector<std::vector<float>> buffers;  // one per (kind, layer + 1) slot
    index_t layers = 0;

    explicit copy_everything(index_t n_layers)
        : buffers(mechlens::site_kind_count * static_cast<std::size_t>(n_layers + 1)), layers(n_layers) {}
    static constexpr bool wants(site_kind kind) noexcept { return Kinds.contains(kind); }
    template <std::size_t Rank>
    void on_activation(const mechlens::site& s, mechlens::tensor_view<float, Rank> view,
                       const mechlens::hook_context&) {
        auto& buffer = buffers[static_cast<std::size_t>(s.kind) * static_cast<std::size_t>(layers + 1) +
                               static_cast<std::size_t>(s.layer + 1)];
        if (buffer.size() < static_cast<std::size_t>(view.size())) buffer.resize(static_cast<std::size_t>(view.size()));
        if (view.is_contiguous()) {
            std::memcpy(buffer.data(), view.data(), static_cast<std::size_t>(view.size()) * sizeof(float));
        } else {
            mechlens::copy(mechlens::tensor_view<const float, Rank>(view),
                           mechlens::tensor_view<float, Rank>(buffer.data(), view.shape()));
        }
    }
};

/// Runs `pass` (one forward call) as a 128-token prefill benchmark.
template <class Pass>
void run_prefill(benchmark::State& state, Pass&& pass) {
    const mechlens::transformer& model = model_110m();
    mechlens::set_num_threads(1);
    const auto tokens = some_tokens(prefill_positions, model.config().d_vocab);
    const mechlens::tensor_view<const std::int32_t, 2> batch(tokens.data(), {1, prefill_positions});
    mechlens::tensor<float, 3> logits({1, 1, model.config().d_vocab});  // last position only
    mechlens::workspace ws;
    pass(model, batch, logits.view(), ws);  // warm-up: sizes the workspace and any policy buffers
    for (auto _ : state) {
        pass(model, batch, logits.view(), ws);
        benchmark::DoNotOptimize(logits.data());
        benchmark::ClobberMemory();
    }
    state.counters["tok/s"] =
        benchmark::Counter(static_cast<double>(prefill_positions), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_no_hooks(benchmark::State& state) {
    run_prefill(state, [](const auto& model, auto tokens, auto logits, auto& ws) {
        mechlens::forward(model, tokens, logits, ws, mechlens::no_hooks{});
    });
}

void BM_stripped(benchmark::State& state) {
    run_prefill(state, [](const auto& model, auto tokens, auto logits, auto& ws) {
        mechlens_bench_stripped_forward(model, tokens, logits, ws);
    });
}

template <kind_set Kinds>
void BM_dispatch(benchmark::State& state) {
    run_prefill(state, [](const auto& model, auto tokens, auto logits, auto& ws) {
        mechlens::forward(model, tokens, logits, ws, dispatch_only<Kinds>{});
    });
}

template <kind_set Kinds>
void BM_copy(benchmark::State& state) {
    copy_everything<Kinds> policy(model_110m().config().n_layers);
    run_prefill(state, [&](const auto& model, auto tokens, auto logits, auto& ws) {
        mechlens::forward(model, tokens, logits, ws, policy);
    });
}

void BM_caching_hooks(benchmark::State& state) {
    run_prefill(state, [](const auto& model, auto tokens, auto logits, auto& ws) {
        mechlens::caching_hooks<> policy;
        mechlens::forward(model, tokens, logits, ws, policy);
        benchmark::DoNotOptimize(policy.cache().size());
    });
}

void BM_caching_hooks_reused(benchmark::State& state) {
    mechlens::caching_hooks<> policy;
    run_prefill(state, [&](const auto& model, auto tokens, auto logits, auto& ws) {
        mechlens::forward(model, tokens, logits, ws, policy);
        benchmark::DoNotOptimize(policy.cache().size());
    });
}

template <kind_set Kinds>
void BM_dynamic_empty(benchmark::State& state) {
    mechlens::basic_dynamic_hooks<Kinds> policy(model_110m().config());
    run_prefill(state, [&](const auto& model, auto tokens, auto logits, auto& ws) {
        mechlens::forward(model, tokens, logits, ws, policy);
    });
}

constexpr kind_set all_but_result = kind_set::all_but_result();
constexpr kind_set all = kind_set::all();

}  // namespace

BENCHMARK(BM_no_hooks)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_stripped)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_dispatch<all_but_result>)
    ->Name("BM_dispatch/all_but_result")
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_dispatch<all>)->Name("BM_dispatch/all")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_copy<all_but_result>)->Name("BM_copy/all_but_result")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_copy<all>)->Name("BM_copy/all")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_caching_hooks)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_caching_hooks_reused)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_dynamic_empty<all_but_result>)
    ->Name("BM_dynamic_empty/all_but_result")
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_dynamic_empty<all>)->Name("BM_dynamic_empty/all")->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
