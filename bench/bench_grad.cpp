// The cost of gradients: one forward + backward pass of 128 tokens (batch 1) through a random-weight model of the
// stories15M shape (d_model 288, 6 layers, 6 heads, d_mlp 768, vocab 32000), one thread, metric = mean next-token
// cross-entropy, against the inference forward pass computing the same 128 x 32000 logits:
//   inference_forward        mechlens::forward, every position's logits (the reference for the ratios);
//   taped_forward            the gradient engine's forward pass alone (keeps what the backward pass needs);
//   backward/activations     forward + backward to every activation, no weight gradients (what attribution uses);
//   backward/parameters      forward + backward with every parameter gradient (what training uses);
//   train_step_demo          one AdamW training step of the flagship demo's model (tokens/s of growing it).
// Read each line as a ratio to inference_forward; docs/PERFORMANCE.md records measured ratios.

#include <mechlens/mechlens.hpp>

#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

namespace {

using mechlens::index_t;

constexpr index_t positions = 128;

mechlens::model_config stories15m_shape() {
    mechlens::model_config c;
    c.d_model = 288;
    c.n_layers = 6;
    c.n_heads = 6;
    c.n_kv_heads = 6;
    c.d_mlp = 768;
    c.d_vocab = 32000;
    c.n_ctx = 256;
    return c;
}

const mechlens::model_parameters& parameters() {
    static const mechlens::model_parameters params = [] {
        const mechlens::model_config c = stories15m_shape();
        const mechlens::loaded_model random = mechlens::random_model(c, 3);
        return mechlens::model_parameters(c, random.weights);
    }();
    return params;
}

std::vector<std::int32_t> some_tokens(index_t count, index_t vocab) {
    std::vector<std::int32_t> tokens{1};
    for (index_t i = 1; i < count; ++i) tokens.push_back(static_cast<std::int32_t>((i * 7919 + 13) % vocab));
    return tokens;
}

void BM_inference_forward(benchmark::State& state) {
    mechlens::set_num_threads(1);
    const mechlens::transformer model(mechlens::loaded_model{parameters().config(), parameters().weights()});
    const auto ids = some_tokens(positions, model.config().d_vocab);
    const mechlens::tensor_view<const std::int32_t, 2> tokens(ids.data(), {1, positions});
    mechlens::tensor<float, 3> logits({1, positions, model.config().d_vocab});
    mechlens::workspace ws;
    for (auto _ : state) {
        mechlens::forward(model, tokens, logits.view(), ws);
        benchmark::DoNotOptimize(logits.data());
    }
    state.counters["tok/s"] =
        benchmark::Counter(static_cast<double>(positions), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_taped_forward(benchmark::State& state) {
    mechlens::set_num_threads(1);
    const auto ids = some_tokens(positions, parameters().config().d_vocab);
    const mechlens::tensor_view<const std::int32_t, 2> tokens(ids.data(), {1, positions});
    mechlens::backprop_tape<float> tape;
    mechlens::no_hooks none;
    for (auto _ : state) {
        mechlens::taped_forward(parameters(), tokens, tape, none);
        benchmark::DoNotOptimize(tape.logits().data());
    }
    state.counters["tok/s"] =
        benchmark::Counter(static_cast<double>(positions), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_backward(benchmark::State& state) {
    mechlens::set_num_threads(1);
    const bool with_parameters = state.range(0) != 0;
    const auto ids = some_tokens(positions, parameters().config().d_vocab);
    const mechlens::tensor_view<const std::int32_t, 2> tokens(ids.data(), {1, positions});
    mechlens::backprop_tape<float> tape;
    mechlens::model_parameters grads(parameters().config());
    const auto metric = mechlens::metric::cross_entropy();
    for (auto _ : state) {
        const float loss = mechlens::forward_backward(parameters(), tokens, metric, with_parameters ? &grads : nullptr,
                                                      mechlens::no_hooks{}, tape);
        benchmark::DoNotOptimize(loss);
    }
    state.SetLabel(with_parameters ? "parameters" : "activations");
    state.counters["tok/s"] =
        benchmark::Counter(static_cast<double>(positions), benchmark::Counter::kIsIterationInvariantRate);
}

/// One training step (forward, backward, clipping, AdamW) of the flagship demo's model: 2 attention-only layers of
/// 4 heads, d_model 64, vocab 64, on a batch of 32 sequences of 33 tokens.
void BM_train_step_demo(benchmark::State& state) {
    mechlens::set_num_threads(1);
    mechlens::model_config c;
    c.d_model = 64;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 4;
    c.mlp = mechlens::mlp_kind::none;
    c.d_vocab = 64;
    c.n_ctx = 33;
    c.tied_unembed = false;
    mechlens::model_parameters params(c);
    mechlens::init_parameters(params, 1);
    mechlens::induction_options data;
    data.batch = 32;
    data.half_length = 16;
    data.vocab = 64;
    data.first_token = 1;
    data.bos = 0;
    const mechlens::token_batch batch = mechlens::repeated_random_tokens(data, 1).data;
    const auto metric = mechlens::metric::cross_entropy(mechlens::loss_targets(batch));
    mechlens::model_parameters grads(c);
    mechlens::backprop_tape<float> tape;
    mechlens::adamw optimizer(params.size());
    for (auto _ : state) {
        const float loss =
            mechlens::forward_backward(params, mechlens::tensor_view<const std::int32_t, 2>(batch.tokens.view()),
                                       metric, &grads, mechlens::no_hooks{}, tape);
        (void)mechlens::clip_grad_norm(grads.flat(), 1.0f);
        optimizer.step(params.flat(), grads.flat());
        benchmark::DoNotOptimize(loss);
    }
    state.counters["tok/s"] =
        benchmark::Counter(static_cast<double>(batch.tokens.size()), benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_inference_forward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_taped_forward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_backward)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_train_step_demo)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
