#pragma once
/// @file
/// Autoregressive generation with a KV cache; hooks fire during prefill and every decode step.

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "mechlens/model/forward.hpp"
#include "mechlens/model/sampling.hpp"

MECHLENS_BEGIN_NAMESPACE

/// What to generate.
struct generation_options {
    index_t max_new_tokens = 64;  ///< Upper bound on generated tokens (also bounded by n_ctx).
    sampling_options sampling;    ///< Greedy by default.
    bool stop_at_eos = true;      ///< Stop after emitting `eos_id`.
    std::int32_t eos_id = 2;      ///< End-of-sequence id.
    bool stop_at_bos = true;      ///< Stop when the model emits `bos_id` (llama2.c's convention).
    std::int32_t bos_id = 1;      ///< Beginning-of-sequence id.
};

/// Generates after `prompt` (which must be non-empty); calls `on_token(id)` as each token is chosen and returns the
/// new tokens. The prompt is prefilled in one batched forward; then one forward per token reuses the cache.
template <class OnToken, class Policy = no_hooks>
std::vector<std::int32_t> generate(const transformer& model, std::span<const std::int32_t> prompt,
                                   const generation_options& options, OnToken&& on_token,
                                   Policy&& policy = Policy{}) {
    const model_config& c = model.config();
    const auto prompt_length = static_cast<index_t>(prompt.size());
    if (prompt_length == 0) throw std::invalid_argument("generate: the prompt must hold at least one token");
    if (c.vocab_out() != c.d_vocab || !c.causal())
        throw std::invalid_argument("generate: the model is not a causal language model (its logits are over " +
                                    std::to_string(c.vocab_out()) + " classes" +
                                    (c.causal() ? std::string(")") : std::string(", and its attention is bidirectional)")));
    if (prompt_length > c.n_ctx)
        throw std::invalid_argument("generate: the prompt has " + std::to_string(prompt_length) +
                                    " tokens, more than n_ctx = " + std::to_string(c.n_ctx));
    const index_t budget = std::min(options.max_new_tokens, c.n_ctx - prompt_length);
    kv_cache cache(c, 1, std::max<index_t>(1, std::min(c.n_ctx, prompt_length + budget)));
    workspace ws;
    sampler pick(options.sampling);
    tensor<float, 3> logits({1, 1, c.vocab_out()});  // (batch, 1, d_vocab_out): only the last position is needed
    std::vector<std::int32_t> generated;
    std::vector<std::int32_t> step(prompt.begin(), prompt.end());
    for (index_t i = 0; i < budget; ++i) {
        const tensor_view<const std::int32_t, 2> tokens(step.data(), {1, static_cast<index_t>(step.size())});
        forward(model, tokens, cache, logits.view(), ws, policy);
        const std::int32_t next = pick.sample(logits.data(), c.vocab_out());
        if ((options.stop_at_eos && next == options.eos_id) || (options.stop_at_bos && next == options.bos_id)) break;
        generated.push_back(next);
        on_token(next);
        step.assign(1, next);
    }
    return generated;
}

MECHLENS_END_NAMESPACE
