// ThreadSanitizer test: one shared, const model serves several threads at once. Every thread owns its workspace,
// caching policy, gradient buffers and tape, and runs plain forwards, forwards that cache every site, and
// forward/backward passes over the same shared weights. Each result must be bit for bit what the same call gave
// on one thread before any worker started (the library is deterministic and batch-invariant), so a race that
// corrupts numbers fails the test even when TSan does not see it; TSan itself fails the test on any report.
//
// A plain main(), no Catch2: it prints each difference it finds (the first 20) and exits 1 if there was any.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <latch>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <mechlens/grad.hpp>
#include <mechlens/hooks.hpp>
#include <mechlens/io/load.hpp>
#include <mechlens/model.hpp>

#ifndef MECHLENS_DEFAULT_MODELS
#define MECHLENS_DEFAULT_MODELS "../shared/models"
#endif

#if defined(__SANITIZE_THREAD__)
// Stop at the first report even when TSAN_OPTIONS is unset (it overrides these when set).
extern "C" const char* __tsan_default_options();
extern "C" const char* __tsan_default_options() { return "halt_on_error=1:second_deadlock_stack=1"; }
#endif

namespace {

using mechlens::index_t;

constexpr int thread_count = 4;
constexpr int iterations = 20;  // per thread; each iteration runs all three passes on every model

// Every site kind, attn.hook_result included (the caching forward then also takes the per-head output path).
using cache_everything = mechlens::caching_hooks<mechlens::kind_set::all()>;
using gradient_everywhere = mechlens::gradient_cache<mechlens::kind_set::all()>;

/// A (batch, pos) prompt.
struct prompt {
    index_t batch = 1, positions = 0;
    std::vector<std::int32_t> ids;  // batch * positions, row-major
    [[nodiscard]] mechlens::tensor_view<const std::int32_t, 2> tokens() const {
        return mechlens::tensor_view<const std::int32_t, 2>(ids.data(), {batch, positions});
    }
};

/// What one prompt gave on a single thread: the reference every worker must reproduce exactly.
struct reference {
    std::vector<float> logits;            // (batch, pos, d_vocab), plain forward
    std::vector<float> cached_logits;     // (batch, pos, d_vocab), forward with every site cached
    mechlens::activation_cache activations;
    float loss = 0.0f;
    std::vector<float> parameter_grads;   // flat, lined up with the parameters
    mechlens::activation_cache site_grads;
};

/// One shared model with its prompts and references. Everything here is read-only once the threads start.
struct model_case {
    std::string name;
    mechlens::model_parameters params;  // the gradient pass's view of the weights
    std::unique_ptr<const mechlens::transformer> model;
    std::vector<prompt> prompts;
    std::vector<reference> references;
    mechlens::metric objective = mechlens::metric::cross_entropy();
};

/// The three computations of one iteration, on state the calling thread owns.
struct thread_state {
    mechlens::workspace plain_ws, cached_ws;
    cache_everything activations;
    gradient_everywhere site_grads;
    mechlens::backprop_tape<float> tape;
    mechlens::model_parameters grads;
    std::vector<float> logits, cached_logits;
};

void run_plain(const model_case& m, const prompt& p, mechlens::workspace& ws, std::vector<float>& logits) {
    const index_t vocab = m.model->config().d_vocab;
    logits.assign(static_cast<std::size_t>(p.batch * p.positions * vocab), 0.0f);
    mechlens::forward(*m.model, p.tokens(),
                      mechlens::tensor_view<float, 3>(logits.data(), {p.batch, p.positions, vocab}),  // (batch, pos, d_vocab)
                      ws);
}

void run_cached(const model_case& m, const prompt& p, mechlens::workspace& ws, cache_everything& policy,
                std::vector<float>& logits) {
    const index_t vocab = m.model->config().d_vocab;
    logits.assign(static_cast<std::size_t>(p.batch * p.positions * vocab), 0.0f);
    mechlens::forward(*m.model, p.tokens(),
                      mechlens::tensor_view<float, 3>(logits.data(), {p.batch, p.positions, vocab}),  // (batch, pos, d_vocab)
                      ws, policy);
}

float run_gradient(const model_case& m, const prompt& p, gradient_everywhere& policy,
                   mechlens::backprop_tape<float>& tape, mechlens::model_parameters& grads) {
    return mechlens::forward_backward(m.params, p.tokens(), m.objective, &grads, policy, tape);
}

bool same_bits(const float* a, const float* b, std::size_t n) {
    return n == 0 || std::memcmp(a, b, n * sizeof(float)) == 0;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && same_bits(a.data(), b.data(), a.size());
}

/// Empty when both caches hold the same sites with the same shapes, positions and bits; else the first difference.
std::string cache_difference(const mechlens::activation_cache& got, const mechlens::activation_cache& want) {
    const std::vector<mechlens::site> sites = want.sites();
    if (got.sites() != sites)
        return "cached " + std::to_string(got.size()) + " sites, expected " + std::to_string(want.size());
    for (const mechlens::site& s : sites) {
        const mechlens::cached_activation& a = got.at(s);
        const mechlens::cached_activation& b = want.at(s);
        if (a.shape != b.shape || a.positions != b.positions || !same_bits(a.values, b.values))
            return mechlens::to_string(s) + " differs";
    }
    return {};
}

/// Shared failure log: the first few messages are printed, all are counted.
std::atomic<int> failures{0};

void fail(const std::string& message) {
    if (failures.fetch_add(1) < 20) std::fprintf(stderr, "FAIL: %s\n", message.c_str());
}

/// Runs the three passes of `p` on model `m` with `state` and checks them against `want`.
void run_and_check(const model_case& m, std::size_t prompt_index, thread_state& state, const std::string& who) {
    const prompt& p = m.prompts[prompt_index];
    const reference& want = m.references[prompt_index];
    const std::string where = who + " " + m.name + " prompt " + std::to_string(prompt_index) + ": ";

    run_plain(m, p, state.plain_ws, state.logits);
    if (!same_bits(state.logits, want.logits)) fail(where + "plain forward logits differ");

    run_cached(m, p, state.cached_ws, state.activations, state.cached_logits);
    if (!same_bits(state.cached_logits, want.cached_logits)) fail(where + "caching forward logits differ");
    if (const std::string d = cache_difference(state.activations.cache(), want.activations); !d.empty())
        fail(where + "activation cache: " + d);

    const float loss = run_gradient(m, p, state.site_grads, state.tape, state.grads);
    if (!same_bits(&loss, &want.loss, 1)) fail(where + "loss differs");
    const auto flat = state.grads.flat();
    if (flat.size() != want.parameter_grads.size() || !same_bits(flat.data(), want.parameter_grads.data(), flat.size()))
        fail(where + "parameter gradients differ");
    if (const std::string d = cache_difference(state.site_grads.cache(), want.site_grads); !d.empty())
        fail(where + "site gradients: " + d);
}

/// Deterministic prompts: lengths vary so that workspaces and tapes grow and are reused across iterations.
std::vector<prompt> make_prompts(index_t vocab, index_t n_ctx) {
    std::vector<prompt> out;
    const index_t shapes[][2] = {{1, 5}, {1, 12}, {2, 7}, {1, 3}, {3, 9}};  // (batch, pos)
    std::uint32_t state = 12345u;
    for (const auto& shape : shapes) {
        prompt p;
        p.batch = shape[0];
        p.positions = std::min(shape[1], n_ctx);
        for (index_t i = 0; i < p.batch * p.positions; ++i) {
            state = state * 1664525u + 1013904223u;  // a fixed LCG: the same prompts on every run
            p.ids.push_back(static_cast<std::int32_t>((state >> 8) % static_cast<std::uint32_t>(vocab)));
        }
        out.push_back(std::move(p));
    }
    return out;
}

/// Builds a case from loaded weights: the transformer runs on the weights as loaded, the gradient pass on a copy.
std::unique_ptr<model_case> make_case(std::string name, mechlens::loaded_model loaded) {
    auto m = std::make_unique<model_case>();
    m->name = std::move(name);
    m->params = mechlens::model_parameters(loaded.config, loaded.weights);
    m->model = std::make_unique<const mechlens::transformer>(std::move(loaded));
    m->prompts = make_prompts(m->model->config().d_vocab, m->model->config().n_ctx);
    return m;
}

/// Fills the references of `m` on the calling thread, with fresh state.
void compute_references(model_case& m) {
    for (const prompt& p : m.prompts) {
        reference r;
        mechlens::workspace ws;
        run_plain(m, p, ws, r.logits);
        mechlens::workspace cached_ws;
        cache_everything activations;
        run_cached(m, p, cached_ws, activations, r.cached_logits);
        r.activations = activations.take();
        gradient_everywhere site_grads;
        mechlens::backprop_tape<float> tape;
        mechlens::model_parameters grads(m.params.config());
        r.loss = run_gradient(m, p, site_grads, tape, grads);
        r.parameter_grads.assign(grads.flat().begin(), grads.flat().end());
        r.site_grads = site_grads.take();
        m.references.push_back(std::move(r));
    }
}

std::filesystem::path models_dir() {
    if (const char* env = std::getenv("MECHLENS_MODELS"); env != nullptr && *env != '\0') return env;
    return MECHLENS_DEFAULT_MODELS;
}

}  // namespace

