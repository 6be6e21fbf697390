// Lesson 03: mechlens hooks inside someone else's engine.
//
// tiny_llama.hpp is a separate llama2.c-style engine (one token at a time, its own loader, matmul, rmsnorm, softmax
// and rope). A `mechlens::fire_site` line after each activation is all it took to make every mechlens hook policy
// work on it. This lesson runs it on stories260K and shows:
//   1. a ten-line custom policy: the residual-stream norm after every block;
//   2. the library's caching policy on the engine, checked site by site against mechlens's own forward pass;
//   3. the library's ablation policy: zeroing one MLP output changes the next token's logit.
// Set MECHLENS_MODELS to the folder holding stories260K/ (default: ../shared/models). Exits 1 if a check fails.

#include "tiny_llama.hpp"

#include <mechlens/mechlens.hpp>  // only for the reference forward pass and the tokenizer; the engine needs neither

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using mechlens::index_t;
using mechlens::site;
using mechlens::site_kind;

namespace {

/// The site kinds tiny_llama.hpp fires (it skips the norm scales, the un-gained norms and per-head results).
constexpr mechlens::kind_set engine_kinds = mechlens::kind_set::of(
    {site_kind::embed, site_kind::resid_pre, site_kind::attn_q, site_kind::attn_k, site_kind::attn_v,
     site_kind::attn_rot_q, site_kind::attn_rot_k, site_kind::attn_scores, site_kind::attn_pattern, site_kind::attn_z,
     site_kind::attn_out, site_kind::resid_mid, site_kind::mlp_pre, site_kind::mlp_pre_linear, site_kind::mlp_post,
     site_kind::mlp_out, site_kind::resid_post, site_kind::unembed_out});

/// 1. A custom policy: the L2 norm of the residual stream after each block, at the latest position.
struct residual_norms {
    std::vector<double> by_layer;
    static constexpr bool wants(site_kind kind) { return kind == site_kind::resid_post; }
    template <std::size_t Rank>
    void on_activation(const site& s, mechlens::tensor_view<float, Rank> x, const mechlens::hook_context&) {
        if constexpr (Rank == 3) {
            double squares = 0.0;
            for (index_t i = 0; i < x.extent(2); ++i) {
                const auto value = static_cast<double>(x(0, 0, i));
                squares += value * value;
            }
            by_layer.resize(static_cast<std::size_t>(std::max<index_t>(s.layer + 1, 0)));
            by_layer[static_cast<std::size_t>(s.layer)] = std::sqrt(squares);
        }
    }
};
static_assert(mechlens::hook_policy<residual_norms>);

/// Runs the prompt through the engine, one token at a time, with `hooks`; returns the last position's logits.
template <class Hooks>
std::vector<float> run_engine(const tiny::model& m, const std::vector<std::int32_t>& tokens, Hooks&& hooks) {
    tiny::run_state state(m.c);
    for (std::size_t pos = 0; pos < tokens.size(); ++pos)
        tiny::forward(m, state, tokens[pos], static_cast<int>(pos), hooks);
    return state.logits;
}

/// Largest |a - b| over two cached activations of equal shape; -inf == -inf (masked scores) counts as equal.
double max_abs_difference(const mechlens::cached_activation& a, const mechlens::cached_activation& b) {
    if (a.shape != b.shape) return std::numeric_limits<double>::infinity();
    double worst = 0.0;
    for (std::size_t i = 0; i < a.values.size(); ++i) {
        if (std::isinf(a.values[i]) && a.values[i] == b.values[i]) continue;
        const double d = std::fabs(static_cast<double>(a.values[i]) - static_cast<double>(b.values[i]));
        worst = std::isfinite(d) ? std::max(worst, d) : std::numeric_limits<double>::infinity();
    }
    return worst;
}

std::size_t argmax(const std::vector<float>& v) {
    return static_cast<std::size_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

}  // namespace

int main() {
    const char* env = std::getenv("MECHLENS_MODELS");
    const fs::path models = env && *env ? fs::path(env) : fs::path(MECHLENS_DEFAULT_MODELS);
    const fs::path model_path = models / "stories260K" / "stories260K.bin";
    const fs::path tokenizer_path = models / "stories260K" / "tok512.bin";
    if (!fs::exists(model_path) || !fs::exists(tokenizer_path)) {
        std::printf(
            "This lesson needs stories260K (stories260K.bin and tok512.bin), which is not in %s.\n"
            "Put Karpathy's tinyllamas stories260K files in <dir>/stories260K/ and set MECHLENS_MODELS=<dir>.\n",
            models.string().c_str());
        return 0;
    }
    const tiny::model engine_model = tiny::load(model_path.string());
    const auto tokenizer = mechlens::bpe_tokenizer::from_llama2c(tokenizer_path);
    const std::string prompt = "Once upon a time";
    const std::vector<std::int32_t> tokens = tokenizer.encode(prompt);
    const index_t last = static_cast<index_t>(tokens.size()) - 1;
    std::printf("tiny_llama engine: dim %d, %d layers, %d heads (%d kv), prompt \"%s\" = %zu tokens\n\n",
                engine_model.c.dim, engine_model.c.n_layers, engine_model.c.n_heads, engine_model.c.n_kv_heads,
                prompt.c_str(), tokens.size());
    bool ok = true;

    // 0. No hooks: the engine as it always was (every fire_site line compiles to nothing).
    const std::vector<float> plain = run_engine(engine_model, tokens, mechlens::no_hooks{});
    const std::size_t next = argmax(plain);
    std::printf("next token without hooks: '%s' (id %zu, logit %.4f)\n\n",
                tokenizer.decode_piece(tokens.back(), static_cast<std::int32_t>(next)).c_str(), next,
                static_cast<double>(plain[next]));

    // 1. A custom policy.
    residual_norms norms;
    (void)run_engine(engine_model, tokens, norms);
    std::printf("1. residual-stream norm after each block, position %td (custom policy):\n", last);
    for (std::size_t l = 0; l < norms.by_layer.size(); ++l)
        std::printf("   blocks.%zu.hook_resid_post  |x| = %.4f\n", l, norms.by_layer[l]);
    ok = ok && norms.by_layer.size() == static_cast<std::size_t>(engine_model.c.n_layers);

    // 2. The library's caching policy, on the engine and on mechlens's own forward pass.
    mechlens::caching_hooks<engine_kinds> engine_cache;
    const std::vector<float> cached_logits = run_engine(engine_model, tokens, engine_cache);
    const mechlens::transformer reference(mechlens::load_model(model_path));
    mechlens::caching_hooks<engine_kinds> reference_cache;
    (void)mechlens::forward_logits(
        reference, mechlens::tensor_view<const std::int32_t, 2>(tokens.data(), {1, last + 1}), reference_cache);

    std::printf("\n2. caching_hooks on the engine vs mechlens::forward, max |difference| per site kind:\n");
    double worst_resid_post = 0.0, worst = 0.0;
    index_t compared = 0;
    for (std::size_t k = 0; k < mechlens::site_kind_count; ++k) {
        const auto kind = static_cast<site_kind>(k);
        if (!engine_kinds.contains(kind)) continue;
        double kind_worst = 0.0;
        std::string shape;
        for (const site& s : reference_cache.cache().sites()) {
            if (s.kind != kind) continue;
            const mechlens::cached_activation* mine = engine_cache.cache().find(s);
            const double d = mine ? max_abs_difference(*mine, reference_cache.cache().at(s))
                                  : std::numeric_limits<double>::infinity();
            kind_worst = std::max(kind_worst, d);
            ++compared;
            if (mine && shape.empty())
                for (std::size_t a = 0; a < mine->shape.size(); ++a) {  // appended piece by piece: GCC 12's
                    shape += a ? "," : "(";                              // -Wrestrict misfires on "x" + string&&
                    shape += std::to_string(mine->shape[a]);
                    if (a + 1 == mine->shape.size()) shape += ")";
                }
        }
        std::printf("   %-22s %-18s %.3g\n", std::string(mechlens::site_suffix(kind)).c_str(), shape.c_str(),
                    kind_worst);
        if (kind == site_kind::resid_post) worst_resid_post = kind_worst;
        worst = std::max(worst, kind_worst);
    }
    std::printf("   %td sites compared; resid_post max |diff| = %.3g (tolerance 1e-4)\n", compared, worst_resid_post);
    ok = ok && compared == 16 * engine_model.c.n_layers + 2 && worst_resid_post <= 1e-4 && worst <= 1e-3;
    // Caching only reads: the engine's output is bit-for-bit the same as without hooks.
    ok = ok && cached_logits == plain;

    // 3. The library's ablation policy: zero the last block's MLP output at the last position.
    const site mlp_out{site_kind::mlp_out, engine_model.c.n_layers - 1};
    mechlens::ablate_hooks<> ablation;
    ablation.zero(mlp_out, {.positions = {last}, .heads = mechlens::index_set::all()});
    const std::vector<float> ablated = run_engine(engine_model, tokens, ablation);
    std::printf("\n3. ablate_hooks zeroing %s at position %td:\n", mechlens::to_string(mlp_out).c_str(), last);
    std::printf("   logit of '%s': %.4f -> %.4f; next token now '%s'\n",
                tokenizer.decode_piece(tokens.back(), static_cast<std::int32_t>(next)).c_str(),
                static_cast<double>(plain[next]), static_cast<double>(ablated[next]),
                tokenizer.decode_piece(tokens.back(), static_cast<std::int32_t>(argmax(ablated))).c_str());
    ok = ok && std::fabs(ablated[next] - plain[next]) > 1e-3f;

    std::printf("\n%s\n", ok ? "all checks passed" : "CHECK FAILED");
    return ok ? 0 : 1;
}
