#pragma once
// `mechlens lens` and `mechlens dla`: the logit lens and direct logit attribution from the command line.

#include <mechlens/mechlens.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "arguments.hpp"

namespace mechlens_cli {

/// A token shown as `id 'text'` when a tokenizer is at hand, else as its id.
inline std::string show_token(const std::optional<mechlens::bpe_tokenizer>& tokenizer, std::int32_t token) {
    if (!tokenizer) return std::to_string(token);
    std::string text = tokenizer->decode_piece(0, token);
    std::replace(text.begin(), text.end(), '\n', ' ');
    return std::to_string(token) + " '" + text + "'";
}

/// The position an option names: -1 is the last of `positions`.
inline mechlens::index_t resolve_position(const std::optional<std::string>& text, mechlens::index_t positions) {
    const auto p = text ? parse_number<mechlens::index_t>(*text, "--position") : mechlens::index_t{-1};
    const mechlens::index_t resolved = p < 0 ? positions + p : p;
    if (resolved < 0 || resolved >= positions)
        throw usage_error("--position " + std::to_string(p) + " is outside a " + std::to_string(positions) +
                          "-token sequence");
    return resolved;
}

/// Runs one forward pass caching `sites`; returns the logits.
template <mechlens::kind_set Kinds>
mechlens::tensor<float, 3> run_and_cache(const mechlens::transformer& model, const std::vector<std::int32_t>& tokens,
                                         mechlens::caching_hooks<Kinds>& hooks) {
    const auto n = static_cast<mechlens::index_t>(tokens.size());
    return mechlens::forward_logits(model, mechlens::tensor_view<const std::int32_t, 2>(tokens.data(), {1, n}), hooks);
}

/// `mechlens lens`: per layer, the top tokens the residual stream predicts at one position.
template <class ResolveTokens>
int run_lens(arguments& args, ResolveTokens&& resolve) {
    const std::filesystem::path model_path = args.require("model");
    const auto position_text = args.get("position");
    const auto top_k =
        args.get("top") ? parse_number<mechlens::index_t>(*args.get("top"), "--top") : mechlens::index_t{5};
    const auto out = args.get("out");
    const auto [tokens, tokenizer] = resolve(args, model_path);
    args.reject_unknown();
    const mechlens::transformer model(mechlens::load_model(model_path));
    const mechlens::model_config& c = model.config();
    mechlens::caching_hooks<> hooks(mechlens::cache_filter().names("blocks.*.hook_resid_post", c));
    (void)run_and_cache(model, tokens, hooks);
    const mechlens::tensor<float, 4> lens = mechlens::logit_lens(model, hooks.cache());  // (layers, 1, pos, vocab)
    const mechlens::index_t p = resolve_position(position_text, static_cast<mechlens::index_t>(tokens.size()));
    for (mechlens::index_t layer = 0; layer < c.n_layers; ++layer) {
        const mechlens::tensor_view<const float, 1> row(&lens(layer, 0, p, 0), {c.d_vocab});
        std::printf("blocks.%td.hook_resid_post:", layer);
        for (const mechlens::token_standing& t : mechlens::top_tokens(row, top_k))
            std::printf("  %s %.3f", show_token(tokenizer, t.token).c_str(), static_cast<double>(t.probability));
        std::printf("\n");
    }
    if (out) {
        mechlens::write_npy(*out, mechlens::tensor_view<const float, 4>(lens.view()));
        std::fprintf(stderr, "wrote %s: logit lens (%td, 1, %zu, %td)\n", out->c_str(), c.n_layers, tokens.size(),
                     c.d_vocab);
    }
    return 0;
}

/// `mechlens dla`: each component's direct contribution to a logit (difference) at one position.
template <class ResolveTokens>
int run_dla(arguments& args, ResolveTokens&& resolve) {
    const std::filesystem::path model_path = args.require("model");
    const auto position_text = args.get("position");
    const auto token = parse_number<std::int32_t>(args.require("token"), "--token");
    const auto minus = args.get("minus");
    const auto [tokens, tokenizer] = resolve(args, model_path);
    args.reject_unknown();
    const mechlens::transformer model(mechlens::load_model(model_path));
    const std::optional<std::int32_t> other =
        minus ? std::optional<std::int32_t>(parse_number<std::int32_t>(*minus, "--minus")) : std::nullopt;
    mechlens::caching_hooks<> hooks;
    const mechlens::tensor<float, 3> logits = run_and_cache(model, tokens, hooks);
    const mechlens::index_t p = resolve_position(position_text, static_cast<mechlens::index_t>(tokens.size()));
    const mechlens::logit_attribution dla =
        mechlens::direct_logit_attribution(model, hooks.cache(), 0, p, token, other);
    std::vector<std::size_t> order(dla.values.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return std::abs(dla.values[a]) > std::abs(dla.values[b]); });
    for (const std::size_t i : order) std::printf("%-10s %+.4f\n", dla.components[i].c_str(), dla.values[i]);
    const double model_value =
        static_cast<double>(logits(0, p, token)) - (other ? static_cast<double>(logits(0, p, *other)) : 0.0);
    std::fprintf(stderr, "logit%s of %s%s%s at position %td: %.4f from the components, %.4f from the model\n",
                 other ? " difference" : "", show_token(tokenizer, token).c_str(), other ? " minus " : "",
                 other ? show_token(tokenizer, *other).c_str() : "", p, dla.total, model_value);
    return 0;
}

}  // namespace mechlens_cli