int main() {
    try {
        std::vector<std::unique_ptr<model_case>> cases;

        // LLaMA-style: RMSNorm, rotary, gated SiLU, grouped-query attention (4 query heads over 2 kv heads).
        mechlens::model_config llama;
        llama.d_model = 32;
        llama.n_layers = 2;
        llama.n_heads = 4;
        llama.n_kv_heads = 2;
        llama.d_mlp = 64;
        llama.d_vocab = 64;
        llama.n_ctx = 16;
        cases.push_back(make_case("random-llama", mechlens::random_model(llama, 7)));

        // GPT-style: learned positions, plain GELU MLP, untied unembedding, no norms, one kv head per query head.
        mechlens::model_config gpt = llama;
        gpt.n_kv_heads = 4;
        gpt.positions = mechlens::positional_kind::learned;
        gpt.mlp = mechlens::mlp_kind::plain_gelu;
        gpt.norm = mechlens::norm_kind::none;
        gpt.tied_unembed = false;
        cases.push_back(make_case("random-gpt", mechlens::random_model(gpt, 11)));

        // The real model too, when it is there (never required).
        const std::filesystem::path stories = models_dir() / "stories260K" / "stories260K.bin";
        if (std::filesystem::exists(stories)) {
            cases.push_back(make_case("stories260K", mechlens::load_model(stories)));
        } else {
            std::printf("note: %s not found; random models only\n", stories.string().c_str());
        }

        for (auto& m : cases) {
            m->objective = m->name == "random-gpt" ? mechlens::metric::logit_diff(3, 5)
                                                   : mechlens::metric::cross_entropy();
            compute_references(*m);
        }

        // Before any thread: the references are not trivially empty, and a second run on this thread with fresh
        // state reproduces them (so a difference later is the threads' doing, not run-to-run noise).
        {
            thread_state state;
            state.grads = mechlens::model_parameters(cases.front()->params.config());
            run_and_check(*cases.front(), 0, state, "main");
            if (cases.front()->references[0].activations.size() < 20) fail("main: the cache of every site is too small");
            if (cases.front()->references[0].site_grads.empty()) fail("main: no site gradient was cached");
        }

        std::latch start(thread_count);
        std::vector<std::thread> workers;
        std::atomic<int> passes{0};
        for (int t = 0; t < thread_count; ++t) {
            workers.emplace_back([&, t] {
                try {
                    // One state per model, so gradient buffers match each model's layout; every thread starts on a
                    // different prompt so the threads run different shapes at the same time.
                    std::vector<thread_state> states(cases.size());
                    for (std::size_t c = 0; c < cases.size(); ++c)
                        states[c].grads = mechlens::model_parameters(cases[c]->params.config());
                    const std::string who = "thread " + std::to_string(t);
                    start.arrive_and_wait();
                    for (int i = 0; i < iterations; ++i)
                        for (std::size_t c = 0; c < cases.size(); ++c) {
                            const model_case& m = *cases[c];
                            const std::size_t k = static_cast<std::size_t>(t + i) % m.prompts.size();
                            run_and_check(m, k, states[c], who);
                            passes.fetch_add(1);
                        }
                } catch (const std::exception& e) {
                    fail("thread " + std::to_string(t) + " threw: " + e.what());
                }
            });
        }
        for (std::thread& w : workers) w.join();

        const int expected = thread_count * iterations * static_cast<int>(cases.size());
        if (passes.load() != expected)
            fail("ran " + std::to_string(passes.load()) + " iterations, expected " + std::to_string(expected));
        if (failures.load() != 0) {
            std::fprintf(stderr, "%d check(s) failed\n", failures.load());
            return 1;
        }
        std::string names;
        for (const auto& m : cases) names += (names.empty() ? "" : ", ") + m->name;
        std::printf("OK: %d threads x %d iterations x %zu models (%s), each a plain forward, a forward caching every "
                    "site and a forward/backward pass, all bitwise equal to the single-threaded results\n",
                    thread_count, iterations, cases.size(), names.c_str());
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "FAIL: %s\n", e.what());
        return 1;
    }
}
